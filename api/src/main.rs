use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use axum::http::HeaderName;
use clap::Parser;
use coupon_api::ApiConfig;
use coupon_api::admission::Limits;
use coupon_api::identity::{IdentityMode, JwtSettings};
use coupon_core::broker::{Batching, PublishTimeouts};
use coupon_core::config::{ConnectionArgs, LogFormat, init_logging, shutdown_signal};

// glibc's allocator was 15 % of the request path's CPU (malloc, free, consolidation) under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The coupon issuance API.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    backends: ConnectionArgs,
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
    /// Publishes in flight above which new events go through a second, lingering producer
    /// (0, the default: group commit alone, see docs/measuring.md).
    #[arg(long, env = "BATCH_ABOVE_IN_FLIGHT", default_value_t = 0)]
    batch_above_in_flight: usize,
    /// How long a batched event may wait for others, in milliseconds.
    #[arg(long, env = "BATCH_LINGER_MS", default_value_t = 20)]
    batch_linger_ms: u64,
    /// On SIGTERM, how long readiness is false while still serving, before the listener closes
    /// (0 when the pod's preStop pause already lets endpoints drain).
    #[arg(long, env = "DRAIN_DELAY_MS", default_value_t = 0)]
    drain_delay_ms: u64,
    /// Who the user is: body (the body's userId; demos and load tests), header:NAME (set by a
    /// gateway that authenticated the user) or jwt (a verified Bearer token).
    #[arg(long, env = "IDENTITY", default_value = "body")]
    identity: IdentityMode,
    /// HS256 secret of --identity jwt (at least 32 bytes).
    #[arg(long, env = "JWT_HS256_SECRET", hide_env_values = true)]
    jwt_hs256_secret: Option<String>,
    /// JWKS document with the public keys of --identity jwt.
    #[arg(long, env = "JWT_JWKS_FILE")]
    jwt_jwks_file: Option<PathBuf>,
    /// Required `iss` of tokens.
    #[arg(long, env = "JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required `aud` of tokens.
    #[arg(long, env = "JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Claim holding the numeric user id.
    #[arg(long, env = "JWT_USER_CLAIM", default_value = "sub")]
    jwt_user_claim: String,
    /// Issue requests per second per user in this process (0: no limit).
    #[arg(long, env = "RATE_PER_USER", default_value_t = 0)]
    rate_per_user: u32,
    /// Issue requests per second per client address in this process (0: no limit).
    #[arg(long, env = "RATE_PER_CLIENT", default_value_t = 0)]
    rate_per_client: u32,
    /// Requests a quiet user or address may send at once (at least the rate).
    #[arg(long, env = "RATE_BURST", default_value_t = 10)]
    rate_burst: u32,
    /// Header with the client address behind a proxy (first entry), e.g. X-Forwarded-For;
    /// otherwise the peer address.
    #[arg(long, env = "CLIENT_ADDRESS_HEADER")]
    client_address_header: Option<HeaderName>,
    /// Issue requests in flight in this process; more wait for room (0: no limit).
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 512)]
    max_in_flight: usize,
    /// A request that waited this long for room is shed with 503 `overloaded`.
    #[arg(long, env = "SHED_AFTER_MS", default_value_t = 50)]
    shed_after_ms: u64,
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
        batch_above_in_flight,
        batch_linger_ms,
        drain_delay_ms,
        identity,
        jwt_hs256_secret,
        jwt_jwks_file,
        jwt_issuer,
        jwt_audience,
        jwt_user_claim,
        rate_per_user,
        rate_per_client,
        rate_burst,
        client_address_header,
        max_in_flight,
        shed_after_ms,
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
        batching: Batching {
            above_in_flight: batch_above_in_flight,
            linger: Duration::from_millis(batch_linger_ms),
        },
        drain_delay: Duration::from_millis(drain_delay_ms),
        identity,
        jwt: JwtSettings {
            hs256_secret: jwt_hs256_secret,
            jwks_file: jwt_jwks_file,
            issuer: jwt_issuer,
            audience: jwt_audience,
            user_claim: jwt_user_claim,
        },
        limits: Limits {
            per_user: rate_per_user,
            per_client: rate_per_client,
            burst: rate_burst,
            max_in_flight,
            queue_wait: Duration::from_millis(shed_after_ms),
        },
        client_address_header,
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
