//! What the operator does on its timer, done here: settle reservations, rebuild a lost gate;
//! and the wait for balanced books.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use coupon_core::broker::{KafkaAdmin, LagProbe};
use coupon_core::campaign::{Campaign, consumer_group};
use coupon_core::gate::{GateView, RedisGate, Settling};
use coupon_core::ledger::Ledger;
use coupon_core::provision::{Stores, provision};
use coupon_core::settlement::{SettleOptions, settle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;

pub(super) async fn connect_gate(url: &str) -> anyhow::Result<RedisGate> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match RedisGate::connect(url).await {
            Ok(g) => return Ok(g),
            Err(e) if Instant::now() >= deadline => {
                return Err(anyhow::anyhow!("redis {url}: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub(super) struct Healer {
    pub(super) campaign: Campaign,
    pub(super) redis_url: String,
    pub(super) database_url: String,
    pub(super) brokers: String,
    pub(super) settle_after: Duration,
}

/// Every 500 ms: rebuild a lost gate, else settle (the operator's timer, compressed).
pub(super) async fn heal_loop(
    h: Healer,
    clock: Arc<Clock>,
    totals: Arc<Mutex<(usize, usize)>>,
    stop: CancellationToken,
) {
    let (Ok(gate), Ok(ledger), Ok(lag), Ok(admin)) = (
        connect_gate(&h.redis_url).await,
        Ledger::connect(&h.database_url, 2).await,
        LagProbe::new(&h.brokers, &consumer_group(&h.campaign.name)),
        KafkaAdmin::new(&h.brokers),
    ) else {
        clock.note("healer cannot connect");
        return;
    };
    let topic = h.campaign.topic();
    let mut waiting_logged = false;
    while !stop.is_cancelled() {
        match gate.catalog(&h.campaign.name).await {
            Ok(None) => {
                let rebuilt = provision(
                    &h.campaign,
                    &Stores {
                        gate: &gate,
                        ledger: &ledger,
                        topics: &admin,
                        kafka: &(&h.brokers).into(),
                        rebuild_after: h.settle_after,
                    },
                )
                .await;
                match rebuilt {
                    Ok(r) => {
                        clock.note(format!(
                            "healer: gate rebuilt from the ledger ({} coupons)",
                            r.gates_rebuilt.len()
                        ));
                        waiting_logged = false;
                    }
                    Err(e) if !waiting_logged => {
                        clock.note(format!("healer: gate lost; {e}"));
                        waiting_logged = true;
                    }
                    Err(_) => {}
                }
            }
            Ok(Some(_)) => {
                let settled = settle(
                    &coupon_core::settlement::SettleScope {
                        campaign: &h.campaign.name,
                        topic: &topic,
                        gate: &gate,
                        ledger: &ledger,
                        lag: &lag,
                    },
                    &SettleOptions {
                        min_age: h.settle_after,
                        drain_timeout: Duration::from_secs(2),
                        ..SettleOptions::default()
                    },
                )
                .await;
                if let Ok(r) = settled {
                    if let Ok(mut t) = totals.lock() {
                        t.0 += r.kept;
                        t.1 += r.released;
                    }
                    if r.released > 0 {
                        let coupons: Vec<String> = r
                            .released_by_coupon
                            .iter()
                            .map(|(c, n)| format!("{c}x{n}"))
                            .collect();
                        clock.note(format!(
                            "healer: released {} reservations with no event (coupon x count: {})",
                            r.released,
                            coupons.join(" ")
                        ));
                    }
                }
            }
            Err(_) => {}
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Whether no reservation made at or before `before_ms` (gate clock) is still unsettled.
pub(super) async fn doubts_settled(gate: &RedisGate, campaign: &str, before_ms: i64) -> bool {
    for coupon in 1..=PROBE_COUPON {
        match gate.unsettled(campaign, coupon, 0, 0).await {
            Ok(u) if u.oldest_ms.is_none_or(|t| t > before_ms) => {}
            _ => return false,
        }
    }
    true
}

/// Waits (at most 120 s) until the topic is drained, nothing is unsettled and every coupon's
/// gate agrees with the ledger.
pub(super) async fn wait_balanced(
    campaign: &Campaign,
    gate: &RedisGate,
    ledger: &Ledger,
    brokers: &str,
    clock: &Clock,
) -> Option<()> {
    let lag = LagProbe::new(brokers, &consumer_group(&campaign.name)).ok()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let topic = campaign.topic();
    loop {
        let balanced = async {
            let drained = lag.lag(&topic).await.ok()?.iter().all(|l| l.lag == 0);
            let books = ledger.books(&campaign.name).await.ok()?;
            let mut unsettled = 0;
            let mut agree = true;
            for b in &books {
                let snap = gate.snapshot(&campaign.name, b.coupon_id).await.ok()?;
                agree &= snap.map(|s| s.remaining) == Some(b.remaining);
                unsettled += gate
                    .unsettled(&campaign.name, b.coupon_id, 0, 0)
                    .await
                    .ok()?
                    .count;
            }
            Some(drained && agree && unsettled == 0)
        }
        .await
        .unwrap_or(false);
        if balanced {
            clock.note("books balanced: drained, every reservation settled, gate = ledger");
            return Some(());
        }
        if Instant::now() >= deadline {
            clock.note("books still not balanced after 120 s");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
