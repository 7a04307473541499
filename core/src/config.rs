//! Command-line and environment configuration shared by every binary.

use std::fmt;

use crate::error::{Error, Result};
use crate::gate::redact;

/// Where the backends are. Every binary takes these flags; each uses the ones it needs.
#[derive(Clone, clap::Args)]
pub struct BackendArgs {
    /// Redis holding the stock gate [default: redis://127.0.0.1:6379].
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        hide_env_values = true,
        global = true
    )]
    pub redis: Option<String>,
    /// Kafka bootstrap servers, comma separated [default: 127.0.0.1:9092].
    #[arg(long = "kafka-brokers", env = "KAFKA_BROKERS", global = true)]
    pub kafka: Option<String>,
    /// The ledger: postgres://…, mysql://… (MySQL or MariaDB) or sqlite:PATH.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
}

pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";

impl BackendArgs {
    pub fn redis_url(&self) -> &str {
        self.redis.as_deref().unwrap_or(DEFAULT_REDIS_URL)
    }

    pub fn kafka_brokers(&self) -> &str {
        self.kafka.as_deref().unwrap_or(DEFAULT_KAFKA_BROKERS)
    }

    pub fn database_url(&self) -> Result<&str> {
        self.database_url.as_deref().ok_or_else(|| {
            Error::Unexpected("no database: pass --database-url or set DATABASE_URL".into())
        })
    }
}

// Hand-written so credentials in URLs never reach a log line.
impl fmt::Debug for BackendArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendArgs")
            .field("redis_url", &redact(self.redis_url()))
            .field("kafka_brokers", &self.kafka_brokers())
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
