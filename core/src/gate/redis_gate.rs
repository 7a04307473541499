//! The gate on Redis or a Redis Cluster, as Lua scripts that each touch one shard's keys.
//!
//! An unsharded coupon (`shards: 1`) is decided by one script, as always. A sharded coupon
//! decides at the user's home shard; a dry home claims the user's slot, takes a unit from a
//! sibling shard and confirms the claim ([`Attempt`]). Each step is one script on one slot, so
//! a crash between steps leaves a claim or a sibling unit that settlement repairs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use redis::{AsyncCommands, Script};
use uuid::Uuid;

use super::holder::Holder;
use super::replies::{EnsureReply, HomeReply};
use super::shards::{MAX_SHARDS, ShardKeys, home_shard, rebuilt_stock, share, siblings};
use super::{
    Decision, Ensured, GateCoupon, GateSnapshot, GateView, Provisioning, Released, RequestStatus,
    Reservation, Reserving, Settling, StoredMark, StoredMarks, Unsettled, catalog_key, holds,
    lost_key, parse_uuid, stage_of, unsettled_member,
};
use crate::campaign::{CouponId, UserId};
use crate::connections::{RedisConnection, RedisLink};
use crate::error::{Error, Result};

/// How long a home shard that saw every shard dry answers sold_out without looking again.
/// Stock that comes back (a give-back, a grown quantity) wakes every shard at once; the hint
/// only bounds the cost of a missed wake-up.
pub const DRY_HINT_MS: i64 = 2_000;

struct Scripts {
    reserve: Script,
    release: Script,
    ensure: Script,
    shard: Script,
}

/// The gate on one Redis or a Redis Cluster.
#[derive(Clone)]
pub struct RedisGate {
    conn: RedisLink,
    scripts: Arc<Scripts>,
    /// Shard count per campaign and coupon, learnt from the gate (fixed once created).
    shard_counts: Arc<RwLock<HashMap<String, HashMap<CouponId, u16>>>>,
}

/// One request's way through the gate, one script per [`RedisGate::step`], so a test can
/// interleave attempts and abandon one between any two steps, as a crash would.
#[derive(Debug, Clone)]
pub struct Attempt {
    campaign: String,
    coupon: CouponId,
    user: UserId,
    request_id: Uuid,
    shards: u16,
    /// Tells this attempt's claim from a retry's under the same request id.
    nonce: String,
    stage: Stage,
    /// When a fresh reservation was made, on the gate's clock (see [`Attempt::reserved_at`]).
    reserved_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// Window, duplicate and local stock at the home shard.
    Home {
        tries: u8,
    },
    /// Claimed at home; taking from the `tried`-th sibling. `busy`: a sibling already holds a
    /// unit of this request (another attempt of it, or one settlement has yet to give back).
    Take {
        home: u16,
        epoch: String,
        tried: u16,
        busy: bool,
    },
    /// Took a unit from `from`; confirming the claim at home.
    Confirm {
        home: u16,
        from: u16,
    },
    /// No sibling gave a unit: drop the claim; sold out, unless a sibling was `busy` with this
    /// very request (the stock it holds may be this request's: answer "retry").
    Unclaim {
        home: u16,
        epoch: String,
        busy: bool,
    },
    Done(Decision),
}

impl Attempt {
    /// The decision, once the last step has run.
    pub fn decision(&self) -> Option<&Decision> {
        match &self.stage {
            Stage::Done(d) => Some(d),
            _ => None,
        }
    }

    /// The time a `Reserved` decision stamped on its reservation: a replay of the same
    /// request stamps a later one, so [`StockGate::release_refused`] can tell it happened.
    pub fn reserved_at(&self) -> Option<i64> {
        self.reserved_at
    }

    fn member(&self) -> String {
        unsettled_member(self.user, self.request_id)
    }

    fn keys(&self, shard: u16) -> ShardKeys {
        ShardKeys::new(&self.campaign, self.coupon, shard)
    }
}

/// A script that reads or writes holder values, with their encoding (`holder.lua`) ahead of it.
fn with_holder_encoding(body: &str) -> Script {
    Script::new(&format!("{}\n{body}", include_str!("holder.lua")))
}

impl RedisGate {
    pub async fn connect(redis: impl Into<RedisConnection>) -> Result<Self> {
        let conn = redis.into().connect().await?;
        let gate = Self {
            conn,
            scripts: Arc::new(Scripts {
                reserve: with_holder_encoding(include_str!("reserve.lua")),
                release: with_holder_encoding(include_str!("release.lua")),
                ensure: Script::new(include_str!("ensure.lua")),
                shard: with_holder_encoding(include_str!("shard.lua")),
            }),
            shard_counts: Arc::default(),
        };
        gate.ping().await?;
        Ok(gate)
    }

    pub fn connection(&self) -> RedisLink {
        self.conn.clone()
    }

    fn cached_shards(&self, campaign: &str, coupon: CouponId) -> Option<u16> {
        let counts = self.shard_counts.read().ok()?;
        counts.get(campaign)?.get(&coupon).copied()
    }

    fn remember_shards(&self, campaign: &str, coupon: CouponId, shards: u16) {
        if let Ok(mut counts) = self.shard_counts.write() {
            counts
                .entry(campaign.to_string())
                .or_default()
                .insert(coupon, shards);
        }
    }

    /// Shard 0's quantity (None: absent) and the coupon's shard count as it records it.
    async fn shard_zero(&self, campaign: &str, coupon: CouponId) -> Result<(Option<i64>, u16)> {
        let mut conn = self.conn.clone();
        let (quantity, shards): (Option<i64>, Option<u16>) = redis::cmd("HMGET")
            .arg(ShardKeys::new(campaign, coupon, 0).coupon)
            .arg(&["quantity", "shards"])
            .query_async(&mut conn)
            .await?;
        Ok((quantity, shards.unwrap_or(1).clamp(1, MAX_SHARDS)))
    }

    /// The coupon's shard count: cached, else read from shard 0 (1 when absent).
    async fn shards(&self, campaign: &str, coupon: CouponId) -> Result<u16> {
        if let Some(k) = self.cached_shards(campaign, coupon) {
            return Ok(k);
        }
        let (quantity, k) = self.shard_zero(campaign, coupon).await?;
        if quantity.is_some() {
            self.remember_shards(campaign, coupon, k);
        }
        Ok(k)
    }

    /// Starts a request's attempt; no I/O (the shard count is corrected by the first step).
    pub fn begin(
        &self,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
    ) -> Attempt {
        Attempt {
            campaign: campaign.to_string(),
            coupon,
            user,
            request_id,
            shards: self.cached_shards(campaign, coupon).unwrap_or(1),
            nonce: format!("{:x}", Uuid::now_v7().as_u128() as u64),
            stage: Stage::Home { tries: 0 },
            reserved_at: None,
        }
    }

    /// Runs the attempt's next script; the decision once there is one.
    pub async fn step(&self, a: &mut Attempt) -> Result<Option<Decision>> {
        let mut conn = self.conn.clone();
        let s = &self.scripts.shard;
        let next = match a.stage.clone() {
            Stage::Done(d) => return Ok(Some(d)),
            Stage::Home { tries } => {
                let home = home_shard(a.user, a.shards);
                let keys = a.keys(home);
                let reply: HomeReply = self
                    .scripts
                    .reserve
                    .key(&keys.coupon)
                    .key(&keys.holders)
                    .key(&keys.unsettled)
                    .key(&keys.requests)
                    .arg(a.user)
                    .arg(a.request_id.to_string())
                    .arg(a.shards)
                    .arg(&a.nonce)
                    .invoke_async(&mut conn)
                    .await?;
                self.home_answer(a, home, tries, reply)?
            }
            Stage::Take {
                home,
                epoch,
                tried,
                busy,
            } => {
                let from = siblings(home, a.shards, a.request_id.as_u128())
                    .nth(usize::from(tried))
                    .ok_or_else(|| Error::GateProtocol("no sibling shard left to try".into()))?;
                let keys = a.keys(from);
                let taken: i64 = s
                    .key(&keys.coupon)
                    .key(&keys.unsettled)
                    .arg("take")
                    .arg(a.member())
                    .invoke_async(&mut conn)
                    .await?;
                let busy = busy || taken == -1;
                if taken == 1 {
                    Stage::Confirm { home, from }
                } else if tried + 2 >= a.shards {
                    Stage::Unclaim { home, epoch, busy }
                } else {
                    Stage::Take {
                        home,
                        epoch,
                        tried: tried + 1,
                        busy,
                    }
                }
            }
            Stage::Confirm { home, from } => {
                let keys = a.keys(home);
                let stamped: i64 = s
                    .key(&keys.holders)
                    .key(&keys.unsettled)
                    .arg("confirm")
                    .arg(a.user)
                    .arg(a.request_id.to_string())
                    .arg(from)
                    .arg(&a.nonce)
                    .invoke_async(&mut conn)
                    .await?;
                if stamped > 0 {
                    a.reserved_at = Some(stamped);
                    Stage::Done(Decision::Reserved)
                } else {
                    // Settlement undid this stalled attempt's claim. Its unit stays for
                    // settlement too: a retry under the same request id may hold a unit at
                    // `from` by now, and only settlement can tell the two apart.
                    Stage::Done(Decision::InProgress)
                }
            }
            Stage::Unclaim { home, epoch, busy } => {
                if busy {
                    self.unclaim(a, home, "").await?;
                    Stage::Done(Decision::InProgress)
                } else {
                    self.unclaim(a, home, &epoch).await?;
                    Stage::Done(Decision::SoldOut)
                }
            }
        };
        a.stage = next;
        Ok(a.decision().cloned())
    }

    fn home_answer(
        &self,
        a: &mut Attempt,
        home: u16,
        tries: u8,
        reply: HomeReply,
    ) -> Result<Stage> {
        Ok(Stage::Done(match reply {
            HomeReply::Reserved { at_ms } => {
                a.reserved_at = Some(at_ms);
                Decision::Reserved
            }
            HomeReply::Replay => Decision::Replay,
            HomeReply::AlreadyIssued(id) => Decision::AlreadyIssued(id),
            HomeReply::Pending => Decision::InProgress,
            HomeReply::SoldOut => Decision::SoldOut,
            HomeReply::NotOpen => Decision::NotOpen,
            HomeReply::Closed => Decision::Closed,
            HomeReply::Missing => Decision::Missing,
            HomeReply::Borrow { epoch } => {
                return Ok(Stage::Take {
                    home,
                    epoch,
                    tried: 0,
                    busy: false,
                });
            }
            HomeReply::Shards(k) if tries < 2 => {
                self.remember_shards(&a.campaign, a.coupon, k);
                a.shards = k.clamp(1, MAX_SHARDS);
                return Ok(Stage::Home { tries: tries + 1 });
            }
            HomeReply::Shards(k) => {
                return Err(Error::GateProtocol(format!(
                    "the coupon's shard count is still not {k} after two tries"
                )));
            }
        }))
    }

    /// Drops the attempt's claim; with an `epoch` (every sibling was dry) counts a sold-out
    /// refusal and lets the home answer the next ones without looking again.
    async fn unclaim(&self, a: &Attempt, home: u16, epoch: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let keys = a.keys(home);
        let _: i64 = self
            .scripts
            .shard
            .key(&keys.coupon)
            .key(&keys.holders)
            .key(&keys.unsettled)
            .key(&keys.requests)
            .arg("unclaim")
            .arg(a.user)
            .arg(a.request_id.to_string())
            .arg(epoch)
            .arg(DRY_HINT_MS)
            .arg(&a.nonce)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// After a failed step: a claim that never took a unit is dropped now; anything further
    /// along (a unit taken, a confirm whose answer was lost) is left whole for settlement,
    /// because a retry with the same Idempotency-Key may publish it.
    async fn abandon(&self, a: &Attempt) {
        if let Stage::Take { home, .. } | Stage::Unclaim { home, .. } = a.stage
            && let Err(e) = self.unclaim(a, home, "").await
        {
            tracing::warn!(error = %e, request_id = %a.request_id, "claim left for settlement");
        }
    }

    /// Gives a sibling's unit back (if still there and, for settlement, made before `cutoff`)
    /// and wakes every shard's sold-out hint. 1 given back, 0 already gone, -1 too recent.
    async fn give_back(
        &self,
        campaign: &str,
        coupon: CouponId,
        shards: u16,
        from: u16,
        member: &str,
        cutoff: Option<i64>,
    ) -> Result<i64> {
        let mut conn = self.conn.clone();
        let keys = ShardKeys::new(campaign, coupon, from);
        let mut call = self.scripts.shard.key(&keys.coupon);
        call.key(&keys.unsettled).arg("give_back").arg(member);
        if let Some(cutoff) = cutoff {
            call.arg(cutoff);
        }
        let given: i64 = call.invoke_async(&mut conn).await?;
        if given == 1 {
            self.wake(campaign, coupon, shards, from).await;
        }
        Ok(given)
    }

    /// Stock came back at `except`: no other shard may keep answering from a sold-out hint.
    async fn wake(&self, campaign: &str, coupon: CouponId, shards: u16, except: u16) {
        let mut conn = self.conn.clone();
        for shard in (0..shards).filter(|s| *s != except) {
            let key = ShardKeys::new(campaign, coupon, shard).coupon;
            let woken: redis::RedisResult<i64> = self
                .scripts
                .shard
                .key(key)
                .arg("wake")
                .invoke_async(&mut conn)
                .await;
            if let Err(e) = woken {
                tracing::warn!(error = %e, coupon, shard, "a sold-out hint stays until it expires");
            }
        }
    }

    /// The release script at the user's home shard, then the sibling's unit if it came from
    /// one. `cutoff`: settlement's (see [`StockGate::settle_released`]).
    async fn release_home(
        &self,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
        cutoff: Option<i64>,
    ) -> Result<Released> {
        let shards = self.shards(campaign, coupon).await?;
        let home = home_shard(user, shards);
        let keys = ShardKeys::new(campaign, coupon, home);
        let mut conn = self.conn.clone();
        let mut call = self.scripts.release.key(&keys.coupon);
        call.key(&keys.holders)
            .key(&keys.unsettled)
            .key(&keys.requests)
            .arg(user)
            .arg(request_id.to_string());
        if let Some(cutoff) = cutoff {
            call.arg(cutoff);
        }
        let reply: Vec<i64> = call.invoke_async(&mut conn).await?;
        Ok(match reply.as_slice() {
            [1] => {
                self.wake(campaign, coupon, shards, home).await;
                Released::Released
            }
            [2] => Released::Released,
            [3, from] => {
                let member = unsettled_member(user, request_id);
                self.give_back(campaign, coupon, shards, *from as u16, &member, None)
                    .await?;
                Released::Released
            }
            [-1] => Released::Refreshed,
            _ => Released::Gone,
        })
    }

    /// What the user's home says of a unit lent by another shard: the holder mark and when
    /// the home last saw the reservation.
    async fn home_of(
        &self,
        campaign: &str,
        r: &Reservation,
        shards: u16,
    ) -> Result<(Option<Holder>, Option<i64>)> {
        let keys = ShardKeys::new(campaign, r.coupon, home_shard(r.user, shards));
        let mut conn = self.conn.clone();
        let (holder, at): (Option<String>, Option<f64>) = redis::pipe()
            .hget(&keys.holders, r.user)
            .zscore(&keys.unsettled, unsettled_member(r.user, r.request_id))
            .query_async(&mut conn)
            .await?;
        let holder = holder.as_deref().map(Holder::parse).transpose()?;
        Ok((holder, at.map(|a| a as i64)))
    }

    /// Settles a unit a sibling shard lent (its entry in that shard's unsettled set):
    /// `stored` says the ledger holds the request.
    async fn settle_lent(
        &self,
        campaign: &str,
        r: &Reservation,
        shards: u16,
        stored: bool,
        cutoff: i64,
    ) -> Result<Released> {
        let (holder, home_at) = self.home_of(campaign, r, shards).await?;
        let ripe_home = home_at.is_some_and(|at| at <= cutoff);
        let member = unsettled_member(r.user, r.request_id);
        match holder {
            // The home confirmed this very unit.
            Some(Holder::Lent { request, from }) if request == r.request_id && from == r.shard => {
                if stored {
                    let mut conn = self.conn.clone();
                    let keys = ShardKeys::new(campaign, r.coupon, r.shard);
                    let _: i64 = conn.zrem(&keys.unsettled, &member).await?;
                    return Ok(Released::Gone);
                }
                if !ripe_home {
                    return Ok(Released::Refreshed);
                }
                // Releasing the home gives this unit back too.
                self.release_home(campaign, r.coupon, r.user, r.request_id, Some(cutoff))
                    .await
            }
            // A claim still open: a stalled attempt took this unit. Drop the claim first, so
            // the attempt's confirm fails, then give the unit back.
            Some(Holder::Claim { request, .. }) if request == r.request_id && ripe_home => {
                self.release_home(campaign, r.coupon, r.user, r.request_id, Some(cutoff))
                    .await?;
                self.lent_back(campaign, r, shards, &member, cutoff).await
            }
            // Anything else: an earlier attempt's unit that no home refers to.
            _ => self.lent_back(campaign, r, shards, &member, cutoff).await,
        }
    }

    async fn lent_back(
        &self,
        campaign: &str,
        r: &Reservation,
        shards: u16,
        member: &str,
        cutoff: i64,
    ) -> Result<Released> {
        Ok(
            match self
                .give_back(campaign, r.coupon, shards, r.shard, member, Some(cutoff))
                .await?
            {
                1 => Released::Released,
                -1 => Released::Refreshed,
                _ => Released::Gone,
            },
        )
    }

    async fn forget_coupon(&self, campaign: &str, coupon: CouponId) -> Result<usize> {
        let mut conn = self.conn.clone();
        let mut removed = 0usize;
        // Without shard 0 (which records the count) every possible shard is looked at.
        let k = match self.shard_zero(campaign, coupon).await? {
            (Some(_), k) => k,
            (None, _) => MAX_SHARDS,
        };
        for shard in 0..k {
            let keys = ShardKeys::new(campaign, coupon, shard);
            let n: usize = conn.del(&keys.all()).await?;
            removed += n;
        }
        if let Ok(mut counts) = self.shard_counts.write()
            && let Some(c) = counts.get_mut(campaign)
        {
            c.remove(&coupon);
        }
        Ok(removed)
    }

    async fn run_ensure(
        &self,
        key: &str,
        cfg: GateCoupon,
        quantity: i64,
        stock: i64,
    ) -> Result<EnsureReply> {
        let mut conn = self.conn.clone();
        Ok(self
            .scripts
            .ensure
            .key(key)
            .arg(quantity)
            .arg(cfg.starts_ms)
            .arg(cfg.ends_ms)
            .arg(stock)
            .arg(cfg.shards)
            .invoke_async(&mut conn)
            .await?)
    }

    /// The quantities of shards 1..k (shard 0's comes with its shard count).
    async fn other_shards_quantity(&self, campaign: &str, coupon: CouponId, k: u16) -> Result<i64> {
        let mut conn = self.conn.clone();
        let mut total = 0;
        for shard in 1..k {
            let q: Option<i64> = conn
                .hget(ShardKeys::new(campaign, coupon, shard).coupon, "quantity")
                .await?;
            total += q.unwrap_or(0);
        }
        Ok(total)
    }
}

#[async_trait]
impl Reserving for RedisGate {
    async fn reserve_stamped(
        &self,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
    ) -> Result<(Decision, Option<i64>)> {
        let mut attempt = self.begin(campaign, coupon, user, request_id);
        loop {
            match self.step(&mut attempt).await {
                Ok(Some(decision)) => return Ok((decision, attempt.reserved_at())),
                Ok(None) => {}
                Err(e) => {
                    self.abandon(&attempt).await;
                    return Err(e);
                }
            }
        }
    }

    async fn release(
        &self,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
    ) -> Result<bool> {
        Ok(self
            .release_home(campaign, coupon, user, request_id, None)
            .await?
            == Released::Released)
    }

    async fn release_refused(
        &self,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
        reserved_at: i64,
    ) -> Result<Released> {
        self.release_home(campaign, coupon, user, request_id, Some(reserved_at))
            .await
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }
}

#[async_trait]
impl GateView for RedisGate {
    async fn snapshot(&self, campaign: &str, coupon: CouponId) -> Result<Option<GateSnapshot>> {
        let mut conn = self.conn.clone();
        let k = self.shards(campaign, coupon).await?;
        let mut total = GateSnapshot {
            shards: k,
            ..GateSnapshot::default()
        };
        for shard in 0..k {
            let keys = ShardKeys::new(campaign, coupon, shard);
            let (fields, holders): ((Option<i64>, Option<i64>, Option<i64>), i64) = redis::pipe()
                .cmd("HMGET")
                .arg(&keys.coupon)
                .arg(&["quantity", "stock", "refused_sold_out"])
                .hlen(&keys.holders)
                .query_async(&mut conn)
                .await?;
            // A shard without its hash: the coupon's gate is (partly) lost.
            let (Some(quantity), Some(remaining), refused) = fields else {
                return Ok(None);
            };
            total.quantity += quantity;
            total.remaining += remaining;
            total.refused_sold_out += refused.unwrap_or(0);
            total.holders += holders;
        }
        Ok(Some(total))
    }

    async fn holder(&self, campaign: &str, coupon: CouponId, user: UserId) -> Result<Option<Uuid>> {
        let k = self.shards(campaign, coupon).await?;
        let mut conn = self.conn.clone();
        let id: Option<String> = conn
            .hget(
                ShardKeys::new(campaign, coupon, home_shard(user, k)).holders,
                user,
            )
            .await?;
        // A claim in progress holds nothing yet.
        let holder = id.as_deref().map(Holder::parse).transpose()?;
        Ok(holder.filter(Holder::holds_unit).map(|h| h.request()))
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

    async fn request_status(
        &self,
        campaign: &str,
        coupon: CouponId,
        request_id: Uuid,
        user: Option<UserId>,
    ) -> Result<Option<RequestStatus>> {
        let k = self.shards(campaign, coupon).await?;
        let id = request_id.to_string();
        let mut conn = self.conn.clone();
        let stored_at: Option<i64> = conn
            .hget(ShardKeys::new(campaign, coupon, 0).stored, &id)
            .await?;
        // The request is recorded at its user's home shard; without the user, look at each.
        let homes: Vec<u16> = match user {
            Some(u) => vec![home_shard(u, k)],
            None => (0..k).collect(),
        };
        let mut found = None;
        for home in homes {
            let record: Option<String> = conn
                .hget(ShardKeys::new(campaign, coupon, home).requests, &id)
                .await?;
            if let Some(record) = record {
                found = Some((home, parse_record(&record)?));
                break;
            }
        }
        let recorded = found.is_some();
        let (user, released_at) = match (user, found) {
            // Another user's request.
            (Some(u), Some((_, (recorded, _)))) if recorded != u => return Ok(None),
            (Some(u), record) => (u, record.and_then(|(_, (_, at))| at)),
            (None, Some((_, record))) => record,
            (None, None) => return Ok(None),
        };
        let keys = ShardKeys::new(campaign, coupon, home_shard(user, k));
        let (holder, at): (Option<String>, Option<f64>) = redis::pipe()
            .hget(&keys.holders, user)
            .zscore(&keys.unsettled, unsettled_member(user, request_id))
            .query_async(&mut conn)
            .await?;
        // The home's entry stands for the whole reservation, a unit lent by a sibling included
        // (the sibling's own entry only tracks that unit).
        // Unrecorded (an older version's reservation): only the holder vouches for the user.
        let holder = holder.as_deref().map(Holder::parse).transpose()?;
        let vouched = recorded || holds(holder.as_ref(), request_id);
        Ok(stage_of(
            request_id,
            holder.as_ref(),
            at.map(|a| a as i64),
            stored_at.filter(|_| vouched),
            released_at,
        )
        .map(|stage| RequestStatus { user, stage }))
    }
}

#[async_trait]
impl Provisioning for RedisGate {
    async fn ensure(
        &self,
        campaign: &str,
        coupon: CouponId,
        cfg: GateCoupon,
        holders: &[(UserId, Uuid)],
    ) -> Result<Ensured> {
        let cfg = GateCoupon {
            shards: cfg.shards.clamp(1, MAX_SHARDS),
            ..cfg
        };
        let k = cfg.shards;
        let mut conn = self.conn.clone();
        if let (Some(q0), live_k) = self.shard_zero(campaign, coupon).await? {
            if live_k != k {
                return Ok(Ensured::Reshard { live: live_k });
            }
            let live = q0 + self.other_shards_quantity(campaign, coupon, k).await?;
            if cfg.quantity < live {
                return Ok(Ensured::Shrink { live });
            }
            for shard in 0..k {
                let key = ShardKeys::new(campaign, coupon, shard).coupon;
                let part = share(cfg.quantity, k, shard);
                self.run_ensure(&key, cfg, part, part).await?;
            }
            let by = cfg.quantity - live;
            if by > 0 {
                self.wake(campaign, coupon, k, k).await;
                return Ok(Ensured::Grown { by });
            }
            return Ok(Ensured::Unchanged);
        }
        // Holders first: while shard 0's hash is absent the gate refuses everyone.
        let mut by_home: BTreeMap<u16, Vec<(String, String)>> = BTreeMap::new();
        for (u, r) in holders {
            by_home
                .entry(home_shard(*u, k))
                .or_default()
                .push((u.to_string(), r.to_string()));
        }
        for (home, items) in &by_home {
            let keys = ShardKeys::new(campaign, coupon, *home);
            for chunk in items.chunks(1000) {
                let () = conn.hset_multiple(&keys.holders, chunk).await?;
                let by_request: Vec<(&str, &str)> = chunk
                    .iter()
                    .map(|(u, r)| (r.as_str(), u.as_str()))
                    .collect();
                let () = conn.hset_multiple(&keys.requests, &by_request).await?;
            }
        }
        let stock = rebuilt_stock(
            cfg.quantity,
            k,
            holders.iter().map(|(u, _)| home_shard(*u, k)),
        );
        // Shard 0 last: its hash is what makes the coupon visible.
        for shard in (1..k).chain([0]) {
            let key = ShardKeys::new(campaign, coupon, shard).coupon;
            let reply = self
                .run_ensure(
                    &key,
                    cfg,
                    share(cfg.quantity, k, shard),
                    stock[usize::from(shard)],
                )
                .await?;
            if let EnsureReply::Reshard(_) = reply {
                // A leftover shard of an older layout: its keys must go before provisioning.
                return Err(Error::StaleShard { coupon, shard });
            }
        }
        self.remember_shards(campaign, coupon, k);
        Ok(Ensured::Created {
            stock: stock.iter().sum(),
        })
    }

    async fn discard(&self, campaign: &str, coupon: CouponId) -> Result<()> {
        self.forget_coupon(campaign, coupon).await.map(|_| ())
    }

    async fn set_catalog(&self, campaign: &str, coupons: &[(CouponId, i64)]) -> Result<()> {
        let mut conn = self.conn.clone();
        let () = conn.hset_multiple(catalog_key(campaign), coupons).await?;
        Ok(())
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

    /// Removes every key of the campaign (coupon shards, holders, unsettled sets, catalog);
    /// the operator's `Delete` deletion policy. Returns how many keys existed.
    async fn forget_campaign(&self, campaign: &str, coupons: &[CouponId]) -> Result<usize> {
        let mut removed = 0usize;
        for c in coupons {
            removed += self.forget_coupon(campaign, *c).await?;
        }
        let mut conn = self.conn.clone();
        let n: usize = conn
            .del(&[catalog_key(campaign), lost_key(campaign)])
            .await?;
        Ok(removed + n)
    }
}

#[async_trait]
impl Settling for RedisGate {
    async fn unsettled(
        &self,
        campaign: &str,
        coupon: CouponId,
        cutoff_ms: i64,
        limit: usize,
    ) -> Result<Unsettled> {
        let k = self.shards(campaign, coupon).await?;
        let mut conn = self.conn.clone();
        let mut out = Unsettled::default();
        for shard in 0..k {
            let key = ShardKeys::new(campaign, coupon, shard).unsettled;
            let (count, oldest, ripe): (u64, Vec<(String, f64)>, Vec<(String, f64)>) =
                redis::pipe()
                    .zcard(&key)
                    .zrange_withscores(&key, 0, 0)
                    .zrangebyscore_limit_withscores(&key, "-inf", cutoff_ms, 0, limit as isize)
                    .query_async(&mut conn)
                    .await?;
            out.count += count;
            if let Some((_, at)) = oldest.first() {
                let at = *at as i64;
                out.oldest_ms = Some(out.oldest_ms.map_or(at, |o| o.min(at)));
            }
            for (member, at) in ripe {
                let (user, id) = member
                    .split_once(':')
                    .and_then(|(u, id)| Some((u.parse::<UserId>().ok()?, parse_uuid(id).ok()?)))
                    .ok_or_else(|| {
                        Error::GateProtocol(format!("an unsettled reservation {member:?}"))
                    })?;
                out.ripe.push(Reservation {
                    request_id: id,
                    coupon,
                    user,
                    at_ms: at as i64,
                    shard,
                });
            }
        }
        out.ripe.sort_by_key(|r| r.at_ms);
        out.ripe.truncate(limit);
        Ok(out)
    }

    async fn settle_issued(
        &self,
        campaign: &str,
        coupon: CouponId,
        r: &[Reservation],
        cutoff_ms: i64,
    ) -> Result<()> {
        let k = self.shards(campaign, coupon).await?;
        let mut at_home: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        let mut at_home_ids = Vec::new();
        for r in r {
            if r.shard == home_shard(r.user, k) {
                at_home_ids.push(r.request_id.to_string());
                at_home
                    .entry(r.shard)
                    .or_default()
                    .push(unsettled_member(r.user, r.request_id));
            } else {
                self.settle_lent(campaign, r, k, true, cutoff_ms).await?;
            }
        }
        let mut conn = self.conn.clone();
        for (shard, members) in at_home {
            let key = ShardKeys::new(campaign, coupon, shard).unsettled;
            for chunk in members.chunks(1000) {
                let _: i64 = conn.zrem(&key, chunk).await?;
            }
        }
        // Settled as issued at home: the status no longer needs the consumer's marks.
        let stored = ShardKeys::new(campaign, coupon, 0).stored;
        for chunk in at_home_ids.chunks(1000) {
            let _: i64 = conn.hdel(&stored, chunk).await?;
        }
        Ok(())
    }

    async fn settle_released(
        &self,
        campaign: &str,
        r: &Reservation,
        cutoff_ms: i64,
    ) -> Result<Released> {
        let k = self.shards(campaign, r.coupon).await?;
        if r.shard == home_shard(r.user, k) {
            self.release_home(campaign, r.coupon, r.user, r.request_id, Some(cutoff_ms))
                .await
        } else {
            self.settle_lent(campaign, r, k, false, cutoff_ms).await
        }
    }
}

#[async_trait]
impl StoredMarks for RedisGate {
    async fn mark_stored(&self, campaign: &str, marks: &[StoredMark], at_ms: i64) -> Result<()> {
        let mut by_coupon: BTreeMap<CouponId, Vec<(String, i64)>> = BTreeMap::new();
        for m in marks {
            by_coupon
                .entry(m.coupon)
                .or_default()
                .push((m.request_id.to_string(), at_ms));
        }
        // One command per coupon, side by side: a cluster pipeline may not span slots.
        let writes = by_coupon.iter().map(|(coupon, items)| {
            let mut conn = self.conn.clone();
            let key = ShardKeys::new(campaign, *coupon, 0).stored;
            async move { conn.hset_multiple::<_, _, _, ()>(key, items).await }
        });
        futures::future::try_join_all(writes).await?;
        Ok(())
    }
}

/// A `requests` entry: the user, and when the request was released (`user@ms`).
fn parse_record(record: &str) -> Result<(UserId, Option<i64>)> {
    let (user, at) = match record.split_once('@') {
        Some((u, at)) => (u, at.parse().ok()),
        None => (record, None),
    };
    let user = user
        .parse()
        .map_err(|_| Error::GateProtocol(format!("a request record {record:?}")))?;
    Ok((user, at))
}
