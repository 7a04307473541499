//! Settles reservations whose publish result was unknown: once the consumers have drained
//! everything that could contain the event, a row in the ledger means "issued, keep"; no row
//! means "never written, release the stock and the user's slot".

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::broker::{drained_past, end_offsets, group_lag};
use crate::campaign::consumer_group;
use crate::error::Result;
use crate::gate::StockGate;
use crate::ledger::Ledger;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileReport {
    pub pending: usize,
    pub kept: usize,
    pub released: usize,
    /// Entries too young to settle (a request could still be in flight to the broker).
    pub too_young: usize,
    /// True when the consumers did not drain in time; nothing was settled then.
    pub not_drained: bool,
}

pub struct ReconcileOptions {
    /// Only entries older than this are settled (longer than the producer's request timeout).
    pub min_age: Duration,
    /// How long to wait for the consumers to drain past the current end offsets.
    pub drain_timeout: Duration,
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        Self {
            min_age: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(60),
        }
    }
}

pub async fn reconcile(
    campaign: &str,
    topic: &str,
    brokers: &str,
    gate: &dyn StockGate,
    ledger: &Ledger,
    opts: &ReconcileOptions,
) -> Result<ReconcileReport> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let all = gate.pending(campaign).await?;
    let mut report = ReconcileReport {
        pending: all.len(),
        ..ReconcileReport::default()
    };
    let (ripe, young): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|p| now_ms - p.at_ms >= opts.min_age.as_millis() as i64);
    report.too_young = young.len();
    if ripe.is_empty() {
        return Ok(report);
    }
    // Every event published before now is below these offsets; wait until they are in the ledger.
    let group = consumer_group(campaign);
    let ends = end_offsets(&group_lag(brokers, &group, topic).await?);
    let deadline = tokio::time::Instant::now() + opts.drain_timeout;
    loop {
        if drained_past(&group_lag(brokers, &group, topic).await?, &ends) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            report.not_drained = true;
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ids: Vec<_> = ripe.iter().map(|p| p.request_id).collect();
    let stored = ledger.stored_among(&ids).await?;
    for p in ripe {
        if stored.contains(&p.request_id) {
            report.kept += 1;
        } else {
            gate.release(campaign, p.coupon, p.user, p.request_id)
                .await?;
            report.released += 1;
        }
        gate.remove_pending(campaign, p.request_id).await?;
    }
    Ok(report)
}
