//! The `CouponCampaign` custom resource. Its spec embeds the campaign definition of
//! `coupon-core` (one type, not a copy) and adds what only Kubernetes needs.

use coupon_core::campaign::CampaignSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "coupons.fcfs.dev",
    version = "v1alpha1",
    kind = "CouponCampaign",
    plural = "couponcampaigns",
    shortname = "cc",
    namespaced,
    status = "CouponCampaignStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Issued","type":"integer","jsonPath":".status.issued"}"#,
    printcolumn = r#"{"name":"Remaining","type":"integer","jsonPath":".status.remaining"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.lag"}"#,
    printcolumn = r#"{"name":"Consumers","type":"string","jsonPath":".status.consumers.summary"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Quantity","type":"integer","priority":1,"jsonPath":".status.quantity"}"#,
    printcolumn = r#"{"name":"Partitions","type":"integer","priority":1,"jsonPath":".spec.topic.partitions"}"#,
    printcolumn = r#"{"name":"Books","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"BooksBalanced\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.coupons.all(c, c.quantity > 0)", "message": "every coupon quantity must be positive"},
    {"rule": "!has(self.startsAt) || !has(self.endsAt) || self.endsAt > self.startsAt", "message": "endsAt must be after startsAt"},
    {"rule": "!has(oldSelf.topic) || !has(self.topic) || self.topic.partitions >= oldSelf.topic.partitions", "message": "topic partitions may only grow"},
    {"rule": "self.consumers.minReplicas <= self.consumers.maxReplicas", "message": "consumers.minReplicas must not exceed maxReplicas"}
]))]
pub struct CouponCampaignSpec {
    #[serde(flatten)]
    pub campaign: CampaignSpec,
    /// Where the backends are: Secret references, never credentials.
    #[serde(default)]
    pub connections: Connections,
    #[serde(default)]
    pub api: ApiWorkload,
    #[serde(default)]
    pub consumers: ConsumerScaling,
    /// Stops issuance (the API answers `unavailable`) and holds the consumers; nothing is lost.
    #[serde(default)]
    pub paused: bool,
    /// What deleting the campaign does to its data.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// A key of a Secret in the campaign's namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKey {
    pub name: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Connections {
    /// The Redis URL (`redis://…`).
    pub redis: SecretKey,
    /// Kafka bootstrap servers.
    pub kafka: SecretKey,
    /// The ledger URL (`postgres://…` or `mysql://…`).
    pub database: SecretKey,
    /// A librdkafka properties file (`security.protocol`, `sasl.*`, `ssl.*`, …), mounted into
    /// the workloads at /etc/coupon/kafka/client.properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_properties: Option<SecretKey>,
    /// The API's own properties file, mounted in its pods instead of `kafkaProperties`: its
    /// principal needs only Write and Describe on the campaign's topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_kafka_properties: Option<SecretKey>,
    /// The consumer's own properties file, mounted in its pods instead of `kafkaProperties`: its
    /// principal needs Read on the topic and the group, Write on the dead-letter topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_kafka_properties: Option<SecretKey>,
    /// PEM files (CAs, client certificates and keys) mounted read-only at /etc/coupon/tls; URLs
    /// and Kafka properties refer to them as /etc/coupon/tls/KEY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
}

/// Where the certificates are: one Secret, and which of its keys Redis uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsFiles {
    pub secret_name: String,
    /// Key of the CA that signed the Redis server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_ca: Option<String>,
    /// Keys of a client certificate and its private key, for Redis mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_client_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_client_key: Option<String>,
}

/// Where the workloads find the TLS Secret's files.
pub const TLS_MOUNT: &str = "/etc/coupon/tls";
/// Where the API finds the JWKS of `api.jwt.jwks`.
pub const JWKS_PATH: &str = "/etc/coupon/jwt/jwks.json";
/// Where the workloads find the Kafka properties file.
pub const KAFKA_PROPERTIES_PATH: &str = "/etc/coupon/kafka/client.properties";

/// One Secret, `coupon-backends`, with REDIS_URL, KAFKA_BROKERS and DATABASE_URL.
impl Default for Connections {
    fn default() -> Self {
        let key = |k: &str| SecretKey {
            name: "coupon-backends".into(),
            key: k.into(),
        };
        Self {
            redis: key("REDIS_URL"),
            kafka: key("KAFKA_BROKERS"),
            database: key("DATABASE_URL"),
            kafka_properties: None,
            api_kafka_properties: None,
            consumer_kafka_properties: None,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiWorkload {
    #[serde(default = "default_api_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Image holding the coupon binaries; unset follows the operator's `--workload-image`
    /// (the chart's own image), so upgrading the chart upgrades the workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    /// Who the user is: `body`, `header:NAME` or `jwt` (the API's `--identity`).
    #[serde(default = "default_identity")]
    #[schemars(regex(pattern = r"^(body|jwt|header:[A-Za-z0-9-]+)$"))]
    pub identity: String,
    /// Token checks of `identity: jwt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSpec>,
    /// Abuse limits; 0 disables each.
    #[serde(default)]
    pub limits: ApiLimits,
}

/// Where the API verifies tokens from and what they must say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtSpec {
    /// An HS256 secret (at least 32 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hs256_secret: Option<SecretKey>,
    /// A JWKS document with the issuer's public keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<SecretKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Claim with the numeric user id (default `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_claim: Option<String>,
}

/// Per API replica: requests per second per user and per client address, the bucket size,
/// requests in flight, and how long one waits for room before it is shed with 503.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApiLimits {
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub per_user: u32,
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub per_client: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shed_after_ms: Option<u32>,
    /// Header with the client address behind the ingress, e.g. X-Forwarded-For.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address_header: Option<String>,
}

fn default_identity() -> String {
    "body".into()
}

fn default_api_replicas() -> i32 {
    2
}

impl Default for ApiWorkload {
    fn default() -> Self {
        Self {
            replicas: default_api_replicas(),
            image: None,
            resources: None,
            identity: default_identity(),
            jwt: None,
            limits: ApiLimits::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerScaling {
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Lag one consumer replica is expected to absorb.
    #[serde(default = "default_target_lag")]
    #[schemars(range(min = 1))]
    pub target_lag_per_replica: i64,
    /// Scale-down waits this long after the last higher recommendation.
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0))]
    pub scale_down_stabilization_seconds: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
}

fn one() -> i32 {
    1
}

fn default_max_replicas() -> i32 {
    6
}

fn default_target_lag() -> i64 {
    5000
}

fn default_stabilization() -> i64 {
    300
}

impl Default for ConsumerScaling {
    fn default() -> Self {
        Self {
            min_replicas: one(),
            max_replicas: default_max_replicas(),
            target_lag_per_replica: default_target_lag(),
            scale_down_stabilization_seconds: default_stabilization(),
            image: None,
            resources: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the topic, the ledger rows and the Redis stock (the books outlive the resource).
    #[default]
    Retain,
    /// Remove the campaign's Redis keys as well; the ledger is never deleted.
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    Pending,
    Provisioning,
    Scheduled,
    Live,
    SoldOut,
    Ended,
    Paused,
    Degraded,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CouponCampaignStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<i64>,
    /// Rows in the ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued: Option<i64>,
    /// Stock left in the gate (Redis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<i64>,
    /// Σ(end offset − committed offset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionLagStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<ConsumerStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionLagStatus {
    pub partition: i32,
    pub end: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<i64>,
    pub lag: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerStatus {
    pub current: i32,
    pub desired: i32,
    /// "current/desired", for the printer column.
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// The CRD as YAML, exactly what `crds/` holds.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&CouponCampaign::crd()).unwrap_or_default()
}
