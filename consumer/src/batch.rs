//! The batch stage: messages collected from the topic, decoded into events or set aside as poison.

use std::collections::BTreeMap;
use std::time::Duration;

use coupon_core::event::{IssuanceEvent, PoisonReason};
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;

use crate::ConsumerContext;

/// Messages of one ledger transaction.
pub struct Batch {
    pub messages: Vec<OwnedMessage>,
    /// Decoded events, with the index of their message.
    pub events: Vec<IssuanceEvent>,
    pub event_message: Vec<usize>,
    /// Messages that are not valid events, with the reason.
    pub poison: Vec<(usize, PoisonReason)>,
}

impl Batch {
    pub fn decode(messages: Vec<OwnedMessage>, campaign: &str) -> Self {
        let mut batch = Self {
            events: Vec::with_capacity(messages.len()),
            event_message: Vec::with_capacity(messages.len()),
            poison: Vec::new(),
            messages: Vec::new(),
        };
        for (i, m) in messages.iter().enumerate() {
            match IssuanceEvent::decode(m.payload().unwrap_or_default(), campaign) {
                Ok(e) => {
                    batch.events.push(e);
                    batch.event_message.push(i);
                }
                Err(reason) => batch.poison.push((i, reason)),
            }
        }
        batch.messages = messages;
        batch
    }

    /// The next offset to consume per partition: what to store once the batch is durable.
    pub fn next_offsets(&self) -> TopicPartitionList {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for m in &self.messages {
            let slot = next.entry((m.topic(), m.partition())).or_insert(0);
            *slot = (*slot).max(m.offset() + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            // Adding a fresh partition with a concrete offset cannot fail.
            let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(offset));
        }
        tpl
    }
}

/// Waits for one message, then takes whatever else arrives within `linger`, up to `max`.
pub async fn next_batch(
    consumer: &StreamConsumer<ConsumerContext>,
    max: usize,
    linger: Duration,
) -> Vec<OwnedMessage> {
    let mut out = Vec::with_capacity(max.min(4096));
    loop {
        match consumer.recv().await {
            Ok(m) => {
                out.push(m.detach());
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "consume error");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let deadline = Instant::now() + linger;
    while out.len() < max {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "consume error");
                break;
            }
            Err(_) => break,
        }
    }
    out
}
