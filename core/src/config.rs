//! Command-line and environment configuration shared by every binary.

use std::fmt;
use std::path::PathBuf;

use crate::connections::{KafkaConnection, RedisConnection, redact};
use crate::error::{Error, Result};

/// Where the backends are. Every binary takes these flags; each uses the ones it needs.
#[derive(Clone, clap::Args)]
pub struct ConnectionArgs {
    /// Redis holding the stock gate [default: redis://127.0.0.1:6379].
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        hide_env_values = true,
        global = true
    )]
    pub redis: Option<String>,
    /// PEM CA that signed the Redis server's certificate (with a rediss:// URL).
    #[arg(long, env = "REDIS_CA_FILE", global = true)]
    pub redis_ca_file: Option<PathBuf>,
    /// PEM client certificate for Redis mutual TLS (with --redis-client-key).
    #[arg(long, env = "REDIS_CLIENT_CERT", global = true)]
    pub redis_client_cert: Option<PathBuf>,
    /// PEM private key of --redis-client-cert.
    #[arg(long, env = "REDIS_CLIENT_KEY", global = true)]
    pub redis_client_key: Option<PathBuf>,
    /// Kafka bootstrap servers, comma separated [default: 127.0.0.1:9092].
    #[arg(long = "kafka-brokers", env = "KAFKA_BROKERS", global = true)]
    pub kafka: Option<String>,
    /// librdkafka properties file (security.protocol, sasl.*, ssl.*, …); KAFKA_CLIENT_*
    /// variables add to it (KAFKA_CLIENT_SASL_USERNAME sets sasl.username).
    #[arg(long, env = "KAFKA_PROPERTIES_FILE", global = true)]
    pub kafka_properties_file: Option<PathBuf>,
    /// The ledger: postgres://…, mysql://… (MySQL or MariaDB) or sqlite:PATH.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
}

pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";

impl ConnectionArgs {
    pub fn redis_url(&self) -> &str {
        self.redis.as_deref().unwrap_or(DEFAULT_REDIS_URL)
    }

    pub fn kafka_brokers(&self) -> &str {
        self.kafka.as_deref().unwrap_or(DEFAULT_KAFKA_BROKERS)
    }

    /// The same backends as environment variables, for a child process.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        [
            ("REDIS_URL", Some(self.redis_url().to_string())),
            ("REDIS_CA_FILE", path(&self.redis_ca_file)),
            ("REDIS_CLIENT_CERT", path(&self.redis_client_cert)),
            ("REDIS_CLIENT_KEY", path(&self.redis_client_key)),
            ("KAFKA_BROKERS", Some(self.kafka_brokers().to_string())),
            ("KAFKA_PROPERTIES_FILE", path(&self.kafka_properties_file)),
            ("DATABASE_URL", self.database_url.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect()
    }

    /// Redis with its TLS files read.
    pub fn redis(&self) -> Result<RedisConnection> {
        RedisConnection::new(self.redis_url()).with_files(
            self.redis_ca_file.as_deref(),
            self.redis_client_cert.as_deref(),
            self.redis_client_key.as_deref(),
        )
    }

    /// Kafka with its client properties: the file's, then the KAFKA_CLIENT_* variables'.
    pub fn kafka(&self) -> Result<KafkaConnection> {
        let mut kafka = KafkaConnection::new(self.kafka_brokers());
        if let Some(file) = &self.kafka_properties_file {
            kafka = kafka.with_properties_file(file)?;
        }
        Ok(kafka.with_env(std::env::vars()))
    }

    pub fn database_url(&self) -> Result<&str> {
        self.database_url.as_deref().ok_or_else(|| {
            Error::Config("no database: pass --database-url or set DATABASE_URL".into())
        })
    }
}

// Hand-written so credentials in URLs never reach a log line.
impl fmt::Debug for ConnectionArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionArgs")
            .field("redis_url", &redact(self.redis_url()))
            .field("redis_ca_file", &self.redis_ca_file)
            .field("redis_client_cert", &self.redis_client_cert)
            .field("redis_client_key", &self.redis_client_key)
            .field("kafka_brokers", &self.kafka_brokers())
            .field("kafka_properties_file", &self.kafka_properties_file)
            .field("database_url", &self.database_url.as_deref().map(redact))
            .finish()
    }
}

/// Log output.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Structured logs to stderr; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
