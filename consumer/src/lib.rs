//! `coupon-consumer`: events → batch → ONE ledger transaction → offsets stored, in that order.
//! Offsets are stored only after the transaction committed (at-least-once; the ledger is
//! idempotent on the request id), committed every second, on revoke and on shutdown.

pub mod batch;
pub mod dead_letter;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use coupon_core::backoff::Backoff;
use coupon_core::broker::{LagProbe, client_config};
use coupon_core::campaign::{consumer_group, dead_letter_topic, topic_name};
use coupon_core::connections::{KafkaConnection, RedisConnection};
use coupon_core::gate::{RedisGate, StoredMark, StoredMarks};
use coupon_core::ledger::Ledger;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, next_batch};
use crate::dead_letter::DeadLetters;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Core(#[from] coupon_core::Error),
    #[error("metrics listener on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl ConsumerError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kafka(_) => "kafka",
            Self::Core(e) => e.label(),
            Self::Listen { .. } => "listen",
        }
    }
}

/// Commits what was stored (durable work only) before partitions move to another member.
pub struct ConsumerContext;

impl ClientContext for ConsumerContext {}

impl rdkafka::consumer::ConsumerContext for ConsumerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance
            && tpl.count() > 0
        {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                // Nothing stored since the last commit is the usual reason.
                tracing::debug!(error = %e, "commit on revoke");
            }
            tracing::info!(partitions = tpl.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub kafka: KafkaConnection,
    pub campaign: String,
    pub topic: Option<String>,
    pub group: Option<String>,
    /// Most events per transaction.
    pub batch_max: usize,
    /// How long to wait for more events once one arrived.
    pub batch_linger: Duration,
    /// `/metrics` and `/healthz`; `None` serves nothing.
    pub metrics_listen: Option<SocketAddr>,
    /// How often to read the lag from the broker.
    pub lag_every: Duration,
}

impl ConsumerConfig {
    pub fn new(kafka: impl Into<KafkaConnection>, campaign: &str) -> Self {
        Self {
            kafka: kafka.into(),
            campaign: campaign.to_string(),
            topic: None,
            group: None,
            batch_max: 1000,
            batch_linger: Duration::from_millis(10),
            metrics_listen: None,
            lag_every: Duration::from_secs(2),
        }
    }

    pub fn topic(&self) -> String {
        self.topic
            .clone()
            .unwrap_or_else(|| topic_name(&self.campaign))
    }

    pub fn group(&self) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| consumer_group(&self.campaign))
    }
}

pub struct Worker {
    cfg: ConsumerConfig,
    /// Where committed requests are marked stored for their status; `None` marks nothing.
    marks: Option<Arc<dyn StoredMarks>>,
    consumer: StreamConsumer<ConsumerContext>,
    ledger: Ledger,
    dead_letters: DeadLetters,
    metrics: Metrics,
    stop: CancellationToken,
}

/// How long the stored marks of one batch may take before the worker moves on without them.
const MARK_WITHIN: Duration = Duration::from_millis(500);

/// The batch was not written because the worker is stopping.
struct Stopped;

impl Worker {
    pub fn new(
        cfg: ConsumerConfig,
        ledger: Ledger,
        stop: CancellationToken,
    ) -> Result<Self, ConsumerError> {
        let consumer: StreamConsumer<ConsumerContext> = client_config(&cfg.kafka)
            .set("group.id", cfg.group())
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000")
            .set("max.poll.interval.ms", "600000")
            .create_with_context(ConsumerContext)?;
        consumer.subscribe(&[&cfg.topic()])?;
        let dead_letters = DeadLetters::new(&cfg.kafka, &dead_letter_topic(&cfg.topic()))?;
        Ok(Self {
            metrics: Metrics::new(&cfg.campaign),
            cfg,
            marks: None,
            consumer,
            ledger,
            dead_letters,
            stop,
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Marks every committed request stored in `gate`, so its status reads `issued` at once
    /// rather than when settlement gets to it.
    pub fn marking_stored(mut self, gate: Arc<dyn StoredMarks>) -> Self {
        self.marks = Some(gate);
        self
    }

    /// Consumes until stopped; the batch in hand is finished (or left uncommitted) first.
    pub async fn run(self) -> Result<(), ConsumerError> {
        let this = Arc::new(self);
        let lag_task = tokio::spawn(lag_loop(this.clone()));
        if let Some(addr) = this.cfg.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ConsumerError::Listen { addr, source })?;
            let metrics = this.metrics.clone();
            let stop = this.stop.clone();
            let router = Router::new()
                .route("/metrics", get(move || async move { metrics.render() }))
                .route("/healthz", get(|| async { "ok" }));
            tokio::spawn(async move {
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
            });
        }
        tracing::info!(topic = %this.cfg.topic(), group = %this.cfg.group(), ledger = this.ledger.backend(), "coupon-consumer running");
        // One batch is written while the next is collected; writes stay strictly in order, so
        // offsets are only ever stored for batches that are durable.
        let mut writing: Option<tokio::task::JoinHandle<Result<(), Stopped>>> = None;
        loop {
            let messages = tokio::select! {
                () = this.stop.cancelled() => break,
                m = next_batch(&this.consumer, this.cfg.batch_max, this.cfg.batch_linger) => m,
            };
            if let Some(previous) = writing.take()
                && !matches!(previous.await, Ok(Ok(())))
            {
                break;
            }
            let batch = Batch::decode(messages, &this.cfg.campaign);
            let worker = this.clone();
            writing = Some(tokio::spawn(async move { worker.process(&batch).await }));
        }
        if let Some(last) = writing.take() {
            let _ = last.await;
        }
        lag_task.abort();
        let _ = lag_task.await;
        // Whatever was stored is durable: commit it before leaving the group.
        if let Err(e) = this.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final commit");
        }
        this.consumer.unsubscribe();
        // The clients close here, while the broker is still reachable, not whenever the last
        // clone happens to be dropped.
        drop(this);
        tracing::info!("coupon-consumer stopped");
        Ok(())
    }

    async fn process(&self, batch: &Batch) -> Result<(), Stopped> {
        let campaign = &self.cfg.campaign;
        let mut backoff = Backoff::default();
        let outcome = loop {
            let started = Instant::now();
            match self.ledger.record_batch(campaign, &batch.events).await {
                Ok(outcome) => {
                    self.metrics
                        .transaction
                        .observe(started.elapsed().as_secs_f64());
                    break outcome;
                }
                Err(e) => {
                    // Database down or a deadlock: nothing was written, nothing is stored.
                    self.metrics.db_errors.inc();
                    let wait = backoff.wait();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, events = batch.events.len(), "ledger write failed");
                    self.pause(wait).await?;
                }
            }
        };
        let mut poison: Vec<_> = batch.poison.iter().map(|(i, r)| (*i, r.clone())).collect();
        poison.extend(
            outcome
                .poison
                .iter()
                .map(|(i, r)| (batch.event_message[*i], r.clone())),
        );
        for (i, reason) in &poison {
            let m = &batch.messages[*i];
            let mut backoff = Backoff::default();
            while let Err(e) = self.dead_letters.send(m, reason).await {
                tracing::warn!(error = %e, topic = self.dead_letters.topic(), "dead-letter publish failed");
                self.pause(backoff.wait()).await?;
            }
            tracing::warn!(reason = %reason, partition = m.partition(), offset = m.offset(), "event dead-lettered");
            self.metrics
                .dead_letters
                .with_label_values(&[reason.label()])
                .inc();
        }
        let m = &self.metrics;
        m.batch_size.observe(batch.messages.len() as f64);
        m.events
            .with_label_values(&["inserted"])
            .inc_by(outcome.inserted);
        m.events
            .with_label_values(&["redelivered"])
            .inc_by(outcome.redelivered);
        m.events
            .with_label_values(&["dead_lettered"])
            .inc_by(poison.len() as u64);
        self.mark_stored(batch, &outcome.poison).await;
        if let Err(e) = self.consumer.store_offsets(&batch.next_offsets()) {
            // The partition moved to another member; it will redeliver, the ledger dedupes.
            tracing::debug!(error = %e, "store offsets");
        }
        Ok(())
    }

    /// After the commit, best effort: a gate that is down or slow never holds the ledger up
    /// (settlement marks the same requests issued later).
    async fn mark_stored(
        &self,
        batch: &Batch,
        poison: &[(usize, coupon_core::event::PoisonReason)],
    ) {
        let Some(gate) = &self.marks else { return };
        let marks: Vec<StoredMark> = batch
            .events
            .iter()
            .enumerate()
            .filter(|(i, _)| !poison.iter().any(|(p, _)| p == i))
            .map(|(_, e)| StoredMark {
                coupon: e.coupon_id,
                request_id: e.request_id,
            })
            .collect();
        if marks.is_empty() {
            return;
        }
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let marked = tokio::time::timeout(
            MARK_WITHIN,
            gate.mark_stored(&self.cfg.campaign, &marks, at_ms),
        )
        .await;
        let outcome = match marked {
            Ok(Ok(())) => "marked",
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "stored marks skipped");
                "failed"
            }
            Err(_) => "timeout",
        };
        self.metrics
            .stored_marks
            .with_label_values(&[outcome])
            .inc_by(marks.len() as u64);
    }

    async fn pause(&self, d: Duration) -> Result<(), Stopped> {
        tokio::select! {
            () = tokio::time::sleep(d) => Ok(()),
            () = self.stop.cancelled() => Err(Stopped),
        }
    }
}

async fn lag_loop(worker: Arc<Worker>) {
    let topic = worker.cfg.topic();
    let probe = match LagProbe::new(&worker.cfg.kafka, &worker.cfg.group()) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "lag probe unavailable");
            return;
        }
    };
    loop {
        match probe.lag(&topic).await {
            Ok(lags) => {
                let mut total = 0;
                for l in &lags {
                    worker
                        .metrics
                        .lag
                        .with_label_values(&[topic.as_str(), &l.partition.to_string()])
                        .set(l.lag);
                    total += l.lag;
                }
                worker.metrics.lag_total.set(total);
            }
            Err(e) => tracing::warn!(error = %e, "lag read failed"),
        }
        tokio::time::sleep(worker.cfg.lag_every).await;
    }
}

/// Connects the ledger (failing fast), then consumes until `stop` is cancelled. With `gate`
/// (the campaign's Redis) committed requests are marked stored for their status; a gate that
/// cannot be reached at start is only warned about: the ledger does not wait for it.
pub async fn run(
    cfg: ConsumerConfig,
    database_url: &str,
    db_connections: u32,
    gate: Option<RedisConnection>,
    stop: CancellationToken,
) -> Result<(), ConsumerError> {
    coupon_core::campaign::validate_name(&cfg.campaign).map_err(coupon_core::Error::from)?;
    let ledger = Ledger::connect(database_url, db_connections).await?;
    let partitions = match coupon_core::broker::partition_count(&cfg.kafka, &cfg.topic()).await {
        Ok(p) => p,
        Err(e) => return Err(coupon_core::broker::explain(&cfg.kafka, e).await.into()),
    };
    partitions.ok_or_else(|| coupon_core::Error::TopicMissing(cfg.topic()))?;
    let worker = Worker::new(cfg, ledger, stop)?;
    let worker = match gate {
        None => worker,
        Some(redis) => match RedisGate::connect(redis).await {
            Ok(gate) => worker.marking_stored(Arc::new(gate)),
            Err(e) => {
                tracing::warn!(error = %e, "Redis unreachable: requests read `pending` until settlement marks them issued");
                worker
            }
        },
    };
    worker.run().await
}
