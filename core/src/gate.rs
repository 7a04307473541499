//! The stock gate: decides, atomically, whether a request may take a coupon.
//!
//! The contract is one trait per job — [`Reserving`] (the hot path), [`GateView`] (reads),
//! [`Provisioning`], [`Settling`], [`StoredMarks`] — and [`StockGate`], all of them. Each user
//! takes the job it does. [`RedisGate`] runs it as Lua scripts on Redis or a Redis Cluster (keys
//! hash-tagged per coupon shard, `coupon:{campaign:id}`, so every script touches one slot);
//! [`MemoryGate`] holds it in process for the embedded mode.

pub mod holder;
mod memory_gate;
mod redis_gate;
mod replies;
pub mod shards;

use async_trait::async_trait;
use uuid::Uuid;

use crate::campaign::{CouponId, UserId};
use crate::error::{Error, Result};

use self::holder::Holder;
pub use self::memory_gate::MemoryGate;
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

/// The hot path: decide one request, and undo it when its publish fails (coupon-api).
#[async_trait]
pub trait Reserving: GateView + Send + Sync {
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
    async fn ping(&self) -> Result<()>;
}

/// What the gate holds, read without changing it: the API's answers about coupons and requests,
/// verify, reports; the clock every reservation time is on.
#[async_trait]
pub trait GateView: Send + Sync {
    async fn snapshot(&self, campaign: &str, coupon: CouponId) -> Result<Option<GateSnapshot>>;
    async fn holder(&self, campaign: &str, coupon: CouponId, user: UserId) -> Result<Option<Uuid>>;
    async fn catalog(&self, campaign: &str) -> Result<Option<Vec<(CouponId, i64)>>>;
    /// The gate's clock (reservation times are on it), in Unix milliseconds.
    async fn clock_ms(&self) -> Result<i64>;
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

/// Creating, growing, rebuilding and removing coupons' gates (provision, the operator).
#[async_trait]
pub trait Provisioning: GateView + Send + Sync {
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
    /// The campaign's coupon ids with quantities, as provisioned.
    async fn set_catalog(&self, campaign: &str, coupons: &[(CouponId, i64)]) -> Result<()>;
    /// Records (once) when the campaign's gate was first seen lost; returns that time.
    async fn mark_lost(&self, campaign: &str) -> Result<i64>;
    /// Forgets the mark once the gate is rebuilt.
    async fn clear_lost(&self, campaign: &str) -> Result<()>;
    /// Removes every key of the campaign (its coupons' gates, the catalog, the lost mark); the
    /// operator's `Delete` deletion policy. Returns how many keys existed.
    async fn forget_campaign(&self, campaign: &str, coupons: &[CouponId]) -> Result<usize>;
}

/// Ending reservations: kept when the ledger has their event, given back when not (settlement).
#[async_trait]
pub trait Settling: GateView + Send + Sync {
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
}

/// The consumer's notes of what the ledger committed, read by the status resource.
#[async_trait]
pub trait StoredMarks: Send + Sync {
    /// Notes that the ledger holds these requests (called after the consumer's commit), so a
    /// status query says `issued` before settlement gets to them; `at_ms` is the commit's time.
    async fn mark_stored(&self, campaign: &str, marks: &[StoredMark], at_ms: i64) -> Result<()>;
}

/// The whole gate, every job at once: what a binary connects to and hands out by job.
pub trait StockGate: Reserving + GateView + Provisioning + Settling + StoredMarks {}

impl<T: Reserving + GateView + Provisioning + Settling + StoredMarks> StockGate for T {}

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
    Uuid::parse_str(s).map_err(|_| Error::GateProtocol(format!("a request id {s:?}")))
}
