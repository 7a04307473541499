//! How to reach the backends securely: Redis over TLS with a private CA and client certificate,
//! and any librdkafka property (SASL, TLS) for Kafka. The database needs nothing here: sqlx reads
//! its TLS mode and certificates from the URL (`sslmode=verify-full&sslrootcert=…`,
//! `ssl-mode=VERIFY_IDENTITY&ssl-ca=…`).

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};

/// Environment variables with this prefix become librdkafka properties:
/// `KAFKA_CLIENT_SASL_MECHANISM=SCRAM-SHA-512` sets `sasl.mechanism` (`_` is `.`, `__` is `_`).
pub const KAFKA_ENV_PREFIX: &str = "KAFKA_CLIENT_";

/// Bootstrap servers plus client properties (`security.protocol`, `sasl.*`, `ssl.*`, …).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct KafkaConnection {
    pub brokers: String,
    /// Applied in order, after the product's defaults and before the settings correctness
    /// depends on (idempotence, acks, offset handling), which always win.
    pub properties: Vec<(String, String)>,
}

impl KafkaConnection {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            properties: Vec::new(),
        }
    }

    /// Adds the properties of a Java-style properties file (`key=value` or `key: value`,
    /// `#`/`!` comments).
    pub fn with_properties_file(mut self, path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("kafka properties file {}: {e}", path.display())))?;
        let parsed = parse_properties(&text)
            .map_err(|e| Error::Config(format!("kafka properties file {}: {e}", path.display())))?;
        self.properties.extend(parsed);
        Ok(self)
    }

    /// Adds the `KAFKA_CLIENT_*` variables among `vars` (later ones override earlier ones).
    pub fn with_env(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut from_env: Vec<_> = vars
            .into_iter()
            .filter_map(|(k, v)| Some((env_property(&k)?, v)))
            .collect();
        from_env.sort();
        self.properties.extend(from_env);
        self
    }
}

impl From<&str> for KafkaConnection {
    fn from(brokers: &str) -> Self {
        Self::new(brokers)
    }
}

impl From<&String> for KafkaConnection {
    fn from(brokers: &String) -> Self {
        Self::new(brokers.as_str())
    }
}

impl From<&KafkaConnection> for KafkaConnection {
    fn from(c: &KafkaConnection) -> Self {
        c.clone()
    }
}

// Hand-written so passwords and keys never reach a log line.
impl fmt::Debug for KafkaConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let props: Vec<String> = self
            .properties
            .iter()
            .map(|(k, v)| {
                if is_secret(k) {
                    format!("{k}=***")
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        f.debug_struct("KafkaConnection")
            .field("brokers", &self.brokers)
            .field("properties", &props)
            .finish()
    }
}

/// Whether a librdkafka property holds a secret (passwords, private keys, OAuth secrets).
fn is_secret(property: &str) -> bool {
    let p = property.to_ascii_lowercase();
    [
        "password",
        "secret",
        "ssl.key.pem",
        "private",
        "sasl.oauthbearer.config",
    ]
    .iter()
    .any(|s| p.contains(s))
}

fn env_property(var: &str) -> Option<String> {
    let rest = var.strip_prefix(KAFKA_ENV_PREFIX)?;
    if rest.is_empty() {
        return None;
    }
    // `__` is a literal underscore (`log_level`), a single `_` a dot.
    Some(
        rest.to_ascii_lowercase()
            .split("__")
            .map(|part| part.replace('_', "."))
            .collect::<Vec<_>>()
            .join("_"),
    )
}

/// A properties line that is not `key=value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadProperty {
    #[error("line {0}: expected key=value")]
    NoSeparator(usize),
    #[error("line {0}: empty key")]
    EmptyKey(usize),
}

/// Parses `key=value` / `key: value` lines; blank lines and `#`/`!` comments are skipped.
pub fn parse_properties(text: &str) -> std::result::Result<Vec<(String, String)>, BadProperty> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let Some(at) = line.find(['=', ':']) else {
            return Err(BadProperty::NoSeparator(n + 1));
        };
        let (key, value) = (line[..at].trim(), line[at + 1..].trim());
        if key.is_empty() {
            return Err(BadProperty::EmptyKey(n + 1));
        }
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

/// A Redis URL (`redis://` or `rediss://`, ACL user and password in it; a Redis Cluster as
/// `redis+cluster://host1:7000,host2:7001` or `rediss+cluster://…`, the seed nodes) plus, for TLS,
/// a private CA and an optional client certificate.
#[derive(Clone)]
pub struct RedisConnection {
    pub url: String,
    root_cert: Option<Vec<u8>>,
    client_cert: Option<(Vec<u8>, Vec<u8>)>,
}

impl RedisConnection {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            root_cert: None,
            client_cert: None,
        }
    }

    /// Reads PEM files: the CA that signed the server's certificate and a client certificate
    /// with its key (both or neither).
    pub fn with_files(
        mut self,
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self> {
        let read = |what: &str, p: &Path| {
            std::fs::read(p)
                .map_err(|e| Error::Config(format!("redis {what} {}: {e}", p.display())))
        };
        self.root_cert = ca.map(|p| read("CA file", p)).transpose()?;
        self.client_cert = match (cert, key) {
            (Some(c), Some(k)) => Some((read("client certificate", c)?, read("client key", k)?)),
            (None, None) => None,
            _ => {
                return Err(Error::Config(
                    "redis: a client certificate needs its key and a key its certificate".into(),
                ));
            }
        };
        if (self.root_cert.is_some() || self.client_cert.is_some())
            && !self.url.starts_with("rediss://")
            && !self.url.starts_with("rediss+cluster://")
        {
            return Err(Error::Config(format!(
                "redis: certificates are given but {} is not a rediss:// URL",
                redact(&self.url)
            )));
        }
        Ok(self)
    }

    /// The seed nodes' URLs of a `redis+cluster://` / `rediss+cluster://` URL; `None` for a
    /// standalone server.
    pub fn cluster_nodes(&self) -> Option<Vec<String>> {
        let (scheme, rest) = self.url.split_once("+cluster://")?;
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((auth, hosts)) => (format!("{auth}@"), hosts),
            None => (String::new(), rest),
        };
        let hosts = hosts.trim_end_matches('/');
        Some(
            hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("{scheme}://{auth}{h}"))
                .collect(),
        )
    }

    fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.root_cert.is_none() && self.client_cert.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: self
                .client_cert
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.root_cert.clone(),
        })
    }

    /// A standalone server's client (not for a cluster URL).
    fn client(&self) -> Result<redis::Client> {
        match self.certificates() {
            None => Ok(redis::Client::open(self.url.as_str())?),
            Some(certs) => Ok(redis::Client::build_with_tls(self.url.as_str(), certs)?),
        }
    }

    /// Connects: a reconnecting manager to one server, or a cluster connection that follows
    /// MOVED/ASK and failovers. Every command answers within 2 s or fails, so a hung Redis
    /// cannot hang requests.
    pub async fn connect(&self) -> Result<RedisLink> {
        const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
        let connecting = async {
            match self.cluster_nodes() {
                None => {
                    let config = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(TIMEOUT))
                        .set_response_timeout(Some(TIMEOUT))
                        .set_number_of_retries(2);
                    let manager = self
                        .client()?
                        .get_connection_manager_with_config(config)
                        .await?;
                    Ok(RedisLink::Server(manager))
                }
                Some(nodes) if nodes.is_empty() => Err(Error::Config(format!(
                    "{} names no cluster node",
                    redact(&self.url)
                ))),
                Some(nodes) => {
                    let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
                        .connection_timeout(TIMEOUT)
                        .response_timeout(TIMEOUT)
                        .retries(4);
                    if let Some(certs) = self.certificates() {
                        builder = builder.certs(certs);
                    }
                    let client = builder.build()?;
                    let cluster = client.get_async_connection().await?;
                    Ok(RedisLink::Cluster(HealingCluster::new(client, cluster)))
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), connecting)
            .await
            .map_err(|_| Error::RedisTimeout(redact(&self.url)))?
    }
}

/// One Redis server or a Redis Cluster, behind one connection type the gate's scripts and
/// commands run on (each touches one slot: the keys of one coupon, or of one campaign).
#[derive(Clone)]
pub enum RedisLink {
    Server(redis::aio::ConnectionManager),
    Cluster(HealingCluster),
}

/// A cluster connection that replaces itself when every command keeps timing out: after a
/// slot migration the redis crate's cluster connection was seen (about one run in four) to
/// time out on every command for as long as it lived while the cluster itself was healthy.
#[derive(Clone)]
pub struct HealingCluster {
    shared: std::sync::Arc<ClusterShared>,
}

struct ClusterShared {
    client: redis::cluster::ClusterClient,
    conn: std::sync::RwLock<redis::cluster_async::ClusterConnection>,
    /// Commands in a row that timed out or lost their connection.
    failures: std::sync::atomic::AtomicU32,
    rebuilding: std::sync::atomic::AtomicBool,
    /// How many times the connection was replaced (for tests and logs).
    rebuilt: std::sync::atomic::AtomicU32,
}

impl HealingCluster {
    /// Failures in a row that make a new connection.
    const REBUILD_AFTER: u32 = 3;

    fn new(
        client: redis::cluster::ClusterClient,
        conn: redis::cluster_async::ClusterConnection,
    ) -> Self {
        Self {
            shared: std::sync::Arc::new(ClusterShared {
                client,
                conn: std::sync::RwLock::new(conn),
                failures: 0.into(),
                rebuilding: false.into(),
                rebuilt: 0.into(),
            }),
        }
    }

    /// How many times the connection has been replaced.
    pub fn rebuilt(&self) -> u32 {
        self.shared
            .rebuilt
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn current(&self) -> redis::cluster_async::ClusterConnection {
        match self.shared.conn.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn observe<T>(&self, outcome: &redis::RedisResult<T>) {
        use std::sync::atomic::Ordering;
        let shared = &self.shared;
        match outcome {
            Ok(_) => shared.failures.store(0, Ordering::Relaxed),
            Err(e) if e.is_timeout() || e.is_connection_dropped() || e.is_io_error() => {
                let n = shared.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= Self::REBUILD_AFTER && !shared.rebuilding.swap(true, Ordering::AcqRel) {
                    let me = self.clone();
                    tokio::spawn(async move { me.rebuild().await });
                }
            }
            Err(_) => {}
        }
    }

    async fn rebuild(self) {
        use std::sync::atomic::Ordering;
        let shared = &self.shared;
        let fresh = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            shared.client.get_async_connection(),
        )
        .await;
        match fresh {
            Ok(Ok(conn)) => {
                if let Ok(mut slot) = shared.conn.write() {
                    *slot = conn;
                }
                shared.failures.store(0, Ordering::Relaxed);
                shared.rebuilt.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("redis cluster connection kept failing; replaced it");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "redis cluster connection not replaced yet"),
            Err(_) => tracing::warn!("redis cluster did not answer a new connection within 5 s"),
        }
        shared.rebuilding.store(false, Ordering::Release);
    }
}

impl redis::aio::ConnectionLike for RedisLink {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Server(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => {
                let c = c.clone();
                Box::pin(async move {
                    let outcome = c.current().req_packed_command(cmd).await;
                    c.observe(&outcome);
                    outcome
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => {
                let c = c.clone();
                Box::pin(async move {
                    let outcome = c
                        .current()
                        .req_packed_commands(pipeline, offset, count)
                        .await;
                    c.observe(&outcome);
                    outcome
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Server(c) => c.get_db(),
            Self::Cluster(c) => c.current().get_db(),
        }
    }
}

impl From<&str> for RedisConnection {
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

impl From<&String> for RedisConnection {
    fn from(url: &String) -> Self {
        Self::new(url.as_str())
    }
}

impl From<&RedisConnection> for RedisConnection {
    fn from(c: &RedisConnection) -> Self {
        c.clone()
    }
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection")
            .field("url", &redact(&self.url))
            .field("ca", &self.root_cert.is_some())
            .field("client_cert", &self.client_cert.is_some())
            .finish()
    }
}

/// A URL with its password replaced, for logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => url.to_string(),
        // What the url crate cannot parse (a cluster's `h1:7000,h2:7001`) is masked by hand.
        Err(_) => {
            let Some((scheme, rest)) = url.split_once("://") else {
                return url.to_string();
            };
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((userinfo, hosts)) if userinfo.contains(':') => {
                    let user = userinfo.split(':').next().unwrap_or_default();
                    format!("{scheme}://{user}:***@{hosts}{path}")
                }
                _ => url.to_string(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_files_parse_like_java_ones() {
        let text = "# managed Kafka\nsecurity.protocol=SASL_SSL\n  sasl.mechanism : SCRAM-SHA-512\n\n! old\nsasl.password=a=b:c\n";
        assert_eq!(
            parse_properties(text).expect("test value"),
            vec![
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.mechanism".into(), "SCRAM-SHA-512".into()),
                ("sasl.password".into(), "a=b:c".into()),
            ]
        );
        assert_eq!(
            parse_properties("ok=1\nno separator here\n").expect_err("refused"),
            BadProperty::NoSeparator(2)
        );
    }

    #[test]
    fn prefixed_variables_become_properties() {
        let c = KafkaConnection::new("b:9092").with_env([
            ("KAFKA_CLIENT_SASL_USERNAME".to_string(), "app".to_string()),
            ("KAFKA_CLIENT_LOG__LEVEL".to_string(), "6".to_string()),
            ("KAFKA_BROKERS".to_string(), "ignored".to_string()),
            ("KAFKA_CLIENT_".to_string(), "ignored".to_string()),
        ]);
        assert_eq!(
            c.properties,
            vec![
                ("log_level".into(), "6".into()),
                ("sasl.username".into(), "app".into())
            ]
        );
    }

    #[test]
    fn secrets_never_reach_debug_output() {
        let c = KafkaConnection::new("b:9092").with_env([
            (
                "KAFKA_CLIENT_SASL_PASSWORD".to_string(),
                "hunter2".to_string(),
            ),
            (
                "KAFKA_CLIENT_SSL_KEY_PASSWORD".to_string(),
                "hunter3".to_string(),
            ),
            ("KAFKA_CLIENT_SASL_USERNAME".to_string(), "app".to_string()),
        ]);
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.contains("sasl.username=app"), "{shown}");
        let r = RedisConnection::new("rediss://coupons:s3cret@redis:6380");
        assert!(!format!("{r:?}").contains("s3cret"));
        let cluster = RedisConnection::new("rediss+cluster://coupons:s3cret@a:7000,b:7001");
        let shown = format!("{cluster:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("coupons:***@a:7000,b:7001"), "{shown}");
    }

    #[test]
    fn cluster_urls_name_their_seed_nodes() {
        let c = RedisConnection::new("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/");
        assert_eq!(
            c.cluster_nodes().expect("cluster"),
            ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
        );
        let tls = RedisConnection::new("rediss+cluster://app:pw@a:7000,b:7000");
        assert_eq!(
            tls.cluster_nodes().expect("cluster"),
            ["rediss://app:pw@a:7000", "rediss://app:pw@b:7000"]
        );
        assert!(
            RedisConnection::new("redis://a:6379")
                .cluster_nodes()
                .is_none()
        );
    }

    #[test]
    fn certificates_need_tls_and_come_in_pairs() {
        let dir = std::env::temp_dir();
        let pem = dir.join(format!("coupon-backends-test-{}.pem", std::process::id()));
        std::fs::write(&pem, "not checked here").expect("test value");
        let plain = RedisConnection::new("redis://127.0.0.1:6379")
            .with_files(Some(&pem), None, None)
            .expect_err("refused");
        assert!(plain.to_string().contains("not a rediss:// URL"), "{plain}");
        let half = RedisConnection::new("rediss://127.0.0.1:6380")
            .with_files(None, Some(&pem), None)
            .expect_err("refused");
        assert!(half.to_string().contains("needs its key"), "{half}");
        let missing = RedisConnection::new("rediss://127.0.0.1:6380")
            .with_files(Some(&dir.join("no-such-ca.pem")), None, None)
            .expect_err("refused");
        assert!(missing.to_string().contains("no-such-ca.pem"), "{missing}");
        std::fs::remove_file(pem).expect("test value");
    }
}
