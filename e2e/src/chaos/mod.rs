//! Chaos: the real `coupon-api` and `coupon-consumer` binaries under a hot load while faults hit
//! them (clients hanging up, SIGKILL of either process, the database cut, Redis restarted
//! empty), an operator-like healer settling reservations and rebuilding a lost gate, then the
//! books checked against the clients' own log. The suite (`tests/chaos.rs`) and
//! `scripts/chaos.sh` (the `coupon-chaos` binary) run the same code.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coupon_core::broker::{KafkaAdmin, LagProbe, PreCreatedTopics, TopicAdmin};
use coupon_core::campaign::{Campaign, CouponId, UserId, consumer_group, dead_letter_topic};
use coupon_core::gate::{GateView, RedisGate};
use coupon_core::ledger::Ledger;
use coupon_core::provision::{Stores, provision};
use coupon_core::verify::{AcceptedLog, VerifyInput, VerifyReport, verify};
use coupon_report::recorder::Recorder;
use coupon_report::run::RunInfo;
use coupon_report::timeline::{LagSample, Timeline};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::kafka_node::KafkaNode;
use crate::{Proxy, campaign, unique};
use anyhow::Context as _;

mod books;
mod client;
mod faults;
mod healer;
mod process;

use self::books::*;
use self::client::*;
pub use self::faults::host_port;
use self::faults::*;
use self::healer::*;
use self::process::*;

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
pub async fn run(opts: &ChaosOptions) -> anyhow::Result<ChaosOutcome> {
    // One scenario at a time per process: each measures its own time to balanced books on a
    // two-core machine.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut rig = Rig::up(opts).await?;
    // The healer does what the operator does on its timer.
    let healer = Healing::spawn(&rig, opts);
    let mut load = Load::start(&rig, opts)?;
    let last_fault = inject_faults(&mut rig, opts).await?;
    let (load_end_s, last_fault) = load.finish(&rig, last_fault).await;
    let last_fault_s = load_end_s - last_fault.elapsed().as_secs_f64().min(load_end_s);
    rig.clock.note("load over");
    let mut outcome = judge(&rig, opts, healer, load, load_end_s, last_fault).await?;
    outcome.last_fault_s = last_fault_s;
    rig.tear_down(outcome.problems.is_empty()).await;
    outcome.notes = rig.clock.notes.lock().map_err(poisoned)?.clone();
    outcome.timeline.marks = rig.clock.marks.lock().map_err(poisoned)?.clone();
    Ok(outcome)
}

fn poisoned<T>(_: T) -> anyhow::Error {
    anyhow::anyhow!("a lock was poisoned by a panic")
}

/// Everything a scenario runs on: its campaign, the backends (Redis private to it, the broker
/// it needs), and the real binaries, started.
struct Rig {
    clock: Arc<Clock>,
    name: String,
    campaign: Campaign,
    redis: Process,
    redis_url: String,
    gate: RedisGate,
    ledger: Ledger,
    mock: Option<Mock>,
    kafka: Option<KafkaNode>,
    brokers: String,
    run: RunInfo,
    proxy: Proxy,
    api: Process,
    api_addr: String,
    consumer: Process,
    http: reqwest::Client,
}

impl Rig {
    async fn up(opts: &ChaosOptions) -> anyhow::Result<Self> {
        let clock = Arc::new(Clock {
            recorder: Arc::new(Recorder::new()),
            notes: Arc::new(Mutex::new(Vec::new())),
            marks: Mutex::new(Vec::new()),
            verbose: opts.verbose,
        });
        let name = unique("chaos");
        let campaign = campaign(&name, &STOCK, 3);
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir)?;
        // Redis: a private server, so restarting it empty touches no other test.
        let redis_port = crate::free_port();
        let redis_url = format!("redis://127.0.0.1:{redis_port}");
        let mut redis = redis_process(redis_port, &dir);
        redis.start()?;
        let gate = connect_gate(&redis_url).await?;
        let ledger = Ledger::connect(&opts.database_url, 4).await?;
        let (mock, kafka) = brokers_for(opts, &campaign, &dir, &clock).await?;
        let brokers = match (&mock, &kafka) {
            (Some(mock), _) => mock.bootstrap_servers(),
            (None, Some(node)) => node.brokers(),
            (None, None) => opts.brokers.clone(),
        };
        let run = run_info(opts, mock.is_some(), kafka.is_some(), &brokers);
        provision_on(opts, &campaign, &gate, &ledger, &brokers, mock.is_some()).await?;
        // The consumer reaches the database through a proxy that can cut it.
        let proxy = Proxy::start(&host_port(&opts.database_url)?).await;
        let api_addr = format!("127.0.0.1:{}", crate::free_port());
        let (mut api, mut consumer) = workloads(
            opts,
            &name,
            &brokers,
            &redis_url,
            &api_addr,
            &proxy,
            &dir,
            mock.is_some(),
        );
        api.start()?;
        consumer.start()?;
        let http = reqwest::Client::builder()
            .timeout(opts.publish_timeout * 3)
            .build()?;
        wait_ready(&http, &api_addr, Duration::from_secs(30)).await?;
        clock.note(format!(
            "campaign {name}: api on {api_addr}, redis on {redis_port}, logs in {}",
            dir.display()
        ));
        Ok(Self {
            clock,
            name,
            campaign,
            redis,
            redis_url,
            gate,
            ledger,
            mock,
            kafka,
            brokers,
            run,
            proxy,
            api,
            api_addr,
            consumer,
            http,
        })
    }

    async fn tear_down(&mut self, clean: bool) {
        self.api.kill9();
        self.consumer.kill9();
        self.redis.kill9();
        if let Some(mut node) = self.kafka.take() {
            node.kill9().await;
            if clean {
                node.remove_data();
            }
        }
    }
}

fn redis_process(port: u16, dir: &Path) -> Process {
    let port = port.to_string();
    Process {
        name: "redis-server",
        program: "redis-server".into(),
        args: [
            "--port",
            &port,
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
    }
}

/// Broker faults need a broker that can fail on demand: librdkafka's mock cluster, which the
/// real binaries reach over TCP like any broker; a broker kill needs a private real one.
async fn brokers_for(
    opts: &ChaosOptions,
    campaign: &Campaign,
    dir: &Path,
    clock: &Clock,
) -> anyhow::Result<(Option<Mock>, Option<KafkaNode>)> {
    let mock = if opts.faults.iter().any(|f| f.on_broker()) {
        let mock = MockCluster::new(1).context("mock cluster")?;
        let topic = campaign.topic();
        mock.create_topic(&topic, campaign.spec.topic.partitions, 1)
            .and_then(|()| mock.create_topic(&dead_letter_topic(&topic), 1, 1))
            .context("mock topics")?;
        Some(mock)
    } else {
        None
    };
    if !opts.faults.contains(&Fault::KillBroker) {
        return Ok((mock, None));
    }
    if mock.is_some() {
        anyhow::bail!("kill-broker needs a real broker: run it apart from the mock-cluster faults");
    }
    let node = KafkaNode::start(&dir.join("kafka")).await?;
    clock.note(format!("a private Kafka node on {}", node.brokers()));
    Ok((None, Some(node)))
}

fn run_info(opts: &ChaosOptions, mock: bool, private_node: bool, brokers: &str) -> RunInfo {
    let broker = match (mock, private_node) {
        (true, _) => "librdkafka's mock cluster (injected broker faults)".into(),
        (false, true) => "a private Apache Kafka node (SIGKILLed and restarted)".into(),
        (false, false) => format!("Apache Kafka at {brokers}"),
    };
    let ledger = opts
        .database_url
        .split(':')
        .next()
        .unwrap_or("?")
        .replace("postgres", "PostgreSQL")
        .replace("mysql", "MySQL/MariaDB");
    let binaries = format!(
        "the coupon-api and coupon-consumer binaries in {}",
        opts.bin_dir.display()
    );
    let mut run = RunInfo::now();
    run.backends = vec![
        ("gate".into(), "a private redis-server".into()),
        ("broker".into(), broker),
        ("ledger".into(), ledger),
        ("API and consumer".into(), binaries),
    ];
    run
}

async fn provision_on(
    opts: &ChaosOptions,
    campaign: &Campaign,
    gate: &RedisGate,
    ledger: &Ledger,
    brokers: &str,
    mock: bool,
) -> anyhow::Result<()> {
    let topics: Box<dyn TopicAdmin> = if mock {
        Box::new(PreCreatedTopics(brokers.to_string()))
    } else {
        Box::new(KafkaAdmin::new(brokers)?)
    };
    let stores = Stores {
        gate,
        ledger,
        topics: topics.as_ref(),
        kafka: &brokers.into(),
        rebuild_after: opts.settle_after(),
    };
    provision(campaign, &stores).await.context("provision")?;
    Ok(())
}

/// The API and the consumer as the operator would run them, the consumer's database behind
/// the proxy.
#[allow(clippy::too_many_arguments)]
fn workloads(
    opts: &ChaosOptions,
    name: &str,
    brokers: &str,
    redis_url: &str,
    api_addr: &str,
    proxy: &Proxy,
    dir: &Path,
    mock: bool,
) -> (Process, Process) {
    let common = vec![
        ("CAMPAIGN".to_string(), name.to_string()),
        ("KAFKA_BROKERS".to_string(), brokers.to_string()),
        (
            "RUST_LOG".to_string(),
            std::env::var("CHAOS_LOG").unwrap_or_else(|_| "warn".into()),
        ),
    ];
    let mut api_env = common.clone();
    if mock {
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
        ("REDIS_URL".to_string(), redis_url.to_string()),
        ("LISTEN".to_string(), api_addr.to_string()),
        (
            "PUBLISH_TIMEOUT_MS".to_string(),
            opts.publish_timeout.as_millis().to_string(),
        ),
    ]);
    let mut consumer_env = common;
    consumer_env.extend([
        (
            "DATABASE_URL".to_string(),
            proxy.url_for(&opts.database_url),
        ),
        ("METRICS_LISTEN".to_string(), "127.0.0.1:0".to_string()),
    ]);
    let process = |name: &'static str, env, log: &str| Process {
        name,
        program: opts.bin_dir.join(name),
        args: Vec::new(),
        env,
        log: dir.join(log),
        child: None,
    };
    (
        process("coupon-api", api_env, "api.log"),
        process("coupon-consumer", consumer_env, "consumer.log"),
    )
}

/// The operator's timer, running beside the load until the books are judged.
struct Healing {
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    /// Reservations settled: (kept, released).
    totals: Arc<Mutex<(usize, usize)>>,
}

impl Healing {
    fn spawn(rig: &Rig, opts: &ChaosOptions) -> Self {
        let stop = CancellationToken::new();
        let totals = Arc::new(Mutex::new((0usize, 0usize)));
        let healer = Healer {
            campaign: rig.campaign.clone(),
            redis_url: rig.redis_url.clone(),
            database_url: opts.database_url.clone(),
            brokers: rig.brokers.clone(),
            settle_after: opts.settle_after(),
        };
        let task = tokio::spawn(heal_loop(
            healer,
            rig.clock.clone(),
            totals.clone(),
            stop.clone(),
        ));
        Self { task, stop, totals }
    }

    async fn stop(self) -> anyhow::Result<(usize, usize)> {
        self.stop.cancel();
        let _ = self.task.await;
        Ok(*self.totals.lock().map_err(poisoned)?)
    }
}

/// The clients and the per-second sampler, from the load's start to its end.
struct Load {
    log: Arc<Mutex<ClientLog>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
    sampler: tokio::task::JoinHandle<Vec<LagSample>>,
    stop_sampler: CancellationToken,
    from_s: f64,
    end: Instant,
    hang_ups: bool,
}

impl Load {
    fn start(rig: &Rig, opts: &ChaosOptions) -> anyhow::Result<Self> {
        let from_s = rig.clock.now_s();
        let stop_sampler = CancellationToken::new();
        let probe = LagProbe::new(
            coupon_core::connections::KafkaConnection::new(rig.brokers.clone()),
            &consumer_group(&rig.name),
        )?;
        let sampler = tokio::spawn(sample(
            rig.clock.recorder.clone(),
            probe,
            rig.campaign.topic(),
            opts.clients,
            stop_sampler.clone(),
        ));
        let log = Arc::new(Mutex::new(ClientLog::default()));
        let stop = CancellationToken::new();
        let hang_ups = opts.faults.contains(&Fault::HangUps);
        let clients = (0..opts.clients)
            .map(|i| {
                let client = LoadClient {
                    http: rig.http.clone(),
                    addr: rig.api_addr.clone(),
                    campaign: rig.name.clone(),
                    log: log.clone(),
                    stop: stop.clone(),
                    rng: SmallRng::seed_from_u64(i as u64 * 7919 + 1),
                    recorder: rig.clock.recorder.clone(),
                };
                if hang_ups && i % 3 == 0 {
                    tokio::spawn(client.hang_up_loop())
                } else {
                    tokio::spawn(client.patient_loop())
                }
            })
            .collect();
        rig.clock.note(format!(
            "load: {} clients for {:.0} s, 90% on coupons 1-6 (25 to 4000 each), {USERS} users{}",
            opts.clients,
            opts.load.as_secs_f64(),
            if hang_ups {
                "; a third hang up within 0-4 ms"
            } else {
                ""
            }
        ));
        Ok(Self {
            log,
            clients,
            stop,
            sampler,
            stop_sampler,
            from_s,
            end: Instant::now() + opts.load,
            hang_ups,
        })
    }

    /// The load goes on until the faults' doubtful reservations are settled: stock that comes
    /// back must meet users still asking (a drop's demand outlasts a short outage), else a
    /// coupon that answered sold_out would end with stock left and I5 could not be judged.
    /// Returns when the load ended and when the last fault did.
    async fn finish(&mut self, rig: &Rig, last_fault: Instant) -> (f64, Instant) {
        tokio::time::sleep_until(self.end).await;
        let faults_over_ms = rig.gate.clock_ms().await.unwrap_or(0);
        let patience = Instant::now() + Duration::from_secs(60);
        while !doubts_settled(&rig.gate, &rig.name, faults_over_ms).await
            && Instant::now() < patience
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if Instant::now() > self.end + Duration::from_secs(1) {
            // What settlement gave back needs a moment of demand to be sold again.
            tokio::time::sleep(Duration::from_secs(4)).await;
            rig.clock
                .note("load kept on until the faults' reservations were settled, and 4 s more");
        }
        self.stop.cancel();
        for c in self.clients.drain(..) {
            let _ = c.await;
        }
        let load_end_s = rig.clock.now_s();
        if self.hang_ups {
            rig.clock
                .mark(self.from_s, load_end_s, Fault::HangUps.name());
            return (load_end_s, Instant::now());
        }
        (load_end_s, last_fault)
    }
}

/// Heals and judges: a new request served, the books balanced, every promise checked from the
/// clients' side and the books' side.
async fn judge(
    rig: &Rig,
    opts: &ChaosOptions,
    healer: Healing,
    load: Load,
    load_end_s: f64,
    last_fault: Instant,
) -> anyhow::Result<ChaosOutcome> {
    let probe = serving_after_faults(rig, &load.log).await;
    let recreated = scrape(&rig.http, &rig.api_addr, "coupon_api_producer_recreated").await;
    if let Some(n) = recreated {
        rig.clock
            .note(format!("the API recreated its producer {n} times"));
    }
    // Heal: drained, every reservation settled, gate = ledger.
    let balanced_after = wait_balanced(
        &rig.campaign,
        &rig.gate,
        &rig.ledger,
        &rig.brokers,
        &rig.clock,
    )
    .await
    .map(|()| last_fault.elapsed());
    let balanced_at_s = balanced_after.map(|_| rig.clock.now_s());
    load.stop_sampler.cancel();
    let lag = load.sampler.await.unwrap_or_default();
    let (kept, released) = healer.stop().await?;
    let clients = std::mem::take(&mut *load.log.lock().map_err(poisoned)?);
    let report = verify_books(rig, &clients).await?;
    let mut problems = problems(&report, &clients, balanced_after.is_some());
    problems.extend(statuses_and_losses(rig, &clients, &report).await);
    if let Err(e) = probe {
        problems.push(format!("not serving after the faults: {e:#}"));
    }
    if opts.faults.contains(&Fault::ProducerFatal) && recreated.unwrap_or(0) < 1 {
        problems.push("the producer's fatal error did not recreate it".into());
    }
    let (seconds, sold_out) = rig.clock.recorder.finish();
    Ok(ChaosOutcome {
        run: rig.run.clone(),
        campaign: rig.name.clone(),
        faults: opts.faults.clone(),
        notes: Vec::new(),
        timeline: Timeline {
            seconds,
            lag,
            sold_out,
            marks: Vec::new(),
            load_end_s,
        },
        last_fault_s: 0.0,
        balanced_at_s,
        clients,
        kept,
        released,
        balanced_after,
        report,
        problems,
    })
}

/// Healed means serving: a new user asks for a coupon still on sale and gets it.
async fn serving_after_faults(rig: &Rig, log: &Mutex<ClientLog>) -> anyhow::Result<Uuid> {
    let probe = final_probe(&rig.http, &rig.api_addr, &rig.name).await;
    match &probe {
        Ok(id) => {
            if let Ok(mut l) = log.lock() {
                l.requests += 1;
                l.accepted.insert(*id);
                l.coupon_of.insert(*id, PROBE_COUPON);
            }
            rig.clock.note("a new request after the faults: 202");
        }
        Err(e) => rig
            .clock
            .note(format!("a new request after the faults: {e:#}")),
    }
    probe
}

async fn verify_books(rig: &Rig, clients: &ClientLog) -> anyhow::Result<VerifyReport> {
    let accepted_log = AcceptedLog {
        accepted: clients.accepted.clone(),
        ambiguous: clients.ambiguous.clone(),
    };
    let spec = rig
        .campaign
        .coupons()
        .iter()
        .map(|c| (c.id, c.quantity))
        .collect();
    let input = VerifyInput {
        campaign: &rig.name,
        topic: &rig.campaign.topic(),
        kafka: &rig.brokers.as_str().into(),
        spec: Some(spec),
        accepted: Some(&accepted_log),
    };
    verify(&input, &rig.gate, &rig.ledger)
        .await
        .context("verify")
}

/// Every request's status after healing, and where a lost 202 went: its event in the topic
/// (then the consumer skipped it), in the dead-letter topic, or nowhere (the broker
/// acknowledged what it did not keep).
async fn statuses_and_losses(rig: &Rig, clients: &ClientLog, report: &VerifyReport) -> Vec<String> {
    let mut problems = Vec::new();
    match status_problems(&rig.http, &rig.api_addr, clients, &rig.ledger).await {
        Ok((said, wrong)) => {
            rig.clock
                .note(format!("request statuses after healing: {said}"));
            problems.extend(wrong);
        }
        Err(e) => problems.push(format!("request statuses: {e:#}")),
    }
    let lost: BTreeSet<Uuid> = report.not_stored.iter().copied().collect();
    if !lost.is_empty() {
        let topic = rig.campaign.topic();
        for topic in [topic.clone(), dead_letter_topic(&topic)] {
            let found = find_events(&rig.brokers, &topic, &lost).await;
            problems.push(format!("lost 202s in {topic}: {found}"));
        }
    }
    problems
}

/// Faults in the first part of the load, on a fixed schedule (so a slow recovery, a broker
/// restart, does not push the later faults past the load's end); the rest heals under load.
/// Returns when the last fault ended.
async fn inject_faults(rig: &mut Rig, opts: &ChaosOptions) -> anyhow::Result<Instant> {
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
    if periodic.is_empty() || opts.rounds == 0 {
        return Ok(last_fault);
    }
    let step = fault_window / (opts.rounds as u32 + 1);
    let faults_from = Instant::now();
    for round in 0..opts.rounds {
        tokio::time::sleep_until(faults_from + step * (round as u32 + 1)).await;
        let fault = periodic[round % periodic.len()];
        let from_s = rig.clock.now_s();
        let mut targets = Targets {
            api: &mut rig.api,
            consumer: &mut rig.consumer,
            redis: &mut rig.redis,
            proxy: &rig.proxy,
            mock: rig.mock.as_ref(),
            kafka: rig.kafka.as_mut(),
        };
        inject(fault, &rig.clock, &mut targets, &rig.http, &rig.api_addr).await?;
        rig.clock.mark(from_s, rig.clock.now_s(), fault.name());
        last_fault = Instant::now();
    }
    Ok(last_fault)
}

type Mock = MockCluster<'static, DefaultProducerContext>;
