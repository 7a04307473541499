//! Provisioning: topic, ledger rows, then the gate (last, because it opens issuance).
//! Idempotent; live stock is never reset and a quantity increase adds only the difference.

use crate::broker::{TopicAdmin, TopicChange, group_lag};
use crate::campaign::{Campaign, CouponId, consumer_group, dead_letter_topic};
use crate::error::{Error, Result};
use crate::gate::{Ensured, GateCoupon, Provisioning};
use crate::ledger::{Ledger, RowChange};

/// The default of [`Stores::rebuild_after`] and of settlement's minimum age: three times the
/// API's default delivery deadline (5 s).
pub const DELIVERY_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

/// Where provisioning writes.
pub struct Stores<'a> {
    pub gate: &'a dyn Provisioning,
    pub ledger: &'a Ledger,
    pub topics: &'a dyn TopicAdmin,
    pub kafka: &'a crate::connections::KafkaConnection,
    /// A lost gate is rebuilt only this long after it was first seen lost: longer than the
    /// API's delivery deadline, so every publish in flight at the loss is in the topic (and,
    /// once drained, in the ledger the rebuild reads).
    pub rebuild_after: std::time::Duration,
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

pub async fn provision(campaign: &Campaign, to: &Stores<'_>) -> Result<ProvisionReport> {
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
    let mut created = Vec::new();
    for (id, change) in to.ledger.provision(campaign).await? {
        match change {
            RowChange::Created => {
                report.coupons_created += 1;
                created.push(id);
            }
            RowChange::Grown { by } => report.coupons_grown.push((id, by)),
            RowChange::Unchanged => {}
        }
    }
    let (starts_ms, ends_ms) = campaign.window().millis();
    let books = to.ledger.books(&campaign.name).await?;
    // Coupons whose rows existed before this call but whose gate is gone: Redis lost them.
    let mut lost = Vec::new();
    for book in &books {
        if !created.contains(&book.coupon_id)
            && to
                .gate
                .snapshot(&campaign.name, book.coupon_id)
                .await?
                .is_none()
        {
            lost.push(book.coupon_id);
        }
    }
    if let Some(&first) = lost.first() {
        rebuild_is_safe(campaign, to, first).await?;
    }
    let shards: std::collections::BTreeMap<CouponId, u16> = campaign
        .coupons()
        .iter()
        .map(|c| (c.id, c.shards))
        .collect();
    for book in books {
        let cfg = GateCoupon {
            quantity: book.total_quantity,
            starts_ms,
            ends_ms,
            shards: shards.get(&book.coupon_id).copied().unwrap_or(1),
        };
        let holders = if lost.contains(&book.coupon_id) {
            report.gates_rebuilt.push(book.coupon_id);
            // What a partial loss left (some shards of a sharded coupon) is rebuilt too.
            to.gate.discard(&campaign.name, book.coupon_id).await?;
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
            Ensured::Reshard { live } => {
                return Err(Error::ShardsChanged {
                    coupon: book.coupon_id,
                    live,
                    wanted: cfg.shards,
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
    if !lost.is_empty() {
        to.gate.clear_lost(&campaign.name).await?;
    }
    Ok(report)
}

/// A lost gate is rebuilt from the ledger, so the ledger must hold every event accepted before
/// the loss: wait out the delivery deadline of publishes in flight at the loss, then for the
/// consumers to drain the topic.
async fn rebuild_is_safe(campaign: &Campaign, to: &Stores<'_>, coupon: CouponId) -> Result<()> {
    let since = to.gate.mark_lost(&campaign.name).await?;
    let waited = to.gate.clock_ms().await? - since;
    let grace = to.rebuild_after.as_millis() as i64;
    if waited < grace {
        return Err(Error::GateRebuildWaiting {
            coupon,
            wait_ms: grace - waited,
        });
    }
    let lags = group_lag(to.kafka, &consumer_group(&campaign.name), &campaign.topic()).await?;
    let lag: i64 = lags.iter().map(|l| l.lag).sum();
    if lag > 0 {
        return Err(Error::GateRebuildNeedsDrain { coupon, lag });
    }
    Ok(())
}
