//! Settlement: every reservation the gate made ends either issued (its event reached the ledger)
//! or released (stock and the user's slot given back), even when the process that made it died,
//! its client hung up, or the broker's answer was lost.
//!
//! A reservation is settled only when it is older than the API's delivery deadline (so its
//! publish, if any, has finished one way or the other) and the consumer group has committed past
//! the end offsets read after that deadline (so its event, if any, is in the ledger). Then the
//! ledger decides: a row keeps it, no row releases it. The operator runs this on a timer;
//! `couponctl reconcile` runs it once.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::broker::{LagProbe, drained_past, end_offsets};
use crate::campaign::CouponId;
use crate::error::Result;
use crate::gate::{Released, Reservation, Settling};
use crate::ledger::Ledger;

#[derive(Debug, Clone)]
pub struct SettleOptions {
    /// Only reservations at least this old are settled. Must exceed the API's delivery deadline
    /// (`--publish-timeout-ms`) with a margin for a stalled process between reserve and send.
    pub min_age: Duration,
    /// How long to wait for the consumers to commit past the end offsets.
    pub drain_timeout: Duration,
    /// Most reservations of one coupon settled in one round (the rest wait for the next).
    pub per_coupon: usize,
}

impl Default for SettleOptions {
    fn default() -> Self {
        Self {
            min_age: crate::provision::DELIVERY_GRACE,
            drain_timeout: Duration::from_secs(60),
            per_coupon: 10_000,
        }
    }
}

/// What one settlement round found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleReport {
    /// Unsettled reservations in the gate when the round started.
    pub unsettled: u64,
    /// Age of the oldest of them, in milliseconds.
    pub oldest_age_ms: Option<i64>,
    /// Old enough to settle.
    pub ripe: usize,
    /// Their event is in the ledger: issued, kept.
    pub kept: usize,
    /// No event in the ledger: stock and the user's slot given back.
    pub released: usize,
    /// Replayed (same Idempotency-Key) since the cutoff; left for a later round.
    pub refreshed: usize,
    /// True when the consumers did not commit past the barrier in time; nothing was settled.
    pub not_drained: bool,
    /// True when the gate has no catalog (Redis lost it); the gate must be rebuilt first.
    pub gate_lost: bool,
    /// Released per coupon.
    pub released_by_coupon: BTreeMap<CouponId, usize>,
}

impl std::fmt::Display for SettleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.gate_lost {
            return write!(
                f,
                "the gate has no catalog (Redis lost it?): provision to rebuild it first"
            );
        }
        write!(
            f,
            "{} unsettled, {} old enough: {} kept (issued), {} released{}",
            self.unsettled,
            self.ripe,
            self.kept,
            self.released,
            if self.refreshed > 0 {
                format!(", {} replayed since (next round)", self.refreshed)
            } else {
                String::new()
            }
        )?;
        if self.not_drained {
            write!(
                f,
                "; consumers did not drain past the barrier, nothing settled"
            )?;
        }
        if let Some(age) = self.oldest_age_ms {
            write!(f, "; oldest {:.1} s", age as f64 / 1000.0)?;
        }
        Ok(())
    }
}

/// Where a campaign's reservations and books live.
pub struct SettleScope<'a> {
    pub campaign: &'a str,
    pub topic: &'a str,
    pub gate: &'a dyn Settling,
    pub ledger: &'a Ledger,
    /// Reads the campaign's consumer group's committed offsets.
    pub lag: &'a LagProbe,
}

/// One settlement round over every coupon of the campaign.
pub async fn settle(books: &SettleScope<'_>, opts: &SettleOptions) -> Result<SettleReport> {
    let mut report = SettleReport::default();
    let Some(catalog) = books.gate.catalog(books.campaign).await? else {
        report.gate_lost = true;
        return Ok(report);
    };
    let now = books.gate.clock_ms().await?;
    let cutoff = now - opts.min_age.as_millis() as i64;
    let mut ripe: Vec<Reservation> = Vec::new();
    for (coupon, _) in &catalog {
        let u = books
            .gate
            .unsettled(books.campaign, *coupon, cutoff, opts.per_coupon)
            .await?;
        report.unsettled += u.count;
        if let Some(oldest) = u.oldest_ms {
            let age = now - oldest;
            report.oldest_age_ms = Some(report.oldest_age_ms.map_or(age, |a| a.max(age)));
        }
        ripe.extend(u.ripe);
    }
    report.ripe = ripe.len();
    if ripe.is_empty() {
        return Ok(report);
    }
    // Read after the cutoff's deadline: every event of a ripe reservation is below these.
    if !drained_past_barrier(books, opts.drain_timeout).await? {
        report.not_drained = true;
        return Ok(report);
    }
    let ids: Vec<_> = ripe.iter().map(|r| r.request_id).collect();
    let stored = books.ledger.stored_among(&ids).await?;
    let (issued, orphans): (Vec<_>, Vec<_>) = ripe
        .into_iter()
        .partition(|r| stored.contains(&r.request_id));
    let mut by_coupon: BTreeMap<CouponId, Vec<Reservation>> = BTreeMap::new();
    for r in issued {
        by_coupon.entry(r.coupon).or_default().push(r);
    }
    for (coupon, kept) in &by_coupon {
        books
            .gate
            .settle_issued(books.campaign, *coupon, kept, cutoff)
            .await?;
        report.kept += kept.len();
    }
    for r in orphans {
        match books
            .gate
            .settle_released(books.campaign, &r, cutoff)
            .await?
        {
            Released::Released => {
                tracing::info!(request_id = %r.request_id, coupon = r.coupon, user = r.user,
                    age_ms = now - r.at_ms, "released a reservation that has no event");
                report.released += 1;
                *report.released_by_coupon.entry(r.coupon).or_default() += 1;
            }
            Released::Refreshed => report.refreshed += 1,
            Released::Gone => {}
        }
    }
    Ok(report)
}

/// Reads the end offsets now, then waits until the group has committed past them.
async fn drained_past_barrier(books: &SettleScope<'_>, within: Duration) -> Result<bool> {
    let ends = end_offsets(&books.lag.lag(books.topic).await?);
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if drained_past(&books.lag.lag(books.topic).await?, &ends) {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
