//! The promises checked after healing: the books, the clients' own log, every request's status,
//! and where a lost 202 went.

use anyhow::Context as _;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use coupon_core::ledger::Ledger;
use coupon_core::verify::VerifyReport;
use uuid::Uuid;

use crate::unique;

use super::*;

/// The promises, checked from the clients' side and the books' side.
pub(super) fn problems(report: &VerifyReport, clients: &ClientLog, balanced: bool) -> Vec<String> {
    let mut out = Vec::new();
    if !balanced {
        out.push("the books did not balance in time".into());
    }
    for c in &report.checks {
        if c.status == coupon_core::verify::Status::Fail {
            out.push(format!("{} {}: {}", c.id, c.name, c.detail));
        }
    }
    for line in &report.coupons {
        if line.spec_quantity - line.issued != line.db_remaining {
            out.push(format!(
                "coupon {}: ledger remaining {} != quantity {} - issued {}",
                line.coupon_id, line.db_remaining, line.spec_quantity, line.issued
            ));
        }
        if line.redis_remaining != Some(line.db_remaining) {
            out.push(format!(
                "coupon {}: gate remaining {:?} != ledger remaining {}",
                line.coupon_id, line.redis_remaining, line.db_remaining
            ));
        }
        if clients.sold_out.contains(&line.coupon_id) && line.db_remaining > 0 {
            out.push(format!(
                "coupon {}: answered sold_out, yet {} left in the ledger",
                line.coupon_id, line.db_remaining
            ));
        }
    }
    if let Some(first) = clients.unexpected.first() {
        out.push(format!(
            "{} unexpected answers, e.g. {first}",
            clients.unexpected.len()
        ));
    }
    if clients.accepted.is_empty() {
        out.push("no request was accepted: the load never reached the system".into());
    }
    out
}

/// Once healed, each request's status resource agrees with the ledger: every 202 reads
/// `issued`; a lost answer reads `issued` exactly when the ledger holds it, else `released`
/// (or unknown: it never reserved). Nothing is left `pending`.
pub(super) async fn status_problems(
    http: &reqwest::Client,
    addr: &str,
    clients: &ClientLog,
    ledger: &Ledger,
) -> anyhow::Result<(String, Vec<String>)> {
    use futures::StreamExt;
    let ids: Vec<Uuid> = clients.coupon_of.keys().copied().collect();
    let stored = ledger.stored_among(&ids).await.context("ledger")?;
    let said: Vec<(Uuid, String)> = futures::stream::iter(clients.coupon_of.iter())
        .map(|(id, coupon)| async move {
            let url = format!("http://{addr}/api/coupons/{coupon}/requests/{id}");
            let status = match http.get(url).send().await {
                Ok(r) => {
                    let bytes = r.bytes().await.unwrap_or_default();
                    let json: serde_json::Value =
                        serde_json::from_slice(&bytes).unwrap_or_default();
                    json["status"]
                        .as_str()
                        .or(json["code"].as_str())
                        .unwrap_or("no answer")
                        .to_string()
                }
                Err(e) => format!("no answer ({e})"),
            };
            (*id, status)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut wrong = Vec::new();
    for (id, status) in &said {
        *counts.entry(status.as_str()).or_default() += 1;
        let right = match (clients.accepted.contains(id), stored.contains(id)) {
            (true, _) | (false, true) => status == "issued",
            (false, false) => status == "released" || status == "unknown_request",
        };
        if !right && wrong.len() < 10 {
            let what = if clients.accepted.contains(id) {
                "a 202"
            } else {
                "a lost answer"
            };
            let held = if stored.contains(id) {
                "holds"
            } else {
                "lacks"
            };
            wrong.push(format!(
                "request {id} ({what}; the ledger {held} it) reads {status}"
            ));
        }
    }
    let counts = counts
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok((counts, wrong))
}

/// Reads `topic` from the start to its end and says where each of `ids` appears.
pub(super) async fn find_events(brokers: &str, topic: &str, ids: &BTreeSet<Uuid>) -> String {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let brokers = brokers.to_string();
    let topic = topic.to_string();
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    let scan = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", unique("chaos-scan"))
            .set("enable.auto.commit", "false")
            .create()?;
        let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5))?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for p in md.topics().iter().flat_map(|t| t.partitions()) {
            let (_, high) = consumer.fetch_watermarks(&topic, p.id(), Duration::from_secs(5))?;
            ends.insert(p.id(), high);
            tpl.add_partition_offset(&topic, p.id(), rdkafka::Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let mut found: Vec<String> = Vec::new();
        let mut read = 0u64;
        // Partitions still to read to their end (an empty one is done already).
        ends.retain(|_, end| *end > 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !ends.is_empty() && std::time::Instant::now() < deadline {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            read += 1;
            let text = String::from_utf8_lossy(m.payload().unwrap_or_default());
            for id in &ids {
                if text.contains(id.as_str()) {
                    found.push(format!("{id} at {}/{}", m.partition(), m.offset()));
                }
            }
            if ends
                .get(&m.partition())
                .is_some_and(|end| m.offset() + 1 >= *end)
            {
                ends.remove(&m.partition());
            }
        }
        let whole = if ends.is_empty() {
            format!("all {read} records read")
        } else {
            format!("only {read} records read before the scan's deadline")
        };
        Ok(if found.is_empty() {
            format!("none of them ({whole})")
        } else {
            format!("{} ({whole})", found.join(", "))
        })
    });
    scan.await
        .map_err(anyhow::Error::from)
        .and_then(|r| r)
        .unwrap_or_else(|e| format!("scan failed: {e:#}"))
}
