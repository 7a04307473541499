//! Chaos: the real `coupon-api` and `coupon-consumer` binaries under a hot load while faults hit
//! them (clients hanging up, SIGKILL of either process, the database cut, Redis restarted
//! empty), an operator-like healer settling reservations and rebuilding a lost gate, then the
//! books checked against the clients' own log. The suite (`tests/chaos.rs`) and
//! `scripts/chaos.sh` (the `coupon-chaos` binary) run the same code.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coupon_api::request::keyed_request_id;
use coupon_core::broker::{KafkaAdmin, LagProbe, PreCreatedTopics, TopicAdmin};
use coupon_core::campaign::{Campaign, CouponId, UserId, consumer_group, dead_letter_topic};
use coupon_core::gate::{GateView, RedisGate, Settling};
use coupon_core::ledger::Ledger;
use coupon_core::provision::{Stores, provision};
use coupon_core::settlement::{SettleOptions, settle};
use coupon_core::verify::{AcceptedLog, VerifyInput, VerifyReport, verify};
use coupon_report::recorder::{Answer, Recorder};
use coupon_report::run::RunInfo;
use coupon_report::timeline::{LagSample, Mark, Timeline};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::kafka_node::KafkaNode;
use crate::{Proxy, campaign, unique};

/// What goes wrong during the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A third of the clients send a request and close the connection within 0–4 ms.
    HangUps,
    /// `coupon-api` is SIGKILLed and restarted (an OOM kill, an eviction, a lost node).
    KillApi,
    /// `coupon-consumer` is SIGKILLed and restarted.
    KillConsumer,
    /// Every database connection is cut and new ones refused for a while.
    CutDatabase,
    /// Redis is SIGKILLed and restarted empty (no persistence): the gate is gone.
    RestartRedis,
    /// The Apache Kafka broker is SIGKILLed and started again on the same log directory (a
    /// private node, so no other test loses its broker).
    KillBroker,
    /// The broker is unreachable for 2 s (librdkafka's mock cluster).
    BrokerDown,
    /// The broker refuses produce requests for 2 s (retriable errors, then a refusal).
    BrokerRefuses,
    /// The broker answers after 2.5 s, past the API's delivery deadline: outcomes unknown, yet
    /// the events are in the log.
    BrokerSlow,
    /// The broker answers a produce request with an out-of-order sequence: the idempotent
    /// producer's fatal error, after which the API must recreate its producer.
    ProducerFatal,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::HangUps,
        Fault::KillApi,
        Fault::KillConsumer,
        Fault::CutDatabase,
        Fault::RestartRedis,
    ];

    /// Faults of a real broker, on a private Apache Kafka node.
    pub const KAFKA: [Fault; 1] = [Fault::KillBroker];

    /// Faults of the broker, injected on librdkafka's mock cluster.
    pub const BROKER: [Fault; 4] = [
        Fault::BrokerDown,
        Fault::BrokerRefuses,
        Fault::BrokerSlow,
        Fault::ProducerFatal,
    ];

    pub fn on_broker(self) -> bool {
        Self::BROKER.contains(&self)
    }

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillBroker => "kill-broker",
            Fault::BrokerDown => "broker-down",
            Fault::BrokerRefuses => "broker-refuses",
            Fault::BrokerSlow => "broker-slow",
            Fault::ProducerFatal => "producer-fatal",
            Fault::HangUps => "hang-ups",
            Fault::KillApi => "kill-api",
            Fault::KillConsumer => "kill-consumer",
            Fault::CutDatabase => "cut-database",
            Fault::RestartRedis => "restart-redis",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .chain(Self::KAFKA)
            .chain(Self::BROKER)
            .find(|f| f.name() == s)
    }
}

#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// The faults, injected in turn, `rounds` times in all.
    pub faults: Vec<Fault>,
    pub rounds: usize,
    pub database_url: String,
    pub brokers: String,
    /// Where `coupon-api` and `coupon-consumer` are.
    pub bin_dir: PathBuf,
    /// The whole load; faults happen in its first part, the rest lets the books heal under load.
    pub load: Duration,
    pub clients: usize,
    /// The API's `--publish-timeout-ms`.
    pub publish_timeout: Duration,
    /// Progress lines as they happen (the timeline is also in the outcome).
    pub verbose: bool,
}

impl ChaosOptions {
    pub fn new(faults: &[Fault], database_url: &str) -> Self {
        let periodic = faults.iter().filter(|f| **f != Fault::HangUps).count();
        let rounds = periodic.max(3);
        // A killed broker takes seconds to come back (a JVM start, then its old registration's
        // session must expire): each round gets that long on top, so the books heal under load.
        let broker_restarts = if faults.contains(&Fault::KillBroker) {
            8 * rounds as u64
        } else {
            0
        };
        Self {
            faults: faults.to_vec(),
            rounds,
            load: Duration::from_secs(24 + 4 * periodic.saturating_sub(1) as u64 + broker_restarts),
            database_url: database_url.to_string(),
            brokers: crate::kafka_brokers(),
            bin_dir: default_bin_dir(),
            clients: 24,
            publish_timeout: Duration::from_millis(1500),
            verbose: true,
        }
    }

    /// Settlement and gate rebuilds wait this long: the delivery deadline and a margin.
    pub fn settle_after(&self) -> Duration {
        self.publish_timeout + Duration::from_millis(1500)
    }
}

/// `target/<profile>/` of the running test or binary.
pub fn default_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// What the clients saw.
#[derive(Debug, Default)]
pub struct ClientLog {
    pub requests: u64,
    pub accepted: HashSet<Uuid>,
    /// Answers lost (hang-up, reset, 503 after retries): may or may not be issued.
    pub ambiguous: HashSet<Uuid>,
    /// The coupon each accepted or ambiguous request asked for (its status resource's path).
    pub coupon_of: HashMap<Uuid, CouponId>,
    pub refused: BTreeMap<String, u64>,
    /// Coupons answered `sold_out` at least once.
    pub sold_out: BTreeSet<CouponId>,
    pub retries: u64,
    /// Anything but 202/4xx/503: a bug.
    pub unexpected: Vec<String>,
}

#[derive(Debug)]
pub struct ChaosOutcome {
    pub run: RunInfo,
    pub campaign: String,
    pub faults: Vec<Fault>,
    /// What happened when, in words (seconds since the load's clock started).
    pub notes: Vec<(f64, String)>,
    /// Second by second: answers, latency, clients, lag per partition; each fault a mark.
    pub timeline: Timeline,
    /// When the last fault ended and when the books balanced, on the timeline's clock.
    pub last_fault_s: f64,
    pub balanced_at_s: Option<f64>,
    pub clients: ClientLog,
    pub kept: usize,
    pub released: usize,
    /// From the end of the last fault to balanced books (drained, all settled, gate = ledger).
    pub balanced_after: Option<Duration>,
    pub report: VerifyReport,
    /// Every broken promise, in words; empty when the books are right.
    pub problems: Vec<String>,
}

impl ChaosOutcome {
    /// The outcome for other tools (`coupon-chaos --json`): counts rather than the id sets.
    pub fn to_json(&self) -> serde_json::Value {
        let c = &self.clients;
        serde_json::json!({
            "run": self.run,
            "campaign": self.campaign,
            "faults": self.faults.iter().map(|f| f.name()).collect::<Vec<_>>(),
            "notes": self.notes,
            "requests": c.requests,
            "accepted": c.accepted.len(),
            "ambiguous": c.ambiguous.len(),
            "retries": c.retries,
            "refused": c.refused,
            "unexpected": c.unexpected,
            "kept": self.kept,
            "released": self.released,
            "balancedAfterS": self.balanced_after.map(|d| d.as_secs_f64()),
            "integrity": self.report,
            "problems": self.problems,
            "timeline": self.timeline,
        })
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let names: Vec<_> = self.faults.iter().map(|f| f.name()).collect();
        let _ = writeln!(
            s,
            "chaos: campaign {}, faults {}",
            self.campaign,
            names.join(", ")
        );
        for (at, line) in &self.notes {
            let _ = writeln!(s, "  {at:>6.1} s  {line}");
        }
        let c = &self.clients;
        let refused: Vec<String> = c.refused.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            s,
            "requests {}: {} accepted, {} ambiguous (answer lost), {} retries; refused: {}",
            c.requests,
            c.accepted.len(),
            c.ambiguous.len(),
            c.retries,
            if refused.is_empty() {
                "none".into()
            } else {
                refused.join(", ")
            }
        );
        let _ = writeln!(
            s,
            "settled: {} kept (issued), {} released (no event)",
            self.kept, self.released
        );
        match self.balanced_after {
            Some(d) => {
                let _ = writeln!(
                    s,
                    "books balanced {:.1} s after the last fault",
                    d.as_secs_f64()
                );
            }
            None => {
                let _ = writeln!(s, "books did NOT balance");
            }
        }
        s.push_str(&self.report.render());
        if self.problems.is_empty() {
            s.push_str("every promise kept\n");
        } else {
            for p in &self.problems {
                let _ = writeln!(s, "PROBLEM: {p}");
            }
        }
        s
    }
}

/// The run's one clock: notes, marks and the recorder's seconds share its origin.
struct Clock {
    recorder: Arc<Recorder>,
    notes: Arc<Mutex<Vec<(f64, String)>>>,
    marks: Mutex<Vec<Mark>>,
    verbose: bool,
}

impl Clock {
    fn now_s(&self) -> f64 {
        self.recorder.elapsed().as_secs_f64()
    }

    fn mark(&self, from_s: f64, until_s: f64, label: &str) {
        if let Ok(mut m) = self.marks.lock() {
            m.push(Mark {
                from_s,
                until_s,
                label: label.into(),
            });
        }
    }

    fn note(&self, line: impl Into<String>) {
        let line = line.into();
        let at = self.now_s();
        if self.verbose {
            eprintln!("[chaos {at:>6.1} s] {line}");
        }
        if let Ok(mut t) = self.notes.lock() {
            t.push((at, line));
        }
    }
}

/// A child process that can be SIGKILLed and started again the same way.
struct Process {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    fn start(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {} ({}): {e}; build it with `cargo build --workspace --bins`",
                    self.name,
                    self.program.display()
                )
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no shutdown code runs.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The hot load's campaign: six coupons take 90% of the requests and sell out one after the
/// other during the load (25 to 4,000 each); fourteen larger ones stay on sale throughout, so
/// every fault lands while reservations are being made. Coupon 21 is the final probe's alone:
/// a fast build can sell out all twenty during the load.
pub const HOT: std::ops::RangeInclusive<CouponId> = 1..=6;
const STOCK: [(&str, i64); 8] = [
    ("1", 25),
    ("2", 200),
    ("3", 500),
    ("4", 1000),
    ("5", 2000),
    ("6", 4000),
    ("7-20", 1000),
    ("21", 1),
];
/// Coupons the load draws from.
const COUPONS: CouponId = 20;
const PROBE_COUPON: CouponId = 21;
const USERS: UserId = 20_000;

/// Runs the load with the faults, heals, and checks the books.
pub async fn run(opts: &ChaosOptions) -> Result<ChaosOutcome, String> {
    // One scenario at a time per process: each measures its own time to balanced books on a
    // two-core machine.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let clock = Arc::new(Clock {
        recorder: Arc::new(Recorder::new()),
        notes: Arc::new(Mutex::new(Vec::new())),
        marks: Mutex::new(Vec::new()),
        verbose: opts.verbose,
    });
    let name = unique("chaos");
    let campaign = campaign(&name, &STOCK, 3);
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;

    // Redis: a private server, so restarting it empty touches no other test.
    let redis_port = crate::free_port();
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let mut redis = Process {
        name: "redis-server",
        program: "redis-server".into(),
        args: [
            "--port",
            &redis_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .map(String::from)
        .to_vec(),
        env: Vec::new(),
        log: dir.join("redis.log"),
        child: None,
    };
    redis.start()?;
    let gate = connect_gate(&redis_url).await?;
    let ledger = Ledger::connect(&opts.database_url, 4)
        .await
        .map_err(|e| e.to_string())?;
    // Broker faults need a broker that can fail on demand: librdkafka's mock cluster, which the
    // real binaries reach over TCP like any broker.
    let mock = if opts.faults.iter().any(|f| f.on_broker()) {
        let mock = MockCluster::new(1).map_err(|e| format!("mock cluster: {e}"))?;
        let topic = campaign.topic();
        mock.create_topic(&topic, campaign.spec.topic.partitions, 1)
            .and_then(|()| mock.create_topic(&dead_letter_topic(&topic), 1, 1))
            .map_err(|e| format!("mock topics: {e}"))?;
        Some(mock)
    } else {
        None
    };
    if mock.is_some() && opts.faults.contains(&Fault::KillBroker) {
        return Err(
            "kill-broker needs a real broker: run it apart from the mock-cluster faults".into(),
        );
    }
    let mut kafka = if opts.faults.contains(&Fault::KillBroker) {
        let node = KafkaNode::start(&dir.join("kafka")).await?;
        clock.note(format!("a private Kafka node on {}", node.brokers()));
        Some(node)
    } else {
        None
    };
    let brokers = match (&mock, &kafka) {
        (Some(mock), _) => mock.bootstrap_servers(),
        (None, Some(node)) => node.brokers(),
        (None, None) => opts.brokers.clone(),
    };
    let mut run = RunInfo::now();
    run.backends = vec![
        ("gate".into(), "a private redis-server".into()),
        (
            "broker".into(),
            match (&mock, &kafka) {
                (Some(_), _) => "librdkafka's mock cluster (injected broker faults)".into(),
                (None, Some(_)) => "a private Apache Kafka node (SIGKILLed and restarted)".into(),
                (None, None) => format!("Apache Kafka at {brokers}"),
            },
        ),
        (
            "ledger".into(),
            opts.database_url
                .split(':')
                .next()
                .unwrap_or("?")
                .replace("postgres", "PostgreSQL")
                .replace("mysql", "MySQL/MariaDB"),
        ),
        (
            "API and consumer".into(),
            format!(
                "the coupon-api and coupon-consumer binaries in {}",
                opts.bin_dir.display()
            ),
        ),
    ];
    let topics: Box<dyn TopicAdmin> = match &mock {
        Some(_) => Box::new(PreCreatedTopics(brokers.clone())),
        None => Box::new(KafkaAdmin::new(&brokers).map_err(|e| e.to_string())?),
    };
    provision(
        &campaign,
        &Stores {
            gate: &gate,
            ledger: &ledger,
            topics: topics.as_ref(),
            kafka: &(&brokers).into(),
            rebuild_after: opts.settle_after(),
        },
    )
    .await
    .map_err(|e| format!("provision: {e}"))?;

    // The consumer reaches the database through a proxy that can cut it.
    let db_target = host_port(&opts.database_url)?;
    let proxy = Proxy::start(&db_target).await;
    let api_port = crate::free_port();
    let api_addr = format!("127.0.0.1:{api_port}");
    let common = vec![
        ("CAMPAIGN".to_string(), name.clone()),
        ("KAFKA_BROKERS".to_string(), brokers.clone()),
        (
            "RUST_LOG".to_string(),
            std::env::var("CHAOS_LOG").unwrap_or_else(|_| "warn".into()),
        ),
    ];
    let mut api_env = common.clone();
    if mock.is_some() {
        // The mock cluster does not check an idempotent producer's sequence numbers, so after
        // an injected error it accepts the next request in flight, which a real broker refuses
        // as out of order; librdkafka, trusting that check, then counts the failed request's
        // events as delivered ("implicitly acked by subsequent batch success") though they are
        // in no log. One request in flight per connection keeps the mock's answers possible.
        api_env.push((
            "KAFKA_CLIENT_MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION".to_string(),
            "1".to_string(),
        ));
    }
    api_env.extend([
        ("REDIS_URL".to_string(), redis_url.clone()),
        ("LISTEN".to_string(), api_addr.clone()),
        (
            "PUBLISH_TIMEOUT_MS".to_string(),
            opts.publish_timeout.as_millis().to_string(),
        ),
    ]);
    let mut api = Process {
        name: "coupon-api",
        program: opts.bin_dir.join("coupon-api"),
        args: Vec::new(),
        env: api_env,
        log: dir.join("api.log"),
        child: None,
    };
    let mut consumer_env = common;
    consumer_env.extend([
        (
            "DATABASE_URL".to_string(),
            proxy.url_for(&opts.database_url),
        ),
        ("METRICS_LISTEN".to_string(), "127.0.0.1:0".to_string()),
    ]);
    let mut consumer = Process {
        name: "coupon-consumer",
        program: opts.bin_dir.join("coupon-consumer"),
        args: Vec::new(),
        env: consumer_env,
        log: dir.join("consumer.log"),
        child: None,
    };
    api.start()?;
    consumer.start()?;
    let http = reqwest::Client::builder()
        .timeout(opts.publish_timeout * 3)
        .build()
        .map_err(|e| e.to_string())?;
    wait_ready(&http, &api_addr, Duration::from_secs(30)).await?;
    clock.note(format!(
        "campaign {name}: api on {api_addr}, redis on {redis_port}, logs in {}",
        dir.display()
    ));

    // The healer does what the operator does on its timer.
    let stop_healer = CancellationToken::new();
    let healed = Arc::new(Mutex::new((0usize, 0usize)));
    let healer = tokio::spawn(heal_loop(
        Healer {
            campaign: campaign.clone(),
            redis_url: redis_url.clone(),
            database_url: opts.database_url.clone(),
            brokers: brokers.clone(),
            settle_after: opts.settle_after(),
        },
        clock.clone(),
        healed.clone(),
        stop_healer.clone(),
    ));

    // The load, sampled each second from here on: clients, and the lag the operator would see.
    let load_from_s = clock.now_s();
    let stop_sampler = CancellationToken::new();
    let sampler = tokio::spawn(sample(
        clock.recorder.clone(),
        LagProbe::new(
            coupon_core::connections::KafkaConnection::new(brokers.clone()),
            &consumer_group(&name),
        )
        .map_err(|e| e.to_string())?,
        campaign.topic(),
        opts.clients,
        stop_sampler.clone(),
    ));
    let log = Arc::new(Mutex::new(ClientLog::default()));
    let load_end = Instant::now() + opts.load;
    let stop_load = CancellationToken::new();
    let hang_ups = opts.faults.contains(&Fault::HangUps);
    let mut clients = Vec::new();
    for i in 0..opts.clients {
        let impatient = hang_ups && i % 3 == 0;
        let ctx = LoadClient {
            http: http.clone(),
            addr: api_addr.clone(),
            campaign: name.clone(),
            log: log.clone(),
            stop: stop_load.clone(),
            rng: SmallRng::seed_from_u64(i as u64 * 7919 + 1),
            recorder: clock.recorder.clone(),
        };
        clients.push(if impatient {
            tokio::spawn(ctx.hang_up_loop())
        } else {
            tokio::spawn(ctx.patient_loop())
        });
    }
    clock.note(format!(
        "load: {} clients for {:.0} s, 90% on coupons 1-6 (25 to 4000 each), {USERS} users{}",
        opts.clients,
        opts.load.as_secs_f64(),
        if hang_ups {
            "; a third hang up within 0-4 ms"
        } else {
            ""
        }
    ));

    // Faults in the first part of the load; the rest heals under load.
    let periodic: Vec<Fault> = opts
        .faults
        .iter()
        .copied()
        .filter(|f| *f != Fault::HangUps)
        .collect();
    let fault_window = opts
        .load
        .saturating_sub(opts.settle_after() * 2 + Duration::from_secs(4));
    let mut last_fault = Instant::now();
    if !periodic.is_empty() && opts.rounds > 0 {
        // On a fixed schedule, so a slow recovery (a broker restart) does not push the later
        // faults past the load's end.
        let step = fault_window / (opts.rounds as u32 + 1);
        let faults_from = Instant::now();
        for round in 0..opts.rounds {
            tokio::time::sleep_until(faults_from + step * (round as u32 + 1)).await;
            let fault = periodic[round % periodic.len()];
            let from_s = clock.now_s();
            inject(
                fault,
                &clock,
                &mut Targets {
                    api: &mut api,
                    consumer: &mut consumer,
                    redis: &mut redis,
                    proxy: &proxy,
                    mock: mock.as_ref(),
                    kafka: kafka.as_mut(),
                },
                &http,
                &api_addr,
            )
            .await?;
            clock.mark(from_s, clock.now_s(), fault.name());
            last_fault = Instant::now();
        }
    }
    // The load goes on until the faults' doubtful reservations are settled: stock that comes
    // back must meet users still asking (a drop's demand outlasts a short outage), else a
    // coupon that answered sold_out would end with stock left and I5 could not be judged.
    tokio::time::sleep_until(load_end).await;
    let faults_over_ms = gate.clock_ms().await.unwrap_or(0);
    let patience = Instant::now() + Duration::from_secs(60);
    while !doubts_settled(&gate, &name, faults_over_ms).await && Instant::now() < patience {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if Instant::now() > load_end + Duration::from_secs(1) {
        // What settlement gave back needs a moment of demand to be sold again.
        tokio::time::sleep(Duration::from_secs(4)).await;
        clock.note("load kept on until the faults' reservations were settled, and 4 s more");
    }
    stop_load.cancel();
    for c in clients {
        let _ = c.await;
    }
    let load_end_s = clock.now_s();
    if hang_ups {
        last_fault = Instant::now();
        clock.mark(load_from_s, load_end_s, Fault::HangUps.name());
    }
    let last_fault_s = load_end_s - last_fault.elapsed().as_secs_f64().min(load_end_s);
    clock.note("load over");

    // Healed means serving: a new user asks for a coupon still on sale and gets it.
    let probe = final_probe(&http, &api_addr, &name).await;
    match &probe {
        Ok(id) => {
            if let Ok(mut l) = log.lock() {
                l.requests += 1;
                l.accepted.insert(*id);
                l.coupon_of.insert(*id, PROBE_COUPON);
            }
            clock.note("a new request after the faults: 202");
        }
        Err(e) => clock.note(format!("a new request after the faults: {e}")),
    }
    let recreated = scrape(&http, &api_addr, "coupon_api_producer_recreated").await;
    if let Some(n) = recreated {
        clock.note(format!("the API recreated its producer {n} times"));
    }

    // Heal: drained, every reservation settled, gate = ledger.
    let balanced_after = wait_balanced(&campaign, &gate, &ledger, &brokers, &clock)
        .await
        .map(|()| last_fault.elapsed());
    let balanced_at_s = balanced_after.map(|_| clock.now_s());
    stop_sampler.cancel();
    let lag = sampler.await.unwrap_or_default();
    stop_healer.cancel();
    let _ = healer.await;
    let (kept, released) = *healed.lock().map_err(|e| e.to_string())?;
    let clients = std::mem::take(&mut *log.lock().map_err(|e| e.to_string())?);
    let accepted_log = AcceptedLog {
        accepted: clients.accepted.clone(),
        ambiguous: clients.ambiguous.clone(),
    };
    let report = verify(
        &VerifyInput {
            campaign: &name,
            topic: &campaign.topic(),
            kafka: &(&brokers).into(),
            spec: Some(
                campaign
                    .coupons()
                    .iter()
                    .map(|c| (c.id, c.quantity))
                    .collect(),
            ),
            accepted: Some(&accepted_log),
        },
        &gate,
        &ledger,
    )
    .await
    .map_err(|e| format!("verify: {e}"))?;
    let mut problems = problems(&report, &clients, balanced_after.is_some());
    match status_problems(&http, &api_addr, &clients, &ledger).await {
        Ok((said, wrong)) => {
            clock.note(format!("request statuses after healing: {said}"));
            problems.extend(wrong);
        }
        Err(e) => problems.push(format!("request statuses: {e}")),
    }
    // Where did a lost 202 go? Its event in the topic (then the consumer skipped it), in the
    // dead-letter topic, or nowhere (the broker acknowledged what it did not keep).
    let lost: BTreeSet<Uuid> = report.not_stored.iter().copied().collect();
    if !lost.is_empty() {
        for topic in [campaign.topic(), dead_letter_topic(&campaign.topic())] {
            let found = find_events(&brokers, &topic, &lost).await;
            problems.push(format!("lost 202s in {topic}: {found}"));
        }
    }
    if let Err(e) = probe {
        problems.push(format!("not serving after the faults: {e}"));
    }
    if opts.faults.contains(&Fault::ProducerFatal) && recreated.unwrap_or(0) < 1 {
        problems.push("the producer's fatal error did not recreate it".into());
    }
    api.kill9();
    consumer.kill9();
    redis.kill9();
    if let Some(mut node) = kafka.take() {
        node.kill9().await;
        if problems.is_empty() {
            node.remove_data();
        }
    }
    let notes = clock.notes.lock().map_err(|e| e.to_string())?.clone();
    let (seconds, sold_out) = clock.recorder.finish();
    let timeline = Timeline {
        seconds,
        lag,
        sold_out,
        marks: clock.marks.lock().map_err(|e| e.to_string())?.clone(),
        load_end_s,
    };
    Ok(ChaosOutcome {
        run,
        campaign: name,
        faults: opts.faults.clone(),
        notes,
        timeline,
        last_fault_s,
        balanced_at_s,
        clients,
        kept,
        released,
        balanced_after,
        report,
        problems,
    })
}

/// The promises, checked from the clients' side and the books' side.
fn problems(report: &VerifyReport, clients: &ClientLog, balanced: bool) -> Vec<String> {
    let mut out = Vec::new();
    if !balanced {
        out.push("the books did not balance in time".into());
    }
    for c in &report.checks {
        if c.status == coupon_core::verify::Status::Fail {
            out.push(format!("{} {}: {}", c.id, c.name, c.detail));
        }
    }
    for line in &report.coupons {
        if line.spec_quantity - line.issued != line.db_remaining {
            out.push(format!(
                "coupon {}: ledger remaining {} != quantity {} - issued {}",
                line.coupon_id, line.db_remaining, line.spec_quantity, line.issued
            ));
        }
        if line.redis_remaining != Some(line.db_remaining) {
            out.push(format!(
                "coupon {}: gate remaining {:?} != ledger remaining {}",
                line.coupon_id, line.redis_remaining, line.db_remaining
            ));
        }
        if clients.sold_out.contains(&line.coupon_id) && line.db_remaining > 0 {
            out.push(format!(
                "coupon {}: answered sold_out, yet {} left in the ledger",
                line.coupon_id, line.db_remaining
            ));
        }
    }
    if let Some(first) = clients.unexpected.first() {
        out.push(format!(
            "{} unexpected answers, e.g. {first}",
            clients.unexpected.len()
        ));
    }
    if clients.accepted.is_empty() {
        out.push("no request was accepted: the load never reached the system".into());
    }
    out
}

type Mock = MockCluster<'static, DefaultProducerContext>;

/// What the faults act on.
struct Targets<'a> {
    api: &'a mut Process,
    consumer: &'a mut Process,
    redis: &'a mut Process,
    proxy: &'a Proxy,
    mock: Option<&'a Mock>,
    kafka: Option<&'a mut KafkaNode>,
}

async fn inject(
    fault: Fault,
    clock: &Clock,
    t: &mut Targets<'_>,
    http: &reqwest::Client,
    api_addr: &str,
) -> Result<(), String> {
    let Targets {
        api,
        consumer,
        redis,
        proxy,
        mock,
        kafka,
    } = t;
    if fault.on_broker() {
        let mock = mock.ok_or("a broker fault needs the mock cluster")?;
        return inject_broker(fault, clock, mock).await;
    }
    match fault {
        Fault::KillApi => {
            api.kill9();
            clock.note("kill -9 coupon-api");
            tokio::time::sleep(Duration::from_millis(500)).await;
            api.start()?;
            wait_ready(http, api_addr, Duration::from_secs(30)).await?;
            clock.note("coupon-api restarted and ready");
        }
        Fault::KillConsumer => {
            consumer.kill9();
            clock.note("kill -9 coupon-consumer");
            // Back within the dead member's session, as a pod restarted at once would be: the
            // group must rebalance it in.
            tokio::time::sleep(Duration::from_millis(500)).await;
            consumer.start()?;
            clock.note("coupon-consumer restarted");
        }
        Fault::CutDatabase => {
            proxy.cut();
            clock.note("database cut: every connection dropped, new ones refused");
            tokio::time::sleep(Duration::from_secs(3)).await;
            proxy.restore();
            clock.note("database back");
        }
        Fault::KillBroker => {
            let node = kafka
                .as_deref_mut()
                .ok_or("kill-broker needs the private Kafka node")?;
            node.kill9().await;
            clock.note("kill -9 the Kafka broker");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let restart = Instant::now();
            node.restart().await?;
            clock.note(format!(
                "Kafka broker restarted on its log directory, serving after {:.1} s",
                restart.elapsed().as_secs_f64()
            ));
        }
        Fault::RestartRedis => {
            redis.kill9();
            clock.note("kill -9 redis-server");
            redis.start()?;
            clock.note("redis-server restarted empty");
        }
        _ => {}
    }
    Ok(())
}

async fn inject_broker(fault: Fault, clock: &Clock, mock: &Mock) -> Result<(), String> {
    let broker = |r: rdkafka::error::KafkaResult<()>| r.map_err(|e| format!("mock cluster: {e}"));
    match fault {
        Fault::BrokerDown => {
            broker(mock.broker_down(1))?;
            clock.note("broker down");
            tokio::time::sleep(Duration::from_secs(2)).await;
            broker(mock.broker_up(1))?;
            clock.note("broker back");
        }
        Fault::BrokerRefuses => {
            let mut errors = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 40];
            errors.push(RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT);
            mock.request_errors(RDKafkaApiKey::Produce, &errors);
            clock.note("broker refusing produce requests (not enough replicas)");
            tokio::time::sleep(Duration::from_secs(2)).await;
            mock.clear_request_errors(RDKafkaApiKey::Produce);
            clock.note("broker accepting again");
        }
        Fault::BrokerSlow => {
            broker(mock.broker_round_trip_time(1, Duration::from_millis(2500)))?;
            clock.note("broker answering after 2.5 s (past the delivery deadline)");
            tokio::time::sleep(Duration::from_secs(2)).await;
            broker(mock.broker_round_trip_time(1, Duration::ZERO))?;
            clock.note("broker answering at once again");
        }
        Fault::ProducerFatal => {
            mock.request_errors(
                RDKafkaApiKey::Produce,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
            );
            clock.note("broker answers out-of-order sequence: the producer's fatal error");
        }
        _ => {}
    }
    Ok(())
}

/// One patient request by a user the load never uses, on a coupon that stays on sale.
async fn final_probe(http: &reqwest::Client, addr: &str, campaign: &str) -> Result<Uuid, String> {
    let (coupon, user) = (PROBE_COUPON, USERS + 1);
    let key = Uuid::now_v7().simple().to_string();
    let mut last = String::new();
    for _ in 0..20 {
        let answer = http
            .post(format!("http://{addr}/api/coupons/{coupon}/issue"))
            .header("content-type", "application/json")
            .header("idempotency-key", &key)
            .body(format!(r#"{{"userId":{user}}}"#))
            .send()
            .await;
        match answer {
            Ok(r) if r.status().as_u16() == 202 => {
                return Ok(keyed_request_id(campaign, coupon, user, &key));
            }
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("no 202 in 10 s (last: {last})"))
}

/// Once healed, each request's status resource agrees with the ledger: every 202 reads
/// `issued`; a lost answer reads `issued` exactly when the ledger holds it, else `released`
/// (or unknown: it never reserved). Nothing is left `pending`.
async fn status_problems(
    http: &reqwest::Client,
    addr: &str,
    clients: &ClientLog,
    ledger: &Ledger,
) -> Result<(String, Vec<String>), String> {
    use futures::StreamExt;
    let ids: Vec<Uuid> = clients.coupon_of.keys().copied().collect();
    let stored = ledger
        .stored_among(&ids)
        .await
        .map_err(|e| format!("ledger: {e}"))?;
    let said: Vec<(Uuid, String)> = futures::stream::iter(clients.coupon_of.iter())
        .map(|(id, coupon)| async move {
            let url = format!("http://{addr}/api/coupons/{coupon}/requests/{id}");
            let status = match http.get(url).send().await {
                Ok(r) => {
                    let bytes = r.bytes().await.unwrap_or_default();
                    let json: serde_json::Value =
                        serde_json::from_slice(&bytes).unwrap_or_default();
                    json["status"]
                        .as_str()
                        .or(json["code"].as_str())
                        .unwrap_or("no answer")
                        .to_string()
                }
                Err(e) => format!("no answer ({e})"),
            };
            (*id, status)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut wrong = Vec::new();
    for (id, status) in &said {
        *counts.entry(status.as_str()).or_default() += 1;
        let right = match (clients.accepted.contains(id), stored.contains(id)) {
            (true, _) | (false, true) => status == "issued",
            (false, false) => status == "released" || status == "unknown_request",
        };
        if !right && wrong.len() < 10 {
            let what = if clients.accepted.contains(id) {
                "a 202"
            } else {
                "a lost answer"
            };
            let held = if stored.contains(id) {
                "holds"
            } else {
                "lacks"
            };
            wrong.push(format!(
                "request {id} ({what}; the ledger {held} it) reads {status}"
            ));
        }
    }
    let counts = counts
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok((counts, wrong))
}

/// One sample of an unlabelled metric on the API's /metrics page.
async fn scrape(http: &reqwest::Client, addr: &str, metric: &str) -> Option<i64> {
    let page = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    page.lines()
        .filter(|l| l.starts_with(metric))
        .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as i64)
}

async fn connect_gate(url: &str) -> Result<RedisGate, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match RedisGate::connect(url).await {
            Ok(g) => return Ok(g),
            Err(e) if Instant::now() >= deadline => return Err(format!("redis {url}: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn wait_ready(http: &reqwest::Client, addr: &str, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = http.get(format!("http://{addr}/readyz")).send().await
            && r.status().as_u16() == 200
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("coupon-api on {addr} not ready within {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn host_port(url: &str) -> Result<String, String> {
    let u = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    let host = u.host_str().ok_or_else(|| format!("{url}: no host"))?;
    let port = u
        .port_or_known_default()
        .or(match u.scheme() {
            "postgres" | "postgresql" => Some(5432),
            "mysql" | "mariadb" => Some(3306),
            _ => None,
        })
        .ok_or_else(|| format!("{url}: no port"))?;
    Ok(format!("{host}:{port}"))
}

struct Healer {
    campaign: Campaign,
    redis_url: String,
    database_url: String,
    brokers: String,
    settle_after: Duration,
}

/// Every 500 ms: rebuild a lost gate, else settle (the operator's timer, compressed).
async fn heal_loop(
    h: Healer,
    clock: Arc<Clock>,
    totals: Arc<Mutex<(usize, usize)>>,
    stop: CancellationToken,
) {
    let (Ok(gate), Ok(ledger), Ok(lag), Ok(admin)) = (
        connect_gate(&h.redis_url).await,
        Ledger::connect(&h.database_url, 2).await,
        LagProbe::new(&h.brokers, &consumer_group(&h.campaign.name)),
        KafkaAdmin::new(&h.brokers),
    ) else {
        clock.note("healer cannot connect");
        return;
    };
    let topic = h.campaign.topic();
    let mut waiting_logged = false;
    while !stop.is_cancelled() {
        match gate.catalog(&h.campaign.name).await {
            Ok(None) => {
                let rebuilt = provision(
                    &h.campaign,
                    &Stores {
                        gate: &gate,
                        ledger: &ledger,
                        topics: &admin,
                        kafka: &(&h.brokers).into(),
                        rebuild_after: h.settle_after,
                    },
                )
                .await;
                match rebuilt {
                    Ok(r) => {
                        clock.note(format!(
                            "healer: gate rebuilt from the ledger ({} coupons)",
                            r.gates_rebuilt.len()
                        ));
                        waiting_logged = false;
                    }
                    Err(e) if !waiting_logged => {
                        clock.note(format!("healer: gate lost; {e}"));
                        waiting_logged = true;
                    }
                    Err(_) => {}
                }
            }
            Ok(Some(_)) => {
                let settled = settle(
                    &coupon_core::settlement::SettleScope {
                        campaign: &h.campaign.name,
                        topic: &topic,
                        gate: &gate,
                        ledger: &ledger,
                        lag: &lag,
                    },
                    &SettleOptions {
                        min_age: h.settle_after,
                        drain_timeout: Duration::from_secs(2),
                        ..SettleOptions::default()
                    },
                )
                .await;
                if let Ok(r) = settled {
                    if let Ok(mut t) = totals.lock() {
                        t.0 += r.kept;
                        t.1 += r.released;
                    }
                    if r.released > 0 {
                        let coupons: Vec<String> = r
                            .released_by_coupon
                            .iter()
                            .map(|(c, n)| format!("{c}x{n}"))
                            .collect();
                        clock.note(format!(
                            "healer: released {} reservations with no event (coupon x count: {})",
                            r.released,
                            coupons.join(" ")
                        ));
                    }
                }
            }
            Err(_) => {}
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Whether no reservation made at or before `before_ms` (gate clock) is still unsettled.
async fn doubts_settled(gate: &RedisGate, campaign: &str, before_ms: i64) -> bool {
    for coupon in 1..=PROBE_COUPON {
        match gate.unsettled(campaign, coupon, 0, 0).await {
            Ok(u) if u.oldest_ms.is_none_or(|t| t > before_ms) => {}
            _ => return false,
        }
    }
    true
}

/// Waits (at most 120 s) until the topic is drained, nothing is unsettled and every coupon's
/// gate agrees with the ledger.
async fn wait_balanced(
    campaign: &Campaign,
    gate: &RedisGate,
    ledger: &Ledger,
    brokers: &str,
    clock: &Clock,
) -> Option<()> {
    let lag = LagProbe::new(brokers, &consumer_group(&campaign.name)).ok()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let topic = campaign.topic();
    loop {
        let balanced = async {
            let drained = lag.lag(&topic).await.ok()?.iter().all(|l| l.lag == 0);
            let books = ledger.books(&campaign.name).await.ok()?;
            let mut unsettled = 0;
            let mut agree = true;
            for b in &books {
                let snap = gate.snapshot(&campaign.name, b.coupon_id).await.ok()?;
                agree &= snap.map(|s| s.remaining) == Some(b.remaining);
                unsettled += gate
                    .unsettled(&campaign.name, b.coupon_id, 0, 0)
                    .await
                    .ok()?
                    .count;
            }
            Some(drained && agree && unsettled == 0)
        }
        .await
        .unwrap_or(false);
        if balanced {
            clock.note("books balanced: drained, every reservation settled, gate = ledger");
            return Some(());
        }
        if Instant::now() >= deadline {
            clock.note("books still not balanced after 120 s");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Until stopped: the clients in each second (for the recorder) and the lag per partition
/// about once a second (a broker down leaves a gap). The lag samples are returned.
async fn sample(
    recorder: Arc<Recorder>,
    probe: LagProbe,
    topic: String,
    clients: usize,
    stop: CancellationToken,
) -> Vec<LagSample> {
    let mut lag = Vec::new();
    let mut next_lag = Instant::now();
    while !stop.is_cancelled() {
        recorder.users(clients);
        recorder.seal();
        if Instant::now() >= next_lag {
            next_lag = Instant::now() + Duration::from_secs(1);
            let probed = tokio::time::timeout(Duration::from_secs(2), probe.lag(&topic)).await;
            if let Ok(Ok(mut parts)) = probed {
                parts.sort_by_key(|p| p.partition);
                lag.push(LagSample {
                    at_s: recorder.elapsed().as_secs_f64(),
                    partitions: parts.iter().map(|p| p.lag).collect(),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    lag
}

struct LoadClient {
    http: reqwest::Client,
    addr: String,
    campaign: String,
    log: Arc<Mutex<ClientLog>>,
    stop: CancellationToken,
    rng: SmallRng,
    recorder: Arc<Recorder>,
}

impl LoadClient {
    fn pick(&mut self) -> (CouponId, UserId, String) {
        let coupon = if self.rng.random_bool(0.9) {
            self.rng.random_range(HOT)
        } else {
            self.rng.random_range(*HOT.end() + 1..=COUPONS)
        };
        let user = self.rng.random_range(1..=USERS);
        let key = Uuid::from_u128(self.rng.random()).simple().to_string();
        (coupon, user, key)
    }

    fn record(&self, f: impl FnOnce(&mut ClientLog)) {
        if let Ok(mut l) = self.log.lock() {
            f(&mut l);
        }
    }

    /// The request's final answer, per second, timed from its first attempt.
    fn answered(&self, coupon: CouponId, code: &str, since: Option<Instant>) {
        self.recorder.record(Answer {
            coupon,
            code,
            latency: since.map(|s| s.elapsed()),
            expected_interval: Duration::ZERO,
        });
    }

    /// A real client: on a lost answer or a 503 it retries with the same key, then gives up.
    async fn patient_loop(mut self) {
        while !self.stop.is_cancelled() {
            let (coupon, user, key) = self.pick();
            let id = keyed_request_id(&self.campaign, coupon, user, &key);
            let url = format!("http://{}/api/coupons/{coupon}/issue", self.addr);
            let body = format!(r#"{{"userId":{user}}}"#);
            let mut settled = false;
            let asked = Instant::now();
            for attempt in 0..4u32 {
                if attempt > 0 {
                    self.record(|l| l.retries += 1);
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                let answer = self
                    .http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("idempotency-key", &key)
                    .body(body.clone())
                    .send()
                    .await;
                let (status, json) = match answer {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let bytes = r.bytes().await.unwrap_or_default();
                        (
                            status,
                            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default(),
                        )
                    }
                    Err(_) => continue,
                };
                let code = json["code"].as_str().unwrap_or("").to_string();
                match status {
                    202 => {
                        self.record(|l| {
                            l.requests += 1;
                            l.accepted.insert(id);
                            l.coupon_of.insert(id, coupon);
                        });
                        self.answered(coupon, "accepted", Some(asked));
                        settled = true;
                    }
                    503 => continue,
                    400..=499 => {
                        self.answered(coupon, &code, Some(asked));
                        self.record(|l| {
                            l.requests += 1;
                            if code == "sold_out" {
                                l.sold_out.insert(coupon);
                            }
                            *l.refused.entry(code).or_default() += 1;
                        });
                        settled = true;
                    }
                    other => {
                        self.answered(coupon, &format!("http_{other}"), Some(asked));
                        self.record(|l| {
                            l.requests += 1;
                            l.unexpected.push(format!("HTTP {other}: {json}"));
                        });
                        settled = true;
                    }
                }
                break;
            }
            if !settled {
                self.answered(coupon, "answer_lost", Some(asked));
                self.record(|l| {
                    l.requests += 1;
                    l.ambiguous.insert(id);
                    l.coupon_of.insert(id, coupon);
                });
            }
        }
    }

    /// An impatient client: sends the request and closes the connection within 0-4 ms.
    async fn hang_up_loop(mut self) {
        while !self.stop.is_cancelled() {
            let (coupon, user, key) = self.pick();
            let id = keyed_request_id(&self.campaign, coupon, user, &key);
            let body = format!(r#"{{"userId":{user}}}"#);
            let request = format!(
                "POST /api/coupons/{coupon}/issue HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nIdempotency-Key: {key}\r\nContent-Length: {}\r\n\r\n{body}",
                self.addr,
                body.len()
            );
            let patience = Duration::from_micros(self.rng.random_range(0..4000));
            if let Ok(mut s) = tokio::net::TcpStream::connect(&self.addr).await {
                let _ = s.write_all(request.as_bytes()).await;
                tokio::time::sleep(patience).await;
                drop(s);
            }
            self.answered(coupon, "hung_up", None);
            self.record(|l| {
                l.requests += 1;
                l.ambiguous.insert(id);
                l.coupon_of.insert(id, coupon);
                *l.refused.entry("hung_up".into()).or_default() += 1;
            });
            // Paced, so the closed connections do not exhaust loopback's ephemeral ports.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Reads `topic` from the start to its end and says where each of `ids` appears.
async fn find_events(brokers: &str, topic: &str, ids: &BTreeSet<Uuid>) -> String {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let brokers = brokers.to_string();
    let topic = topic.to_string();
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    let scan = tokio::task::spawn_blocking(move || -> Result<String, String> {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", unique("chaos-scan"))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| e.to_string())?;
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for p in md.topics().iter().flat_map(|t| t.partitions()) {
            let (_, high) = consumer
                .fetch_watermarks(&topic, p.id(), Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            ends.insert(p.id(), high);
            tpl.add_partition_offset(&topic, p.id(), rdkafka::Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let mut found: Vec<String> = Vec::new();
        let mut read = 0u64;
        // Partitions still to read to their end (an empty one is done already).
        ends.retain(|_, end| *end > 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !ends.is_empty() && std::time::Instant::now() < deadline {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            read += 1;
            let text = String::from_utf8_lossy(m.payload().unwrap_or_default());
            for id in &ids {
                if text.contains(id.as_str()) {
                    found.push(format!("{id} at {}/{}", m.partition(), m.offset()));
                }
            }
            if ends
                .get(&m.partition())
                .is_some_and(|end| m.offset() + 1 >= *end)
            {
                ends.remove(&m.partition());
            }
        }
        let whole = if ends.is_empty() {
            format!("all {read} records read")
        } else {
            format!("only {read} records read before the scan's deadline")
        };
        Ok(if found.is_empty() {
            format!("none of them ({whole})")
        } else {
            format!("{} ({whole})", found.join(", "))
        })
    });
    scan.await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .unwrap_or_else(|e| format!("scan failed: {e}"))
}
