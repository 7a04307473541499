//! The stock gate: decides, atomically, whether a request may take a coupon.
//!
//! [`StockGate`] is the contract; [`RedisGate`] runs it as Lua scripts on Redis. Keys are
//! hash-tagged per coupon (`coupon:{campaign:id}`) so every script touches one slot and works
//! on Redis Cluster.

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use uuid::Uuid;

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

/// A reservation whose publish result was unknown, waiting for reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub request_id: Uuid,
    pub coupon: CouponId,
    pub user: UserId,
    pub at_ms: i64,
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
    async fn add_pending(&self, campaign: &str, pending: &Pending) -> Result<()>;
    async fn pending(&self, campaign: &str) -> Result<Vec<Pending>>;
    async fn remove_pending(&self, campaign: &str, request_id: Uuid) -> Result<()>;
    async fn ping(&self) -> Result<()>;
}

pub fn coupon_key(campaign: &str, coupon: CouponId) -> String {
    format!("coupon:{{{campaign}:{coupon}}}")
}

pub fn holders_key(campaign: &str, coupon: CouponId) -> String {
    format!("coupon:{{{campaign}:{coupon}}}:holders")
}

fn catalog_key(campaign: &str) -> String {
    format!("campaign:{{{campaign}}}:catalog")
}

fn pending_key(campaign: &str) -> String {
    format!("campaign:{{{campaign}}}:pending")
}

/// The gate on Redis (standalone; the keys are cluster-ready).
#[derive(Clone)]
pub struct RedisGate {
    conn: ConnectionManager,
    reserve: Script,
    release: Script,
    ensure: Script,
}

impl RedisGate {
    pub async fn connect(url: &str) -> Result<Self> {
        let client = redis::Client::open(url)?;
        // A hung Redis must not hang requests: every command answers within 2 s or fails.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
            .set_response_timeout(Some(std::time::Duration::from_secs(2)))
            .set_number_of_retries(2);
        let conn = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| {
            Error::Unexpected(format!(
                "redis at {} did not answer within 5 s",
                redact(url)
            ))
        })??;
        let gate = Self {
            conn,
            reserve: Script::new(include_str!("gate.lua")),
            release: Script::new(include_str!("release.lua")),
            ensure: Script::new(include_str!("ensure.lua")),
        };
        gate.ping().await?;
        Ok(gate)
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Runs a script over one coupon's hash and holders with (user, request id).
    async fn run_on_holder<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        campaign: &str,
        coupon: CouponId,
        user: UserId,
        request_id: Uuid,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        Ok(script
            .key(coupon_key(campaign, coupon))
            .key(holders_key(campaign, coupon))
            .arg(user)
            .arg(request_id.to_string())
            .invoke_async(&mut conn)
            .await?)
    }
}

/// A URL with its password replaced, for logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
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
            .run_on_holder(&self.reserve, campaign, coupon, user, request_id)
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
            .run_on_holder(&self.release, campaign, coupon, user, request_id)
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

    async fn add_pending(&self, campaign: &str, p: &Pending) -> Result<()> {
        let mut conn = self.conn.clone();
        let value = format!("{}:{}:{}", p.coupon, p.user, p.at_ms);
        let () = conn
            .hset(pending_key(campaign), p.request_id.to_string(), value)
            .await?;
        Ok(())
    }

    async fn pending(&self, campaign: &str) -> Result<Vec<Pending>> {
        let mut conn = self.conn.clone();
        let all: Vec<(String, String)> = conn.hgetall(pending_key(campaign)).await?;
        all.into_iter()
            .map(|(id, value)| {
                let mut parts = value.splitn(3, ':').map(str::parse::<i64>);
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(Ok(coupon)), Some(Ok(user)), Some(Ok(at_ms))) => Ok(Pending {
                        request_id: parse_uuid(&id)?,
                        coupon: coupon as CouponId,
                        user: user as UserId,
                        at_ms,
                    }),
                    _ => Err(Error::Unexpected(format!("bad pending entry {id}={value}"))),
                }
            })
            .collect()
    }

    async fn remove_pending(&self, campaign: &str, request_id: Uuid) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .hdel(pending_key(campaign), request_id.to_string())
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }
}
