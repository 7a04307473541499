//! The workloads the operator writes, run. On the real API server (`scripts/cluster.sh up`)
//! with the chart's operator as a host process (its ServiceAccount, `watchNamespaces` = the
//! test's namespace), the test reads the API and consumer Deployments back from the server and
//! starts `coupon-api` and `coupon-consumer` as host processes with exactly their pods' command,
//! env, Secret volumes and user (see common/pods.rs for the two host translations: mount paths
//! under a temp root, listen ports on free loopback ports). No kubelet runs pods here.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::operator_process::{
    Operator, Release, TempDir, campaign_name, events, get, secret, wait_campaign,
};
use common::pods::{Http, Pod, Process, wait_http};
use coupon_core::campaign::{consumer_group, topic_name};
use coupon_core::verify::{AcceptedLog, Status, VerifyInput, verify};
use serde_json::{Value, json};

/// One operator at a time (each test installs its own release).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a load run got back.
#[derive(Default)]
struct Load {
    accepted: AcceptedLog,
    codes: BTreeMap<String, u64>,
}

/// `requests` POST /api/coupons/{id}/issue (`userId` in the body, as `identity: body` wants) on
/// `connections` keep-alive connections; `pick(i)` is request i's (coupon, user).
async fn load(
    addr: &str,
    requests: usize,
    connections: usize,
    pick: impl Fn(usize) -> (u32, u64) + Send + Sync + 'static,
) -> Load {
    let pick = std::sync::Arc::new(pick);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (pick, next, addr) = (pick.clone(), next.clone(), addr.to_string());
        tasks.push(tokio::spawn(async move {
            let http = Http::new(&addr);
            let mut out = Load::default();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    return out;
                }
                let (coupon, user) = pick(i);
                let body = format!(r#"{{"userId":{user}}}"#);
                let path = format!("/api/coupons/{coupon}/issue");
                let code = match http.call("POST", &path, Some(&body)).await {
                    Ok((status, text)) => {
                        let json: Value = serde_json::from_str(&text).unwrap_or_default();
                        let id = json["requestId"]
                            .as_str()
                            .and_then(|s| uuid::Uuid::parse_str(s).ok());
                        let code = if status == 202 {
                            "accepted".to_string()
                        } else {
                            json["code"]
                                .as_str()
                                .map_or_else(|| format!("http_{status}"), str::to_string)
                        };
                        match (code.as_str(), id) {
                            ("accepted", Some(id)) => {
                                out.accepted.accepted.insert(id);
                            }
                            ("accepted", None) => panic!("202 without a request id: {text}"),
                            ("unavailable", Some(id)) => {
                                out.accepted.ambiguous.insert(id);
                            }
                            _ => {}
                        }
                        code
                    }
                    Err(_) => "transport_error".to_string(),
                };
                *out.codes.entry(code).or_default() += 1;
            }
        }));
    }
    let mut all = Load::default();
    for t in tasks {
        let part = t.await.expect("load task");
        common::absorb(&mut all.accepted, part.accepted);
        for (k, v) in part.codes {
            *all.codes.entry(k).or_default() += v;
        }
    }
    all
}

/// The books: drained, then I1–I6 with the 202s' request ids (I4 must really run).
async fn check_books(campaign: &str, accepted: &AcceptedLog) {
    let kafka: coupon_core::connections::KafkaConnection = (&coupon_e2e::kafka_brokers()).into();
    let topic = topic_name(campaign);
    let lag = coupon_core::broker::wait_drained(
        kafka.clone(),
        &consumer_group(campaign),
        &topic,
        Duration::from_secs(60),
    )
    .await
    .expect("lag");
    assert_eq!(lag, 0, "not drained");
    let (gate, ledger) = common::backends().await;
    let report = verify(
        &VerifyInput {
            campaign,
            topic: &topic,
            kafka: &kafka,
            spec: None,
            accepted: Some(accepted),
        },
        &gate,
        &ledger,
    )
    .await
    .expect("verify");
    assert!(
        report.checks.iter().all(|c| c.status == Status::Pass),
        "books:\n{}",
        report.render()
    );
    println!("{}", report.render());
}

fn deployment(cluster: &Cluster, ns: &str, name: &str) -> Value {
    get(cluster, ns, &["deployment", name])
}

/// The consumer Deployment's replicas; also fails the test if they ever exceed `ceiling`.
fn replicas(cluster: &Cluster, ns: &str, name: &str, ceiling: i64) -> i64 {
    let r = deployment(cluster, ns, name)["spec"]["replicas"]
        .as_i64()
        .expect("replicas");
    assert!(r <= ceiling, "{name} scaled to {r}, above {ceiling}");
    r
}

fn start(pod: &Pod, dir: &Path) -> Process {
    pod.spawn(&dir.join(format!("{}.log", pod.name)))
}

/// Every httpGet probe of the container answers 2xx/3xx on the process (the kubelet's rule).
async fn probes_pass(pod: &Pod, process: &mut Process) {
    for kind in ["readinessProbe", "livenessProbe"] {
        let (addr, path) = pod.probe(kind);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            process.assert_running();
            match Http::new(&addr).call("GET", &path, None).await {
                Ok((s, _)) if (200..400).contains(&s) => break,
                Ok((s, b)) => assert!(
                    Instant::now() < deadline && s != 404,
                    "{} {kind} GET {path}: {s} {b}\n{}",
                    pod.name,
                    process.tail()
                ),
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "{} {kind} GET {path}: {e}\n{}",
                    pod.name,
                    process.tail()
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Test 1. The pod specs run: a campaign on secured Kafka (SASL_SSL, one SCRAM principal per
/// workload, the broker's CA in the TLS Secret), so the pods need every kind of thing the
/// operator writes: env from Secret keys, a Secret directory and a single-file Secret mount
/// pointed at by env, files that name other mounts. Both processes start from their
/// Deployments, their probes answer, a hot load sells the small stock out, and the books
/// balance: every 202 stored, no duplicate, gate = ledger, nothing stranded, lag 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_workload_pod_specs_run_and_keep_the_books() {
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let cluster = Cluster::from_env();
    cluster.install_crds();
    let op_ns = cluster.namespace("wl-op");
    let ns = cluster.namespace("wl-pods");
    let dir = TempDir::new();
    let name = campaign_name("p");
    let kafka = coupon_e2e::kafka_node::listeners();
    coupon_e2e::kafka_node::grant_campaign(&name);
    secret(
        &cluster,
        &ns.name,
        "coupon-backends",
        &[
            ("REDIS_URL", &coupon_e2e::redis_url()),
            ("KAFKA_BROKERS", &kafka.sasl),
            ("DATABASE_URL", &coupon_e2e::postgres_url()),
        ],
    );
    let ca = std::fs::read_to_string(&kafka.ca).expect("kafka CA");
    secret(&cluster, &ns.name, "coupon-tls", &[("kafka-ca.pem", &ca)]);
    for (secret_name, user) in [
        ("kafka-client", "coupon-operator"),
        ("kafka-api", "coupon-api"),
        ("kafka-consumer", "coupon-consumer"),
    ] {
        let properties = format!(
            "client.id={user}-pods\nsecurity.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n\
             sasl.username={user}\nsasl.password={}\nssl.ca.location=/etc/coupon/tls/kafka-ca.pem\n",
            kafka.users[user]
        );
        secret(
            &cluster,
            &ns.name,
            secret_name,
            &[("client.properties", &properties)],
        );
    }
    let release = Release::install(
        &cluster,
        &op_ns.name,
        &[
            "replicaCount=1",
            &format!("watchNamespaces={{{}}}", ns.name),
        ],
    );
    let kubeconfig = release.service_account_kubeconfig(dir.path());
    let op = Operator::start(&release, &kubeconfig, "operator-0", dir.path());

    let backends = |k: &str| json!({"name": "coupon-backends", "key": k});
    let cc = json!({
        "apiVersion": "coupons.fcfs.dev/v1alpha1", "kind": "CouponCampaign",
        "metadata": {"name": name, "namespace": ns.name},
        "spec": {
            "topic": {"partitions": 2},
            "coupons": [{"ids": "1-2", "name": "coupon #{id}", "discount": 1000, "quantity": 25}],
            "consumers": {"minReplicas": 1, "maxReplicas": 2},
            "connections": {
                "redis": backends("REDIS_URL"),
                "kafka": backends("KAFKA_BROKERS"),
                "database": backends("DATABASE_URL"),
                "kafkaProperties": {"name": "kafka-client", "key": "client.properties"},
                "apiKafkaProperties": {"name": "kafka-api", "key": "client.properties"},
                "consumerKafkaProperties": {"name": "kafka-consumer", "key": "client.properties"},
                "tls": {"secretName": "coupon-tls"}
            }
        }
    });
    cluster.ok(&["apply", "-f", "-"], Some(&cc.to_string()));
    wait_campaign(
        &cluster,
        &op,
        &ns.name,
        &name,
        Duration::from_secs(90),
        "Live",
        |cc| cc["status"]["phase"] == "Live" && cc["status"]["remaining"] == 50,
    )
    .await;

    let api_pod = Pod::from_deployment(
        &cluster,
        &ns.name,
        &deployment(&cluster, &ns.name, &format!("{name}-api")),
        &format!("{name}-api-0"),
        dir.path(),
    );
    let consumer_pod = Pod::from_deployment(
        &cluster,
        &ns.name,
        &deployment(&cluster, &ns.name, &format!("{name}-consumer")),
        &format!("{name}-consumer-0"),
        dir.path(),
    );
    // The pods mount what they are pointed at.
    for (pod, own) in [(&api_pod, "coupon-api"), (&consumer_pod, "coupon-consumer")] {
        let env: BTreeMap<&str, &str> = pod
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let props = std::fs::read_to_string(env["KAFKA_PROPERTIES_FILE"]).expect("properties");
        assert!(
            props.contains(&format!("sasl.username={own}")),
            "{}: {props}",
            pod.name
        );
        println!(
            "{}: {} {:?} as {:?}",
            pod.name,
            pod.program.display(),
            pod.env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            pod.user
        );
    }
    let mut api = start(&api_pod, dir.path());
    let mut consumer = start(&consumer_pod, dir.path());
    probes_pass(&api_pod, &mut api).await;
    probes_pass(&consumer_pod, &mut consumer).await;
    let (ready_addr, ready_path) = api_pod.probe("readinessProbe");
    wait_http(
        &ready_addr,
        &ready_path,
        200,
        Duration::from_secs(5),
        "API ready",
    )
    .await;

    // A hot load: 3000 requests from 400 users (repeats) on 2 coupons of 25 each.
    let target = api_pod.addr(8080);
    let loaded = Instant::now();
    let result = load(&target, 3000, 32, |i| {
        let r = common::mix(i, 7);
        ((r % 2) as u32 + 1, (r >> 8) % 400 + 1)
    })
    .await;
    println!("load: {:?} in {:?}", result.codes, loaded.elapsed());
    api.assert_running();
    consumer.assert_running();
    assert_eq!(
        result.accepted.accepted.len(),
        50,
        "the stock sells out exactly: {:?}\n{}",
        result.codes,
        api.tail()
    );
    let allowed = ["accepted", "sold_out", "already_issued"];
    assert!(
        result.codes.keys().all(|c| allowed.contains(&c.as_str())),
        "unexpected answers: {:?}\n{}",
        result.codes,
        api.tail()
    );
    check_books(&name, &result.accepted).await;
    wait_campaign(
        &cluster,
        &op,
        &ns.name,
        &name,
        Duration::from_secs(30),
        "SoldOut",
        |cc| cc["status"]["phase"] == "SoldOut" && cc["status"]["issued"] == 50,
    )
    .await;
    consumer.assert_running();
    api.terminate(Duration::from_secs(30));
    consumer.terminate(Duration::from_secs(30));
    drop(op);
    println!("took {:?}", started.elapsed());
}

/// Test 2. Lag autoscaling on the real Deployment: with no consumer running, load through the
/// API process builds lag; the operator raises the consumer Deployment's replicas to
/// min(partitions, maxReplicas) and reports it; consumers started from the pod spec (as many as
/// the replicas) drain the lag, and the replicas fall back to minReplicas after the
/// stabilisation window. The books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumers_scale_on_lag_and_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let cluster = Cluster::from_env();
    cluster.install_crds();
    let op_ns = cluster.namespace("wl-op");
    let ns = cluster.namespace("wl-scale");
    let dir = TempDir::new();
    let name = campaign_name("s");
    secret(
        &cluster,
        &ns.name,
        "coupon-backends",
        &[
            ("REDIS_URL", &coupon_e2e::redis_url()),
            ("KAFKA_BROKERS", &coupon_e2e::kafka_brokers()),
            ("DATABASE_URL", &coupon_e2e::postgres_url()),
        ],
    );
    let release = Release::install(
        &cluster,
        &op_ns.name,
        &[
            "replicaCount=1",
            &format!("watchNamespaces={{{}}}", ns.name),
        ],
    );
    let kubeconfig = release.service_account_kubeconfig(dir.path());
    let op = Operator::start(&release, &kubeconfig, "operator-0", dir.path());
    let (partitions, max, min) = (4, 3, 1);
    // Longer than the operator's 5 s pass, so the window shows (with 5 s the recommendation
    // of the previous pass has already left the window when the lag first reads 0).
    const WINDOW_SECS: i64 = 15;
    let cc = json!({
        "apiVersion": "coupons.fcfs.dev/v1alpha1", "kind": "CouponCampaign",
        "metadata": {"name": name, "namespace": ns.name},
        "spec": {
            "topic": {"partitions": partitions},
            "coupons": [{"ids": "1-4", "name": "coupon #{id}", "discount": 1000, "quantity": 500}],
            "consumers": {"minReplicas": min, "maxReplicas": max, "targetLagPerReplica": 50,
                          "scaleDownStabilizationSeconds": WINDOW_SECS}
        }
    });
    cluster.ok(&["apply", "-f", "-"], Some(&cc.to_string()));
    wait_campaign(
        &cluster,
        &op,
        &ns.name,
        &name,
        Duration::from_secs(90),
        "Live",
        |cc| cc["status"]["phase"] == "Live" && cc["status"]["remaining"] == 2000,
    )
    .await;
    let consumers = format!("{name}-consumer");
    let ceiling = i64::from(max.min(partitions));
    assert_eq!(
        replicas(&cluster, &ns.name, &consumers, ceiling),
        i64::from(min)
    );
    let template = deployment(&cluster, &ns.name, &consumers)["spec"]["template"].clone();

    let api_pod = Pod::from_deployment(
        &cluster,
        &ns.name,
        &deployment(&cluster, &ns.name, &format!("{name}-api")),
        &format!("{name}-api-0"),
        dir.path(),
    );
    let mut api = start(&api_pod, dir.path());
    probes_pass(&api_pod, &mut api).await;

    // 600 distinct users over 4 coupons: 600 events nobody consumes.
    let first = load(&api_pod.addr(8080), 600, 16, |i| {
        ((i % 4) as u32 + 1, i as u64 + 1)
    })
    .await;
    assert_eq!(
        result_codes(&first.codes),
        vec![("accepted".to_string(), 600)],
        "{}",
        api.tail()
    );

    // The operator sees the lag and scales up, never past min(partitions, maxReplicas).
    let scaled_up = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while replicas(&cluster, &ns.name, &consumers, ceiling) != ceiling {
        assert!(
            Instant::now() < deadline,
            "consumers not scaled up to {ceiling}\n{}",
            op.tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!("scaled up to {ceiling} in {:?}", scaled_up.elapsed());
    let summary = format!("{ceiling}/{ceiling}");
    let up = wait_campaign(
        &cluster,
        &op,
        &ns.name,
        &name,
        Duration::from_secs(30),
        "consumers status",
        |cc| cc["status"]["consumers"]["summary"] == summary.as_str(),
    )
    .await;
    assert_eq!(up["status"]["lag"], 600, "{}", up["status"]);
    let scale_time = |cc: &Value| {
        let t = cc["status"]["consumers"]["lastScaleTime"]
            .as_str()
            .unwrap_or_else(|| panic!("no lastScaleTime: {}", cc["status"]));
        chrono::DateTime::parse_from_rfc3339(t).expect("time")
    };
    let up_at = scale_time(&up);
    let table = cluster.ok(&["get", "cc", &name, "-n", &ns.name], None);
    assert!(table.contains(&summary), "{table}");
    // Only the replicas changed: the pod template is the one the pods were made from.
    assert_eq!(
        deployment(&cluster, &ns.name, &consumers)["spec"]["template"],
        template
    );

    // As many consumer processes as the Deployment asks for, from its pod spec.
    let mut running: Vec<Process> = Vec::new();
    let mut pods = Vec::new();
    for i in 0..ceiling {
        let pod = Pod::from_deployment(
            &cluster,
            &ns.name,
            &deployment(&cluster, &ns.name, &consumers),
            &format!("{consumers}-{i}"),
            dir.path(),
        );
        running.push(start(&pod, dir.path()));
        pods.push(pod);
    }
    for (pod, p) in pods.iter().zip(running.iter_mut()) {
        probes_pass(pod, p).await;
    }
    let drained = wait_campaign(
        &cluster,
        &op,
        &ns.name,
        &name,
        Duration::from_secs(60),
        "lag drained",
        |cc| cc["status"]["lag"] == 0 && cc["status"]["issued"] == 600,
    )
    .await;
    let drained_at = Instant::now();
    println!("drained; consumers {}", drained["status"]["consumers"]);
    // Drained, but the window still holds the replicas.
    assert_eq!(
        drained["status"]["consumers"]["current"], ceiling,
        "{}",
        drained["status"]
    );

    // Back to minReplicas once the stabilisation window has passed (within it plus passes).
    let deadline = Instant::now() + Duration::from_secs(WINDOW_SECS as u64 + 20);
    while replicas(&cluster, &ns.name, &consumers, ceiling) != i64::from(min) {
        for p in &mut running {
            p.assert_running();
        }
        assert!(
            Instant::now() < deadline,
            "consumers not scaled back to {min}\n{}",
            op.tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!(
        "scaled down {:?} after the drain was reported",
        drained_at.elapsed()
    );
    let summary = format!("{min}/{min}");
    let down = wait_campaign(
        &cluster,
        &op,
        &ns.name,
        &name,
        Duration::from_secs(30),
        "consumers status back",
        |cc| cc["status"]["consumers"]["summary"] == summary.as_str(),
    )
    .await;
    // The operator's own clock (RFC 3339 seconds): the scale-up's recommendation held the
    // replicas for the whole window.
    let held = (scale_time(&down) - up_at).num_seconds();
    assert!(
        held >= WINDOW_SECS - 1,
        "scaled down {held} s after scaling up, inside the {WINDOW_SECS} s window"
    );
    let notes: Vec<String> = events(&cluster, &ns.name, &name)
        .into_iter()
        .filter(|(reason, _)| reason == "Scaled")
        .map(|(_, note)| note)
        .collect();
    assert!(
        notes.iter().any(|n| n.contains("ScaleUp"))
            && notes.iter().any(|n| n.contains("ScaleDown")),
        "Scaled events: {notes:?}"
    );
    // The scaled-down pods go away (SIGTERM: they commit and leave the group).
    for mut p in running.drain(1..) {
        p.terminate(Duration::from_secs(30));
    }

    // More load with one consumer left, then the books.
    let second = load(&api_pod.addr(8080), 200, 8, |i| {
        ((i % 4) as u32 + 1, 10_000 + i as u64)
    })
    .await;
    assert_eq!(
        result_codes(&second.codes),
        vec![("accepted".to_string(), 200)],
        "{}",
        api.tail()
    );
    let mut accepted = first.accepted;
    accepted.accepted.extend(second.accepted.accepted);
    check_books(&name, &accepted).await;
    running[0].assert_running();
    api.terminate(Duration::from_secs(30));
    drop(op);
    println!("took {:?}", started.elapsed());
}

fn result_codes(codes: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    codes.iter().map(|(k, v)| (k.clone(), *v)).collect()
}
