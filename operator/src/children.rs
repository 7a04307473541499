//! The child objects of a campaign, as pure functions of the resource: API Deployment and
//! Service, consumer Deployment, PodDisruptionBudgets. Labelled with the recommended
//! `app.kubernetes.io/*` labels, owned by the campaign, wired to the connection Secrets.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Lifecycle, LifecycleHandler,
    PodSpec, PodTemplateSpec, Probe, SecretKeySelector, SecurityContext, Service, ServicePort,
    ServiceSpec, SleepAction,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{CouponCampaign, SecretKey};

pub const API_PORT: i32 = 8080;
pub const CONSUMER_METRICS_PORT: i32 = 9090;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Api,
    Consumer,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Consumer => "consumer",
        }
    }

    fn binary(self) -> &'static str {
        match self {
            Self::Api => "coupon-api",
            Self::Consumer => "coupon-consumer",
        }
    }
}

/// `<campaign>-api`, `<campaign>-consumer`.
pub fn name(cc: &CouponCampaign, c: Component) -> String {
    format!("{}-{}", cc.name_any(), c.as_str())
}

pub fn selector(cc: &CouponCampaign, c: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), c.binary().into()),
        ("app.kubernetes.io/instance".into(), cc.name_any()),
    ])
}

pub fn labels(cc: &CouponCampaign, c: Component) -> BTreeMap<String, String> {
    let mut l = selector(cc, c);
    l.insert("app.kubernetes.io/component".into(), c.as_str().into());
    l.insert("app.kubernetes.io/part-of".into(), "fcfs-coupons".into());
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "coupon-operator".into(),
    );
    l.insert(
        "app.kubernetes.io/version".into(),
        env!("CARGO_PKG_VERSION").into(),
    );
    l
}

fn meta(cc: &CouponCampaign, c: Component) -> ObjectMeta {
    ObjectMeta {
        name: Some(name(cc, c)),
        namespace: cc.namespace(),
        labels: Some(labels(cc, c)),
        owner_references: cc.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

fn secret_env(var: &str, s: &SecretKey) -> EnvVar {
    EnvVar {
        name: var.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: s.name.clone(),
                key: s.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn plain_env(var: &str, value: &str) -> EnvVar {
    EnvVar {
        name: var.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, port: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    }
}

/// The API pod's preStop pause: long enough for kube-proxy and load balancers to stop routing.
pub const API_PRE_STOP_SECONDS: i64 = 5;

/// The image a workload runs when the campaign does not name one: the operator's own release.
pub const DEFAULT_WORKLOAD_IMAGE: &str =
    concat!("ghcr.io/fcfs-coupons/coupon:", env!("CARGO_PKG_VERSION"));

fn deployment(cc: &CouponCampaign, c: Component, replicas: i32, image: &str) -> Deployment {
    let conn = &cc.spec.connections;
    let (image, resources, port, env, readiness) = match c {
        Component::Api => (
            cc.spec.api.image.as_deref().unwrap_or(image).to_string(),
            cc.spec.api.resources.clone(),
            API_PORT,
            vec![
                secret_env("REDIS_URL", &conn.redis),
                secret_env("KAFKA_BROKERS", &conn.kafka),
                plain_env("LISTEN", &format!("0.0.0.0:{API_PORT}")),
            ],
            http_probe("/readyz", API_PORT),
        ),
        Component::Consumer => (
            cc.spec
                .consumers
                .image
                .as_deref()
                .or(cc.spec.api.image.as_deref())
                .unwrap_or(image)
                .to_string(),
            cc.spec.consumers.resources.clone(),
            CONSUMER_METRICS_PORT,
            vec![
                secret_env("KAFKA_BROKERS", &conn.kafka),
                secret_env("DATABASE_URL", &conn.database),
                plain_env(
                    "METRICS_LISTEN",
                    &format!("0.0.0.0:{CONSUMER_METRICS_PORT}"),
                ),
            ],
            http_probe("/healthz", CONSUMER_METRICS_PORT),
        ),
    };
    let mut env = env;
    env.push(plain_env("CAMPAIGN", &cc.name_any()));
    env.push(plain_env("LOG_FORMAT", "json"));
    Deployment {
        metadata: meta(cc, c),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector(cc, c)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(cc, c)),
                    annotations: Some(BTreeMap::from([
                        ("prometheus.io/scrape".into(), "true".into()),
                        ("prometheus.io/port".into(), port.to_string()),
                    ])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    // The consumer commits on SIGTERM; the API pauses, finishes what it
                    // reserved and flushes its producer: both within this bound.
                    termination_grace_period_seconds: Some(30),
                    containers: vec![Container {
                        name: c.binary().into(),
                        image: Some(image),
                        command: Some(vec![c.binary().into()]),
                        env: Some(env),
                        ports: Some(vec![ContainerPort {
                            container_port: port,
                            name: Some(
                                if c == Component::Api {
                                    "http"
                                } else {
                                    "metrics"
                                }
                                .into(),
                            ),
                            ..ContainerPort::default()
                        }]),
                        readiness_probe: Some(readiness),
                        // SIGTERM only after the endpoints forgot the pod: requests routed to it
                        // meanwhile still get served (the image has no shell, so no `sleep`).
                        lifecycle: (c == Component::Api).then(|| Lifecycle {
                            pre_stop: Some(LifecycleHandler {
                                sleep: Some(SleepAction {
                                    seconds: API_PRE_STOP_SECONDS,
                                }),
                                ..LifecycleHandler::default()
                            }),
                            ..Lifecycle::default()
                        }),
                        liveness_probe: Some(http_probe("/healthz", port)),
                        resources,
                        security_context: Some(SecurityContext {
                            run_as_non_root: Some(true),
                            read_only_root_filesystem: Some(true),
                            allow_privilege_escalation: Some(false),
                            ..SecurityContext::default()
                        }),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// `image` is the default for a campaign that names none.
pub fn api_deployment(cc: &CouponCampaign, image: &str) -> Deployment {
    deployment(cc, Component::Api, cc.spec.api.replicas, image)
}

/// The consumer Deployment with the autoscaler's replica count.
pub fn consumer_deployment(cc: &CouponCampaign, replicas: i32, image: &str) -> Deployment {
    deployment(cc, Component::Consumer, replicas, image)
}

pub fn api_service(cc: &CouponCampaign) -> Service {
    Service {
        metadata: meta(cc, Component::Api),
        spec: Some(ServiceSpec {
            selector: Some(selector(cc, Component::Api)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: API_PORT,
                target_port: Some(IntOrString::String("http".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

pub fn disruption_budget(cc: &CouponCampaign, c: Component) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(cc, c),
        spec: Some(PodDisruptionBudgetSpec {
            // The API keeps one pod serving; the consumers lose at most one at a time.
            min_available: (c == Component::Api).then_some(IntOrString::Int(1)),
            max_unavailable: (c == Component::Consumer).then_some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(cc, c)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

/// Every child of the campaign in `path`, as one multi-document YAML (what reconcile applies,
/// with the minimum consumer replicas).
pub fn manifests_for(path: &std::path::Path, image: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut cc: CouponCampaign =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if cc.metadata.namespace.is_none() {
        cc.metadata.namespace = Some("default".into());
    }
    let docs = [
        serde_yaml::to_string(&api_deployment(&cc, image)),
        serde_yaml::to_string(&api_service(&cc)),
        serde_yaml::to_string(&consumer_deployment(
            &cc,
            cc.spec.consumers.min_replicas,
            image,
        )),
        serde_yaml::to_string(&disruption_budget(&cc, Component::Api)),
        serde_yaml::to_string(&disruption_budget(&cc, Component::Consumer)),
    ];
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&doc.map_err(|e| e.to_string())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(d: &Deployment) -> Option<String> {
        d.spec.as_ref()?.template.spec.as_ref()?.containers[0]
            .image
            .clone()
    }

    #[test]
    fn workloads_run_the_operator_image_unless_the_campaign_names_one() {
        let mut cc = CouponCampaign::new(
            "c",
            serde_json::from_value(serde_json::json!({
                "coupons": [{"ids": "1", "name": "c", "discount": 1, "quantity": 1}]
            }))
            .expect("spec"),
        );
        assert_eq!(
            image(&api_deployment(&cc, "chart:1")).as_deref(),
            Some("chart:1")
        );
        assert_eq!(
            image(&consumer_deployment(&cc, 1, "chart:1")).as_deref(),
            Some("chart:1")
        );
        cc.spec.api.image = Some("own:2".into());
        assert_eq!(
            image(&api_deployment(&cc, "chart:1")).as_deref(),
            Some("own:2")
        );
        assert_eq!(
            image(&consumer_deployment(&cc, 1, "chart:1")).as_deref(),
            Some("own:2")
        );
        cc.spec.consumers.image = Some("consumer:3".into());
        assert_eq!(
            image(&consumer_deployment(&cc, 1, "chart:1")).as_deref(),
            Some("consumer:3")
        );
    }
}
