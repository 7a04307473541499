//! The stock gate: decides, atomically, whether a request may take a coupon.
//!
//! [`StockGate`] is the contract; [`RedisGate`] runs it as Lua scripts on Redis. Keys are
//! hash-tagged per coupon (`coupon:{campaign:id}`) so every script touches one slot and works
//! on Redis Cluster.

use async_trait::async_trait;
use redis::{AsyncCommands, Script};
use uuid::Uuid;

use crate::backends::{RedisConnection, RedisLink};
use crate::campaign::{CouponId, UserId};
use crate::error::{Error, Result};

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
}

/// Gate settings of one coupon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateCoupon {
    pub quantity: i64,
    pub starts_ms: i64,
    pub ends_ms: i64,
}

/// The gate's view of one coupon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GateSnapshot {
    pub quantity: i64,
    pub remaining: i64,
    pub refused_sold_out: i64,
    pub holders: i64,
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

#[async_trait]
pub trait StockGate: Send + Sync {
    /// Window → duplicate → stock, then reserve; one atomic step.
    async fn reserve(
        &self,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
    ) -> Result<Decision>;
    /// Undo a reservation held by `request_id`; true when something was released.
    async fn release(
        &self,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
    ) -> Result<bool>;
    /// Create the coupon's gate (with `holders` already marked) or grow its quantity.
    async fn ensure(
        &self,
        campaign: &str,
        coupon: CouponId,
        cfg: GateCoupon,
        holders: &[(UserId, Uuid)],
    ) -> Result<Ensured>;
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
    async fn settle_issued(
        &self,
        campaign: &str,
        coupon: CouponId,
        r: &[Reservation],
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
}

pub fn coupon_key(campaign: &str, coupon: CouponId) -> String {
    format!("coupon:{{{campaign}:{coupon}}}")
}

pub fn holders_key(campaign: &str, coupon: CouponId) -> String {
    format!("coupon:{{{campaign}:{coupon}}}:holders")
}

pub fn unsettled_key(campaign: &str, coupon: CouponId) -> String {
    format!("coupon:{{{campaign}:{coupon}}}:unsettled")
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

/// The gate on one Redis or a Redis Cluster: every script and command touches the keys of one
/// coupon (`{campaign:coupon}`) or of one campaign (`{campaign}`), so one slot.
#[derive(Clone)]
pub struct RedisGate {
    conn: RedisLink,
    reserve: Script,
    release: Script,
    ensure: Script,
}

impl RedisGate {
    pub async fn connect(redis: impl Into<RedisConnection>) -> Result<Self> {
        let conn = redis.into().connect().await?;
        let gate = Self {
            conn,
            reserve: Script::new(include_str!("gate.lua")),
            release: Script::new(include_str!("release.lua")),
            ensure: Script::new(include_str!("ensure.lua")),
        };
        gate.ping().await?;
        Ok(gate)
    }

    pub fn connection(&self) -> RedisLink {
        self.conn.clone()
    }

    /// Removes every key of the campaign (coupon hashes, holders, unsettled sets, catalog);
    /// the operator's `Delete` deletion policy. Returns how many keys existed.
    pub async fn forget_campaign(&self, campaign: &str, coupons: &[CouponId]) -> Result<usize> {
        let mut conn = self.conn.clone();
        let mut removed = 0usize;
        for c in coupons {
            let n: usize = conn
                .del(&[
                    coupon_key(campaign, *c),
                    holders_key(campaign, *c),
                    unsettled_key(campaign, *c),
                ])
                .await?;
            removed += n;
        }
        let n: usize = conn
            .del(&[catalog_key(campaign), lost_key(campaign)])
            .await?;
        Ok(removed + n)
    }

    /// Runs a script over one coupon's hash, holders and unsettled set with (user, request id)
    /// and any further arguments.
    async fn run_on_holder<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
        extra: Option<i64>,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        let mut invocation = script.key(coupon_key(campaign, coupon));
        invocation
            .key(holders_key(campaign, coupon))
            .key(unsettled_key(campaign, coupon))
            .arg(user)
            .arg(request_id.to_string());
        if let Some(extra) = extra {
            invocation.arg(extra);
        }
        Ok(invocation.invoke_async(&mut conn).await?)
    }
}

fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s)
        .map_err(|e| Error::Unexpected(format!("gate holds a bad request id {s:?}: {e}")))
}

#[async_trait]
impl StockGate for RedisGate {
    async fn reserve(
        &self,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
    ) -> Result<Decision> {
        let reply: Vec<String> = self
            .run_on_holder(&self.reserve, campaign, coupon, user, request_id, None)
            .await?;
        Ok(match reply.first().map(String::as_str) {
            Some("reserved") => Decision::Reserved,
            Some("replay") => Decision::Replay,
            Some("already_issued") => {
                Decision::AlreadyIssued(parse_uuid(reply.get(1).map_or("", String::as_str))?)
            }
            Some("sold_out") => Decision::SoldOut,
            Some("not_open") => Decision::NotOpen,
            Some("closed") => Decision::Closed,
            Some("missing") => Decision::Missing,
            other => {
                return Err(Error::Unexpected(format!("gate script answered {other:?}")));
            }
        })
    }

    async fn release(
        &self,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
    ) -> Result<bool> {
        let released: i64 = self
            .run_on_holder(&self.release, campaign, coupon, user, request_id, None)
            .await?;
        Ok(released == 1)
    }

    async fn ensure(
        &self,
        campaign: &str,
        coupon: CouponId,
        cfg: GateCoupon,
        holders: &[(UserId, Uuid)],
    ) -> Result<Ensured> {
        let mut conn = self.conn.clone();
        let key = coupon_key(campaign, coupon);
        let exists: bool = conn.exists(&key).await?;
        if !exists && !holders.is_empty() {
            // Holders first: while the coupon hash is absent the gate refuses everyone.
            let hk = holders_key(campaign, coupon);
            for chunk in holders.chunks(1000) {
                let items: Vec<(String, String)> = chunk
                    .iter()
                    .map(|(u, r)| (u.to_string(), r.to_string()))
                    .collect();
                let () = conn.hset_multiple(&hk, &items).await?;
            }
        }
        let stock = cfg.quantity - holders.len() as i64;
        let reply: Vec<String> = self
            .ensure
            .key(&key)
            .arg(cfg.quantity)
            .arg(cfg.starts_ms)
            .arg(cfg.ends_ms)
            .arg(stock)
            .invoke_async(&mut conn)
            .await?;
        let num = |i: usize| {
            reply
                .get(i)
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(0)
        };
        Ok(match reply.first().map(String::as_str) {
            Some("created") => Ensured::Created { stock: num(1) },
            Some("shrink") => Ensured::Shrink { live: num(1) },
            Some("ok") if num(1) > 0 => Ensured::Grown { by: num(1) },
            Some("ok") => Ensured::Unchanged,
            other => {
                return Err(Error::Unexpected(format!(
                    "ensure script answered {other:?}"
                )));
            }
        })
    }

    async fn snapshot(&self, campaign: &str, coupon: CouponId) -> Result<Option<GateSnapshot>> {
        let mut conn = self.conn.clone();
        let (fields, holders): ((Option<i64>, Option<i64>, Option<i64>), i64) = redis::pipe()
            .cmd("HMGET")
            .arg(coupon_key(campaign, coupon))
            .arg(&["quantity", "stock", "refused_sold_out"])
            .hlen(holders_key(campaign, coupon))
            .query_async(&mut conn)
            .await?;
        Ok(match fields {
            (Some(quantity), Some(remaining), refused) => Some(GateSnapshot {
                quantity,
                remaining,
                refused_sold_out: refused.unwrap_or(0),
                holders,
            }),
            _ => None,
        })
    }

    async fn holder(&self, campaign: &str, coupon: CouponId, user: UserId) -> Result<Option<Uuid>> {
        let mut conn = self.conn.clone();
        let id: Option<String> = conn.hget(holders_key(campaign, coupon), user).await?;
        id.as_deref().map(parse_uuid).transpose()
    }

    async fn set_catalog(&self, campaign: &str, coupons: &[(CouponId, i64)]) -> Result<()> {
        let mut conn = self.conn.clone();
        let () = conn.hset_multiple(catalog_key(campaign), coupons).await?;
        Ok(())
    }

    async fn catalog(&self, campaign: &str) -> Result<Option<Vec<(CouponId, i64)>>> {
        let mut conn = self.conn.clone();
        let mut all: Vec<(CouponId, i64)> = conn.hgetall(catalog_key(campaign)).await?;
        if all.is_empty() {
            return Ok(None);
        }
        all.sort_unstable();
        Ok(Some(all))
    }

    async fn clock_ms(&self) -> Result<i64> {
        let mut conn = self.conn.clone();
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await?;
        Ok(secs * 1000 + micros / 1000)
    }

    async fn mark_lost(&self, campaign: &str) -> Result<i64> {
        let mut conn = self.conn.clone();
        let now = self.clock_ms().await?;
        let (_, at): (bool, i64) = redis::pipe()
            .set_nx(lost_key(campaign), now)
            .get(lost_key(campaign))
            .query_async(&mut conn)
            .await?;
        Ok(at)
    }

    async fn clear_lost(&self, campaign: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.del(lost_key(campaign)).await?;
        Ok(())
    }

    async fn unsettled(
        &self,
        campaign: &str,
        coupon: CouponId,
        cutoff_ms: i64,
        limit: usize,
    ) -> Result<Unsettled> {
        let mut conn = self.conn.clone();
        let key = unsettled_key(campaign, coupon);
        let (count, oldest, ripe): (u64, Vec<(String, f64)>, Vec<(String, f64)>) = redis::pipe()
            .zcard(&key)
            .zrange_withscores(&key, 0, 0)
            .zrangebyscore_limit_withscores(&key, "-inf", cutoff_ms, 0, limit as isize)
            .query_async(&mut conn)
            .await?;
        let ripe = ripe
            .into_iter()
            .map(|(member, at)| {
                let (user, id) = member
                    .split_once(':')
                    .and_then(|(u, id)| Some((u.parse::<UserId>().ok()?, parse_uuid(id).ok()?)))
                    .ok_or_else(|| {
                        Error::Unexpected(format!("bad unsettled reservation {member:?}"))
                    })?;
                Ok(Reservation {
                    request_id: id,
                    coupon,
                    user,
                    at_ms: at as i64,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Unsettled {
            count,
            oldest_ms: oldest.first().map(|(_, at)| *at as i64),
            ripe,
        })
    }

    async fn settle_issued(
        &self,
        campaign: &str,
        coupon: CouponId,
        r: &[Reservation],
    ) -> Result<()> {
        let mut conn = self.conn.clone();
        for chunk in r.chunks(1000) {
            let members: Vec<String> = chunk
                .iter()
                .map(|r| unsettled_member(r.user, r.request_id))
                .collect();
            let _: i64 = conn.zrem(unsettled_key(campaign, coupon), members).await?;
        }
        Ok(())
    }

    async fn settle_released(
        &self,
        campaign: &str,
        r: &Reservation,
        cutoff_ms: i64,
    ) -> Result<Released> {
        let outcome: i64 = self
            .run_on_holder(
                &self.release,
                campaign,
                r.coupon,
                r.user,
                r.request_id,
                Some(cutoff_ms),
            )
            .await?;
        Ok(match outcome {
            1 => Released::Released,
            -1 => Released::Refreshed,
            _ => Released::Gone,
        })
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }
}

/// The gate held in process, for the embedded mode: the same decisions as the Redis scripts,
/// under one lock (the scripts are atomic the same way).
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
                        *at = now_ms;
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
    async fn reserve(
        &self,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
    ) -> Result<Decision> {
        self.reserve_at(campaign, coupon, user, request_id, now_ms())
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

    async fn snapshot(&self, campaign: &str, coupon: CouponId) -> Result<Option<GateSnapshot>> {
        self.with(|s| {
            s.coupons
                .get(&(campaign.to_string(), coupon))
                .map(|c| GateSnapshot {
                    quantity: c.quantity,
                    remaining: c.stock,
                    refused_sold_out: c.refused_sold_out,
                    holders: c.holders.len() as i64,
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
    ) -> Result<()> {
        self.with(|s| {
            if let Some(c) = s.coupons.get_mut(&(campaign.to_string(), coupon)) {
                for r in r {
                    c.unsettled.remove(&(r.user, r.request_id));
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
}
