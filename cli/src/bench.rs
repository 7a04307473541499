//! `couponctl bench`: the raw limits of Redis, the broker and the database next to what the
//! system makes of them, measured in one run on one machine, with each ratio.

use anyhow::Context as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use coupon_core::broker::{KafkaAdmin, LagProbe, PublishTimeouts, Publisher, TopicAdmin};
use coupon_core::campaign::{Campaign, consumer_group};
use coupon_core::config::ConnectionArgs;
use coupon_core::connections::KafkaConnection;
use coupon_core::event::IssuanceEvent;
use coupon_core::gate::{GateCoupon, Provisioning, RedisGate, Reserving};
use coupon_core::ledger::Ledger;
use coupon_core::provision::{Stores, provision};
use futures::StreamExt;
use serde::Serialize;
use tokio::time::Instant;
use uuid::Uuid;

use crate::load::{self, LoadOptions, Scenario};
use crate::{plan, procs};
use coupon_report::recorder::Recorder;
use coupon_report::timeline::Timeline;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    pub what: String,
    pub system: f64,
    pub raw: f64,
    pub unit: String,
    pub ratio: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchReport {
    pub campaign: String,
    pub ledger: String,
    pub api_requests: u64,
    pub api_p50_ms: f64,
    pub api_p99_ms: f64,
    pub api_correct: bool,
    pub api_rss_mb: f64,
    pub consumer_rss_mb: f64,
    pub lines: Vec<Line>,
    /// CPU milliseconds per 1,000 accepted requests, per process.
    pub cpu: Vec<CpuLine>,
    /// The same as microseconds per request, as `couponctl plan --from` reads them.
    pub costs: plan::Costs,
    pub run: coupon_report::run::RunInfo,
    /// The API phase on one Redis, second by second.
    pub api_timeline: Timeline,
}

/// CPU each process spent per 1,000 accepted requests in one phase (None: not measured there,
/// or the process is not on this machine).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuLine {
    pub setup: String,
    pub accepted: usize,
    pub api_ms: Option<f64>,
    pub redis_ms: Option<f64>,
    pub broker_ms: Option<f64>,
    pub consumer_ms: Option<f64>,
    pub database_ms: Option<f64>,
}

impl BenchReport {
    pub fn render(&self) -> String {
        let mut s = format!(
            "couponctl bench: campaign {}, ledger {}\n\n{:<46} {:>12} {:>12} {:>8}\n",
            self.campaign, self.ledger, "measure", "system", "raw", "ratio"
        );
        for l in &self.lines {
            s.push_str(&format!(
                "{:<46} {:>12.0} {:>12.0} {:>7.2}x   ({})\n",
                l.what, l.system, l.raw, l.ratio, l.unit
            ));
        }
        s.push_str(&format!(
            "\nAPI under max load: {} requests, p50 {:.2} ms, p99 {:.2} ms, every answer correct: {}\n\
             peak RSS: coupon-api {:.1} MB, coupon-consumer {:.1} MB\n",
            self.api_requests, self.api_p50_ms, self.api_p99_ms, self.api_correct, self.api_rss_mb, self.consumer_rss_mb
        ));
        s.push_str(&format!(
            "\nCPU ms per 1,000 accepted requests (from /proc; - = not in this phase or not on this machine)\n{:<20} {:>9} {:>10} {:>8} {:>8} {:>9} {:>9}\n",
            "phase", "accepted", "coupon-api", "redis", "broker", "consumer", "database"
        ));
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        for c in &self.cpu {
            s.push_str(&format!(
                "{:<20} {:>9} {:>10} {:>8} {:>8} {:>9} {:>9}\n",
                c.setup,
                c.accepted,
                cell(c.api_ms),
                cell(c.redis_ms),
                cell(c.broker_ms),
                cell(c.consumer_ms),
                cell(c.database_ms)
            ));
        }
        s
    }
}

pub struct BenchOptions {
    pub connections: usize,
    pub duration: Duration,
    pub raw_ops: usize,
    /// Also run the API phase with the gate on this Redis Cluster, for the ratio.
    pub cluster_url: Option<String>,
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(anyhow::anyhow!(
            "{} not found next to couponctl; build all binaries first: cargo build --release",
            path.display()
        ))
    }
}

/// A child process killed when dropped.
struct Proc(Child);

impl Proc {
    /// Peak resident set size (VmHWM), in MB.
    fn peak_rss_mb(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .ok()
            .and_then(|s| {
                s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|kb| kb.parse::<f64>().ok())
                })
            })
            .map_or(0.0, |kb| kb / 1024.0)
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

fn spawn(bin: &str, args: &[&str], b: &ConnectionArgs) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(sibling(bin)?);
    // KAFKA_CLIENT_* properties reach the children by inheritance.
    cmd.args(args)
        .envs(b.child_env())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    cmd.spawn()
        .map(Proc)
        .with_context(|| format!("cannot start {bin}"))
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64().max(1e-9)
}

pub async fn run(b: &ConnectionArgs, opts: BenchOptions) -> anyhow::Result<BenchReport> {
    let run = coupon_report::run::RunInfo::now();
    let rig = Rig::provision(b).await?;
    let raw = RawLimits::measure(&rig, opts.raw_ops).await?;
    // The system: the API in max mode with no consumer (on each gate asked for), then the
    // consumer drains the backlog.
    let standalone = api_phase(b, &rig.name, &opts, "127.0.0.1:18181").await?;
    let clustered = match &opts.cluster_url {
        Some(url) => Some(cluster_phase(b, &rig, &opts, url).await?),
        None => None,
    };
    let accepted = standalone.outcome.accepted.len();
    // Raw consume: the same backlog read by a fresh group, nothing written anywhere.
    let consume_raw = raw_consume(&rig.kafka, &rig.campaign.topic(), accepted).await?;
    let drain = drain_phase(b, &rig, accepted).await?;
    if clustered.is_some() {
        drain_unmeasured(b, &rig.kafka, &cluster_campaign(&rig.name)).await?;
    }
    let (cpu, costs) = cpu_table(&standalone, clustered.as_ref(), &drain);
    let outcome = &standalone.outcome;
    let h = &outcome.histogram;
    Ok(BenchReport {
        lines: ratio_lines(&raw, consume_raw, &standalone, clustered.as_ref(), &drain),
        api_requests: outcome.requests(),
        api_p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        api_p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        api_correct: standalone.correct && clustered.as_ref().is_none_or(|c| c.correct),
        api_rss_mb: standalone.rss_mb,
        consumer_rss_mb: drain.rss_mb,
        cpu,
        costs,
        api_timeline: Timeline {
            seconds: outcome.seconds.clone(),
            load_end_s: outcome.elapsed.as_secs_f64(),
            ..Timeline::default()
        },
        ledger: rig.ledger.backend().into(),
        campaign: rig.name,
        run,
    })
}

/// The bench's campaign, provisioned, and the connections every phase uses.
struct Rig {
    name: String,
    campaign: Campaign,
    gate: Arc<RedisGate>,
    ledger: Ledger,
    kafka: KafkaConnection,
    admin: KafkaAdmin,
}

impl Rig {
    async fn provision(b: &ConnectionArgs) -> anyhow::Result<Self> {
        let name = format!("bench-{}", Utc::now().format("%m%d%H%M%S"));
        let manifest = format!(
            "apiVersion: coupons.fcfs.dev/v1alpha1\nkind: CouponCampaign\nmetadata: {{name: {name}}}\nspec:\n  topic: {{partitions: 3}}\n  coupons:\n    - {{ids: \"1-100\", name: \"bench {{id}}\", discount: 1000, quantity: 10000000}}\n"
        );
        let kafka = b.kafka()?;
        let rig = Self {
            campaign: Campaign::from_yaml(&manifest)?,
            gate: Arc::new(RedisGate::connect(b.redis()?).await?),
            ledger: Ledger::connect(b.database_url()?, 4).await?,
            admin: KafkaAdmin::new(&kafka)?,
            kafka,
            name,
        };
        rig.provision_on(&rig.campaign, rig.gate.as_ref()).await?;
        Ok(rig)
    }

    async fn provision_on(&self, campaign: &Campaign, gate: &RedisGate) -> anyhow::Result<()> {
        let stores = Stores {
            gate,
            ledger: &self.ledger,
            topics: &self.admin,
            kafka: &self.kafka,
            rebuild_after: coupon_core::provision::DELIVERY_GRACE,
        };
        provision(campaign, &stores).await?;
        Ok(())
    }

    /// A scratch campaign for the raw measurements, beside the real one.
    fn raw_campaign(&self) -> String {
        format!("{}-raw", self.name)
    }
}

/// What Redis, the broker and the database do alone, each with nothing of the system around it.
struct RawLimits {
    gate_serial: f64,
    gate_pipelined: f64,
    produce: f64,
    insert: f64,
}

impl RawLimits {
    async fn measure(rig: &Rig, n: usize) -> anyhow::Result<Self> {
        let (gate_serial, gate_pipelined) = raw_gate(rig, n).await?;
        Ok(Self {
            gate_serial,
            gate_pipelined,
            produce: raw_produce(rig, n).await?,
            insert: raw_inserts(rig, n).await?,
        })
    }
}

/// The gate script on Redis, one at a time and pipelined (100 in flight).
async fn raw_gate(rig: &Rig, n: usize) -> anyhow::Result<(f64, f64)> {
    let raw_campaign = rig.raw_campaign();
    let unlimited = GateCoupon {
        quantity: i64::MAX / 2,
        starts_ms: 0,
        ends_ms: 0,
        shards: 1,
    };
    rig.gate.ensure(&raw_campaign, 1, unlimited, &[]).await?;
    let started = Instant::now();
    for user in 1..=(n / 10) as u64 {
        rig.gate
            .reserve(&raw_campaign, 1, user, Uuid::now_v7())
            .await?;
    }
    let serial = rate(n / 10, started.elapsed());
    let started = Instant::now();
    let base = (n / 10) as u64;
    futures::stream::iter(1..=n as u64)
        .map(|u| {
            let gate = rig.gate.clone();
            let c = raw_campaign.clone();
            async move { gate.reserve(&c, 1, base + u, Uuid::now_v7()).await }
        })
        .buffer_unordered(100)
        .for_each(|_| async {})
        .await;
    Ok((serial, rate(n, started.elapsed())))
}

/// The same idempotent producer, 1,000 in flight, to a scratch topic.
async fn raw_produce(rig: &Rig, n: usize) -> anyhow::Result<f64> {
    let raw_campaign = rig.raw_campaign();
    let raw_topic = format!("coupons.{raw_campaign}.scratch");
    rig.admin.ensure_topic(&raw_topic, 3).await?;
    let publisher = Publisher::new(&rig.kafka, &raw_topic, PublishTimeouts::default())?;
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let p = publisher.clone();
            let event =
                IssuanceEvent::new(Uuid::now_v7(), &raw_campaign, 1, i as u64 + 1, Utc::now());
            async move { p.publish(&event).await }
        })
        .buffer_unordered(1000)
        .for_each(|_| async {})
        .await;
    Ok(rate(n, started.elapsed()))
}

/// 1,000-row transactions, nothing else.
async fn raw_inserts(rig: &Rig, n: usize) -> anyhow::Result<f64> {
    let raw_campaign = rig.raw_campaign();
    let mut raw_ledger = rig.campaign.clone();
    raw_ledger.name = raw_campaign.clone();
    rig.ledger.provision(&raw_ledger).await?;
    let events: Vec<IssuanceEvent> = (0..n)
        .map(|i| {
            let coupon = 1 + (i % 100) as u32;
            IssuanceEvent::new(
                Uuid::now_v7(),
                &raw_campaign,
                coupon,
                i as u64 + 1,
                Utc::now(),
            )
        })
        .collect();
    let started = Instant::now();
    for chunk in events.chunks(1000) {
        rig.ledger.insert_rows_only(&raw_campaign, chunk).await?;
    }
    Ok(rate(n, started.elapsed()))
}

/// The cluster phase's campaign: its own (the same name on another Redis would be a gate lost,
/// rebuilt only after the delivery grace).
fn cluster_campaign(name: &str) -> String {
    format!("{name}-c")
}

/// The same load with the gate on a Redis Cluster.
async fn cluster_phase(
    b: &ConnectionArgs,
    rig: &Rig,
    opts: &BenchOptions,
    url: &str,
) -> anyhow::Result<ApiPhase> {
    let on_cluster = ConnectionArgs {
        redis: Some(url.to_string()),
        ..b.clone()
    };
    let cluster_gate = RedisGate::connect(on_cluster.redis()?).await?;
    let mut on_its_own = rig.campaign.clone();
    on_its_own.name = cluster_campaign(&rig.name);
    on_its_own.spec.topic.name = None;
    rig.provision_on(&on_its_own, &cluster_gate).await?;
    api_phase(&on_cluster, &on_its_own.name, opts, "127.0.0.1:18182").await
}

/// One consumer draining the API phase's backlog: its rate, CPU and memory.
struct Drain {
    rate: f64,
    cpu: DrainCpu,
    rss_mb: f64,
}

async fn drain_phase(b: &ConnectionArgs, rig: &Rig, accepted: usize) -> anyhow::Result<Drain> {
    let db_port = if rig.ledger.backend() == "mysql" {
        3306
    } else {
        5432
    };
    let db_pids = procs::behind(b.database_url.as_deref().unwrap_or_default(), db_port);
    let broker_pids = procs::behind(b.kafka_brokers(), 9092);
    let consumer = spawn(
        "coupon-consumer",
        &["--campaign", &rig.name, "--metrics-listen", "127.0.0.1:0"],
        b,
    )?;
    let cpu_before = (
        procs::cpu_seconds(&[consumer.0.id()]),
        procs::cpu_seconds(&db_pids),
        procs::cpu_seconds(&broker_pids),
    );
    let rate = drain_rate(rig, accepted).await?;
    let cpu = DrainCpu {
        consumer: procs::cpu_seconds(&[consumer.0.id()]) - cpu_before.0,
        database: (!db_pids.is_empty()).then(|| procs::cpu_seconds(&db_pids) - cpu_before.1),
        broker: (!broker_pids.is_empty()).then(|| procs::cpu_seconds(&broker_pids) - cpu_before.2),
    };
    let rss_mb = consumer.peak_rss_mb();
    consumer.stop();
    Ok(Drain { rate, cpu, rss_mb })
}

/// Timed from the first commit (the group join is not drain work) to zero lag. A backlog
/// drained between two polls is timed from the last poll that saw it whole: a lower bound on
/// the rate, where timing from the first commit would divide nothing by nothing.
async fn drain_rate(rig: &Rig, accepted: usize) -> anyhow::Result<f64> {
    let probe = LagProbe::new(&rig.kafka, &consumer_group(&rig.name))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut whole_at = Instant::now();
    let mut first: Option<(Instant, i64)> = None;
    loop {
        let lag: i64 = probe
            .lag(&rig.campaign.topic())
            .await?
            .iter()
            .map(|l| l.lag)
            .sum();
        let now = Instant::now();
        if lag >= accepted as i64 {
            whole_at = now;
        } else if first.is_none() {
            first = Some((now, lag));
        }
        if lag == 0 {
            let (t0, left) = match first {
                Some((t, left)) if left > 0 => (t, left),
                _ => (whole_at, accepted as i64),
            };
            return Ok(left as f64 / t0.elapsed().as_secs_f64().max(1e-3));
        }
        if Instant::now() > deadline {
            return Err(anyhow::anyhow!("the consumer did not drain ({lag} left)"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Not measured: only so a phase's events reach its ledger too.
async fn drain_unmeasured(
    b: &ConnectionArgs,
    kafka: &KafkaConnection,
    campaign: &str,
) -> anyhow::Result<()> {
    let consumer = spawn(
        "coupon-consumer",
        &["--campaign", campaign, "--metrics-listen", "127.0.0.1:0"],
        b,
    )?;
    let topic = coupon_core::campaign::topic_name(campaign);
    let group = consumer_group(campaign);
    let left =
        coupon_core::broker::wait_drained(kafka, &group, &topic, Duration::from_secs(120)).await?;
    consumer.stop();
    if left > 0 {
        return Err(anyhow::anyhow!(
            "{topic}: the consumer did not drain ({left} left)"
        ));
    }
    Ok(())
}

fn line(what: &str, system: f64, raw: f64, unit: &str) -> Line {
    Line {
        what: what.into(),
        system,
        raw,
        unit: unit.into(),
        ratio: system / raw,
    }
}

/// Each of the system's figures next to the raw limit it stands on.
fn ratio_lines(
    raw: &RawLimits,
    consume_raw: f64,
    standalone: &ApiPhase,
    clustered: Option<&ApiPhase>,
    drain: &Drain,
) -> Vec<Line> {
    let outcome = &standalone.outcome;
    let api_rate = rate(outcome.requests() as usize, outcome.elapsed);
    let publish_rate = rate(outcome.accepted.len(), outcome.elapsed);
    let per_script = "requests/s vs scripts/s";
    let mut lines = vec![
        line(
            "API answers vs gate script, pipelined",
            api_rate,
            raw.gate_pipelined,
            per_script,
        ),
        line(
            "API answers vs gate script, one at a time",
            api_rate,
            raw.gate_serial,
            per_script,
        ),
        line(
            "API publishes (202s) vs raw idempotent produce",
            publish_rate,
            raw.produce,
            "events/s",
        ),
        line(
            "consumer drain vs raw consume (no database)",
            drain.rate,
            consume_raw,
            "events/s",
        ),
        line(
            "consumer drain vs raw batched inserts",
            drain.rate,
            raw.insert,
            "events/s, 1000 per transaction",
        ),
    ];
    if let Some(c) = clustered {
        let cluster_rate = rate(c.outcome.requests() as usize, c.outcome.elapsed);
        lines.push(line(
            "API answers, gate on the cluster vs one Redis",
            cluster_rate,
            api_rate,
            "requests/s",
        ));
    }
    lines
}

/// CPU per 1,000 accepted requests, per phase and process, and the same per request for `plan`.
fn cpu_table(
    standalone: &ApiPhase,
    clustered: Option<&ApiPhase>,
    drain: &Drain,
) -> (Vec<CpuLine>, plan::Costs) {
    let per_k = |secs: f64, n: usize| secs * 1000.0 / n.max(1) as f64 * 1000.0;
    let mut cpu = vec![standalone.cpu_line("one Redis", per_k)];
    cpu.extend(clustered.map(|c| c.cpu_line("Redis Cluster", per_k)));
    let drained = standalone.outcome.accepted.len();
    let drain_line = CpuLine {
        setup: "drain (one Redis)".into(),
        accepted: drained,
        api_ms: None,
        redis_ms: None,
        broker_ms: drain.cpu.broker.map(|s| per_k(s, drained)),
        consumer_ms: Some(per_k(drain.cpu.consumer, drained)),
        database_ms: drain.cpu.database.map(|s| per_k(s, drained)),
    };
    let costs = plan::Costs {
        api_us: cpu[0].api_ms.unwrap_or(0.0),
        redis_us: cpu[0].redis_ms.unwrap_or(0.0),
        broker_us: cpu[0].broker_ms.unwrap_or(0.0) + drain_line.broker_ms.unwrap_or(0.0),
        consumer_us: drain_line.consumer_ms.unwrap_or(0.0),
        database_us: drain_line.database_ms.unwrap_or(0.0),
        drain_per_consumer: drain.rate,
    };
    cpu.push(drain_line);
    (cpu, costs)
}

/// The API under max load on one gate, with the CPU its processes spent.
struct ApiPhase {
    outcome: load::LoadOutcome,
    rss_mb: f64,
    correct: bool,
    api: f64,
    redis: Option<f64>,
    broker: Option<f64>,
}

struct DrainCpu {
    consumer: f64,
    database: Option<f64>,
    broker: Option<f64>,
}

impl ApiPhase {
    fn cpu_line(&self, setup: &str, per_k: impl Fn(f64, usize) -> f64) -> CpuLine {
        let n = self.outcome.accepted.len();
        CpuLine {
            setup: setup.into(),
            accepted: n,
            api_ms: Some(per_k(self.api, n)),
            redis_ms: self.redis.map(|s| per_k(s, n)),
            broker_ms: self.broker.map(|s| per_k(s, n)),
            consumer_ms: None,
            database_ms: None,
        }
    }
}

async fn api_phase(
    b: &ConnectionArgs,
    name: &str,
    opts: &BenchOptions,
    listen: &str,
) -> anyhow::Result<ApiPhase> {
    let redis_pids = procs::behind(b.redis_url(), 6379);
    let broker_pids = procs::behind(b.kafka_brokers(), 9092);
    let api = spawn("coupon-api", &["--campaign", name, "--listen", listen], b)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reqwest::get(format!("http://{listen}/readyz"))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if Instant::now() > deadline {
            return Err(anyhow::anyhow!("coupon-api did not become ready"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cpu = || {
        (
            procs::cpu_seconds(&[api.0.id()]),
            procs::cpu_seconds(&redis_pids),
            procs::cpu_seconds(&broker_pids),
        )
    };
    let before = cpu();
    let outcome = load::run(
        LoadOptions {
            targets: vec![format!("http://{listen}")],
            scenario: Scenario::Max,
            time_scale: 1.0,
            think: Duration::ZERO,
            connections: opts.connections,
            duration: opts.duration,
            coupons: (1..=100).collect(),
            hot_coupons: Vec::new(),
            users: 1_000_000_000,
            progress: false,
            tokens: None,
        },
        Arc::new(Recorder::new()),
    )
    .await?;
    let after = cpu();
    let rss_mb = api.peak_rss_mb();
    api.stop();
    // With a billion users and ten million coupons each, every correct answer is a 202.
    let correct = outcome.requests() as usize
        == outcome.accepted.len()
            + outcome.outcomes.get("already_issued").copied().unwrap_or(0) as usize;
    Ok(ApiPhase {
        rss_mb,
        correct,
        api: after.0 - before.0,
        redis: (!redis_pids.is_empty()).then_some(after.1 - before.1),
        broker: (!broker_pids.is_empty()).then_some(after.2 - before.2),
        outcome,
    })
}

/// Reads `n` records of `topic` from the start with a throw-away group: the broker's delivery rate.
async fn raw_consume(kafka: &KafkaConnection, topic: &str, n: usize) -> anyhow::Result<f64> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = coupon_core::broker::client_config(kafka)
        .set("group.id", format!("bench-raw-{}", Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let first = consumer.recv().await?;
    drop(first);
    let started = Instant::now();
    let mut seen = 1;
    while seen < n {
        match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Ok(Ok(_)) => seen += 1,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(anyhow::anyhow!("raw consume stalled after {seen} of {n}")),
        }
    }
    Ok(rate(seen - 1, started.elapsed()))
}
