//! The stock gate: decides, atomically, whether a request may take a coupon.
//!
//! [`StockGate`] is the contract; [`RedisGate`] runs it as Lua scripts on Redis or a Redis
//! Cluster (keys hash-tagged per coupon shard, `coupon:{campaign:id}`, so every script touches
//! one slot); [`MemoryGate`] holds it in process for the embedded mode.

pub mod holder;
mod redis_gate;
pub mod shards;

use async_trait::async_trait;
use uuid::Uuid;

use crate::campaign::{CouponId, UserId};
use crate::error::{Error, Result};

use self::holder::Holder;
pub use self::redis_gate::{Attempt, DRY_HINT_MS, RedisGate};
use self::shards::ShardKeys;

/// What the gate decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Stock taken and the user marked with this request id.
    Reserved,
    /// The same request (same id) already holds the reservation: a client retry.
    Replay,
    /// The user holds this coupon under another request.
    AlreadyIssued(Uuid),
    SoldOut,
    NotOpen,
    Closed,
    /// The coupon's gate state is absent (never provisioned, or Redis lost it).
    Missing,
    /// Another attempt of this user is taking a unit from a sibling shard right now (or this
    /// one stalled so long that settlement undid it): nothing decided, retry.
    InProgress,
}

/// Gate settings of one coupon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateCoupon {
    pub quantity: i64,
    pub starts_ms: i64,
    pub ends_ms: i64,
    /// Stock counters the quantity is split over (1: unsharded); fixed once created.
    pub shards: u16,
}

/// The gate's view of one coupon.
/// The gate's view of one coupon, summed over its shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GateSnapshot {
    pub quantity: i64,
    pub remaining: i64,
    pub refused_sold_out: i64,
    pub holders: i64,
    pub shards: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    Created {
        stock: i64,
    },
    Grown {
        by: i64,
    },
    Unchanged,
    /// The spec asks for less than the live quantity; nothing was changed.
    Shrink {
        live: i64,
    },
    /// The spec asks for another shard count than the live one; nothing was changed.
    Reshard {
        live: u16,
    },
}

/// One reservation the gate made and nobody has settled yet: its event may be in the log,
/// or it may have died with the process that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub request_id: Uuid,
    pub coupon: CouponId,
    pub user: UserId,
    /// When the gate reserved it (or last saw a replay of it), on the gate's clock.
    pub at_ms: i64,
    /// The shard whose unsettled set holds it: the user's home, or a sibling that lent a unit.
    pub shard: u16,
}

/// The unsettled reservations of one coupon.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unsettled {
    /// How many there are in all.
    pub count: u64,
    /// Reservation time of the oldest one.
    pub oldest_ms: Option<i64>,
    /// Those made at or before the cutoff, oldest first (at most the limit asked for).
    pub ripe: Vec<Reservation>,
}

/// What settling one reservation as "not issued" did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// Stock and the user's slot given back.
    Released,
    /// Replayed after the cutoff: its new publish may still land; left for a later round.
    Refreshed,
    /// Already settled (by another settler, or released by the API).
    Gone,
}

/// Where one request stands, as the gate and the consumer's marks record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestStatus {
    pub user: UserId,
    pub stage: RequestStage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStage {
    /// Reserved (or being decided); its event is not known to be stored yet.
    Pending {
        /// When the gate reserved it (or last saw a replay of it), on the gate's clock.
        reserved_at_ms: Option<i64>,
    },
    /// The ledger holds it: a consumer marked it stored, or settlement found it there.
    Issued {
        /// When the consumer stored it, while its mark lasts (until settlement settles it).
        stored_at_ms: Option<i64>,
    },
    /// Settled away: its publish failed or was lost, and its stock went back.
    Released { at_ms: i64 },
}

/// A consumer's note that the ledger committed this request (its event's id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredMark {
    pub coupon: CouponId,
    pub request_id: Uuid,
}

#[async_trait]
pub trait StockGate: Send + Sync {
    /// Window → duplicate → stock, then reserve; one atomic step.
    async fn reserve(
        &self,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
    ) -> Result<Decision> {
        Ok(self
            .reserve_stamped(campaign, coupon, user, request_id)
            .await?
            .0)
    }
    /// [`reserve`](Self::reserve), with the time a `Reserved` decision stamped on its
    /// reservation (on the gate's clock; `None` for every other decision).
    async fn reserve_stamped(
        &self,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
    ) -> Result<(Decision, Option<i64>)>;
    /// Undo a reservation held by `request_id`; true when something was released.
    async fn release(
        &self,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
    ) -> Result<bool>;
    /// Undo a fresh reservation whose publish the broker certainly refused, unless a replay of
    /// the same request (which may have published) touched it after `reserved_at`: then it is
    /// left to settlement (`Refreshed`).
    async fn release_refused(
        &self,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
        reserved_at: i64,
    ) -> Result<Released>;
    /// Create the coupon's gate (with `holders` already marked) or grow its quantity.
    async fn ensure(
        &self,
        campaign: &str,
        coupon: CouponId,
        cfg: GateCoupon,
        holders: &[(UserId, Uuid)],
    ) -> Result<Ensured>;
    /// Drops what is left of a coupon's gate, before it is rebuilt from the ledger.
    async fn discard(&self, campaign: &str, coupon: CouponId) -> Result<()>;
    async fn snapshot(&self, campaign: &str, coupon: CouponId) -> Result<Option<GateSnapshot>>;
    async fn holder(&self, campaign: &str, coupon: CouponId, user: UserId) -> Result<Option<Uuid>>;
    /// The campaign's coupon ids with quantities, as provisioned.
    async fn set_catalog(&self, campaign: &str, coupons: &[(CouponId, i64)]) -> Result<()>;
    async fn catalog(&self, campaign: &str) -> Result<Option<Vec<(CouponId, i64)>>>;
    /// The gate's clock (reservation times are on it), in Unix milliseconds.
    async fn clock_ms(&self) -> Result<i64>;
    /// Records (once) when the campaign's gate was first seen lost; returns that time.
    async fn mark_lost(&self, campaign: &str) -> Result<i64>;
    /// Forgets the mark once the gate is rebuilt.
    async fn clear_lost(&self, campaign: &str) -> Result<()>;
    /// Unsettled reservations of a coupon; `ripe` holds up to `limit` made at or before `cutoff_ms`.
    async fn unsettled(
        &self,
        campaign: &str,
        coupon: CouponId,
        cutoff_ms: i64,
        limit: usize,
    ) -> Result<Unsettled>;
    /// Settles reservations whose event is in the ledger: they stay, and leave the unsettled set.
    /// (A sibling's unit that the user's home does not name is an earlier attempt's: given back
    /// if made at or before `cutoff_ms`.)
    async fn settle_issued(
        &self,
        campaign: &str,
        coupon: CouponId,
        r: &[Reservation],
        cutoff_ms: i64,
    ) -> Result<()>;
    /// Settles a reservation with no event: gives back stock and the user's slot, together, if
    /// it is still unsettled and was made (or last replayed) at or before `cutoff_ms`.
    async fn settle_released(
        &self,
        campaign: &str,
        r: &Reservation,
        cutoff_ms: i64,
    ) -> Result<Released>;
    async fn ping(&self) -> Result<()>;
    /// Notes that the ledger holds these requests (called after the consumer's commit), so a
    /// status query says `issued` before settlement gets to them; `at_ms` is the commit's time.
    async fn mark_stored(&self, campaign: &str, marks: &[StoredMark], at_ms: i64) -> Result<()>;
    /// Where a request stands; `None` when the gate knows no such request (or, with `user`,
    /// knows it as another user's). Knowing the user saves looking for its record, and reads a
    /// reservation made before requests were recorded (an older version's).
    async fn request_status(
        &self,
        campaign: &str,
        coupon: CouponId,
        request_id: Uuid,
        user: Option<UserId>,
    ) -> Result<Option<RequestStatus>>;
}

/// The stage of a request the gate names `user` for, from the home shard's records: `holder`
/// (what the user's holder entry says), whether an unsettled entry is still there, the consumer's mark
/// and a release tombstone. `None`: the records do not agree on any stage.
fn stage_of(
    request_id: Uuid,
    holder: Option<&Holder>,
    unsettled_at: Option<i64>,
    stored_at: Option<i64>,
    released_at: Option<i64>,
) -> Option<RequestStage> {
    // The mark follows the ledger's commit: it wins over everything else.
    if stored_at.is_some() {
        return Some(RequestStage::Issued {
            stored_at_ms: stored_at,
        });
    }
    match (holds(holder, request_id), unsettled_at, released_at) {
        // Also a released request reserved again under its id (a retry with the same key).
        (true, Some(at), _) => Some(RequestStage::Pending {
            reserved_at_ms: Some(at),
        }),
        // Held and settled: settlement found it in the ledger (or the gate was rebuilt from it).
        (true, None, _) => Some(RequestStage::Issued { stored_at_ms: None }),
        (false, _, Some(at_ms)) => Some(RequestStage::Released { at_ms }),
        (false, _, None) => None,
    }
}

/// Whether the user's holder entry is this request's (at any stage).
fn holds(holder: Option<&Holder>, request_id: Uuid) -> bool {
    holder.is_some_and(|h| h.request() == request_id)
}

/// Shard 0's hash of a coupon (the only one of an unsharded coupon).
pub fn coupon_key(campaign: &str, coupon: CouponId) -> String {
    ShardKeys::new(campaign, coupon, 0).coupon
}

/// Shard 0's holders of a coupon (all of them, unsharded).
pub fn holders_key(campaign: &str, coupon: CouponId) -> String {
    ShardKeys::new(campaign, coupon, 0).holders
}

fn catalog_key(campaign: &str) -> String {
    format!("campaign:{{{campaign}}}:catalog")
}

fn lost_key(campaign: &str) -> String {
    format!("campaign:{{{campaign}}}:lost_at")
}

/// Member of the unsettled set: the settler needs the user to release the slot.
fn unsettled_member(user: UserId, request_id: Uuid) -> String {
    format!("{user}:{request_id}")
}

fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s)
        .map_err(|e| Error::Unexpected(format!("gate holds a bad request id {s:?}: {e}")))
}

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
        let mut guard = self
            .state
            .lock()
            .map_err(|_| Error::Unexpected("memory gate lock poisoned".into()))?;
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
impl StockGate for MemoryGate {
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

    async fn catalog(&self, campaign: &str) -> Result<Option<Vec<(CouponId, i64)>>> {
        self.with(|s| s.catalogs.get(campaign).cloned())
    }

    async fn clock_ms(&self) -> Result<i64> {
        Ok(now_ms())
    }

    async fn mark_lost(&self, campaign: &str) -> Result<i64> {
        self.with(|s| *s.lost_at.entry(campaign.to_string()).or_insert_with(now_ms))
    }

    async fn clear_lost(&self, campaign: &str) -> Result<()> {
        self.with(|s| {
            s.lost_at.remove(campaign);
        })
    }

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

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn mark_stored(&self, campaign: &str, marks: &[StoredMark], at_ms: i64) -> Result<()> {
        self.with(|s| {
            for m in marks {
                if let Some(c) = s.coupons.get_mut(&(campaign.to_string(), m.coupon)) {
                    c.stored.insert(m.request_id, at_ms);
                }
            }
        })
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
