//! What every reconcile shares: the API client, connected backends, lag probes, the
//! autoscaler's history, metrics and the settlement timer's registry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use coupon_core::broker::LagProbe;
use coupon_core::connections::KafkaConnection;
use coupon_core::gate::RedisGate;
use coupon_core::ledger::Ledger;
use kube::Client;
use kube::runtime::events::Reporter;

use crate::children;
use crate::error::Error;
use crate::secrets::{Connected, ConnectionUrls};

/// The field manager of every write, and the Events' reporting controller.
pub const MANAGER: &str = "coupon-operator";

/// One autoscaler recommendation and when it was made.
pub(crate) type Recommendation = (DateTime<Utc>, i32);

pub struct Context {
    pub client: Client,
    pub reporter: Reporter,
    backends: tokio::sync::Mutex<HashMap<ConnectionUrls, Connected>>,
    /// Autoscaler recommendations per campaign, for the scale-down window.
    pub(crate) history: Mutex<HashMap<String, Vec<Recommendation>>>,
    /// One lag-reading Kafka client per (connection, group), kept across reconciles; a changed
    /// property (a rotated password) makes a new one.
    probes: Mutex<HashMap<(KafkaConnection, String), LagProbe>>,
    /// How often a live campaign is looked at again (lag and scaling).
    pub period: Duration,
    pub metrics: crate::metrics::Metrics,
    /// Image of workloads whose campaign names none, and their pull policy.
    pub workload_image: children::WorkloadImage,
    /// Reservations are settled, and a lost gate rebuilt, only this long after the fact (more
    /// than the API's delivery deadline).
    pub settle_after: Duration,
    /// How often the settlement timer runs.
    pub settle_every: Duration,
    /// Campaigns the settlement timer settles.
    pub settlements: crate::settle_registry::Registry,
}

impl Context {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            reporter: Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
            backends: tokio::sync::Mutex::new(HashMap::new()),
            history: Mutex::new(HashMap::new()),
            probes: Mutex::new(HashMap::new()),
            period: Duration::from_secs(5),
            metrics: crate::metrics::Metrics::default(),
            workload_image: children::DEFAULT_WORKLOAD_IMAGE.into(),
            settle_after: coupon_core::provision::DELIVERY_GRACE,
            settle_every: Duration::from_secs(10),
            settlements: crate::settle_registry::Registry::default(),
        }
    }

    /// Settlement and gate rebuilds wait this long after the fact (tests shorten it).
    pub fn with_settle_after(mut self, after: Duration) -> Self {
        self.settle_after = after;
        self
    }

    pub fn with_workload_image(mut self, image: children::WorkloadImage) -> Self {
        self.workload_image = image;
        self
    }

    pub(crate) async fn connect(&self, urls: ConnectionUrls) -> Result<Connected, Error> {
        let mut cache = self.backends.lock().await;
        if let Some(c) = cache.get(&urls) {
            return Ok(c.clone());
        }
        let connected = Connected {
            gate: Arc::new(RedisGate::connect(urls.redis()?).await?),
            ledger: Ledger::connect(&urls.database, 4).await?,
            kafka: urls.kafka.clone(),
        };
        cache.insert(urls, connected.clone());
        Ok(connected)
    }

    pub(crate) fn lag_probe(
        &self,
        kafka: &KafkaConnection,
        group: &str,
    ) -> Result<LagProbe, Error> {
        let mut probes = self.probes.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (kafka.clone(), group.to_string());
        if let Some(p) = probes.get(&key) {
            return Ok(p.clone());
        }
        let probe = LagProbe::new(kafka, group)?;
        probes.insert(key, probe.clone());
        Ok(probe)
    }
}
