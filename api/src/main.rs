use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use coupon_api::ApiConfig;
use coupon_core::broker::PublishTimeouts;
use coupon_core::config::{BackendArgs, LogFormat, init_logging, shutdown_signal};

/// The coupon issuance API.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    backends: BackendArgs,
    /// Campaign served by this API.
    #[arg(long, env = "CAMPAIGN")]
    campaign: String,
    /// Topic override; defaults to coupons.<campaign>.issued.
    #[arg(long, env = "TOPIC")]
    topic: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Deadline for the broker's acknowledgement, in milliseconds.
    #[arg(long, env = "PUBLISH_TIMEOUT_MS", default_value_t = 5000)]
    publish_timeout_ms: u64,
    /// On SIGTERM, how long readiness is false while still serving, before the listener closes
    /// (0 when the pod's preStop pause already lets endpoints drain).
    #[arg(long, env = "DRAIN_DELAY_MS", default_value_t = 0)]
    drain_delay_ms: u64,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> ExitCode {
    // Destructured so a new flag cannot be forgotten here.
    let Args {
        backends,
        campaign,
        topic,
        listen,
        publish_timeout_ms,
        drain_delay_ms,
        log_format,
    } = Args::parse();
    init_logging(log_format);
    let message = Duration::from_millis(publish_timeout_ms.max(100));
    let cfg = ApiConfig {
        backends,
        campaign,
        topic,
        listen,
        timeouts: PublishTimeouts {
            message,
            request: message.mul_f32(0.8),
        },
        drain_delay: Duration::from_millis(drain_delay_ms),
    };
    match coupon_api::run(cfg, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("coupon-api: {e}");
            ExitCode::FAILURE
        }
    }
}
