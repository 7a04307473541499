//! The one error type of `coupon-core`, with a stable label per variant for metrics and logs.

use crate::ids::CouponId;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("campaign manifest does not parse: {0}")]
    CampaignParse(String),
    #[error("campaign is invalid:\n  - {}", .0.join("\n  - "))]
    CampaignInvalid(Vec<String>),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A Kafka error with what librdkafka said about the connection (see `broker::diagnose`).
    #[error("kafka at {brokers}: {error}; {reason}")]
    KafkaUnreachable {
        brokers: String,
        error: String,
        reason: String,
    },
    #[error("unsupported database url {0:?}: use postgres://, mysql:// or sqlite:")]
    DatabaseUrl(String),
    #[error(
        "topic {topic} has {live} partitions; the spec asks for {wanted}: partitions may only grow"
    )]
    PartitionDecrease {
        topic: String,
        live: i32,
        wanted: i32,
    },
    #[error(
        "coupon {coupon}: quantity {wanted} is below the provisioned {live}; quantities may only grow"
    )]
    QuantityDecrease {
        coupon: CouponId,
        live: i64,
        wanted: i64,
    },
    #[error(
        "coupon {coupon}: shards {wanted} differs from the provisioned {live}; a coupon's shard count is fixed once it exists"
    )]
    ShardsChanged {
        coupon: CouponId,
        live: u16,
        wanted: u16,
    },
    #[error(
        "coupon {coupon}: the gate's state is gone from Redis while {lag} events are not yet in the ledger; \
         wait for the consumers to drain the topic, then provision again"
    )]
    GateRebuildNeedsDrain { coupon: CouponId, lag: i64 },
    #[error(
        "coupon {coupon}: the gate's state is gone from Redis; rebuilding it in {wait_ms} ms, once \
         every publish in flight when it was lost has landed in the topic"
    )]
    GateRebuildWaiting { coupon: CouponId, wait_ms: i64 },
    #[error("the broker cannot {0}; do it with the broker's own tools, then provision again")]
    BrokerUnsupported(String),
    #[error("campaign {0:?} is not provisioned (no coupons in the ledger)")]
    NotProvisioned(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    CampaignName(#[from] BadCampaignName),
    /// The ledger holds a request id that is not a UUID (written by something else than the
    /// consumer): named, never skipped, since a skipped row would be a coupon nobody counts.
    #[error("the ledger's row {row} holds a request id that is not a UUID: {value:?}")]
    BadRequestId { row: String, value: String },
    /// A Redis reply or record the gate's scripts and this version do not agree on (written by
    /// another version, or by hand).
    #[error("the gate answered what this version cannot read: {0}")]
    GateProtocol(String),
    #[error(
        "coupon {coupon} has a stale shard {shard} of another layout; delete its gate keys and provision again"
    )]
    StaleShard { coupon: CouponId, shard: u16 },
    #[error("the in-process gate's lock was poisoned by a panic")]
    GatePoisoned,
    #[error("redis at {0} did not answer within 5 s")]
    RedisTimeout(String),
    #[error("kafka producer in a fatal state ({code}): {reason}")]
    ProducerFatal { code: String, reason: String },
    #[error("topic {0} does not exist; provision the campaign first")]
    TopicMissing(String),
    #[error("the broker refused to {action} topic {topic}: {code}")]
    TopicRefused {
        action: &'static str,
        topic: String,
        code: rdkafka::types::RDKafkaErrorCode,
    },
    #[error("{path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{what} line {line}: {value:?} is not a request id")]
    BadLogLine {
        what: &'static str,
        line: usize,
        value: String,
    },
    #[error("a blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Error {
    /// A stable, low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::CampaignParse(_) => "campaign_parse",
            Self::CampaignInvalid(_) | Self::CampaignName(_) => "campaign_invalid",
            Self::Redis(_) => "redis",
            Self::Database(_) => "database",
            Self::Migrate(_) => "migrate",
            Self::Kafka(_) | Self::KafkaUnreachable { .. } => "kafka",
            Self::DatabaseUrl(_) => "database_url",
            Self::PartitionDecrease { .. } => "partition_decrease",
            Self::QuantityDecrease { .. } => "quantity_decrease",
            Self::ShardsChanged { .. } => "shards_changed",
            Self::GateRebuildNeedsDrain { .. } => "gate_rebuild_needs_drain",
            Self::GateRebuildWaiting { .. } => "gate_rebuild_waiting",
            Self::BrokerUnsupported(_) => "broker_unsupported",
            Self::NotProvisioned(_) => "not_provisioned",
            Self::Config(_) => "config",
            Self::BadRequestId { .. } => "bad_request_id",
            Self::GateProtocol(_) | Self::GatePoisoned => "gate_protocol",
            Self::StaleShard { .. } => "stale_shard",
            Self::RedisTimeout(_) => "redis",
            Self::ProducerFatal { .. } | Self::TopicMissing(_) | Self::TopicRefused { .. } => {
                "kafka"
            }
            Self::File { .. } => "file",
            Self::BadLogLine { .. } => "bad_log_line",
            Self::Task(_) => "task",
        }
    }
}

impl Error {
    /// A file that could not be read or written, named.
    pub fn file(path: impl Into<std::path::PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::File { path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Campaign names end up in Redis keys, topic names and Kubernetes object names: a DNS label
/// (`campaign::validate_name` says which).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "campaign name {0:?} must be 1-50 characters of a-z, 0-9 and '-', not starting or ending with '-'"
)]
pub struct BadCampaignName(pub String);
