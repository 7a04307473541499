//! Start-up: the binary's configuration, the backends reached (failing fast with what is
//! wrong), then [`serve`] until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use coupon_core::broker::{PublishTimeouts, Publisher};
use coupon_core::campaign::topic_name;
use coupon_core::config::ConnectionArgs;
use coupon_core::gate::RedisGate;
use tokio::net::TcpListener;

use crate::AppState;
use crate::admission::Admission;
use crate::app;

/// Everything the API binary is configured with.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub backends: ConnectionArgs,
    pub campaign: String,
    pub topic: Option<String>,
    pub listen: SocketAddr,
    pub timeouts: PublishTimeouts,
    /// When events are batched (under load) rather than sent at once.
    pub batching: coupon_core::broker::Batching,
    /// How long readiness is false before the listener closes, on shutdown.
    pub drain_delay: Duration,
    pub identity: crate::identity::IdentityMode,
    pub jwt: crate::identity::JwtSettings,
    pub limits: crate::admission::Limits,
    /// Header carrying the client address behind a proxy (for the per-client limit).
    pub client_address_header: Option<axum::http::HeaderName>,
}

/// Connects to Redis and Kafka (failing fast with a clear message), then serves.
pub async fn run(
    cfg: ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    coupon_core::campaign::validate_name(&cfg.campaign)?;
    let identity = crate::identity::Identity::new(&cfg.identity, &cfg.jwt)?;
    let admission = Admission::new(identity, cfg.limits, cfg.client_address_header.clone());
    let redis = cfg.backends.redis()?;
    let kafka = cfg.backends.kafka()?;
    let gate = RedisGate::connect(redis).await.map_err(StartError::Redis)?;
    let topic = cfg
        .topic
        .clone()
        .unwrap_or_else(|| topic_name(&cfg.campaign));
    let publisher = Publisher::with_batching(&kafka, &topic, cfg.timeouts, cfg.batching)
        .map_err(StartError::Producer)?;
    let partitions = match publisher.check().await {
        Ok(partitions) => partitions,
        Err(error) => {
            let why = coupon_core::broker::diagnose(&kafka).await;
            return Err(StartError::Kafka {
                brokers: kafka.brokers.clone(),
                topic,
                error,
                why: why.map(|w| format!("; {w}")).unwrap_or_default(),
            });
        }
    };
    let identity = admission.identity.label();
    let state =
        AppState::with_admission(&cfg.campaign, Arc::new(gate), publisher.clone(), admission);
    if !state.refresh_catalog().await? {
        tracing::warn!(campaign = %cfg.campaign, "campaign not provisioned yet; answering 503 until it is");
    }
    state.spawn_catalog_refresh(Duration::from_secs(2));
    state.spawn_bucket_cleanup(Duration::from_secs(30));
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: cfg.listen,
            source,
        })?;
    tracing::info!(listen = %cfg.listen, campaign = %cfg.campaign, %topic, partitions, identity, limits = ?cfg.limits, "coupon-api serving");
    // A request ends within its publish deadline; a second more covers the gate's answer.
    let finish_within = cfg.timeouts.message + Duration::from_secs(1);
    serve(listener, state, shutdown, cfg.drain_delay, finish_within)
        .await
        .map_err(StartError::Serve)?;
    publisher.flush(Duration::from_secs(5));
    tracing::info!("coupon-api stopped");
    Ok(())
}

/// Serves until `shutdown` resolves; then readiness goes false, the listener stays open for
/// `drain_delay` (load balancers stop routing here), new connections are refused, and every
/// request in flight (those whose client left included) runs to its end, within `finish_within`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain_delay: Duration,
    finish_within: Duration,
) -> std::io::Result<()> {
    let draining = state.clone();
    // The peer address feeds the per-client rate limit.
    let service = app(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(async move {
            shutdown.await;
            draining.start_draining();
            tracing::info!(?drain_delay, "draining: readiness is false");
            tokio::time::sleep(drain_delay).await;
        })
        .await?;
    if !state.finish_requests(finish_within).await {
        tracing::warn!(
            ?finish_within,
            "requests still running at shutdown; settlement will settle them"
        );
    }
    Ok(())
}

/// Why coupon-api cannot start (or stopped serving): said once, at the binary's edge.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Campaign(#[from] coupon_core::campaign::BadCampaignName),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Backend(#[from] coupon_core::Error),
    #[error("cannot reach Redis: {0}")]
    Redis(coupon_core::Error),
    #[error("cannot create the Kafka producer: {0}")]
    Producer(coupon_core::Error),
    #[error("cannot reach Kafka at {brokers} for topic {topic}: {error}{why}")]
    Kafka {
        brokers: String,
        topic: String,
        error: coupon_core::Error,
        /// What librdkafka said about the connection, as "; …", or empty.
        why: String,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
}
