//! Provisioning: topic, ledger rows, then the gate (last, because it opens issuance).
//! Idempotent; live stock is never reset and a quantity increase adds only the difference.

use crate::broker::{TopicAdmin, TopicChange, group_lag};
use crate::campaign::{Campaign, CouponId, consumer_group, dead_letter_topic};
use crate::error::{Error, Result};
use crate::gate::{Ensured, GateCoupon, StockGate};
use crate::ledger::{Ledger, RowChange};

/// Where provisioning writes.
pub struct Backends<'a> {
    pub gate: &'a dyn StockGate,
    pub ledger: &'a Ledger,
    pub topics: &'a dyn TopicAdmin,
    pub brokers: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionReport {
    pub topic: String,
    pub partitions: i32,
    pub topic_created: bool,
    pub partitions_added: i32,
    pub coupons_created: usize,
    pub coupons_grown: Vec<(CouponId, i64)>,
    /// Coupons whose gate was rebuilt from the ledger (Redis had lost it).
    pub gates_rebuilt: Vec<CouponId>,
    pub total_quantity: i64,
}

impl std::fmt::Display for ProvisionReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "topic {} ({} partitions{}), {} coupons created, {} grown, {} gates rebuilt, {} coupons in all",
            self.topic,
            self.partitions,
            if self.topic_created { ", created" } else { "" },
            self.coupons_created,
            self.coupons_grown.len(),
            self.gates_rebuilt.len(),
            self.total_quantity
        )
    }
}

pub async fn provision(campaign: &Campaign, to: &Backends<'_>) -> Result<ProvisionReport> {
    let topic = campaign.topic();
    let mut report = ProvisionReport {
        topic: topic.clone(),
        partitions: campaign.spec.topic.partitions,
        total_quantity: campaign.total_quantity(),
        ..ProvisionReport::default()
    };
    match to
        .topics
        .ensure_topic(&topic, campaign.spec.topic.partitions)
        .await?
    {
        TopicChange::Created { .. } => report.topic_created = true,
        TopicChange::Grown { from, to } => report.partitions_added = to - from,
        TopicChange::Unchanged { .. } => {}
    }
    // Poison events are rare; one partition keeps their order readable.
    match to.topics.ensure_topic(&dead_letter_topic(&topic), 1).await {
        Ok(_) | Err(Error::PartitionDecrease { .. }) => {}
        Err(e) => return Err(e),
    }
    for (id, change) in to.ledger.provision(campaign).await? {
        match change {
            RowChange::Created => report.coupons_created += 1,
            RowChange::Grown { by } => report.coupons_grown.push((id, by)),
            RowChange::Unchanged => {}
        }
    }
    let (starts_ms, ends_ms) = campaign.window().millis();
    let books = to.ledger.books(&campaign.name).await?;
    let mut drained: Option<i64> = None;
    for book in books {
        let cfg = GateCoupon {
            quantity: book.total_quantity,
            starts_ms,
            ends_ms,
        };
        let exists = to
            .gate
            .snapshot(&campaign.name, book.coupon_id)
            .await?
            .is_some();
        let holders = if !exists && book.issued > 0 {
            // Redis lost this coupon: rebuild from the ledger, but only once every accepted
            // event is in it, or the gate would hand out stock that is already taken.
            let lag = match drained {
                Some(lag) => lag,
                None => {
                    let lags =
                        group_lag(to.brokers, &consumer_group(&campaign.name), &topic).await?;
                    *drained.insert(lags.iter().map(|l| l.lag).sum())
                }
            };
            if lag > 0 {
                return Err(Error::GateRebuildNeedsDrain {
                    coupon: book.coupon_id,
                    lag,
                });
            }
            report.gates_rebuilt.push(book.coupon_id);
            to.ledger.holders(&campaign.name, book.coupon_id).await?
        } else {
            Vec::new()
        };
        match to
            .gate
            .ensure(&campaign.name, book.coupon_id, cfg, &holders)
            .await?
        {
            Ensured::Shrink { live } => {
                return Err(Error::QuantityDecrease {
                    coupon: book.coupon_id,
                    live,
                    wanted: book.total_quantity,
                });
            }
            Ensured::Created { .. } | Ensured::Grown { .. } | Ensured::Unchanged => {}
        }
    }
    let catalog: Vec<(CouponId, i64)> = campaign
        .coupons()
        .iter()
        .map(|c| (c.id, c.quantity))
        .collect();
    to.gate.set_catalog(&campaign.name, &catalog).await?;
    Ok(report)
}
