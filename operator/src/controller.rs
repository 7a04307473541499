//! Reconcile: a finalizer wrapper around the inherent `apply` and `cleanup` of a
//! `CouponCampaign` (the kube-rs/controller-rs shape). Provisioning, verification and lag come
//! from `coupon-core`; children and status are written by server-side apply, and only when they
//! changed.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use coupon_core::broker::{KafkaAdmin, LagProbe};
use coupon_core::campaign::{Campaign, consumer_group};
use coupon_core::gate::{RedisGate, StockGate};
use coupon_core::ledger::Ledger;
use coupon_core::provision::{Backends, provision};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::children::{self, Component};
use crate::crd::{
    ConsumerStatus, CouponCampaign, CouponCampaignStatus, DeletionPolicy, PartitionLagStatus,
    Phase, SecretKey,
};
use crate::scaling::{self, Policy};

/// One autoscaler recommendation and when it was made.
type Recommendation = (DateTime<Utc>, i32);

pub const FINALIZER: &str = "coupons.fcfs.dev/cleanup";
pub const MANAGER: &str = "coupon-operator";
const HASH_ANNOTATION: &str = "coupons.fcfs.dev/applied-hash";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Core(#[from] coupon_core::Error),
    #[error("secret {0}: {1}")]
    Secret(String, String),
    #[error("cannot serialize {0}: {1}")]
    Serialize(String, String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Core(e) => e.label(),
            Self::Secret(..) => "secret",
            Self::Serialize(..) => "serialize",
            Self::Finalizer(_) => "finalizer",
        }
    }
}

/// What [`CouponCampaign::read_books`] found.
struct Books {
    books: Vec<coupon_core::ledger::CouponBook>,
    /// The gate's remaining stock per coupon, in `books` order (`None`: the key is gone).
    gate: Vec<Option<i64>>,
    lost: bool,
}

/// Connected backends, reused across reconciles of campaigns that share them.
#[derive(Clone)]
pub struct Connected {
    pub brokers: String,
    pub gate: Arc<RedisGate>,
    pub ledger: Ledger,
}

pub struct Context {
    pub client: Client,
    pub reporter: Reporter,
    backends: tokio::sync::Mutex<HashMap<(String, String, String), Connected>>,
    /// Autoscaler recommendations per campaign, for the scale-down window.
    history: Mutex<HashMap<String, Vec<Recommendation>>>,
    /// One lag-reading Kafka client per (brokers, group), kept across reconciles.
    probes: Mutex<HashMap<(String, String), LagProbe>>,
    /// How often a live campaign is looked at again (lag and scaling).
    pub period: Duration,
    pub metrics: crate::metrics::Metrics,
    /// Image of workloads whose campaign names none.
    pub workload_image: String,
    /// Reservations are settled, and a lost gate rebuilt, only this long after the fact (more
    /// than the API's delivery deadline).
    pub settle_after: Duration,
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
        }
    }

    pub fn with_workload_image(mut self, image: String) -> Self {
        self.workload_image = image;
        self
    }

    async fn connect(&self, urls: (String, String, String)) -> Result<Connected, Error> {
        let mut cache = self.backends.lock().await;
        if let Some(c) = cache.get(&urls) {
            return Ok(c.clone());
        }
        let (redis, brokers, database) = urls.clone();
        let connected = Connected {
            gate: Arc::new(RedisGate::connect(&redis).await?),
            ledger: Ledger::connect(&database, 4).await?,
            brokers,
        };
        cache.insert(urls, connected.clone());
        Ok(connected)
    }

    fn lag_probe(&self, brokers: &str, group: &str) -> Result<LagProbe, Error> {
        let mut probes = self.probes.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (brokers.to_string(), group.to_string());
        if let Some(p) = probes.get(&key) {
            return Ok(p.clone());
        }
        let probe = LagProbe::new(brokers, group)?;
        probes.insert(key, probe.clone());
        Ok(probe)
    }
}

/// The controller's entry point for one object.
pub async fn reconcile(cc: Arc<CouponCampaign>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cc.namespace().unwrap_or_else(|| "default".into());
    let api: Api<CouponCampaign> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, cc, |event| async {
        match event {
            Finalizer::Apply(cc) => cc.apply(&ctx).await,
            Finalizer::Cleanup(cc) => cc.cleanup(&ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    let result_label = match &result {
        Ok(_) => "ok",
        Err(e) => e.label(),
    };
    ctx.metrics
        .reconciles
        .with_label_values(&[result_label])
        .inc();
    result
}

pub fn error_policy(_: Arc<CouponCampaign>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(%error, label = error.label(), "reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

impl CouponCampaign {
    async fn backend_urls(&self, client: &Client) -> Result<(String, String, String), Error> {
        let ns = self.namespace().unwrap_or_else(|| "default".into());
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let mut cache: BTreeMap<String, Secret> = BTreeMap::new();
        let mut read = async |k: &SecretKey| -> Result<String, Error> {
            if !cache.contains_key(&k.name) {
                let s = secrets
                    .get_opt(&k.name)
                    .await?
                    .ok_or_else(|| Error::Secret(k.name.clone(), "not found".into()))?;
                cache.insert(k.name.clone(), s);
            }
            let bytes = cache
                .get(&k.name)
                .and_then(|s| s.data.as_ref())
                .and_then(|d| d.get(&k.key))
                .ok_or_else(|| Error::Secret(k.name.clone(), format!("has no key {}", k.key)))?;
            String::from_utf8(bytes.0.clone())
                .map_err(|_| Error::Secret(k.name.clone(), format!("key {} is not UTF-8", k.key)))
        };
        let c = &self.spec.connections;
        Ok((
            read(&c.redis).await?,
            read(&c.kafka).await?,
            read(&c.database).await?,
        ))
    }

    /// The ledger's books and the gate's stock left over them, in one pass; `lost` when Redis
    /// no longer has the catalog or some coupon (restarted without persistence, keys gone).
    async fn read_books(&self, be: &Connected) -> Result<Books, Error> {
        let name = self.name_any();
        let books = be.ledger.books(&name).await?;
        let mut lost = be.gate.catalog(&name).await?.is_none();
        let mut gate = Vec::with_capacity(books.len());
        for b in &books {
            let left = be
                .gate
                .snapshot(&name, b.coupon_id)
                .await?
                .map(|s| s.remaining);
            lost |= left.is_none();
            gate.push(left);
        }
        Ok(Books { books, gate, lost })
    }

    async fn apply(&self, ctx: &Context) -> Result<Action, Error> {
        let name = self.name_any();
        let ns = self.namespace().unwrap_or_else(|| "default".into());
        let generation = self.metadata.generation;
        let old = self.status.clone().unwrap_or_default();
        let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
        let reference = self.object_ref(&());
        let mut events = Vec::new();
        let mut conditions = Vec::new();

        let campaign = Campaign::new(name.clone(), self.spec.campaign.clone())?;
        let be = ctx.connect(self.backend_urls(&ctx.client).await?).await?;
        let topic = campaign.topic();

        // Provision when the spec changed, or when the gate lost the campaign (Redis restarted).
        let mut read = self.read_books(&be).await?;
        let spec_changed = old.observed_generation != generation;
        let mut degraded = None;
        let provisioning = spec_changed || read.lost;
        if provisioning {
            let admin = KafkaAdmin::new(&be.brokers)?;
            let result = provision(
                &campaign,
                &Backends {
                    gate: be.gate.as_ref(),
                    ledger: &be.ledger,
                    topics: &admin,
                    brokers: &be.brokers,
                    rebuild_after: ctx.settle_after,
                },
            )
            .await;
            match result {
                Ok(report) => {
                    let note = report.to_string();
                    events.push(("Provisioned", note.clone(), EventType::Normal));
                    conditions.push(condition(
                        "StockLoaded",
                        true,
                        "Provisioned",
                        note,
                        generation,
                    ));
                    conditions.push(condition(
                        "TopicReady",
                        true,
                        "TopicReady",
                        format!("topic {topic} ready"),
                        generation,
                    ));
                }
                Err(e @ coupon_core::Error::PartitionDecrease { .. }) => {
                    events.push((
                        "PartitionDecreaseRefused",
                        e.to_string(),
                        EventType::Warning,
                    ));
                    conditions.push(condition(
                        "TopicReady",
                        false,
                        "PartitionDecreaseRefused",
                        e.to_string(),
                        generation,
                    ));
                    degraded = Some(e.to_string());
                }
                Err(e) => {
                    events.push(("ProvisioningFailed", e.to_string(), EventType::Warning));
                    conditions.push(condition(
                        "StockLoaded",
                        false,
                        "ProvisioningFailed",
                        e.to_string(),
                        generation,
                    ));
                    degraded = Some(e.to_string());
                }
            }
        } else {
            conditions.extend(
                old.conditions
                    .iter()
                    .filter(|c| c.type_ == "StockLoaded" || c.type_ == "TopicReady")
                    .cloned(),
            );
        }

        // Lag, books and the scaling decision.
        let lags = ctx
            .lag_probe(&be.brokers, &consumer_group(&name))?
            .lag(&topic)
            .await?;
        if provisioning {
            read = self.read_books(&be).await?;
        }
        let Books { books, gate, .. } = read;
        let remaining: i64 = gate.iter().flatten().sum();
        let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        let consumer_name = children::name(self, Component::Consumer);
        let live_consumer = deployments.get_opt(&consumer_name).await?;
        let current = live_consumer
            .as_ref()
            .and_then(|d| d.spec.as_ref())
            .and_then(|s| s.replicas)
            .unwrap_or(self.spec.consumers.min_replicas);
        let now = Utc::now();
        let window = campaign.window();
        let window_ended = window.ends_at.is_some_and(|e| now >= e);
        let c = &self.spec.consumers;
        let policy = Policy {
            min_replicas: c.min_replicas,
            max_replicas: c.max_replicas,
            target_lag_per_replica: c.target_lag_per_replica,
            scale_down_stabilization: chrono::Duration::seconds(c.scale_down_stabilization_seconds),
        };
        let decision = {
            let mut history = ctx.history.lock().unwrap_or_else(PoisonError::into_inner);
            let h = history.entry(format!("{ns}/{name}")).or_default();
            let since = now - policy.scale_down_stabilization;
            h.retain(|(at, _)| *at > since);
            let d = scaling::decide(
                &policy,
                &scaling::Observation {
                    now,
                    lags: &lags,
                    current_replicas: current,
                    window_ended,
                    history: h,
                },
            );
            h.push((now, d.recommendation));
            d
        };
        let m = &ctx.metrics;
        for l in &lags {
            m.lag
                .with_label_values(&[name.as_str(), &l.partition.to_string()])
                .set(l.lag);
        }
        m.lag_total
            .with_label_values(&[name.as_str()])
            .set(decision.total_lag);
        m.replicas_current
            .with_label_values(&[name.as_str()])
            .set(i64::from(current));
        let desired = if self.spec.paused {
            current
        } else {
            decision.desired
        };
        m.replicas_desired
            .with_label_values(&[name.as_str()])
            .set(i64::from(desired));
        m.replicas_max
            .with_label_values(&[name.as_str()])
            .set(i64::from(c.max_replicas));
        // Redis and the ledger must agree once nothing is in flight; while events wait in the
        // topic the difference is expected, so drift is only judged on a drained topic.
        let drained = decision.total_lag == 0;
        for (b, left) in books.iter().zip(&gate) {
            let labels = [name.as_str(), &b.coupon_id.to_string()];
            if let Some(left) = left {
                m.stock_remaining.with_label_values(&labels).set(*left);
            }
            m.stock_quantity
                .with_label_values(&labels)
                .set(b.total_quantity);
            m.issued.with_label_values(&labels).set(b.issued);
            let drift = match left {
                Some(left) if drained => b.remaining - left,
                _ => 0,
            };
            m.drift.with_label_values(&labels).set(drift);
        }

        // Children, written only when what we want differs from what we last wrote.
        let mut wrote = 0;
        wrote += apply_child(
            &ctx.client,
            &ns,
            children::api_deployment(self, &ctx.workload_image),
        )
        .await? as usize;
        wrote += apply_child(&ctx.client, &ns, children::api_service(self)).await? as usize;
        wrote += apply_child(
            &ctx.client,
            &ns,
            children::consumer_deployment(self, desired, &ctx.workload_image),
        )
        .await? as usize;
        wrote += apply_child(
            &ctx.client,
            &ns,
            children::disruption_budget(self, Component::Api),
        )
        .await? as usize;
        wrote += apply_child(
            &ctx.client,
            &ns,
            children::disruption_budget(self, Component::Consumer),
        )
        .await? as usize;
        if wrote > 0 {
            events.push((
                "WorkloadsApplied",
                format!("{wrote} child objects written"),
                EventType::Normal,
            ));
        }
        let scaled = desired != current;
        if scaled {
            events.push((
                "Scaled",
                format!(
                    "consumers {current} -> {desired} (lag {}, {:?})",
                    decision.total_lag, decision.reason
                ),
                EventType::Normal,
            ));
        }
        let api_ready = deployments
            .get_opt(&children::name(self, Component::Api))
            .await?
            .and_then(|d| d.status)
            .and_then(|s| s.available_replicas)
            .unwrap_or(0)
            > 0;
        conditions.push(condition(
            "WorkloadsReady",
            api_ready,
            if api_ready {
                "Available"
            } else {
                "Progressing"
            },
            format!("API available: {api_ready}; consumers {current}/{desired}"),
            generation,
        ));
        let issued: i64 = books.iter().map(|b| b.issued).sum();
        let quantity: i64 = books.iter().map(|b| b.total_quantity).sum();
        let phase = match () {
            _ if degraded.is_some() => Phase::Degraded,
            _ if self.spec.paused => Phase::Paused,
            _ if window.starts_at.is_some_and(|s| now < s) => Phase::Scheduled,
            _ if window_ended => Phase::Ended,
            _ if quantity > 0 && remaining == 0 => Phase::SoldOut,
            _ => Phase::Live,
        };
        let ready = degraded.is_none() && api_ready;
        conditions.push(condition(
            "Ready",
            ready,
            if ready { "Ready" } else { "NotReady" },
            degraded.clone().unwrap_or_else(|| format!("{phase:?}")),
            generation,
        ));
        let conditions = keep_transition_times(&old.conditions, conditions);
        let last_scale_time = if scaled {
            Some(Time(k8s_openapi::jiff::Timestamp::now()))
        } else {
            old.consumers
                .as_ref()
                .and_then(|c| c.last_scale_time.clone())
        };
        let status = CouponCampaignStatus {
            phase: Some(phase),
            observed_generation: generation,
            conditions,
            quantity: Some(quantity),
            issued: Some(issued),
            remaining: Some(remaining),
            lag: Some(decision.total_lag),
            partitions: lags
                .iter()
                .map(|l| PartitionLagStatus {
                    partition: l.partition,
                    end: l.end,
                    committed: l.committed,
                    lag: l.lag,
                })
                .collect(),
            consumers: Some(ConsumerStatus {
                current: desired,
                desired: decision.desired,
                summary: format!("{desired}/{}", decision.desired),
                last_scale_time,
            }),
        };
        if status != old {
            let api: Api<CouponCampaign> = Api::namespaced(ctx.client.clone(), &ns);
            let patch = serde_json::json!({
                "apiVersion": "coupons.fcfs.dev/v1alpha1",
                "kind": "CouponCampaign",
                "status": status,
            });
            api.patch_status(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        }
        for (reason, note, type_) in events {
            let ev = Event {
                type_,
                reason: reason.into(),
                note: Some(note),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::warn!(error = %e, "event not recorded");
            }
        }
        Ok(Action::requeue(ctx.period))
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Action, Error> {
        let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
        let note = match self.spec.deletion_policy {
            // Children go with their owner reference; the books stay.
            DeletionPolicy::Retain => {
                "deletion policy Retain: topic, ledger rows and Redis stock kept".to_string()
            }
            DeletionPolicy::Delete => {
                let be = ctx.connect(self.backend_urls(&ctx.client).await?).await?;
                let coupons = be.ledger.coupon_quantities(&self.name_any()).await?;
                let removed = be
                    .gate
                    .forget_campaign(
                        &self.name_any(),
                        &coupons.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
                    )
                    .await?;
                format!("deletion policy Delete: {removed} Redis keys removed; ledger rows kept")
            }
        };
        if let Ok(campaign) = Campaign::new(self.name_any(), self.spec.campaign.clone()) {
            let coupons: Vec<String> = campaign
                .coupons()
                .iter()
                .map(|c| c.id.to_string())
                .collect();
            ctx.metrics
                .forget(&campaign.name, campaign.spec.topic.partitions, &coupons);
        }
        let ev = Event {
            type_: EventType::Normal,
            reason: "Cleanup".into(),
            note: Some(note),
            action: "Delete".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &self.object_ref(&())).await {
            tracing::warn!(error = %e, "event not recorded");
        }
        Ok(Action::await_change())
    }
}

/// A condition whose status did not change keeps its original transition time.
fn keep_transition_times(old: &[Condition], new: Vec<Condition>) -> Vec<Condition> {
    new.into_iter()
        .map(|mut c| {
            if let Some(o) = old
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == c.status)
            {
                c.last_transition_time = o.last_transition_time.clone();
            }
            c
        })
        .collect()
}

/// Server-side applies `obj` unless the live object carries the hash of this exact intent.
async fn apply_child<K>(client: &Client, ns: &str, mut obj: K) -> Result<bool, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&obj)
        .unwrap_or_default()
        .hash(&mut hasher);
    let hash = format!("{:016x}", hasher.finish());
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    if let Some(live) = api.get_opt(&name).await?
        && live
            .meta()
            .annotations
            .as_ref()
            .and_then(|a| a.get(HASH_ANNOTATION))
            == Some(&hash)
    {
        return Ok(false);
    }
    obj.meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_ANNOTATION.into(), hash);
    let mut value =
        serde_json::to_value(&obj).map_err(|e| Error::Serialize(name.clone(), e.to_string()))?;
    if let Some(map) = value.as_object_mut() {
        map.insert(
            "apiVersion".into(),
            K::api_version(&Default::default()).into(),
        );
        map.insert("kind".into(), K::kind(&Default::default()).into());
    }
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&value),
    )
    .await?;
    Ok(true)
}
