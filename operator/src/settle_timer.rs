//! The settlement timer: every reservation of every reconciled campaign ends issued or released
//! without a human running `couponctl reconcile`, with the same code (`coupon_core::settlement`).
//!
//! Reconcile registers each campaign it sees (with its backends and phase) in the
//! [`Registry`](crate::settle_registry::Registry); the timer, started only once this replica
//! leads, settles the registered campaigns in turn. A round that releases something counts it,
//! records an Event on the campaign and logs each reservation; the next reconcile turns the
//! round's numbers into the `BooksBalanced` condition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use coupon_core::campaign::consumer_group;
use coupon_core::settlement::{SettleOptions, SettleReport, SettleScope, settle};
use kube::runtime::events::{Event, EventType, Recorder};
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::crd::Phase;
use crate::error::Error;
use crate::settle_registry::Entry;

/// Settles every registered campaign every `ctx.settle_every` until `stop`.
pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    loop {
        settle_all(&ctx).await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(ctx.settle_every) => {}
        }
    }
}

/// One round over every registered campaign; what each round did, by `namespace/name`.
pub async fn settle_all(ctx: &Context) -> BTreeMap<String, Result<SettleReport, Error>> {
    let mut out = BTreeMap::new();
    for (key, entry) in ctx.settlements.snapshot() {
        // Before the window opens nothing is reserved; every later phase may hold orphans.
        if entry.phase == Phase::Scheduled {
            continue;
        }
        let result = settle_one(ctx, &entry).await;
        match &result {
            Ok(report) => {
                ctx.settlements.record(&key, report.clone());
            }
            Err(e) => {
                tracing::warn!(campaign = %key, error = %e, label = e.label(), "settlement failed");
            }
        }
        out.insert(key, result);
    }
    out
}

async fn settle_one(ctx: &Context, entry: &Entry) -> Result<SettleReport, Error> {
    let be = ctx.connect(entry.urls.clone()).await?;
    let lag = ctx.lag_probe(&be.kafka, &consumer_group(&entry.campaign))?;
    let report = settle(
        &SettleScope {
            campaign: &entry.campaign,
            topic: &entry.topic,
            gate: be.gate.as_ref(),
            ledger: &be.ledger,
            lag: &lag,
        },
        &SettleOptions {
            min_age: ctx.settle_after,
            // A round never holds the timer long; an undrained barrier is tried again next round.
            drain_timeout: ctx.settle_every.min(Duration::from_secs(10)),
            ..SettleOptions::default()
        },
    )
    .await?;
    let m = &ctx.metrics;
    let name = entry.campaign.as_str();
    m.settled
        .with_label_values(&[name, "kept"])
        .inc_by(report.kept as u64);
    m.settled
        .with_label_values(&[name, "released"])
        .inc_by(report.released as u64);
    m.unsettled
        .with_label_values(&[name])
        .set(report.unsettled as i64);
    m.unsettled_oldest_age
        .with_label_values(&[name])
        .set(report.oldest_age_ms.unwrap_or(0) as f64 / 1000.0);
    if report.released > 0 {
        let coupons: Vec<String> = report
            .released_by_coupon
            .iter()
            .map(|(c, n)| format!("coupon {c}: {n}"))
            .collect();
        let note = format!(
            "released {} reservations that never reached the ledger (a process died or its publish \
             failed); their stock is back on sale ({})",
            report.released,
            coupons.join(", ")
        );
        let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
        let ev = Event {
            type_: EventType::Warning,
            reason: "ReservationsReleased".into(),
            note: Some(note),
            action: "Settle".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &entry.reference).await {
            tracing::warn!(error = %e, "event not recorded");
        }
    }
    Ok(report)
}
