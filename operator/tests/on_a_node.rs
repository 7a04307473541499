//! The user's path on a real node: `scripts/cluster.sh up --node` runs containerd, the kubelet
//! and kube-scheduler beside the control plane, with the product's image preloaded by
//! scripts/images.sh (no registry). Everything here is what a user does: `helm install` the
//! chart, `kubectl apply` the seed campaign, load the API pods, `couponctl verify`; then the
//! cluster's own disruptions under load: pods deleted, a rolling update, and the lag autoscaler
//! starting consumer pods that drain a backlog. Every phase ends with the books.
//!
//! The pods reach the backends through the node's relays at the node's address (the gateway of
//! the pod network); the test reaches the API pods at their own addresses, as an ingress
//! controller does: it routes to the Ready addresses of the campaign Service's EndpointSlices.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::operator_process::{Release, TempDir, campaign_name, get};
use common::tools::binary;
use coupon_core::verify::AcceptedLog;
use serde_json::{Value, json};

/// The node the suite's `scripts/cluster.sh up --node` started: its name, its address (where
/// pods reach this machine) and tolerations for its taints.
struct Node {
    name: String,
    address: String,
    tolerations: Value,
}

fn ready_node(cluster: &Cluster) -> Node {
    let nodes: Value =
        serde_json::from_str(&cluster.ok(&["get", "nodes", "-o", "json"], None)).expect("json");
    let node = nodes["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .unwrap_or_else(|| {
            panic!("no Ready node: start one with `scripts/cluster.sh up --node` (scripts/test.sh does)")
        });
    let address = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .expect("the node's InternalIP")
        .to_string();
    let tolerations: Vec<Value> = node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            !t["key"]
                .as_str()
                .unwrap_or("")
                .starts_with("node.kubernetes.io/")
        })
        .map(|t| json!({"key": t["key"], "operator": "Exists", "effect": t["effect"]}))
        .collect();
    Node {
        name: node["metadata"]["name"].as_str().expect("name").to_string(),
        address,
        tolerations: Value::Array(tolerations),
    }
}

/// Pods created in `ns` tolerate the node's taints (PodTolerationRestriction's annotation).
fn tolerate(cluster: &Cluster, ns: &str, node: &Node) {
    let annotation = format!(
        "scheduler.alpha.kubernetes.io/defaultTolerations={}",
        node.tolerations
    );
    cluster.ok(&["annotate", "namespace", ns, &annotation], None);
}

/// The last lines of every container of the pods matching `selector`, for failure messages.
fn logs(cluster: &Cluster, ns: &str, selector: &str) -> String {
    let out = cluster.kubectl(
        &[
            "logs",
            "-n",
            ns,
            "-l",
            selector,
            "--tail",
            "25",
            "--prefix",
            "--all-containers",
        ],
        None,
    );
    format!("{}{}", out.stdout, out.stderr)
}

/// Until the Deployment's replicas are all updated, Ready and the only ones (a finished
/// rollout), and `extra` holds on it.
async fn rolled_out(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    within: Duration,
    extra: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let d = get(cluster, ns, &["deployment", name]);
        let (spec, status) = (&d["spec"]["replicas"], &d["status"]);
        let done = d["metadata"]["generation"] == status["observedGeneration"]
            && status["updatedReplicas"] == *spec
            && status["readyReplicas"] == *spec
            && status["replicas"] == *spec;
        if done && extra(&d) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "{name} not rolled out in {within:?}: {status}\n{}",
            logs(
                cluster,
                ns,
                &format!(
                    "app.kubernetes.io/instance={}",
                    d["metadata"]["labels"]["app.kubernetes.io/instance"]
                        .as_str()
                        .unwrap_or("")
                )
            )
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Until the campaign's `status.FIELD` reads `want`.
async fn campaign_reaches(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    field: &str,
    want: &str,
    within: Duration,
) {
    let path = format!("jsonpath={{.status.{field}}}");
    cluster
        .wait_for(&["get", "cc", name, "-n", ns, "-o", &path], within, |v| {
            v == want
        })
        .await;
}

/// Names of the Running pods matching `selector`.
fn pods(cluster: &Cluster, ns: &str, selector: &str) -> Vec<(String, Value)> {
    let list = get(cluster, ns, &["pods", "-l", selector]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            (
                p["metadata"]["name"].as_str().expect("name").to_string(),
                p.clone(),
            )
        })
        .collect()
}

/// The Ready addresses of a Service's EndpointSlices (what an ingress controller routes to).
fn ready_addresses(cluster: &Cluster, ns: &str, service: &str) -> Vec<String> {
    let selector = format!("kubernetes.io/service-name={service}");
    let slices = get(cluster, ns, &["endpointslices", "-l", &selector]);
    let mut out = Vec::new();
    for slice in slices["items"].as_array().into_iter().flatten() {
        for e in slice["endpoints"].as_array().into_iter().flatten() {
            if e["conditions"]["ready"] == true {
                out.extend(
                    e["addresses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str().map(str::to_string)),
                );
            }
        }
    }
    out.sort();
    out
}

/// Requests to the API pods for as long as it runs: `connections` closed loops, each request
/// to the next Ready endpoint, the endpoints re-read twice a second.
struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Answers>>,
    sent: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Answers {
    accepted: AcceptedLog,
    codes: BTreeMap<String, u64>,
}

impl Traffic {
    fn start(cluster: &Cluster, ns: &str, service: &str, connections: usize, seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let targets = Arc::new(RwLock::new(ready_addresses(cluster, ns, service)));
        assert!(
            !targets.read().expect("lock").is_empty(),
            "no Ready API endpoint"
        );
        let mut tasks = Vec::new();
        {
            let (stop, targets) = (stop.clone(), targets.clone());
            let (kubectl, kubeconfig) = (cluster.kubectl.clone(), cluster.kubeconfig.clone());
            let (ns, service) = (ns.to_string(), service.to_string());
            tasks.push(tokio::task::spawn_blocking(move || {
                let cluster = Cluster {
                    kubectl,
                    kubeconfig,
                };
                while !stop.load(Ordering::Relaxed) {
                    let now = ready_addresses(&cluster, &ns, &service);
                    if !now.is_empty() {
                        *targets.write().expect("lock") = now;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                Answers::default()
            }));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        for c in 0..connections {
            let (stop, targets, sent, client) =
                (stop.clone(), targets.clone(), sent.clone(), client.clone());
            tasks.push(tokio::spawn(async move {
                let mut out = Answers::default();
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let n = sent.fetch_add(1, Ordering::Relaxed);
                    let address = {
                        let t = targets.read().expect("lock");
                        t[i % t.len()].clone()
                    };
                    i += 1;
                    let r = common::mix(n, seed);
                    let (coupon, user) = (r % 100 + 1, (r >> 8) % 150_000 + 1);
                    let answer = client
                        .post(format!("http://{address}:8080/api/coupons/{coupon}/issue"))
                        .header("content-type", "application/json")
                        .body(format!(r#"{{"userId":{user}}}"#))
                        .send()
                        .await;
                    let code = match answer {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let body: Value =
                                serde_json::from_slice(&resp.bytes().await.unwrap_or_default())
                                    .unwrap_or_default();
                            let id = body["requestId"]
                                .as_str()
                                .and_then(|s| uuid::Uuid::parse_str(s).ok());
                            match (status, id) {
                                (202, Some(id)) => {
                                    out.accepted.accepted.insert(id);
                                    "accepted".to_string()
                                }
                                (_, Some(id)) if body["code"] == "unavailable" => {
                                    out.accepted.ambiguous.insert(id);
                                    "unavailable".to_string()
                                }
                                _ => body["code"]
                                    .as_str()
                                    .map_or_else(|| format!("http_{status}"), str::to_string),
                            }
                        }
                        Err(e) => format!("transport_error ({address}: {e})"),
                    };
                    *out.codes.entry(code).or_default() += 1;
                }
                out
            }));
        }
        Self { stop, tasks, sent }
    }

    async fn finish(mut self) -> Answers {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Answers::default();
        for t in std::mem::take(&mut self.tasks) {
            let part = t.await.expect("traffic task");
            common::absorb(&mut all.accepted, part.accepted);
            for (k, v) in part.codes {
                *all.codes.entry(k).or_default() += v;
            }
        }
        all
    }
}

/// A test that fails mid-load must still end: the endpoint reader is a blocking task, which
/// the runtime waits for at shutdown.
impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Every answer was one a client may get during a drop: no request failed on its way, none
/// was refused as unavailable.
fn all_answered(what: &str, answers: &Answers) {
    let allowed = ["accepted", "sold_out", "already_issued"];
    let bad: Vec<_> = answers
        .codes
        .iter()
        .filter(|(code, _)| !allowed.contains(&code.as_str()))
        .collect();
    println!("{what}: {:?}", answers.codes);
    assert!(
        bad.is_empty(),
        "{what}: answers besides {allowed:?}: {bad:?}"
    );
    assert!(
        !answers.accepted.accepted.is_empty(),
        "{what}: no 202 at all"
    );
}

/// `couponctl ARGS` with the suite's backends; (success, stdout + stderr).
fn couponctl(args: &[&str]) -> (bool, String) {
    let out = Command::new(binary("couponctl"))
        .args(args)
        .env("LOG_FORMAT", "text")
        .output()
        .expect("couponctl runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The books by the user's tool: drained, and I1–I6 with every 202 of `accepted`.
fn books_balance(campaign: &str, accepted: &AcceptedLog, dir: &Path, what: &str) {
    let file = dir.join(format!("{what}.accepted"));
    let mut lines: Vec<String> = accepted.accepted.iter().map(|id| id.to_string()).collect();
    lines.extend(accepted.ambiguous.iter().map(|id| format!("?{id}")));
    std::fs::write(&file, lines.join("\n")).expect("accepted log");
    let file = file.to_str().expect("utf-8 path");
    let (ok, out) = couponctl(&[
        "verify",
        "--campaign",
        campaign,
        "--accepted",
        file,
        "--wait-drain",
        "120",
    ]);
    println!("{what}: couponctl verify\n{out}");
    assert!(ok, "{what}: the books do not balance:\n{out}");
}

/// Packets from `sources` to `address:port` (a relay of the node) refused with a reset, until
/// dropped: those pods lose that backend, every other pod keeps it.
struct Cut {
    rules: Vec<Vec<String>>,
}

impl Cut {
    fn new(address: &str, port: &str, sources: &[String]) -> Self {
        let rules: Vec<Vec<String>> = sources
            .iter()
            .map(|source| {
                [
                    "INPUT",
                    "-s",
                    source,
                    "-d",
                    address,
                    "-p",
                    "tcp",
                    "--dport",
                    port,
                    "-m",
                    "comment",
                    "--comment",
                    "fcfs-coupons-node-test",
                    "-j",
                    "REJECT",
                    "--reject-with",
                    "tcp-reset",
                ]
                .into_iter()
                .map(str::to_string)
                .collect()
            })
            .collect();
        for r in &rules {
            let status = Command::new("iptables")
                .arg("-I")
                .args(r)
                .status()
                .expect("iptables runs");
            assert!(status.success(), "iptables -I {r:?}");
        }
        Self { rules }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        for r in &self.rules {
            let _ = Command::new("iptables").arg("-D").args(r).status();
        }
    }
}

fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The user's path, for real: the chart's operator pods (one leads), the seed campaign's API
/// and consumer pods Ready by their probes, a hot load through the API pods, the books; then
/// under load an API pod and a consumer pod deleted and the API rolled, the books; then the
/// database cut so that lag builds, the operator's new consumer pods start and, once the
/// database is back, drain it; the books.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_users_path_on_a_real_node() {
    let started = Instant::now();
    let cluster = Cluster::from_env();
    let node = ready_node(&cluster);
    println!(
        "node {} at {}, tolerating {}",
        node.name, node.address, node.tolerations
    );
    let op_ns = cluster.namespace("node-op");
    let ns = cluster.namespace("node-drop");
    tolerate(&cluster, &op_ns.name, &node);
    tolerate(&cluster, &ns.name, &node);
    let dir = TempDir::new();

    // helm install: the operator pods run the preloaded image, one becomes the leader.
    let release = Release::install(
        &cluster,
        &op_ns.name,
        &[
            "image.pullPolicy=Never",
            &format!("watchNamespaces={{{}}}", ns.name),
        ],
    );
    let operator = release.deployment()["metadata"]["name"]
        .as_str()
        .expect("operator deployment")
        .to_string();
    rolled_out(
        &cluster,
        &op_ns.name,
        &operator,
        Duration::from_secs(120),
        |d| d["status"]["readyReplicas"] == 2,
    )
    .await;
    let operator_pods = format!("app.kubernetes.io/instance={}", release.name);
    let op_logs = || logs(&cluster, &op_ns.name, &operator_pods);
    let names: Vec<String> = pods(&cluster, &op_ns.name, &operator_pods)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let leader = cluster
        .wait_for(
            &[
                "get",
                "lease",
                "-n",
                &op_ns.name,
                "-o",
                "jsonpath={.items[*].spec.holderIdentity}",
            ],
            Duration::from_secs(60),
            |holder| names.iter().any(|n| n == holder.trim()),
        )
        .await;
    println!(
        "operator pods {names:?}, leader {leader} ({:?})",
        started.elapsed()
    );

    // The backends, at the node's address (its relays), and the seed campaign as shipped.
    let on_node = |url: &str| url.replace("127.0.0.1", &node.address);
    let kafka = std::env::var("KAFKA_POD_BROKERS")
        .expect("KAFKA_POD_BROKERS (scripts/services.sh exports Kafka's pod listener)");
    common::operator_process::secret(
        &cluster,
        &ns.name,
        "coupon-backends",
        &[
            ("REDIS_URL", &on_node(&coupon_e2e::redis_url())),
            ("KAFKA_BROKERS", &kafka),
            ("DATABASE_URL", &on_node(&coupon_e2e::postgres_url())),
        ],
    );
    let name = campaign_name("seed");
    let manifest =
        std::fs::read_to_string(common::tools::root().join("examples/seed-campaign.yaml"))
            .expect("examples/seed-campaign.yaml")
            .replace("name: seed\n", &format!("name: {name}\n"));
    cluster.ok(&["apply", "-n", &ns.name, "-f", "-"], Some(&manifest));
    let (api, consumers) = (format!("{name}-api"), format!("{name}-consumer"));
    campaign_reaches(
        &cluster,
        &ns.name,
        &name,
        "phase",
        "Live",
        Duration::from_secs(120),
    )
    .await;
    rolled_out(&cluster, &ns.name, &api, Duration::from_secs(120), |_| true).await;
    rolled_out(
        &cluster,
        &ns.name,
        &consumers,
        Duration::from_secs(120),
        |_| true,
    )
    .await;
    let api_pods = format!("app.kubernetes.io/instance={name},app.kubernetes.io/name=coupon-api");
    let consumer_pods =
        format!("app.kubernetes.io/instance={name},app.kubernetes.io/name=coupon-consumer");
    for (_, pod) in pods(&cluster, &ns.name, &api_pods)
        .iter()
        .chain(pods(&cluster, &ns.name, &consumer_pods).iter())
    {
        assert_eq!(pod["spec"]["nodeName"], node.name.as_str());
        assert_eq!(pod["status"]["phase"], "Running", "{}", pod["status"]);
    }
    println!(
        "campaign {name} Live, its pods Ready ({:?})",
        started.elapsed()
    );

    // A hot load through the API pods' addresses, then `couponctl verify`.
    let targets: Vec<String> = ready_addresses(&cluster, &ns.name, &api)
        .iter()
        .map(|a| format!("http://{a}:8080"))
        .collect();
    assert_eq!(targets.len(), 2, "two API pods Ready: {targets:?}");
    let accepted_file = dir.path().join("hot.accepted");
    let (ok, out) = couponctl(&[
        "load",
        "--campaign",
        &name,
        "--scenario",
        "hot",
        "--duration",
        "15s",
        "--connections",
        "48",
        "--target",
        &targets.join(","),
        "--accepted",
        accepted_file.to_str().expect("utf-8"),
        "--quiet",
    ]);
    println!("couponctl load\n{out}");
    assert!(
        ok,
        "the load's report failed:\n{out}\n{}",
        logs(&cluster, &ns.name, &api_pods)
    );
    let hot = AcceptedLog::parse(&std::fs::read_to_string(&accepted_file).expect("accepted"))
        .expect("accepted log");
    assert!(!hot.accepted.is_empty(), "no 202 in the hot load");
    books_balance(&name, &hot, dir.path(), "hot load");
    // Every later check holds every 202 so far: the ledger must hold exactly these.
    let mut all = hot;

    // Under load: an API pod and a consumer pod deleted, then a rolling update of the API.
    let traffic = Traffic::start(&cluster, &ns.name, &api, 32, 11);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (victim, _) = pods(&cluster, &ns.name, &api_pods).remove(0);
    cluster.ok(
        &["delete", "pod", "-n", &ns.name, &victim, "--wait=false"],
        None,
    );
    rolled_out(&cluster, &ns.name, &api, Duration::from_secs(120), |_| {
        pods(&cluster, &ns.name, &api_pods)
            .iter()
            .all(|(n, _)| *n != victim)
    })
    .await;
    println!(
        "API pod {victim} deleted and replaced ({:?})",
        started.elapsed()
    );
    let (victim, _) = pods(&cluster, &ns.name, &consumer_pods).remove(0);
    cluster.ok(
        &["delete", "pod", "-n", &ns.name, &victim, "--wait=false"],
        None,
    );
    rolled_out(
        &cluster,
        &ns.name,
        &consumers,
        Duration::from_secs(120),
        |_| {
            pods(&cluster, &ns.name, &consumer_pods)
                .iter()
                .all(|(n, _)| *n != victim)
        },
    )
    .await;
    println!(
        "consumer pod {victim} deleted and replaced ({:?})",
        started.elapsed()
    );
    let before: Vec<String> = pods(&cluster, &ns.name, &api_pods)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    cluster.ok(
        &["rollout", "restart", "deployment", &api, "-n", &ns.name],
        None,
    );
    rolled_out(&cluster, &ns.name, &api, Duration::from_secs(180), |_| {
        pods(&cluster, &ns.name, &api_pods)
            .iter()
            .all(|(n, _)| !before.contains(n))
    })
    .await;
    println!("API rolled: {before:?} replaced ({:?})", started.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = traffic.sent.load(Ordering::Relaxed);
    let disrupted = traffic.finish().await;
    println!("{sent} requests during the disruptions");
    all_answered("pods deleted and API rolled", &disrupted);
    common::absorb(&mut all, disrupted.accepted);
    books_balance(&name, &all, dir.path(), "disruptions");

    // Lag: the consumer pods cut off from Kafka (their fetches and heartbeats refused) while
    // the load goes on. The operator scales the consumers up to one per partition; the new
    // pods start, take the partitions once the group has expelled the silent members (their
    // session timeout) and drain the backlog; then the cut pods come back and rejoin. Every
    // pod is cut, not one: on a busy machine the earlier load may have left two running (the
    // scale-down waits 300 s), and one of them alone keeps the lag too low to scale on.
    let partitions = 3;
    let kafka_port = kafka.rsplit(':').next().expect("port").to_string();
    let stuck: Vec<(String, String)> = pods(&cluster, &ns.name, &consumer_pods)
        .into_iter()
        .map(|(pod, p)| {
            (
                pod,
                p["status"]["podIP"].as_str().expect("podIP").to_string(),
            )
        })
        .collect();
    assert!(
        stuck.len() < partitions as usize,
        "{} consumer pods before the cut: no room to scale up",
        stuck.len()
    );
    let stuck_ips: Vec<String> = stuck.iter().map(|(_, ip)| ip.clone()).collect();
    // A lower target than the shipped 5,000 events per replica, as an operator tunes it, so
    // that this machine's load reaches one consumer per partition within seconds.
    cluster.ok(
        &[
            "patch",
            "cc",
            &name,
            "-n",
            &ns.name,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"consumers":{"targetLagPerReplica":500}}}"#,
        ],
        None,
    );
    let traffic = Traffic::start(&cluster, &ns.name, &api, 16, 23);
    let cut = Cut::new(&node.address, &kafka_port, &stuck_ips);
    let cut_at = Instant::now();
    rolled_out(
        &cluster,
        &ns.name,
        &consumers,
        Duration::from_secs(120),
        |d| d["spec"]["replicas"] == partitions,
    )
    .await;
    let lag = get(&cluster, &ns.name, &["cc", &name])["status"]["lag"].clone();
    println!(
        "lag {lag}: {partitions} consumers Ready {:?} after the cut ({:?})",
        cut_at.elapsed(),
        started.elapsed()
    );
    assert!(lag.as_i64().unwrap_or(0) > 0, "no lag to drain: {lag}");
    // The load goes on until the new pods have taken over, then they drain what is left.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during_lag = traffic.finish().await;
    all_answered("a consumer cut off", &during_lag);
    campaign_reaches(
        &cluster,
        &ns.name,
        &name,
        "lag",
        "0",
        Duration::from_secs(180),
    )
    .await;
    println!(
        "drained by the new consumers {:?} after the cut",
        cut_at.elapsed()
    );
    let http = reqwest::Client::new();
    for (pod, p) in pods(&cluster, &ns.name, &consumer_pods) {
        if stuck.iter().any(|(cut, _)| *cut == pod) {
            continue;
        }
        let ip = p["status"]["podIP"].as_str().expect("podIP");
        let text = http
            .get(format!("http://{ip}:9090/metrics"))
            .send()
            .await
            .expect("consumer metrics")
            .text()
            .await
            .expect("metrics text");
        let inserted = metric(&text, "coupon_consumer_events_total", "result=\"inserted\"");
        println!("{pod}: {inserted} events inserted");
        assert!(
            inserted > 0.0,
            "the new consumer {pod} stored nothing:\n{}",
            op_logs()
        );
    }
    drop(cut);
    common::absorb(&mut all, during_lag.accepted);
    books_balance(&name, &all, dir.path(), "lag drained");
    drop(release);
    println!("took {:?}", started.elapsed());
}
