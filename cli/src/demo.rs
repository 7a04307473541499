//! `couponctl demo`: the whole system in one process. Each backend is embedded unless given:
//! the stock gate in process (the Redis script's semantics), librdkafka's mock cluster as the
//! broker (so the real producer and consumer paths run), SQLite as the ledger. The real API and
//! consumer code serve on ephemeral ports; the seed scenario drives them over HTTP.

use anyhow::Context as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use coupon_api::AppState;
use coupon_consumer::{ConsumerConfig, Worker};
use coupon_core::broker::{KafkaAdmin, PreCreatedTopics, PublishTimeouts, Publisher, TopicAdmin};
use coupon_core::campaign::{Campaign, dead_letter_topic};
use coupon_core::config::ConnectionArgs;
use coupon_core::connections::KafkaConnection;
use coupon_core::gate::{MemoryGate, RedisGate, StockGate};
use coupon_core::ledger::Ledger;
use coupon_core::provision::{Stores, provision};
use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

use crate::load::LoadOptions;
use crate::report::{Report, SystemUnderTest, load_and_report};

pub const SEED_CAMPAIGN: &str = include_str!("../../examples/seed-campaign.yaml");

/// Which backend each role runs on, for the report's header.
pub struct Running {
    pub gate: &'static str,
    pub broker: &'static str,
    pub ledger: &'static str,
}

pub async fn run(
    b: &ConnectionArgs,
    campaign: &Campaign,
    load: impl FnOnce(String) -> LoadOptions,
    accepted: Option<&std::path::Path>,
) -> anyhow::Result<(Report, Running)> {
    let topic = campaign.topic();
    // The mock cluster lives (and serves) as long as this function runs.
    let mut _mock = None;
    let (kafka, topics, broker): (KafkaConnection, Box<dyn TopicAdmin>, _) = match &b.kafka {
        Some(_) => {
            let kafka = b.kafka()?;
            let admin = KafkaAdmin::new(&kafka)?;
            (kafka, Box::new(admin), "Kafka")
        }
        None => {
            let mock = MockCluster::new(1).context("mock cluster")?;
            mock.create_topic(&topic, campaign.spec.topic.partitions, 1)
                .and_then(|()| mock.create_topic(&dead_letter_topic(&topic), 1, 1))
                .context("mock topics")?;
            let brokers = mock.bootstrap_servers();
            _mock = Some(mock);
            (
                KafkaConnection::new(brokers.clone()),
                Box::new(PreCreatedTopics(brokers)),
                "librdkafka mock cluster",
            )
        }
    };
    let (gate, gate_kind): (Arc<dyn StockGate>, _) = match &b.redis {
        Some(_) => (
            Arc::new(RedisGate::connect(b.redis()?).await.context("redis")?),
            "Redis",
        ),
        None => (Arc::new(MemoryGate::new()), "in-process gate"),
    };
    let _dir;
    let (ledger_url, ledger_kind) = match &b.database_url {
        Some(url) => (url.clone(), "database"),
        None => {
            let dir = std::env::temp_dir().join(format!("couponctl-demo-{}", std::process::id()));
            std::fs::create_dir_all(&dir).context("temp dir")?;
            let url = format!("sqlite:{}", dir.join("ledger.db").display());
            _dir = TempDir(dir);
            (url, "SQLite")
        }
    };
    let ledger = Ledger::connect(&ledger_url, 4).await.context("ledger")?;
    provision(
        campaign,
        &Stores {
            gate: gate.as_ref(),
            ledger: &ledger,
            topics: topics.as_ref(),
            kafka: &kafka,
            rebuild_after: coupon_core::provision::DELIVERY_GRACE,
        },
    )
    .await
    .context("provision")?;

    let stop = CancellationToken::new();
    let publisher = Publisher::new(&kafka, &topic, PublishTimeouts::default())?;
    let state = AppState::new(&campaign.name, gate.clone(), publisher);
    state.refresh_catalog().await?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("listen")?;
    let addr = listener.local_addr()?;
    let api = tokio::spawn(coupon_api::serve(
        listener,
        state,
        stop.clone().cancelled_owned(),
        Duration::ZERO,
        Duration::from_secs(6),
    ));
    let worker = Worker::new(
        ConsumerConfig::new(&kafka, &campaign.name),
        ledger.clone(),
        stop.clone(),
    )?
    .marking_stored(gate.clone());
    let consumer = tokio::spawn(worker.run());

    let books = SystemUnderTest {
        campaign: &campaign.name,
        topic: &topic,
        kafka: &kafka,
        gate: gate.as_ref(),
        ledger: &ledger,
    };
    let report = load_and_report(&books, load(format!("http://{addr}")), accepted).await;
    stop.cancel();
    let _ = api.await;
    let _ = consumer.await;
    ledger.close().await;
    Ok((
        report?,
        Running {
            gate: gate_kind,
            broker,
            ledger: ledger_kind,
        },
    ))
}

/// Removes the embedded ledger's directory when the demo ends.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
