use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use coupon_consumer::ConsumerConfig;
use coupon_core::config::{ConnectionArgs, LogFormat, init_logging, shutdown_signal};
use tokio_util::sync::CancellationToken;

/// Writes a campaign's issuance events to the ledger.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    backends: ConnectionArgs,
    #[arg(long, env = "CAMPAIGN")]
    campaign: String,
    /// Topic override; defaults to coupons.<campaign>.issued.
    #[arg(long, env = "TOPIC")]
    topic: Option<String>,
    /// Consumer group override; defaults to coupon-consumer.<campaign>.
    #[arg(long, env = "CONSUMER_GROUP")]
    group: Option<String>,
    /// Most events written per transaction.
    #[arg(long, env = "BATCH_MAX", default_value_t = 1000)]
    batch_max: usize,
    /// Milliseconds to wait for more events once one arrived.
    #[arg(long, env = "BATCH_LINGER_MS", default_value_t = 10)]
    batch_linger_ms: u64,
    /// Ledger connection pool size.
    #[arg(long, env = "DB_CONNECTIONS", default_value_t = 4)]
    db_connections: u32,
    /// Address of /metrics and /healthz.
    #[arg(long, env = "METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    metrics_listen: SocketAddr,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> ExitCode {
    let Args {
        backends,
        campaign,
        topic,
        group,
        batch_max,
        batch_linger_ms,
        db_connections,
        metrics_listen,
        log_format,
    } = Args::parse();
    init_logging(log_format);
    let (database_url, kafka) = match (backends.database_url(), backends.kafka()) {
        (Ok(url), Ok(kafka)) => (url.to_string(), kafka),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("coupon-consumer: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Only a Redis named explicitly: marking stored requests is an addition, not a need.
    let gate = match backends.redis.is_some().then(|| backends.redis()) {
        None => None,
        Some(Ok(redis)) => Some(redis),
        Some(Err(e)) => {
            eprintln!("coupon-consumer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = ConsumerConfig {
        topic,
        group,
        batch_max: batch_max.clamp(1, 5000),
        batch_linger: Duration::from_millis(batch_linger_ms),
        metrics_listen: Some(metrics_listen),
        ..ConsumerConfig::new(kafka, &campaign)
    };
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    match coupon_consumer::run(cfg, &database_url, db_connections, gate, stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, label = e.label(), "coupon-consumer failed");
            eprintln!("coupon-consumer: {e}");
            ExitCode::FAILURE
        }
    }
}
