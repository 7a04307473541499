//! The child objects of a campaign, as pure functions of the resource: API Deployment and
//! Service, consumer Deployment, PodDisruptionBudgets. Labelled with the recommended
//! `app.kubernetes.io/*` labels, owned by the campaign, wired to the connection Secrets.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    Lifecycle, LifecycleHandler, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Service, ServicePort, ServiceSpec, SleepAction, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{
    ApiWorkload, Connections, CouponCampaign, JWKS_PATH, KAFKA_PROPERTIES_PATH, SecretKey,
    TLS_MOUNT,
};

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

/// The secured-connection files of `conn` as read-only Secret volumes, their mounts and the
/// variables that point the binaries at them; `kafka_properties` is the workload's own.
pub fn secured_files(
    conn: &Connections,
    kafka_properties: Option<&SecretKey>,
    jwks: Option<&SecretKey>,
) -> (Vec<Volume>, Vec<VolumeMount>, Vec<EnvVar>) {
    let (mut volumes, mut mounts, mut env) = (Vec::new(), Vec::new(), Vec::new());
    let mut mount = |name: &str, secret: &str, items: Option<Vec<KeyToPath>>, at: &str| {
        volumes.push(Volume {
            name: name.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                items,
                default_mode: Some(0o440),
                optional: Some(false),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: name.into(),
            mount_path: at.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    };
    if let Some(tls) = &conn.tls {
        mount("tls", &tls.secret_name, None, TLS_MOUNT);
        for (var, key) in [
            ("REDIS_CA_FILE", &tls.redis_ca),
            ("REDIS_CLIENT_CERT", &tls.redis_client_cert),
            ("REDIS_CLIENT_KEY", &tls.redis_client_key),
        ] {
            if let Some(key) = key {
                env.push(plain_env(var, &format!("{TLS_MOUNT}/{key}")));
            }
        }
    }
    // One Secret key as one file.
    for (volume, key, path, var) in [
        (
            "kafka-properties",
            kafka_properties,
            KAFKA_PROPERTIES_PATH,
            "KAFKA_PROPERTIES_FILE",
        ),
        ("jwks", jwks, JWKS_PATH, "JWT_JWKS_FILE"),
    ] {
        let Some(key) = key else { continue };
        let (dir, file) = path.rsplit_once('/').unwrap_or(("/", path));
        let items = vec![KeyToPath {
            key: key.key.clone(),
            path: file.into(),
            mode: None,
        }];
        mount(volume, &key.name, Some(items), dir);
        env.push(plain_env(var, path));
    }
    (volumes, mounts, env)
}

/// The API's identity and limit flags from `spec.api` (the JWKS is a mounted file, see
/// [`secured_files`]).
fn admission_env(api: &ApiWorkload) -> Vec<EnvVar> {
    let mut env = vec![plain_env("IDENTITY", &api.identity)];
    if let Some(jwt) = &api.jwt {
        if let Some(s) = &jwt.hs256_secret {
            env.push(secret_env("JWT_HS256_SECRET", s));
        }
        for (var, value) in [
            ("JWT_ISSUER", &jwt.issuer),
            ("JWT_AUDIENCE", &jwt.audience),
            ("JWT_USER_CLAIM", &jwt.user_claim),
        ] {
            if let Some(v) = value {
                env.push(plain_env(var, v));
            }
        }
    }
    let l = &api.limits;
    env.push(plain_env("RATE_PER_USER", &l.per_user.to_string()));
    env.push(plain_env("RATE_PER_CLIENT", &l.per_client.to_string()));
    for (var, value) in [
        ("RATE_BURST", l.burst),
        ("MAX_IN_FLIGHT", l.max_in_flight),
        ("SHED_AFTER_MS", l.shed_after_ms),
    ] {
        if let Some(v) = value {
            env.push(plain_env(var, &v.to_string()));
        }
    }
    if let Some(h) = &l.client_address_header {
        env.push(plain_env("CLIENT_ADDRESS_HEADER", h));
    }
    env
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

/// The workloads' image when a campaign names none, and the pull policy of every workload
/// container (`None`: Kubernetes' default; `Never` on a node whose images were preloaded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadImage {
    pub name: String,
    pub pull_policy: Option<String>,
}

impl From<&str> for WorkloadImage {
    fn from(name: &str) -> Self {
        Self {
            name: name.into(),
            pull_policy: None,
        }
    }
}

/// What the API's and the consumer's pods differ in, as data; [`deployment`] builds the rest,
/// which they share.
struct Workload<'a> {
    component: Component,
    image: String,
    resources: Option<ResourceRequirements>,
    port: i32,
    port_name: &'static str,
    readiness: Probe,
    /// The component's own settings; the connections' files, campaign and log format follow.
    env: Vec<EnvVar>,
    kafka_properties: Option<&'a SecretKey>,
    jwks: Option<&'a SecretKey>,
    /// SIGTERM only after the endpoints forgot the pod: requests routed to it meanwhile still
    /// get served (the image has no shell, so no `sleep`).
    pre_stop_pause: bool,
}

impl<'a> Workload<'a> {
    fn api(cc: &'a CouponCampaign, default_image: &str) -> Self {
        let (api, conn) = (&cc.spec.api, &cc.spec.connections);
        let own = vec![
            secret_env("REDIS_URL", &conn.redis),
            secret_env("KAFKA_BROKERS", &conn.kafka),
            plain_env("LISTEN", &format!("0.0.0.0:{API_PORT}")),
        ];
        Self {
            component: Component::Api,
            image: api.image.as_deref().unwrap_or(default_image).to_string(),
            resources: api.resources.clone(),
            port: API_PORT,
            port_name: "http",
            readiness: http_probe("/readyz", API_PORT),
            env: [own, admission_env(api)].concat(),
            kafka_properties: conn.api_kafka_properties.as_ref(),
            jwks: api.jwt.as_ref().and_then(|j| j.jwks.as_ref()),
            pre_stop_pause: true,
        }
    }

    fn consumer(cc: &'a CouponCampaign, default_image: &str) -> Self {
        let (spec, conn) = (&cc.spec, &cc.spec.connections);
        let image = spec
            .consumers
            .image
            .as_deref()
            .or(spec.api.image.as_deref());
        Self {
            component: Component::Consumer,
            image: image.unwrap_or(default_image).to_string(),
            resources: spec.consumers.resources.clone(),
            port: CONSUMER_METRICS_PORT,
            port_name: "metrics",
            readiness: http_probe("/healthz", CONSUMER_METRICS_PORT),
            env: vec![
                secret_env("KAFKA_BROKERS", &conn.kafka),
                secret_env("DATABASE_URL", &conn.database),
                // Marks committed requests stored, so their status reads `issued` at once.
                secret_env("REDIS_URL", &conn.redis),
                plain_env(
                    "METRICS_LISTEN",
                    &format!("0.0.0.0:{CONSUMER_METRICS_PORT}"),
                ),
            ],
            kafka_properties: conn.consumer_kafka_properties.as_ref(),
            jwks: None,
            pre_stop_pause: false,
        }
    }
}

fn deployment(
    cc: &CouponCampaign,
    w: Workload<'_>,
    replicas: i32,
    pull_policy: Option<String>,
) -> Deployment {
    let c = w.component;
    let conn = &cc.spec.connections;
    let kafka_properties = w.kafka_properties.or(conn.kafka_properties.as_ref());
    let (volumes, mounts, secured_env) = secured_files(conn, kafka_properties, w.jwks);
    let mut env = w.env;
    env.extend(secured_env);
    env.push(plain_env("CAMPAIGN", &cc.name_any()));
    env.push(plain_env("LOG_FORMAT", "json"));
    let container = Container {
        name: c.binary().into(),
        image: Some(w.image),
        image_pull_policy: pull_policy,
        command: Some(vec![c.binary().into()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            container_port: w.port,
            name: Some(w.port_name.into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(w.readiness),
        lifecycle: w.pre_stop_pause.then(pre_stop_pause),
        liveness_probe: Some(http_probe("/healthz", w.port)),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        resources: w.resources,
        security_context: Some(restricted_container()),
        ..Container::default()
    };
    let pod = PodSpec {
        // The consumer commits on SIGTERM; the API pauses, finishes what it reserved and
        // flushes its producer: both within this bound.
        termination_grace_period_seconds: Some(30),
        containers: vec![container],
        volumes: (!volumes.is_empty()).then_some(volumes),
        security_context: Some(restricted_pod()),
        ..PodSpec::default()
    };
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
                        ("prometheus.io/port".into(), w.port.to_string()),
                    ])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn pre_stop_pause() -> Lifecycle {
    Lifecycle {
        pre_stop: Some(LifecycleHandler {
            sleep: Some(SleepAction {
                seconds: API_PRE_STOP_SECONDS,
            }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    }
}

/// Pod Security "restricted" (checked on the rendered manifests).
fn restricted_container() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn restricted_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        // Secret volumes are 0440 and root-owned unless the pod has an fsGroup: without it
        // user 65532 cannot read its own mounted files.
        fs_group: Some(65532),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// `image` is the default for a campaign that names none.
pub fn api_deployment(cc: &CouponCampaign, image: &WorkloadImage) -> Deployment {
    let api = Workload::api(cc, &image.name);
    deployment(cc, api, cc.spec.api.replicas, image.pull_policy.clone())
}

/// The consumer Deployment with the autoscaler's replica count.
pub fn consumer_deployment(
    cc: &CouponCampaign,
    replicas: i32,
    image: &WorkloadImage,
) -> Deployment {
    let consumer = Workload::consumer(cc, &image.name);
    deployment(cc, consumer, replicas, image.pull_policy.clone())
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
pub fn manifests_for(
    path: &std::path::Path,
    image: &WorkloadImage,
) -> Result<String, crate::error::Error> {
    let text = std::fs::read_to_string(path).map_err(coupon_core::Error::file(path))?;
    let mut cc: CouponCampaign =
        serde_yaml::from_str(&text).map_err(|source| crate::error::Error::Manifest {
            path: path.to_path_buf(),
            source,
        })?;
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
        out.push_str(
            &doc.map_err(|e| {
                crate::error::Error::Serialize("a child object".into(), e.to_string())
            })?,
        );
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
            image(&api_deployment(&cc, &"chart:1".into())).as_deref(),
            Some("chart:1")
        );
        assert_eq!(
            image(&consumer_deployment(&cc, 1, &"chart:1".into())).as_deref(),
            Some("chart:1")
        );
        cc.spec.api.image = Some("own:2".into());
        assert_eq!(
            image(&api_deployment(&cc, &"chart:1".into())).as_deref(),
            Some("own:2")
        );
        assert_eq!(
            image(&consumer_deployment(&cc, 1, &"chart:1".into())).as_deref(),
            Some("own:2")
        );
        cc.spec.consumers.image = Some("consumer:3".into());
        assert_eq!(
            image(&consumer_deployment(&cc, 1, &"chart:1".into())).as_deref(),
            Some("consumer:3")
        );
    }

    #[test]
    fn the_pull_policy_is_kubernetes_default_unless_set() {
        let cc = CouponCampaign::new(
            "c",
            serde_json::from_value(serde_json::json!({
                "coupons": [{"ids": "1", "name": "c", "discount": 1, "quantity": 1}]
            }))
            .expect("spec"),
        );
        let policy = |d: &Deployment| {
            d.spec
                .as_ref()
                .expect("spec")
                .template
                .spec
                .as_ref()
                .expect("pod")
                .containers[0]
                .image_pull_policy
                .clone()
        };
        assert_eq!(policy(&api_deployment(&cc, &"chart:1".into())), None);
        let preloaded = WorkloadImage {
            name: "chart:1".into(),
            pull_policy: Some("Never".into()),
        };
        for d in [
            api_deployment(&cc, &preloaded),
            consumer_deployment(&cc, 1, &preloaded),
        ] {
            assert_eq!(policy(&d).as_deref(), Some("Never"));
        }
    }

    #[test]
    fn secured_connections_are_mounted_read_only_and_pointed_at() {
        let cc = CouponCampaign::new(
            "c",
            serde_json::from_value(serde_json::json!({
                "coupons": [{"ids": "1", "name": "c", "discount": 1, "quantity": 1}],
                "connections": {
                    "redis": {"name": "b", "key": "REDIS_URL"},
                    "kafka": {"name": "b", "key": "KAFKA_BROKERS"},
                    "database": {"name": "b", "key": "DATABASE_URL"},
                    "kafkaProperties": {"name": "kafka-client", "key": "client.properties"},
                    "tls": {"secretName": "coupon-tls", "redisCa": "ca.pem",
                            "redisClientCert": "client.pem", "redisClientKey": "client.key"}
                }
            }))
            .expect("spec"),
        );
        for d in [
            api_deployment(&cc, &"i".into()),
            consumer_deployment(&cc, 1, &"i".into()),
        ] {
            let pod = d.spec.and_then(|s| s.template.spec).expect("pod spec");
            let volumes = pod.volumes.expect("volumes");
            let secrets: Vec<_> = volumes
                .iter()
                .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
                .collect();
            assert_eq!(secrets, ["coupon-tls", "kafka-client"]);
            let c = &pod.containers[0];
            let mounts = c.volume_mounts.as_ref().expect("mounts");
            assert!(mounts.iter().all(|m| m.read_only == Some(true)));
            let env: BTreeMap<_, _> = c
                .env
                .iter()
                .flatten()
                .filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?)))
                .collect();
            assert_eq!(env["REDIS_CA_FILE"], "/etc/coupon/tls/ca.pem");
            assert_eq!(env["REDIS_CLIENT_KEY"], "/etc/coupon/tls/client.key");
            assert_eq!(
                env["KAFKA_PROPERTIES_FILE"],
                "/etc/coupon/kafka/client.properties"
            );
        }
        let plain = CouponCampaign::new("p", cc.spec.clone());
        let mut plain = plain;
        plain.spec.connections = Connections::default();
        let pod = api_deployment(&plain, &"i".into())
            .spec
            .and_then(|s| s.template.spec);
        assert!(pod.is_some_and(|p| p.volumes.is_none()));
    }
}
