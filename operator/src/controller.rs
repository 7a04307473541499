//! Reconcile: a finalizer wrapper around the inherent `apply` and `cleanup` of a
//! `CouponCampaign` (the kube-rs/controller-rs shape). Provisioning, verification and lag come
//! from `coupon-core`; children and status are written by server-side apply, and only when they
//! changed.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use chrono::Utc;
use coupon_core::broker::{KafkaAdmin, PartitionLag};
use coupon_core::campaign::{Campaign, consumer_group};
use coupon_core::provision::{Stores, provision};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::books::CampaignBooks;
use crate::children::{self, Component};
use crate::context::Context;
use crate::context::MANAGER;
use crate::crd::{
    ConsumerStatus, CouponCampaign, CouponCampaignStatus, DeletionPolicy, PartitionLagStatus, Phase,
};
use crate::error::Error;
use crate::scaling::{self, Policy, Scale};
use crate::secrets::{Connected, ConnectionUrls};
use crate::status::{condition, keep_transition_times};

pub const FINALIZER: &str = "coupons.fcfs.dev/cleanup";
const HASH_ANNOTATION: &str = "coupons.fcfs.dev/applied-hash";

/// What one reconcile pass says about itself: its events and conditions, written at the end.
struct Pass {
    generation: Option<i64>,
    events: Vec<(&'static str, String, EventType)>,
    conditions: Vec<Condition>,
    /// Why the campaign cannot be served as specified, if it cannot.
    degraded: Option<String>,
    api_ready: bool,
}

impl Pass {
    fn new(cc: &CouponCampaign) -> Self {
        Self {
            generation: cc.metadata.generation,
            events: Vec::new(),
            conditions: Vec::new(),
            degraded: None,
            api_ready: false,
        }
    }

    fn event(&mut self, reason: &'static str, note: String, type_: EventType) {
        self.events.push((reason, note, type_));
    }
}

/// The settlement registry's key of a campaign.
fn settlement_key(cc: &CouponCampaign) -> String {
    format!(
        "{}/{}",
        cc.namespace().unwrap_or_else(|| "default".into()),
        cc.name_any()
    )
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

impl CouponCampaign {
    /// One pass: provision, scale, children, settle, status; each phase its own function.
    async fn apply(&self, ctx: &Context) -> Result<Action, Error> {
        let campaign = Campaign::new(self.name_any(), self.spec.campaign.clone())?;
        let urls = crate::secrets::read(self, &ctx.client).await?;
        let be = ctx.connect(urls.clone()).await?;
        let mut pass = Pass::new(self);
        let books = self.provision(ctx, &campaign, &be, &mut pass).await?;
        let lags = ctx
            .lag_probe(&be.kafka, &consumer_group(&campaign.name))?
            .lag(&campaign.topic())
            .await?;
        let scale = self.scale(ctx, &campaign, &lags).await?;
        self.children(ctx, &scale, &mut pass).await?;
        let phase = self.phase(&campaign, &books, &pass);
        self.settle(
            ctx,
            &campaign,
            urls,
            phase,
            &books,
            scale.plan.total_lag,
            &mut pass,
        );
        ctx.metrics.observe(&campaign.name, &lags, &books, &scale);
        self.write_status(ctx, phase, &books, &lags, &scale, pass)
            .await?;
        Ok(Action::requeue(ctx.period))
    }

    /// Provisions when the spec changed, or when the gate lost the campaign (Redis restarted);
    /// returns the books as they are after it.
    async fn provision(
        &self,
        ctx: &Context,
        campaign: &Campaign,
        be: &Connected,
        pass: &mut Pass,
    ) -> Result<CampaignBooks, Error> {
        let read = CampaignBooks::read(&self.name_any(), be).await?;
        let old = self.status.clone().unwrap_or_default();
        if old.observed_generation == pass.generation && !read.lost {
            pass.conditions.extend(
                old.conditions
                    .iter()
                    .filter(|c| c.type_ == "StockLoaded" || c.type_ == "TopicReady")
                    .cloned(),
            );
            return Ok(read);
        }
        let admin = KafkaAdmin::new(&be.kafka)?;
        let result = provision(
            campaign,
            &Stores {
                gate: be.gate.as_ref(),
                ledger: &be.ledger,
                topics: &admin,
                kafka: &be.kafka,
                rebuild_after: ctx.settle_after,
            },
        )
        .await;
        let g = pass.generation;
        match result {
            Ok(report) => {
                let note = report.to_string();
                pass.event("Provisioned", note.clone(), EventType::Normal);
                pass.conditions
                    .push(condition("StockLoaded", true, "Provisioned", note, g));
                pass.conditions.push(condition(
                    "TopicReady",
                    true,
                    "TopicReady",
                    format!("topic {} ready", campaign.topic()),
                    g,
                ));
            }
            Err(e @ coupon_core::Error::PartitionDecrease { .. }) => {
                pass.event(
                    "PartitionDecreaseRefused",
                    e.to_string(),
                    EventType::Warning,
                );
                pass.conditions.push(condition(
                    "TopicReady",
                    false,
                    "PartitionDecreaseRefused",
                    e.to_string(),
                    g,
                ));
                pass.degraded = Some(e.to_string());
            }
            // Redis lost the gate: it is rebuilt from the ledger once every publish in flight
            // has landed and been consumed; until then the API refuses, nothing is wrong.
            Err(
                e @ (coupon_core::Error::GateRebuildWaiting { .. }
                | coupon_core::Error::GateRebuildNeedsDrain { .. }),
            ) => {
                pass.event("GateRebuildWaiting", e.to_string(), EventType::Normal);
                pass.conditions.push(condition(
                    "StockLoaded",
                    false,
                    "GateRebuildWaiting",
                    e.to_string(),
                    g,
                ));
                pass.degraded = Some(e.to_string());
            }
            Err(e) => {
                pass.event("ProvisioningFailed", e.to_string(), EventType::Warning);
                pass.conditions.push(condition(
                    "StockLoaded",
                    false,
                    "ProvisioningFailed",
                    e.to_string(),
                    g,
                ));
                pass.degraded = Some(e.to_string());
            }
        }
        CampaignBooks::read(&self.name_any(), be).await
    }

    /// The autoscaler's plan on exact lag, within the scale-down window.
    async fn scale(
        &self,
        ctx: &Context,
        campaign: &Campaign,
        lags: &[PartitionLag],
    ) -> Result<Scale, Error> {
        let ns = self.namespace().unwrap_or_else(|| "default".into());
        let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        let current = deployments
            .get_opt(&children::name(self, Component::Consumer))
            .await?
            .and_then(|d| d.spec)
            .and_then(|s| s.replicas)
            .unwrap_or(self.spec.consumers.min_replicas);
        let now = Utc::now();
        let window_ended = campaign.window().ends_at.is_some_and(|e| now >= e);
        let c = &self.spec.consumers;
        let policy = Policy {
            min_replicas: c.min_replicas,
            max_replicas: c.max_replicas,
            target_lag_per_replica: c.target_lag_per_replica,
            scale_down_stabilization: chrono::Duration::seconds(c.scale_down_stabilization_seconds),
        };
        let mut history = ctx.history.lock().unwrap_or_else(PoisonError::into_inner);
        let h = history
            .entry(format!("{ns}/{}", campaign.name))
            .or_default();
        let since = now - policy.scale_down_stabilization;
        h.retain(|(at, _)| *at > since);
        let plan = scaling::decide(
            &policy,
            &scaling::Observation {
                now,
                lags,
                current_replicas: current,
                window_ended,
                history: h,
            },
        );
        h.push((now, plan.recommendation));
        Ok(Scale {
            current,
            desired: if self.spec.paused {
                current
            } else {
                plan.desired
            },
            max: c.max_replicas,
            plan,
        })
    }

    /// Writes the children that differ from what we last wrote; notes whether the API is up.
    async fn children(&self, ctx: &Context, scale: &Scale, pass: &mut Pass) -> Result<(), Error> {
        let ns = self.namespace().unwrap_or_else(|| "default".into());
        let image = &ctx.workload_image;
        let client = &ctx.client;
        let wrote = [
            apply_child(client, &ns, children::api_deployment(self, image)).await?,
            apply_child(client, &ns, children::api_service(self)).await?,
            apply_child(
                client,
                &ns,
                children::consumer_deployment(self, scale.desired, image),
            )
            .await?,
            apply_child(
                client,
                &ns,
                children::disruption_budget(self, Component::Api),
            )
            .await?,
            apply_child(
                client,
                &ns,
                children::disruption_budget(self, Component::Consumer),
            )
            .await?,
        ]
        .into_iter()
        .filter(|w| *w)
        .count();
        if wrote > 0 {
            pass.event(
                "WorkloadsApplied",
                format!("{wrote} child objects written"),
                EventType::Normal,
            );
        }
        if scale.desired != scale.current {
            pass.event(
                "Scaled",
                format!(
                    "consumers {} -> {} (lag {}, {:?})",
                    scale.current, scale.desired, scale.plan.total_lag, scale.plan.reason
                ),
                EventType::Normal,
            );
        }
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        pass.api_ready = deployments
            .get_opt(&children::name(self, Component::Api))
            .await?
            .and_then(|d| d.status)
            .and_then(|s| s.available_replicas)
            .unwrap_or(0)
            > 0;
        pass.conditions.push(condition(
            "WorkloadsReady",
            pass.api_ready,
            if pass.api_ready {
                "Available"
            } else {
                "Progressing"
            },
            format!(
                "API available: {}; consumers {}/{}",
                pass.api_ready, scale.current, scale.desired
            ),
            pass.generation,
        ));
        Ok(())
    }

    fn phase(&self, campaign: &Campaign, books: &CampaignBooks, pass: &Pass) -> Phase {
        let now = Utc::now();
        let window = campaign.window();
        let quantity: i64 = books.books.iter().map(|b| b.total_quantity).sum();
        let remaining: i64 = books.gate.iter().flatten().sum();
        match () {
            _ if pass.degraded.is_some() => Phase::Degraded,
            _ if self.spec.paused => Phase::Paused,
            _ if window.starts_at.is_some_and(|s| now < s) => Phase::Scheduled,
            _ if window.ends_at.is_some_and(|e| now >= e) => Phase::Ended,
            _ if quantity > 0 && remaining == 0 => Phase::SoldOut,
            _ => Phase::Live,
        }
    }

    /// Hands the campaign to the settlement timer and reports what its last round left.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        ctx: &Context,
        campaign: &Campaign,
        urls: ConnectionUrls,
        phase: Phase,
        books: &CampaignBooks,
        lag: i64,
        pass: &mut Pass,
    ) {
        let key = settlement_key(self);
        ctx.metrics.init_settlement(&campaign.name);
        ctx.settlements.register(
            key.clone(),
            crate::settle_registry::Entry {
                campaign: campaign.name.clone(),
                topic: campaign.topic(),
                urls,
                phase,
                reference: self.object_ref(&()),
            },
        );
        pass.conditions.push(crate::status::books_balanced(
            &books.books,
            &books.gate,
            lag,
            ctx.settlements.last_report(&key).as_ref(),
            pass.generation,
        ));
    }

    /// Status by server-side apply when it changed, then the pass's events.
    async fn write_status(
        &self,
        ctx: &Context,
        phase: Phase,
        books: &CampaignBooks,
        lags: &[PartitionLag],
        scale: &Scale,
        mut pass: Pass,
    ) -> Result<(), Error> {
        let name = self.name_any();
        let ns = self.namespace().unwrap_or_else(|| "default".into());
        let old = self.status.clone().unwrap_or_default();
        let ready = pass.degraded.is_none() && pass.api_ready;
        pass.conditions.push(condition(
            "Ready",
            ready,
            if ready { "Ready" } else { "NotReady" },
            pass.degraded
                .clone()
                .unwrap_or_else(|| format!("{phase:?}")),
            pass.generation,
        ));
        let last_scale_time = if scale.desired != scale.current {
            Some(Time(k8s_openapi::jiff::Timestamp::now()))
        } else {
            old.consumers
                .as_ref()
                .and_then(|c| c.last_scale_time.clone())
        };
        let status = CouponCampaignStatus {
            phase: Some(phase),
            observed_generation: pass.generation,
            conditions: keep_transition_times(&old.conditions, pass.conditions),
            quantity: Some(books.books.iter().map(|b| b.total_quantity).sum()),
            issued: Some(books.books.iter().map(|b| b.issued).sum()),
            remaining: Some(books.gate.iter().flatten().sum()),
            lag: Some(scale.plan.total_lag),
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
                current: scale.desired,
                desired: scale.plan.desired,
                summary: format!("{}/{}", scale.desired, scale.plan.desired),
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
        let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
        let reference = self.object_ref(&());
        for (reason, note, type_) in pass.events {
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
        Ok(())
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Action, Error> {
        ctx.settlements.forget(&settlement_key(self));
        let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
        let note = match self.spec.deletion_policy {
            // Children go with their owner reference; the books stay.
            DeletionPolicy::Retain => {
                "deletion policy Retain: topic, ledger rows and Redis stock kept".to_string()
            }
            DeletionPolicy::Delete => {
                let be = ctx
                    .connect(crate::secrets::read(self, &ctx.client).await?)
                    .await?;
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

/// The first 64 bits of the SHA-256 of a child's JSON, in hex: the same on every build (std's
/// `DefaultHasher` may change between Rust releases, and every child would be applied again).
fn intent_hash(json: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(json.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
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
    // The hash of what we mean to say: a field we stop setting changes it, so the apply that
    // drops the field still happens (the comparison below only sees fields we set).
    let intent = intent_hash(&serde_json::to_string(&obj).unwrap_or_default());
    obj.meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_ANNOTATION.into(), intent);
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    let mut value =
        serde_json::to_value(&obj).map_err(|e| Error::Serialize(name.clone(), e.to_string()))?;
    if let Some(map) = value.as_object_mut() {
        map.insert(
            "apiVersion".into(),
            K::api_version(&Default::default()).into(),
        );
        map.insert("kind".into(), K::kind(&Default::default()).into());
    }
    // Compared with the live object, not with what we last sent: a person's edit to a field
    // we own is put back, and an object that already says everything we would say is not
    // written again (the server adds defaults and fields of its own, which we do not own).
    if let Some(live) = api.get_opt(&name).await? {
        let live = serde_json::to_value(&live)
            .map_err(|e| Error::Serialize(name.clone(), e.to_string()))?;
        if contains(&live, &value) {
            return Ok(false);
        }
    }
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&value),
    )
    .await?;
    Ok(true)
}

/// Whether `live` says everything `desired` says: every field of `desired` present with the
/// same value (objects compared field by field, lists item by item and of equal length).
fn contains(live: &serde_json::Value, desired: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (live, desired) {
        (_, Value::Null) => true,
        (Value::Object(l), Value::Object(d)) => d
            .iter()
            .all(|(k, v)| l.get(k).map_or(v.is_null(), |lv| contains(lv, v))),
        (Value::Array(l), Value::Array(d)) => {
            l.len() == d.len() && l.iter().zip(d).all(|(lv, dv)| contains(lv, dv))
        }
        (Value::Number(l), Value::Number(d)) => l.as_f64() == d.as_f64(),
        (l, d) => l == d,
    }
}

#[cfg(test)]
mod tests {
    use super::{contains, intent_hash};
    use serde_json::json;

    /// Pinned: a build with another hash would re-apply every child of every campaign.
    #[test]
    fn the_intent_hash_is_the_same_on_every_build() {
        assert_eq!(intent_hash("{}"), "44136fa355b3678a");
        assert_ne!(intent_hash(r#"{"a":1}"#), intent_hash(r#"{"a":2}"#));
    }

    #[test]
    fn the_live_object_contains_what_we_set_and_more() {
        let desired = json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "api", "image": "a:1"}]}}});
        let defaulted = json!({"spec": {"replicas": 2, "revisionHistoryLimit": 10,
            "template": {"containers": [{"name": "api", "image": "a:1", "imagePullPolicy": "IfNotPresent"}]}},
            "status": {"replicas": 0}});
        assert!(
            contains(&defaulted, &desired),
            "fields the server adds are not ours"
        );
        let scaled = json!({"spec": {"replicas": 5, "template": {"containers": [{"name": "api", "image": "a:1"}]}}});
        assert!(!contains(&scaled, &desired), "an edit of a field we set");
        let sidecar = json!({"spec": {"replicas": 2, "template": {"containers": [
            {"name": "api", "image": "a:1"}, {"name": "x", "image": "x:1"}]}}});
        assert!(!contains(&sidecar, &desired), "a list that grew");
        assert!(!contains(&json!({"spec": {}}), &desired), "a field removed");
        assert!(
            contains(&json!({"a": 1.0}), &json!({"a": 1})),
            "numbers by value"
        );
    }
}
