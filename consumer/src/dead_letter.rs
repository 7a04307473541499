//! The dead-letter topic: poison events go there with the reason, and the consumer goes on.

use std::time::Duration;

use coupon_core::broker::{PublishTimeouts, idempotent_producer};
use coupon_core::connections::KafkaConnection;
use coupon_core::event::PoisonReason;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters {
    pub fn new(kafka: &KafkaConnection, topic: &str) -> coupon_core::Result<Self> {
        let timeouts = PublishTimeouts {
            message: Duration::from_secs(10),
            request: Duration::from_secs(8),
        };
        let producer = idempotent_producer(kafka, timeouts).create()?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes the original bytes with the reason and origin as headers; resolves on ack.
    pub async fn send(
        &self,
        m: &OwnedMessage,
        reason: &PoisonReason,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let partition = m.partition().to_string();
        let offset = m.offset().to_string();
        let detail = reason.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "reason",
                value: Some(reason.label()),
            })
            .insert(Header {
                key: "detail",
                value: Some(detail.as_str()),
            })
            .insert(Header {
                key: "source-topic",
                value: Some(m.topic()),
            })
            .insert(Header {
                key: "source-partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "source-offset",
                value: Some(offset.as_str()),
            });
        let mut record = FutureRecord::to(&self.topic)
            .payload(m.payload().unwrap_or_default())
            .headers(headers);
        if let Some(key) = m.key() {
            record = record.key(key);
        }
        self.producer
            .send(record, Timeout::After(Duration::from_secs(10)))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}
