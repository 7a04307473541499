//! The gate held in process, for the embedded mode (`couponctl demo`): the Redis scripts'
//! decisions under one lock, property-tested against them (`e2e/tests/gate_model.rs`).

use async_trait::async_trait;
use uuid::Uuid;

use super::holder::Holder;
use super::{
    Decision, Ensured, GateCoupon, GateSnapshot, GateView, Provisioning, Released, RequestStatus,
    Reservation, Reserving, Settling, StoredMark, StoredMarks, Unsettled, holds, stage_of,
};
use crate::error::{Error, Result};
use crate::ids::{CouponId, UserId};

/// The gate held in process, for the embedded mode: the same decisions as the Redis scripts of
/// an unsharded coupon, under one lock (the scripts are atomic the same way; one process has
/// nothing to spread, so a `shards` setting is ignored here).
#[derive(Default)]
pub struct MemoryGate {
    state: std::sync::Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    coupons: std::collections::HashMap<(String, CouponId), MemoryCoupon>,
    catalogs: std::collections::HashMap<String, Vec<(CouponId, i64)>>,
    lost_at: std::collections::HashMap<String, i64>,
}

#[derive(Default)]
struct MemoryCoupon {
    quantity: i64,
    stock: i64,
    starts_ms: i64,
    ends_ms: i64,
    refused_sold_out: i64,
    holders: std::collections::HashMap<UserId, Uuid>,
    /// (user, request id) → reservation time, as the Redis sorted set.
    unsettled: std::collections::HashMap<(UserId, Uuid), i64>,
    /// Request id → user, and when it was released.
    requests: std::collections::HashMap<Uuid, (UserId, Option<i64>)>,
    /// The consumer's marks: request id → when stored.
    stored: std::collections::HashMap<Uuid, i64>,
}

impl MemoryGate {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut MemoryState) -> T) -> Result<T> {
        let mut guard = self.state.lock().map_err(|_| Error::GatePoisoned)?;
        Ok(f(&mut guard))
    }

    /// The reservation decision at `now_ms`; the Redis script reads the time from Redis.
    pub fn reserve_at(
        &self,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
        now_ms: i64,
    ) -> Result<Decision> {
        self.with(|s| {
            let Some(c) = s.coupons.get_mut(&(campaign.to_string(), coupon)) else {
                return Decision::Missing;
            };
            if c.starts_ms > 0 && now_ms < c.starts_ms {
                return Decision::NotOpen;
            }
            if c.ends_ms > 0 && now_ms >= c.ends_ms {
                return Decision::Closed;
            }
            if let Some(holder) = c.holders.get(&user) {
                return if *holder == request_id {
                    if let Some(at) = c.unsettled.get_mut(&(user, request_id)) {
                        *at = now_ms.max(*at + 1);
                    }
                    Decision::Replay
                } else {
                    Decision::AlreadyIssued(*holder)
                };
            }
            if c.stock <= 0 {
                c.refused_sold_out += 1;
                return Decision::SoldOut;
            }
            c.stock -= 1;
            c.holders.insert(user, request_id);
            c.unsettled.insert((user, request_id), now_ms);
            c.requests.insert(request_id, (user, None));
            Decision::Reserved
        })
    }

    /// The release script's body: `cutoff` is the settler's (see [`StockGate::settle_released`]).
    fn release_with(
        &self,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
        cutoff: Option<i64>,
    ) -> Result<Released> {
        self.with(|s| {
            let Some(c) = s.coupons.get_mut(&(campaign.to_string(), coupon)) else {
                return Released::Gone;
            };
            if let Some(cutoff) = cutoff {
                match c.unsettled.get(&(user, request_id)) {
                    None => return Released::Gone,
                    Some(at) if *at > cutoff => return Released::Refreshed,
                    Some(_) => {}
                }
            }
            c.unsettled.remove(&(user, request_id));
            if c.holders.get(&user) == Some(&request_id) {
                c.holders.remove(&user);
                c.requests.insert(request_id, (user, Some(now_ms())));
                c.stock += 1;
                Released::Released
            } else {
                Released::Gone
            }
        })
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[async_trait]
impl Reserving for MemoryGate {
    async fn reserve_stamped(
        &self,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
    ) -> Result<(Decision, Option<i64>)> {
        let now = now_ms();
        let decision = self.reserve_at(campaign, coupon, user, request_id, now)?;
        let stamp = (decision == Decision::Reserved).then_some(now);
        Ok((decision, stamp))
    }

    async fn release(
        &self,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
    ) -> Result<bool> {
        Ok(self.release_with(campaign, coupon, user, request_id, None)? == Released::Released)
    }

    async fn release_refused(
        &self,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
        reserved_at: i64,
    ) -> Result<Released> {
        self.release_with(campaign, coupon, user, request_id, Some(reserved_at))
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl GateView for MemoryGate {
    async fn snapshot(&self, campaign: &str, coupon: CouponId) -> Result<Option<GateSnapshot>> {
        self.with(|s| {
            s.coupons
                .get(&(campaign.to_string(), coupon))
                .map(|c| GateSnapshot {
                    quantity: c.quantity,
                    remaining: c.stock,
                    refused_sold_out: c.refused_sold_out,
                    holders: c.holders.len() as i64,
                    shards: 1,
                })
        })
    }

    async fn holder(&self, campaign: &str, coupon: CouponId, user: UserId) -> Result<Option<Uuid>> {
        self.with(|s| {
            s.coupons
                .get(&(campaign.to_string(), coupon))
                .and_then(|c| c.holders.get(&user).copied())
        })
    }

    async fn catalog(&self, campaign: &str) -> Result<Option<Vec<(CouponId, i64)>>> {
        self.with(|s| s.catalogs.get(campaign).cloned())
    }

    async fn clock_ms(&self) -> Result<i64> {
        Ok(now_ms())
    }

    async fn request_status(
        &self,
        campaign: &str,
        coupon: CouponId,
        request_id: Uuid,
        user: Option<UserId>,
    ) -> Result<Option<RequestStatus>> {
        self.with(|s| {
            let c = s.coupons.get(&(campaign.to_string(), coupon))?;
            let record = c.requests.get(&request_id).copied();
            let (user, released_at) = match (user, record) {
                (Some(u), Some((recorded, _))) if recorded != u => return None,
                (Some(u), record) => (u, record.and_then(|r| r.1)),
                (None, record) => record?,
            };
            let holder = c.holders.get(&user).copied().map(Holder::Held);
            // Unrecorded (an older version's reservation): only the holder vouches for the user.
            let vouched = record.is_some() || holds(holder.as_ref(), request_id);
            let stage = stage_of(
                request_id,
                holder.as_ref(),
                c.unsettled.get(&(user, request_id)).copied(),
                c.stored.get(&request_id).copied().filter(|_| vouched),
                released_at,
            )?;
            Some(RequestStatus { user, stage })
        })
    }
}

#[async_trait]
impl Provisioning for MemoryGate {
    async fn ensure(
        &self,
        campaign: &str,
        coupon: CouponId,
        cfg: GateCoupon,
        holders: &[(UserId, Uuid)],
    ) -> Result<Ensured> {
        self.with(
            |s| match s.coupons.get_mut(&(campaign.to_string(), coupon)) {
                None => {
                    let stock = cfg.quantity - holders.len() as i64;
                    s.coupons.insert(
                        (campaign.to_string(), coupon),
                        MemoryCoupon {
                            quantity: cfg.quantity,
                            stock,
                            starts_ms: cfg.starts_ms,
                            ends_ms: cfg.ends_ms,
                            refused_sold_out: 0,
                            holders: holders.iter().copied().collect(),
                            unsettled: std::collections::HashMap::new(),
                            requests: holders.iter().map(|(u, r)| (*r, (*u, None))).collect(),
                            stored: std::collections::HashMap::new(),
                        },
                    );
                    Ensured::Created { stock }
                }
                Some(c) if cfg.quantity < c.quantity => Ensured::Shrink { live: c.quantity },
                Some(c) => {
                    let by = cfg.quantity - c.quantity;
                    c.stock += by;
                    c.quantity = cfg.quantity;
                    c.starts_ms = cfg.starts_ms;
                    c.ends_ms = cfg.ends_ms;
                    if by > 0 {
                        Ensured::Grown { by }
                    } else {
                        Ensured::Unchanged
                    }
                }
            },
        )
    }

    async fn discard(&self, campaign: &str, coupon: CouponId) -> Result<()> {
        self.with(|s| {
            s.coupons.remove(&(campaign.to_string(), coupon));
        })
    }

    async fn set_catalog(&self, campaign: &str, coupons: &[(CouponId, i64)]) -> Result<()> {
        self.with(|s| {
            let mut merged: std::collections::BTreeMap<CouponId, i64> = s
                .catalogs
                .get(campaign)
                .map(|c| c.iter().copied().collect())
                .unwrap_or_default();
            merged.extend(coupons.iter().copied());
            s.catalogs
                .insert(campaign.to_string(), merged.into_iter().collect());
        })
    }

    async fn mark_lost(&self, campaign: &str) -> Result<i64> {
        self.with(|s| *s.lost_at.entry(campaign.to_string()).or_insert_with(now_ms))
    }

    async fn clear_lost(&self, campaign: &str) -> Result<()> {
        self.with(|s| {
            s.lost_at.remove(campaign);
        })
    }

    async fn forget_campaign(&self, campaign: &str, coupons: &[CouponId]) -> Result<usize> {
        self.with(|s| {
            let mut removed = 0;
            for c in coupons {
                removed += usize::from(s.coupons.remove(&(campaign.to_string(), *c)).is_some());
            }
            removed += usize::from(s.catalogs.remove(campaign).is_some());
            removed + usize::from(s.lost_at.remove(campaign).is_some())
        })
    }
}

#[async_trait]
impl Settling for MemoryGate {
    async fn unsettled(
        &self,
        campaign: &str,
        coupon: CouponId,
        cutoff_ms: i64,
        limit: usize,
    ) -> Result<Unsettled> {
        self.with(|s| {
            let Some(c) = s.coupons.get(&(campaign.to_string(), coupon)) else {
                return Unsettled::default();
            };
            let mut all: Vec<Reservation> = c
                .unsettled
                .iter()
                .map(|(&(user, request_id), &at_ms)| Reservation {
                    request_id,
                    coupon,
                    user,
                    at_ms,
                    shard: 0,
                })
                .collect();
            all.sort_by_key(|r| (r.at_ms, r.user));
            Unsettled {
                count: all.len() as u64,
                oldest_ms: all.first().map(|r| r.at_ms),
                ripe: all
                    .into_iter()
                    .filter(|r| r.at_ms <= cutoff_ms)
                    .take(limit)
                    .collect(),
            }
        })
    }

    async fn settle_issued(
        &self,
        campaign: &str,
        coupon: CouponId,
        r: &[Reservation],
        _cutoff_ms: i64,
    ) -> Result<()> {
        self.with(|s| {
            if let Some(c) = s.coupons.get_mut(&(campaign.to_string(), coupon)) {
                for r in r {
                    c.unsettled.remove(&(r.user, r.request_id));
                    c.stored.remove(&r.request_id);
                }
            }
        })
    }

    async fn settle_released(
        &self,
        campaign: &str,
        r: &Reservation,
        cutoff_ms: i64,
    ) -> Result<Released> {
        self.release_with(campaign, r.coupon, r.user, r.request_id, Some(cutoff_ms))
    }
}

#[async_trait]
impl StoredMarks for MemoryGate {
    async fn mark_stored(&self, campaign: &str, marks: &[StoredMark], at_ms: i64) -> Result<()> {
        self.with(|s| {
            for m in marks {
                if let Some(c) = s.coupons.get_mut(&(campaign.to_string(), m.coupon)) {
                    c.stored.insert(m.request_id, at_ms);
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forgetting_a_campaign_removes_its_coupons_catalog_and_lost_mark() {
        let gate = MemoryGate::new();
        let cfg = GateCoupon {
            quantity: 5,
            starts_ms: 0,
            ends_ms: 0,
            shards: 1,
        };
        for coupon in [1, 2] {
            gate.ensure("spring", coupon, cfg, &[])
                .await
                .expect("ensured");
        }
        gate.ensure("other", 1, cfg, &[]).await.expect("ensured");
        gate.set_catalog("spring", &[(1, 5), (2, 5)])
            .await
            .expect("catalog");
        gate.mark_lost("spring").await.expect("marked");

        let removed = gate
            .forget_campaign("spring", &[1, 2])
            .await
            .expect("forgot");

        assert_eq!(removed, 4, "two coupons, the catalog and the lost mark");
        assert_eq!(gate.snapshot("spring", 1).await.expect("read"), None);
        assert_eq!(gate.catalog("spring").await.expect("read"), None);
        assert!(gate.snapshot("other", 1).await.expect("read").is_some());
        assert_eq!(
            gate.forget_campaign("spring", &[1, 2])
                .await
                .expect("again"),
            0
        );
    }
}
