//! The chart installed into a real API server (`scripts/cluster.sh up`) with `helm` the way a
//! user does it: `helm install` creates every object it renders (and the CRD, Established),
//! `helm upgrade` with other values switches the ClusterRole to namespaced Roles (the RBAC
//! checked by the server's own authorizer) and prunes what no longer renders, and
//! `helm uninstall` leaves nothing labelled with the release behind but the CRD.
//! `chart.rs` only renders the chart; this is what the server itself accepts.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::cluster::{CRD_NAME, Cluster};
use common::operator_process::Release;
use common::tools::{EVERY_OPTION, chart, helm_template};
use serde_yaml::Value;

/// How long garbage collection and helm's deletions may take to show.
const SETTLE: Duration = Duration::from_secs(60);

/// One object of a release, as `helm get manifest` lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Object {
    api_version: String,
    kind: String,
    name: String,
    namespace: Option<String>,
}

impl Object {
    /// `Kind.version.group` (or `Kind` for the core group): what kubectl resolves exactly.
    fn resource(&self) -> String {
        resource(&self.api_version, &self.kind)
    }

    /// kubectl arguments naming this object.
    fn args(&self) -> Vec<String> {
        let mut args = vec![self.resource(), self.name.clone()];
        if let Some(ns) = &self.namespace {
            args.extend(["-n".to_string(), ns.clone()]);
        }
        args
    }
}

fn resource(api_version: &str, kind: &str) -> String {
    match api_version.split_once('/') {
        Some((group, version)) => format!("{kind}.{version}.{group}"),
        None => kind.to_string(),
    }
}

/// helm that must succeed without a warning from the server (helm prints the API server's
/// warnings, e.g. unknown or duplicate fields it dropped, on stderr); its stdout.
fn helm_ok(cluster: &Cluster, args: &[&str]) -> String {
    let (ok, out, err) = cluster.helm(args);
    assert!(ok, "helm {args:?} failed:\n{out}{err}");
    assert!(
        !err.to_lowercase().contains("warn"),
        "helm {args:?} succeeded, but the server warned:\n{err}"
    );
    out
}

/// The objects of the release's current revision.
fn manifest(cluster: &Cluster, release: &str, ns: &str) -> BTreeSet<Object> {
    let text = helm_ok(cluster, &["get", "manifest", release, "-n", ns]);
    let objects: BTreeSet<Object> = text
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<Value>(d).ok())
        .filter(|d| d["kind"].is_string())
        .map(|d| Object {
            api_version: d["apiVersion"].as_str().expect("apiVersion").to_string(),
            kind: d["kind"].as_str().expect("kind").to_string(),
            name: d["metadata"]["name"].as_str().expect("name").to_string(),
            namespace: d["metadata"]["namespace"].as_str().map(String::from),
        })
        .collect();
    assert!(!objects.is_empty(), "no objects in the manifest:\n{text}");
    objects
}

/// The objects' kinds, sorted.
fn kinds(objects: &BTreeSet<Object>) -> Vec<&str> {
    let mut kinds: Vec<&str> = objects.iter().map(|o| o.kind.as_str()).collect();
    kinds.sort_unstable();
    kinds
}

/// Every object is on the server, labelled and annotated as the release's.
fn assert_on_server(cluster: &Cluster, release: &str, ns: &str, objects: &BTreeSet<Object>) {
    for o in objects {
        let named = o.args();
        let mut args: Vec<&str> = vec!["get"];
        args.extend(named.iter().map(String::as_str));
        args.extend(["-o", "json"]);
        let out = cluster.kubectl(&args, None);
        assert!(
            out.ok,
            "{o:?} renders but is not on the server: {}",
            out.stderr
        );
        let live: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
        let meta = &live["metadata"];
        assert_eq!(
            meta["labels"]["app.kubernetes.io/instance"], release,
            "{o:?}"
        );
        assert_eq!(
            meta["annotations"]["meta.helm.sh/release-name"], release,
            "{o:?}"
        );
        assert_eq!(
            meta["annotations"]["meta.helm.sh/release-namespace"], ns,
            "{o:?}"
        );
    }
}

/// `object` is (or, after deletions settle, becomes) absent from the server.
async fn assert_gone(cluster: &Cluster, object: &Object) {
    let mut args = vec!["get".to_string()];
    args.extend(object.args());
    args.extend(["--ignore-not-found", "-o", "name"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cluster
        .wait_for(&args, SETTLE, |out| out.trim().is_empty())
        .await;
}

/// What the service account may do, asked of the server's authorizer.
fn can(cluster: &Cluster, sa: &str, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i", "--as", sa];
    all.extend(args);
    let out = cluster.kubectl(&all, None);
    match out.stdout.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl {all:?}: {other}{}", out.stderr),
    }
}

fn deployment(cluster: &Cluster, name: &str, ns: &str) -> serde_json::Value {
    serde_json::from_str(&cluster.ok(
        &["get", "deployment.v1.apps", name, "-n", ns, "-o", "json"],
        None,
    ))
    .expect("json")
}

/// Nothing labelled with `release` is left on the server, in any namespace, of any kind the
/// chart can render (every option on, both RBAC modes, NetworkPolicies) or that the controllers
/// made from it (ReplicaSets and Pods carry the selector labels), once deletions settle.
async fn assert_nothing_left(cluster: &Cluster, release: &str) {
    let every = [
        EVERY_OPTION,
        &["watchNamespaces={a}", "networkPolicy.enabled=true"],
    ]
    .concat();
    let renderable: BTreeSet<(String, String)> = helm_template(&[])
        .expect("renders")
        .into_iter()
        .chain(helm_template(&every).expect("renders"))
        .map(|d| {
            (
                d["apiVersion"].as_str().expect("apiVersion").to_string(),
                d["kind"].as_str().expect("kind").to_string(),
            )
        })
        .collect();
    assert!(renderable.len() >= 12, "{renderable:?}");
    let served = cluster.ok(&["api-resources", "-o", "name"], None);
    let mut kinds_to_check = vec!["ReplicaSet.v1.apps".to_string(), "Pod".to_string()];
    for (api_version, kind) in &renderable {
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        // ServiceMonitor, PodMonitor and PrometheusRule: this cluster has no Prometheus
        // Operator CRDs, so none can exist here (and kubectl cannot even ask for them).
        if group == "monitoring.coreos.com"
            && !served
                .lines()
                .any(|l| l.ends_with(".monitoring.coreos.com"))
        {
            continue;
        }
        kinds_to_check.push(resource(api_version, kind));
    }
    let label = format!("app.kubernetes.io/instance={release}");
    let list = kinds_to_check.join(",");
    cluster
        .wait_for(
            &["get", &list, "-A", "-l", &label, "-o", "name"],
            SETTLE,
            |out| out.trim().is_empty(),
        )
        .await;
}

#[tokio::test]
async fn helm_installs_upgrades_and_uninstalls_the_chart_on_a_real_api_server() {
    let cluster = Cluster::from_env();
    let ns = cluster.namespace("helm");
    let shop_a = cluster.namespace("helm-shop-a");
    let shop_b = cluster.namespace("helm-shop-b");
    let release = Release::named(
        &cluster,
        &format!("hi-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        &ns.name,
    );
    let name = release.name.as_str();
    let chart = chart();
    let chart = chart.to_str().expect("utf-8 path");
    let fullname = format!("{name}-coupon-operator");
    let sa = format!("system:serviceaccount:{}:{fullname}", ns.name);

    // 1. Install with the defaults. Pods stay Pending (no kubelet), hence --wait=false.
    helm_ok(
        &cluster,
        &["install", name, chart, "-n", &ns.name, "--wait=false"],
    );
    let installed = manifest(&cluster, name, &ns.name);
    assert_eq!(
        kinds(&installed),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ],
        "{installed:#?}"
    );
    assert_on_server(&cluster, name, &ns.name, &installed);
    // helm applies crds/ only when the CRD is absent (other tests may have applied it first).
    cluster.ok(
        &[
            "wait",
            "--for=condition=Established",
            &format!("crd/{CRD_NAME}"),
            "--timeout=60s",
        ],
        None,
    );
    let d = deployment(&cluster, &fullname, &ns.name);
    assert_eq!(d["spec"]["replicas"], 2);
    // The ClusterRole grants the campaign rules everywhere, and nothing more.
    for shop in [&shop_a.name, &shop_b.name, &ns.name] {
        assert!(can(&cluster, &sa, &["get", "secrets", "-n", shop]));
    }
    assert!(can(
        &cluster,
        &sa,
        &["list", "couponcampaigns.coupons.fcfs.dev", "-A"]
    ));
    assert!(!can(
        &cluster,
        &sa,
        &["delete", "secrets", "-n", &shop_a.name]
    ));
    assert!(can(&cluster, &sa, &["create", "leases", "-n", &ns.name]));

    // 2. Upgrade: three replicas, two watched namespaces (Roles there instead of the
    // ClusterRole), NetworkPolicies in both.
    let watched = format!("watchNamespaces={{{},{}}}", shop_a.name, shop_b.name);
    helm_ok(
        &cluster,
        &[
            "upgrade",
            name,
            chart,
            "-n",
            &ns.name,
            "--wait=false",
            "--set",
            "replicaCount=3",
            "--set",
            &watched,
            "--set",
            "networkPolicy.enabled=true",
        ],
    );
    let upgraded = manifest(&cluster, name, &ns.name);
    assert_eq!(
        kinds(&upgraded),
        [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "NetworkPolicy",
            "NetworkPolicy",
            "NetworkPolicy",
            "NetworkPolicy",
            "Role",
            "Role",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ],
        "{upgraded:#?}"
    );
    for shop in [&shop_a.name, &shop_b.name] {
        for kind in ["Role", "RoleBinding"] {
            assert!(
                upgraded.iter().any(|o| o.kind == kind
                    && o.name == fullname
                    && o.namespace.as_deref() == Some(shop.as_str())),
                "no {kind} in {shop}: {upgraded:#?}"
            );
        }
    }
    assert_on_server(&cluster, name, &ns.name, &upgraded);
    let dropped: BTreeSet<Object> = installed.difference(&upgraded).cloned().collect();
    assert_eq!(
        kinds(&dropped),
        ["ClusterRole", "ClusterRoleBinding"],
        "{dropped:#?}"
    );
    for o in &dropped {
        assert_gone(&cluster, o).await;
    }
    let d = deployment(&cluster, &fullname, &ns.name);
    assert_eq!(d["spec"]["replicas"], 3, "the upgrade's replicaCount");
    let env = &d["spec"]["template"]["spec"]["containers"][0]["env"];
    let watch = env
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "WATCH_NAMESPACES")
        .unwrap_or_else(|| panic!("no WATCH_NAMESPACES: {env}"));
    assert_eq!(watch["value"], format!("{},{}", shop_a.name, shop_b.name));
    // Secrets are readable in the watched namespaces only; campaigns cannot be listed across
    // the cluster any more. The leader-election Role stays.
    assert!(can(&cluster, &sa, &["get", "secrets", "-n", &shop_a.name]));
    assert!(can(&cluster, &sa, &["get", "secrets", "-n", &shop_b.name]));
    assert!(!can(&cluster, &sa, &["get", "secrets", "-n", &ns.name]));
    assert!(!can(
        &cluster,
        &sa,
        &["list", "couponcampaigns.coupons.fcfs.dev", "-A"]
    ));
    assert!(can(
        &cluster,
        &sa,
        &[
            "list",
            "couponcampaigns.coupons.fcfs.dev",
            "-n",
            &shop_a.name
        ]
    ));
    assert!(can(&cluster, &sa, &["create", "leases", "-n", &ns.name]));

    // 3. Uninstall: nothing labelled with the release is left, anywhere.
    helm_ok(&cluster, &["uninstall", name, "-n", &ns.name]);
    assert_nothing_left(&cluster, name).await;
    // The cluster-scoped objects by name, too, and helm's own release records.
    for o in installed.iter().filter(|o| o.namespace.is_none()) {
        assert_gone(&cluster, o).await;
    }
    let records = cluster.ok(
        &[
            "get",
            "secrets",
            "-n",
            &ns.name,
            "-l",
            &format!("owner=helm,name={name}"),
            "-o",
            "name",
        ],
        None,
    );
    assert!(records.trim().is_empty(), "release records left: {records}");
    // The CRD stays: helm never deletes CRDs it installed from crds/ (deleting one would
    // delete every campaign in the cluster), on upgrade or uninstall.
    let crd = cluster.ok(
        &[
            "get",
            "crd",
            CRD_NAME,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
        ],
        None,
    );
    assert_eq!(crd, "True", "the CRD survives helm uninstall");
}

/// helm allows release names of up to 53 characters; the chart's names then hit the 63-character
/// limit, and the two dashboard ConfigMaps used to be cut to one name, which the server refused
/// (`configmaps "…-coupon-operator-co" already exists`).
#[tokio::test]
async fn the_longest_release_name_helm_allows_installs() {
    let cluster = Cluster::from_env();
    let ns = cluster.namespace("helm-long");
    let release = Release::named(
        &cluster,
        &format!("longest-release-name-{}", uuid::Uuid::new_v4().simple()),
        &ns.name,
    );
    let name = release.name.as_str();
    assert_eq!(name.len(), 53, "helm's limit");
    let chart = chart();
    let chart = chart.to_str().expect("utf-8 path");
    helm_ok(
        &cluster,
        &["install", name, chart, "-n", &ns.name, "--wait=false"],
    );
    let installed = manifest(&cluster, name, &ns.name);
    assert_on_server(&cluster, name, &ns.name, &installed);
    let maps: Vec<&str> = installed
        .iter()
        .filter(|o| o.kind == "ConfigMap")
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(maps.len(), 2, "{installed:#?}");
    for m in &maps {
        assert!(m.len() <= 63, "{m}");
    }
    helm_ok(&cluster, &["uninstall", name, "-n", &ns.name]);
    assert_nothing_left(&cluster, name).await;
}

/// A namespace listed twice in networkPolicy.namespaces used to render two NetworkPolicies of
/// one name, which the server refused half-way through the install
/// (`networkpolicies.networking.k8s.io "coupon-api" already exists`, release left "failed");
/// the values schema refuses it now, before anything reaches the server.
#[tokio::test]
async fn a_namespace_listed_twice_is_refused_before_the_server_sees_anything() {
    let cluster = Cluster::from_env();
    let ns = cluster.namespace("helm-dup");
    let release = Release::named(
        &cluster,
        &format!("hi-dup-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        &ns.name,
    );
    let name = release.name.as_str();
    let chart = chart();
    let chart = chart.to_str().expect("utf-8 path");
    let twice = format!("networkPolicy.namespaces={{{0},{0}}}", ns.name);
    let (ok, out, err) = cluster.helm(&[
        "install",
        name,
        chart,
        "-n",
        &ns.name,
        "--wait=false",
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        &twice,
    ]);
    assert!(!ok, "installed with a namespace listed twice: {out}");
    assert!(
        err.contains("values don't meet the specifications of the schema")
            && err.contains("networkPolicy.namespaces"),
        "{err}"
    );
    let (found, _, _) = cluster.helm(&["status", name, "-n", &ns.name]);
    assert!(!found, "a release was recorded");
    assert_nothing_left(&cluster, name).await;
}
