//! The operator on a real API server (`scripts/cluster.sh up`), as the chart installs it: a host
//! process authenticated as the chart's ServiceAccount, so RBAC judges every call, reconciling a
//! campaign on the real Redis, Kafka and PostgreSQL. No kubelet runs, so pods stay Pending.

mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::operator_process::{
    Operator, Release, TempDir, calls_by, campaign_name, events, get, secret, wait_campaign,
    writes_by,
};
use common::tools::chart_grants;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// One operator at a time: a cluster-wide one would reconcile the other tests' campaigns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The backends' Secret the campaign's connections name by default.
fn backends_secret(cluster: &Cluster, ns: &str) {
    let (redis, kafka, db) = (
        coupon_e2e::redis_url(),
        coupon_e2e::kafka_brokers(),
        coupon_e2e::postgres_url(),
    );
    let data = [
        ("REDIS_URL", redis.as_str()),
        ("KAFKA_BROKERS", kafka.as_str()),
        ("DATABASE_URL", db.as_str()),
    ];
    secret(cluster, ns, "coupon-backends", &data);
}

fn campaign(name: &str, ns: &str, quantity: i64, partitions: i32) -> Value {
    json!({
        "apiVersion": "coupons.fcfs.dev/v1alpha1", "kind": "CouponCampaign",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "topic": {"partitions": partitions},
            "coupons": [{"ids": "1-3", "name": "coupon #{id}", "discount": 1000, "quantity": quantity}],
            "consumers": {"minReplicas": 1, "maxReplicas": 2}
        }
    })
}

fn condition<'a>(cc: &'a Value, kind: &str) -> &'a Value {
    cc["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_as_its_service_account_runs_a_campaign_end_to_end() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::from_env();
    cluster.install_crds();
    let op_ns = cluster.namespace("operator");
    let ns = cluster.namespace("drop");
    let dir = TempDir::new();
    let release = Release::install(&cluster, &op_ns.name, &["replicaCount=1"]);
    let kubeconfig = release.service_account_kubeconfig(dir.path());
    let user = format!(
        "system:serviceaccount:{}:{}",
        op_ns.name,
        release.service_account()
    );
    backends_secret(&cluster, &ns.name);
    let op = Operator::start(&release, &kubeconfig, "operator-0", dir.path());

    let name = campaign_name("d");
    let cc = campaign(&name, &ns.name, 40, 2);
    cluster.ok(&["apply", "-f", "-"], Some(&cc.to_string()));
    let live = wait_campaign(
        &cluster,
        &op,
        &ns.name,
        &name,
        Duration::from_secs(60),
        "Live",
        |cc| cc["status"]["phase"] == "Live" && cc["status"]["remaining"] == 120,
    )
    .await;
    let generation = &live["metadata"]["generation"];
    assert_eq!(&live["status"]["observedGeneration"], generation);
    assert_eq!(
        condition(&live, "StockLoaded")["status"],
        "True",
        "{}",
        live["status"]
    );
    assert_eq!(
        live["metadata"]["finalizers"].as_array().map(Vec::len),
        Some(1),
        "{}",
        live["metadata"]
    );
    let reasons: Vec<String> = events(&cluster, &ns.name, &name)
        .into_iter()
        .map(|(reason, _)| reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "Provisioned"),
        "events: {reasons:?}"
    );

    // Children: each owned by the campaign (controller reference), so the collector removes them.
    let uid = live["metadata"]["uid"].as_str().expect("uid");
    let children = [
        ("deployment", format!("{name}-api")),
        ("deployment", format!("{name}-consumer")),
        ("service", format!("{name}-api")),
        ("poddisruptionbudget", format!("{name}-api")),
        ("poddisruptionbudget", format!("{name}-consumer")),
    ];
    for (kind, child) in &children {
        let obj = get(&cluster, &ns.name, &[kind, child]);
        let owner = &obj["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["uid"].as_str(), owner["controller"].as_bool()),
            (Some(uid), Some(true)),
            "{kind}/{child}"
        );
    }
    // kubectl shows the live values.
    let table = cluster.ok(&["get", "cc", "-n", &ns.name, "-o", "wide"], None);
    assert!(
        table.contains("Live") && table.contains("120") && table.contains("1/1"),
        "{table}"
    );
    println!("{table}");

    // A pass that finds nothing changed writes nothing (the operator requeues every 5 s). The
    // first settlement round (every 10 s) is news for the status; after it nothing is.
    wait_campaign(
        &cluster,
        &op,
        &ns.name,
        &name,
        Duration::from_secs(30),
        "settled once",
        |cc| {
            condition(cc, "BooksBalanced")["message"]
                .as_str()
                .is_some_and(|m| m.contains("last settlement: 0 unsettled"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = writes_by(&user).len();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let quiet: Vec<_> = writes_by(&user).split_off(before);
    assert!(quiet.is_empty(), "writes while nothing changed: {quiet:?}");

    // A person's edit to a field the operator owns is put back.
    cluster.ok(
        &[
            "scale",
            "deployment",
            &format!("{name}-api"),
            "-n",
            &ns.name,
            "--replicas=5",
        ],
        None,
    );
    let api = format!("{name}-api");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = get(&cluster, &ns.name, &["deployment", &api]);
        if d["spec"]["replicas"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas stay {} (the operator's is 2)\n{}",
            d["spec"]["replicas"],
            op.tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Quantity and partitions grow.
    let grown = campaign(&name, &ns.name, 50, 3);
    cluster.ok(&["apply", "-f", "-"], Some(&grown.to_string()));
    let topic = coupon_core::campaign::topic_name(&name);
    wait_campaign(
        &cluster,
        &op,
        &ns.name,
        &name,
        Duration::from_secs(60),
        "grown",
        |cc| {
            cc["status"]["remaining"] == 150
                && cc["status"]["observedGeneration"] == cc["metadata"]["generation"]
        },
    )
    .await;
    let partitions =
        coupon_core::broker::partition_count(&coupon_e2e::kafka_brokers(), &topic).await;
    assert_eq!(partitions.expect("metadata"), Some(3));

    // Deleting the campaign runs the finalizer; the garbage collector removes the children.
    cluster.ok(
        &["delete", "cc", &name, "-n", &ns.name, "--timeout=60s"],
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    for (kind, child) in &children {
        loop {
            let out = cluster.kubectl(&["get", kind, child, "-n", &ns.name], None);
            if !out.ok && out.stderr.contains("NotFound") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{kind}/{child} outlived its campaign"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let reasons: Vec<String> = events(&cluster, &ns.name, &name)
        .into_iter()
        .map(|(reason, _)| reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "Cleanup"),
        "events: {reasons:?}"
    );
    drop(op);

    // The chart's RBAC against the calls the real authorizer judged: every call allowed, and
    // every grant used.
    let calls = calls_by(&user);
    let refused: Vec<_> = calls.iter().filter(|c| !c.3).collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    let mut used: BTreeSet<_> = calls.into_iter().map(|(g, r, v, _)| (g, r, v)).collect();
    // A server-side apply that creates its object is audited as a patch, but the server also
    // checks `create` (it refused the chart without it): the children's applies imply it.
    let applies: Vec<_> = used
        .iter()
        .filter(|(_, r, v)| {
            v == "patch"
                && ["deployments", "services", "poddisruptionbudgets"].contains(&r.as_str())
        })
        .map(|(g, r, _)| (g.clone(), r.clone(), "create".to_string()))
        .collect();
    used.extend(applies);
    let grants: BTreeSet<_> = chart_grants(&[], None).into_iter().collect();
    let unused: Vec<_> = grants.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "granted but never called: {unused:?}\ncalled: {used:?}"
    );
    println!("the operator's calls, all granted and every grant used: {used:?}");
}

/// The Lease's holder, if any.
fn lease_holder(cluster: &Cluster, ns: &str) -> Option<String> {
    let out = cluster.kubectl(
        &["get", "lease", "coupon-operator", "-n", ns, "-o", "json"],
        None,
    );
    let lease: Value = serde_json::from_str(&out.stdout).ok()?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_string)
}

async fn wait_holder(cluster: &Cluster, ns: &str, who: &str, within: Duration) -> Duration {
    let start = Instant::now();
    while lease_holder(cluster, ns).as_deref() != Some(who) {
        assert!(
            start.elapsed() < within,
            "{who} does not hold the lease after {within:?}: {:?}",
            lease_holder(cluster, ns)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    start.elapsed()
}

/// Two operator processes on a real Lease: one leads and only it reconciles and settles; kill -9
/// of the leader, the other takes over within the lease duration and the campaign keeps
/// reconciling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_the_lease() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::from_env();
    cluster.install_crds();
    let op_ns = cluster.namespace("operator");
    let ns = cluster.namespace("drop");
    let dir = TempDir::new();
    let watch = format!("watchNamespaces={{{}}}", ns.name);
    let release = Release::install(&cluster, &op_ns.name, &[watch.as_str()]);
    let kubeconfig = release.service_account_kubeconfig(dir.path());
    backends_secret(&cluster, &ns.name);
    let mut a = Operator::start(&release, &kubeconfig, "operator-a", dir.path());
    wait_holder(&cluster, &op_ns.name, "operator-a", Duration::from_secs(30)).await;
    let b = Operator::start(&release, &kubeconfig, "operator-b", dir.path());

    let name = campaign_name("d");
    cluster.ok(
        &["apply", "-f", "-"],
        Some(&campaign(&name, &ns.name, 10, 2).to_string()),
    );
    wait_campaign(
        &cluster,
        &a,
        &ns.name,
        &name,
        Duration::from_secs(60),
        "Live",
        |cc| cc["status"]["phase"] == "Live",
    )
    .await;
    // Settlement runs every 10 s on the leader; the follower neither reconciles nor settles.
    let series = format!("coupon_operator_unsettled_reservations{{campaign=\"{name}\"");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a.metrics().contains(&series) {
        assert!(
            Instant::now() < deadline,
            "the leader never settled:\n{}",
            a.tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let follower = b.metrics();
    assert!(!follower.is_empty(), "the follower serves /metrics");
    assert!(
        !follower.contains(&series),
        "the follower settled:\n{follower}"
    );
    assert!(
        !follower.contains("coupon_operator_reconciles_total{"),
        "the follower reconciled:\n{follower}"
    );
    assert_eq!(
        lease_holder(&cluster, &op_ns.name).as_deref(),
        Some("operator-a")
    );

    a.kill();
    let took = wait_holder(&cluster, &op_ns.name, "operator-b", Duration::from_secs(25)).await;
    println!("operator-b leads {took:?} after operator-a was killed (lease 15 s)");
    // The campaign keeps reconciling under the new leader.
    cluster.ok(
        &["apply", "-f", "-"],
        Some(&campaign(&name, &ns.name, 15, 2).to_string()),
    );
    wait_campaign(
        &cluster,
        &b,
        &ns.name,
        &name,
        Duration::from_secs(60),
        "grown by the new leader",
        |cc| {
            cc["status"]["remaining"] == 45
                && cc["status"]["observedGeneration"] == cc["metadata"]["generation"]
        },
    )
    .await;
    cluster.ok(
        &["delete", "cc", &name, "-n", &ns.name, "--timeout=60s"],
        None,
    );
}

/// watchNamespaces: the authorizer refuses the operator outside its namespaces, and a campaign
/// there is left alone while the one inside goes Live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_operator_leaves_other_namespaces_alone() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::from_env();
    cluster.install_crds();
    let op_ns = cluster.namespace("operator");
    let inside = cluster.namespace("inside");
    let outside = cluster.namespace("outside");
    let dir = TempDir::new();
    let watch = format!("watchNamespaces={{{}}}", inside.name);
    let release = Release::install(&cluster, &op_ns.name, &[watch.as_str()]);
    let sa = format!(
        "system:serviceaccount:{}:{}",
        op_ns.name,
        release.service_account()
    );
    let can = |verb: &str, what: &str, ns: &str| {
        let out = cluster.kubectl(&["auth", "can-i", verb, what, "-n", ns, "--as", &sa], None);
        out.stdout.trim() == "yes"
    };
    for (verb, what) in [
        ("get", "secrets"),
        ("list", "couponcampaigns.coupons.fcfs.dev"),
        ("patch", "deployments.apps"),
    ] {
        assert!(can(verb, what, &inside.name), "{verb} {what} inside");
        assert!(
            !can(verb, what, &outside.name),
            "{verb} {what} outside is allowed"
        );
    }
    let out = cluster.kubectl(
        &[
            "auth",
            "can-i",
            "list",
            "couponcampaigns.coupons.fcfs.dev",
            "-A",
            "--as",
            &sa,
        ],
        None,
    );
    assert_eq!(
        out.stdout.trim(),
        "no",
        "cluster-wide list: {}{}",
        out.stdout,
        out.stderr
    );

    let kubeconfig = release.service_account_kubeconfig(dir.path());
    backends_secret(&cluster, &inside.name);
    backends_secret(&cluster, &outside.name);
    let op = Operator::start(&release, &kubeconfig, "operator-0", dir.path());
    let (near, far) = (campaign_name("d"), campaign_name("d"));
    cluster.ok(
        &["apply", "-f", "-"],
        Some(&campaign(&far, &outside.name, 5, 1).to_string()),
    );
    cluster.ok(
        &["apply", "-f", "-"],
        Some(&campaign(&near, &inside.name, 5, 1).to_string()),
    );
    wait_campaign(
        &cluster,
        &op,
        &inside.name,
        &near,
        Duration::from_secs(60),
        "Live inside",
        |cc| cc["status"]["phase"] == "Live",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let left = get(&cluster, &outside.name, &["cc", &far]);
    assert!(
        left["status"].is_null(),
        "the campaign outside got a status: {}",
        left["status"]
    );
    assert!(
        left["metadata"]["finalizers"].is_null(),
        "and a finalizer: {}",
        left["metadata"]
    );
    let children = cluster.ok(
        &["get", "deployments", "-n", &outside.name, "-o", "name"],
        None,
    );
    assert!(children.trim().is_empty(), "children outside: {children}");
    cluster.ok(
        &["delete", "cc", &near, "-n", &inside.name, "--timeout=60s"],
        None,
    );
}
