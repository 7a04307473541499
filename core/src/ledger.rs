//! The ledger: the database of record (PostgreSQL, MySQL/MariaDB, or SQLite when embedded).
//!
//! Every statement goes through `QueryBuilder`, which writes each backend's placeholders, so one
//! body serves all three; [`on_pool!`] expands it once per backend.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlDatabaseError, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

use crate::campaign::{Campaign, CouponId, UserId};
use crate::error::{Error, Result};
use crate::event::{IssuanceEvent, PoisonReason};

#[derive(Clone, Debug)]
pub enum Ledger {
    Postgres(PgPool),
    MySql(MySqlPool),
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$pool` bound to the concrete pool of whichever backend `$ledger` is.
macro_rules! on_pool {
    ($ledger:expr, $pool:ident => $body:expr) => {
        match $ledger {
            Ledger::Postgres($pool) => $body,
            Ledger::MySql($pool) => $body,
            Ledger::Sqlite($pool) => $body,
        }
    };
}

/// Appends `VALUES (…), (…)` of `user_coupons` rows, one per event.
macro_rules! push_rows {
    ($q:expr, $campaign:expr, $events:expr) => {
        $q.push_values($events, |mut b, e| {
            b.push_bind($campaign)
                .push_bind(i64::from(e.coupon_id))
                .push_bind(e.user_id as i64)
                .push_bind(e.request_id.to_string())
                .push_bind(e.accepted_at);
        })
    };
}

/// One coupon's books in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CouponBook {
    pub coupon_id: CouponId,
    pub total_quantity: i64,
    pub remaining: i64,
    pub issued: i64,
}

/// What provisioning did to one coupon's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowChange {
    Created,
    Grown { by: i64 },
    Unchanged,
}

/// What one batch did to the ledger.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Rows written (and stock taken) by this batch.
    pub inserted: u64,
    /// Events already in the ledger (a redelivery); nothing changed for them.
    pub redelivered: u64,
    /// Events refused, by index into the batch, with the reason (they go to the dead-letter topic).
    pub poison: Vec<(usize, PoisonReason)>,
}

impl Ledger {
    /// Connects to `url` (postgres://, mysql:// or sqlite:) and applies the embedded migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let timeout = Duration::from_secs(5);
        let ledger = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::Postgres(
                PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(timeout)
                    .connect(url)
                    .await?,
            )
        } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            let url = url.replacen("mariadb://", "mysql://", 1);
            Self::MySql(
                MySqlPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(timeout)
                    .connect(&url)
                    .await?,
            )
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            Self::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(timeout)
                    .connect_with(options)
                    .await?,
            )
        } else {
            return Err(Error::DatabaseUrl(crate::connections::redact(url)));
        };
        ledger.migrate().await?;
        Ok(ledger)
    }

    /// Applies the embedded migrations. Several processes starting at once on a fresh MySQL
    /// database can race on sqlx's bookkeeping table; the loser simply tries again.
    pub async fn migrate(&self) -> Result<()> {
        let mut attempt = 0;
        loop {
            let result = match self {
                Self::Postgres(p) => sqlx::migrate!("./migrations/postgres").run(p).await,
                Self::MySql(p) => sqlx::migrate!("./migrations/mysql").run(p).await,
                Self::Sqlite(p) => sqlx::migrate!("./migrations/sqlite").run(p).await,
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "migration raced; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::MySql(_) => "mysql",
            Self::Sqlite(_) => "sqlite",
        }
    }

    /// `INSERT` that skips rows conflicting with a unique key, in this backend's words.
    fn insert_ignore(&self) -> (&'static str, &'static str) {
        match self {
            Self::MySql(_) => ("INSERT IGNORE INTO", ""),
            Self::Postgres(_) | Self::Sqlite(_) => ("INSERT INTO", " ON CONFLICT DO NOTHING"),
        }
    }

    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }

    /// Creates missing coupon rows and grows quantities; never resets live stock.
    pub async fn provision(&self, campaign: &Campaign) -> Result<Vec<(CouponId, RowChange)>> {
        let live: BTreeMap<CouponId, i64> = self
            .coupon_quantities(&campaign.name)
            .await?
            .into_iter()
            .collect();
        let coupons = campaign.coupons();
        for c in &coupons {
            if let Some(&q) = live.get(&c.id)
                && c.quantity < q
            {
                return Err(Error::QuantityDecrease {
                    coupon: c.id,
                    live: q,
                    wanted: c.quantity,
                });
            }
        }
        let mut changes = Vec::with_capacity(coupons.len());
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let fresh: Vec<_> = coupons.iter().filter(|c| !live.contains_key(&c.id)).collect();
            for chunk in fresh.chunks(500) {
                let mut q = QueryBuilder::new(
                    "INSERT INTO coupons (campaign, coupon_id, name, discount, total_quantity) ",
                );
                q.push_values(chunk, |mut b, c| {
                    b.push_bind(&campaign.name)
                        .push_bind(i64::from(c.id))
                        .push_bind(&c.name)
                        .push_bind(c.discount)
                        .push_bind(c.quantity);
                });
                q.build().execute(&mut *tx).await?;
                let mut q = QueryBuilder::new(
                    "INSERT INTO coupon_stocks (campaign, coupon_id, remaining_quantity) ",
                );
                q.push_values(chunk, |mut b, c| {
                    b.push_bind(&campaign.name)
                        .push_bind(i64::from(c.id))
                        .push_bind(c.quantity);
                });
                q.build().execute(&mut *tx).await?;
            }
            for c in &coupons {
                let Some(&old) = live.get(&c.id) else {
                    changes.push((c.id, RowChange::Created));
                    continue;
                };
                // Guarded on the old quantity so two provisioners never add the difference twice.
                let mut q = QueryBuilder::new("UPDATE coupons SET name = ");
                q.push_bind(&c.name)
                    .push(", discount = ")
                    .push_bind(c.discount)
                    .push(", total_quantity = ")
                    .push_bind(c.quantity)
                    .push(" WHERE campaign = ")
                    .push_bind(&campaign.name)
                    .push(" AND coupon_id = ")
                    .push_bind(i64::from(c.id))
                    .push(" AND total_quantity = ")
                    .push_bind(old);
                let updated = q.build().execute(&mut *tx).await?.rows_affected();
                let by = c.quantity - old;
                if by > 0 && updated == 1 {
                    let mut q = QueryBuilder::new(
                        "UPDATE coupon_stocks SET remaining_quantity = remaining_quantity + ",
                    );
                    q.push_bind(by)
                        .push(" WHERE campaign = ")
                        .push_bind(&campaign.name)
                        .push(" AND coupon_id = ")
                        .push_bind(i64::from(c.id));
                    q.build().execute(&mut *tx).await?;
                    changes.push((c.id, RowChange::Grown { by }));
                } else {
                    changes.push((c.id, RowChange::Unchanged));
                }
            }
            tx.commit().await?;
        });
        Ok(changes)
    }

    /// `(coupon id, total quantity)` of every provisioned coupon of the campaign.
    pub async fn coupon_quantities(&self, campaign: &str) -> Result<Vec<(CouponId, i64)>> {
        let rows: Vec<(i64, i64)> = on_pool!(self, pool => {
            let mut q = QueryBuilder::new(
                "SELECT coupon_id, total_quantity FROM coupons WHERE campaign = ",
            );
            q.push_bind(campaign).push(" ORDER BY coupon_id");
            q.build_query_as().fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|(id, q)| (id as CouponId, q))
            .collect())
    }

    /// Writes one batch in ONE transaction: rows inserted ignoring duplicates, stock decremented by
    /// exactly what was inserted. Any error leaves the ledger as it was (the caller retries).
    pub async fn record_batch(
        &self,
        campaign: &str,
        events: &[IssuanceEvent],
    ) -> Result<BatchOutcome> {
        if events.is_empty() {
            return Ok(BatchOutcome::default());
        }
        if let Some(done) = self.record_fast(campaign, events).await? {
            return Ok(done);
        }
        self.record_one_by_one(campaign, events).await
    }

    /// The common case: every event is new. One multi-row insert and one update; `None` when
    /// the batch holds a redelivery, a duplicate or an event the constraints refuse.
    async fn record_fast(
        &self,
        campaign: &str,
        events: &[IssuanceEvent],
    ) -> Result<Option<BatchOutcome>> {
        let (verb, on_conflict) = self.insert_ignore();
        let mut taken: BTreeMap<i64, i64> = BTreeMap::new();
        for e in events {
            *taken.entry(i64::from(e.coupon_id)).or_default() += 1;
        }
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut q = QueryBuilder::new(verb);
            q.push(" user_coupons (campaign, coupon_id, user_id, request_id, issued_at) ");
            push_rows!(q, campaign, events);
            q.push(on_conflict);
            match q.build().execute(&mut *tx).await {
                Ok(r) if r.rows_affected() == events.len() as u64 => {}
                Ok(_) => return Ok(None),
                Err(e) if is_constraint_violation(&e) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            let mut q = QueryBuilder::new(
                "UPDATE coupon_stocks SET remaining_quantity = remaining_quantity - CASE coupon_id",
            );
            for (coupon, n) in &taken {
                q.push(" WHEN ").push_bind(*coupon).push(" THEN ").push_bind(*n);
            }
            q.push(" ELSE 0 END WHERE campaign = ").push_bind(campaign).push(" AND coupon_id IN (");
            let mut ids = q.separated(", ");
            for coupon in taken.keys() {
                ids.push_bind(*coupon);
            }
            q.push(")");
            match q.build().execute(&mut *tx).await {
                Ok(r) if r.rows_affected() == taken.len() as u64 => {}
                Ok(_) => return Ok(None),
                // The CHECK refused an over-issue; sort it out event by event.
                Err(e) if is_constraint_violation(&e) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            tx.commit().await?;
        });
        Ok(Some(BatchOutcome {
            inserted: events.len() as u64,
            ..BatchOutcome::default()
        }))
    }

    /// The careful path, still one transaction: stock is taken first (never below zero), the
    /// row inserted second, and the stock given back if the row already existed.
    async fn record_one_by_one(
        &self,
        campaign: &str,
        events: &[IssuanceEvent],
    ) -> Result<BatchOutcome> {
        let (verb, on_conflict) = self.insert_ignore();
        let mut out = BatchOutcome::default();
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for (i, e) in events.iter().enumerate() {
                let coupon = i64::from(e.coupon_id);
                let mut q = QueryBuilder::new(
                    "UPDATE coupon_stocks SET remaining_quantity = remaining_quantity - 1 WHERE campaign = ",
                );
                q.push_bind(campaign)
                    .push(" AND coupon_id = ")
                    .push_bind(coupon)
                    .push(" AND remaining_quantity > 0");
                let took = q.build().execute(&mut *tx).await?.rows_affected() == 1;
                let inserted = if took {
                    let mut q = QueryBuilder::new(verb);
                    q.push(" user_coupons (campaign, coupon_id, user_id, request_id, issued_at) VALUES (")
                        .push_bind(campaign)
                        .push(", ")
                        .push_bind(coupon)
                        .push(", ")
                        .push_bind(e.user_id as i64)
                        .push(", ")
                        .push_bind(e.request_id.to_string())
                        .push(", ")
                        .push_bind(e.accepted_at)
                        .push(")")
                        .push(on_conflict);
                    let n = q.build().execute(&mut *tx).await?.rows_affected();
                    if n == 0 {
                        let mut q = QueryBuilder::new(
                            "UPDATE coupon_stocks SET remaining_quantity = remaining_quantity + 1 WHERE campaign = ",
                        );
                        q.push_bind(campaign).push(" AND coupon_id = ").push_bind(coupon);
                        q.build().execute(&mut *tx).await?;
                    }
                    n == 1
                } else {
                    false
                };
                if inserted {
                    out.inserted += 1;
                    continue;
                }
                // Not inserted: a redelivery, a second request of the same user, or no stock.
                let mut q = QueryBuilder::new("SELECT request_id FROM user_coupons WHERE campaign = ");
                q.push_bind(campaign)
                    .push(" AND coupon_id = ")
                    .push_bind(coupon)
                    .push(" AND user_id = ")
                    .push_bind(e.user_id as i64);
                let holder: Option<(String,)> = q.build_query_as().fetch_optional(&mut *tx).await?;
                let mut q = QueryBuilder::new("SELECT COUNT(*) FROM user_coupons WHERE request_id = ");
                q.push_bind(e.request_id.to_string());
                let (same_request,): (i64,) = q.build_query_as().fetch_one(&mut *tx).await?;
                if same_request > 0 {
                    out.redelivered += 1;
                } else if let Some((holder,)) = holder {
                    let holder = request_id_of(&holder, || {
                        format!("of user {} for coupon {coupon}", e.user_id)
                    })?;
                    out.poison.push((i, PoisonReason::DuplicateUser(holder)));
                } else {
                    let mut q = QueryBuilder::new("SELECT COUNT(*) FROM coupon_stocks WHERE campaign = ");
                    q.push_bind(campaign).push(" AND coupon_id = ").push_bind(coupon);
                    let (known,): (i64,) = q.build_query_as().fetch_one(&mut *tx).await?;
                    let reason = if known == 0 { PoisonReason::UnknownCoupon } else { PoisonReason::OverIssue };
                    out.poison.push((i, reason));
                }
            }
            tx.commit().await?;
        });
        Ok(out)
    }

    /// The raw baseline `couponctl bench` compares the consumer with: the same rows written as
    /// one multi-row insert in one transaction, with no stock update and no duplicate handling.
    pub async fn insert_rows_only(&self, campaign: &str, events: &[IssuanceEvent]) -> Result<u64> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut q = QueryBuilder::new(
                "INSERT INTO user_coupons (campaign, coupon_id, user_id, request_id, issued_at) ",
            );
            push_rows!(q, campaign, events);
            let n = q.build().execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            Ok(n)
        })
    }

    /// Per-coupon quantity, remaining stock and issued row count.
    pub async fn books(&self, campaign: &str) -> Result<Vec<CouponBook>> {
        let rows: Vec<(i64, i64, i64, i64)> = on_pool!(self, pool => {
            let mut q = QueryBuilder::new(
                "SELECT c.coupon_id, c.total_quantity, s.remaining_quantity, \
                 (SELECT COUNT(*) FROM user_coupons u WHERE u.campaign = c.campaign AND u.coupon_id = c.coupon_id) \
                 FROM coupons c JOIN coupon_stocks s ON s.campaign = c.campaign AND s.coupon_id = c.coupon_id \
                 WHERE c.campaign = ",
            );
            q.push_bind(campaign).push(" ORDER BY c.coupon_id");
            q.build_query_as().fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|(id, total, remaining, issued)| CouponBook {
                coupon_id: id as CouponId,
                total_quantity: total,
                remaining,
                issued,
            })
            .collect())
    }

    /// Number of (coupon, user) pairs holding more than one row.
    pub async fn duplicate_pairs(&self, campaign: &str) -> Result<i64> {
        on_pool!(self, pool => {
            let mut q = QueryBuilder::new(
                "SELECT COUNT(*) FROM (SELECT coupon_id, user_id FROM user_coupons WHERE campaign = ",
            );
            q.push_bind(campaign)
                .push(" GROUP BY coupon_id, user_id HAVING COUNT(*) > 1) d");
            let (n,): (i64,) = q.build_query_as().fetch_one(pool).await?;
            Ok(n)
        })
    }

    /// Number of distinct users holding at least one coupon of the campaign.
    pub async fn distinct_users(&self, campaign: &str) -> Result<i64> {
        on_pool!(self, pool => {
            let mut q = QueryBuilder::new("SELECT COUNT(DISTINCT user_id) FROM user_coupons WHERE campaign = ");
            q.push_bind(campaign);
            let (n,): (i64,) = q.build_query_as().fetch_one(pool).await?;
            Ok(n)
        })
    }

    /// Every request id stored for the campaign.
    pub async fn request_ids(&self, campaign: &str) -> Result<HashSet<Uuid>> {
        let rows: Vec<(String,)> = on_pool!(self, pool => {
            let mut q = QueryBuilder::new("SELECT request_id FROM user_coupons WHERE campaign = ");
            q.push_bind(campaign);
            q.build_query_as().fetch_all(pool).await?
        });
        rows.into_iter()
            .map(|(s,)| request_id_of(&s, || format!("of campaign {campaign}")))
            .collect()
    }

    /// Which of `ids` are stored.
    pub async fn stored_among(&self, ids: &[Uuid]) -> Result<HashSet<Uuid>> {
        let mut found = HashSet::new();
        for chunk in ids.chunks(500) {
            let rows = on_pool!(self, pool => {
                let mut q = QueryBuilder::new("SELECT request_id FROM user_coupons WHERE request_id IN (");
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(id.to_string());
                }
                q.push(")");
                q.build().fetch_all(pool).await?.into_iter()
                    .map(|r| r.try_get::<String, _>(0))
                    .collect::<Result<Vec<String>, sqlx::Error>>()?
            });
            for s in rows {
                found.insert(request_id_of(&s, || "looked up by request id".into())?);
            }
        }
        Ok(found)
    }

    /// `(user, request id)` of every row of one coupon; rebuilds a lost gate.
    pub async fn holders(&self, campaign: &str, coupon: CouponId) -> Result<Vec<(UserId, Uuid)>> {
        let rows: Vec<(i64, String)> = on_pool!(self, pool => {
            let mut q = QueryBuilder::new("SELECT user_id, request_id FROM user_coupons WHERE campaign = ");
            q.push_bind(campaign).push(" AND coupon_id = ").push_bind(i64::from(coupon));
            q.build_query_as().fetch_all(pool).await?
        });
        rows.into_iter()
            .map(|(u, r)| {
                let id = request_id_of(&r, || format!("of user {u} for coupon {coupon}"))?;
                Ok((u as UserId, id))
            })
            .collect()
    }
}

/// A stored request id; one rule for every reader: a value that is not a UUID is an error
/// naming its row.
fn request_id_of(value: &str, row: impl FnOnce() -> String) -> Result<Uuid> {
    Uuid::parse_str(value).map_err(|_| Error::BadRequestId {
        row: row(),
        value: value.to_string(),
    })
}

/// True for unique, foreign-key and CHECK violations on every backend.
pub fn is_constraint_violation(e: &sqlx::Error) -> bool {
    let Some(db) = e.as_database_error() else {
        return false;
    };
    if !matches!(db.kind(), sqlx::error::ErrorKind::Other) {
        return true;
    }
    if let Some(my) = db.try_downcast_ref::<MySqlDatabaseError>() {
        // 3819: MySQL CHECK; 4025: MariaDB CHECK; 1451/1452: foreign keys; 1062: duplicate.
        return matches!(my.number(), 3819 | 4025 | 1451 | 1452 | 1062);
    }
    db.code().is_some_and(|c| c.starts_with("23"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reader of request ids refuses a row whose id is not a UUID, naming it: none
    /// skips it (a skipped row is a coupon nobody counts) or reads it as the nil id.
    #[tokio::test]
    async fn a_bad_request_id_is_an_error_that_names_its_row() {
        let dir = std::env::temp_dir().join(format!("ledger-bad-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let url = format!("sqlite:{}", dir.join("ledger.db").display());
        let ledger = Ledger::connect(&url, 1).await.expect("ledger");
        let Ledger::Sqlite(pool) = &ledger else {
            unreachable!("a sqlite url")
        };
        for sql in [
            "INSERT INTO coupons (campaign, coupon_id, name, discount, total_quantity) VALUES ('c', 1, 'one', 1, 5)",
            "INSERT INTO coupon_stocks (campaign, coupon_id, remaining_quantity) VALUES ('c', 1, 4)",
            "INSERT INTO user_coupons (campaign, coupon_id, user_id, request_id, issued_at) VALUES ('c', 1, 7, 'not-a-uuid', '2026-01-01T00:00:00Z')",
        ] {
            sqlx::query(sql).execute(pool).await.expect(sql);
        }
        fn bad<T>(r: Result<T>) -> String {
            match r {
                Err(Error::BadRequestId { row, value }) => format!("{row} {value}"),
                other => panic!("not refused: {:?}", other.map(|_| ())),
            }
        }
        assert_eq!(
            bad(ledger.holders("c", 1).await),
            "of user 7 for coupon 1 not-a-uuid"
        );
        assert_eq!(
            bad(ledger.request_ids("c").await),
            "of campaign c not-a-uuid"
        );
        let event = IssuanceEvent::new(Uuid::now_v7(), "c", 1, 7, chrono::Utc::now());
        assert_eq!(
            bad(ledger.record_batch("c", &[event]).await),
            "of user 7 for coupon 1 not-a-uuid"
        );
        ledger.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
