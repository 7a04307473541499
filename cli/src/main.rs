//! `couponctl`: operate a campaign without Kubernetes: provision, load, verify, reconcile, and
//! the whole system embedded as a demo.

mod bench;
mod demo;
mod load;
mod page;
mod plan;
mod procs;
mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use coupon_core::broker::{KafkaAdmin, LagProbe, wait_drained};
use coupon_core::campaign::{Campaign, consumer_group, topic_name};
use coupon_core::config::{ConnectionArgs, LogFormat, init_logging};
use coupon_core::gate::{RedisGate, StockGate};
use coupon_core::ledger::Ledger;
use coupon_core::provision::{Stores, provision};
use coupon_core::settlement::{SettleOptions, SettleScope, settle};
use coupon_core::verify::{AcceptedLog, VerifyInput, verify};

#[derive(Parser)]
#[command(name = "couponctl", version, about)]
struct Cli {
    #[command(flatten)]
    backends: ConnectionArgs,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or grow a campaign: topic, ledger rows, Redis stock. Idempotent; never resets stock.
    Provision {
        /// The CouponCampaign manifest.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Check invariants I1–I6 across the spec, Redis, the ledger and the topic.
    Verify {
        #[arg(long, env = "CAMPAIGN")]
        campaign: String,
        /// Request ids answered 202 (one per line; `?id` for ambiguous answers).
        #[arg(long)]
        accepted: Option<PathBuf>,
        /// Take quantities from this manifest instead of the ledger's coupon rows.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Wait up to this many seconds for the consumers to drain the topic first.
        #[arg(long, default_value_t = 30)]
        wait_drain: u64,
        #[arg(long)]
        json: bool,
    },
    /// Run the whole system in this process (embedded gate, mock broker, SQLite unless
    /// --redis-url/--kafka-brokers/--database-url are given) under the seed scenario, and report.
    Demo {
        /// Campaign manifest; defaults to the seed's (examples/seed-campaign.yaml).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Compresses the seed's 10 minutes (0.1: one minute).
        #[arg(long, default_value_t = 0.1)]
        time_scale: f64,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Measure raw Redis, broker and database limits next to the system, in one run, with ratios.
    /// Needs real services and the release binaries (cargo build --release).
    Bench {
        #[arg(long, default_value_t = 100)]
        connections: usize,
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        duration: Duration,
        /// Operations per raw measurement.
        #[arg(long, default_value_t = 50_000)]
        raw_ops: usize,
        /// Also run the API with its gate on this Redis Cluster (`redis+cluster://h:p,h:p`) and
        /// print the ratio to one Redis.
        #[arg(long)]
        cluster_url: Option<String>,
        #[arg(long)]
        json: bool,
        /// Also write the report as one self-contained HTML page to this file.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// How many API pods, Redis masters, partitions and consumers a drop needs, from CPU per
    /// request measured by `couponctl bench` (docs/capacity.md explains the model).
    Plan {
        /// Peak requests per second; repeat for several (default: 10000, 100000, 1000000).
        #[arg(long = "rate")]
        rates: Vec<f64>,
        /// A `couponctl bench --json` report from your machines (default: the reference costs).
        #[arg(long)]
        from: Option<PathBuf>,
        /// Share of requests that get a coupon (1: every request is an event, the worst case).
        #[arg(long, default_value_t = 1.0)]
        issued_share: f64,
        /// Busy share of each core to plan for.
        #[arg(long, default_value_t = 0.6)]
        utilisation: f64,
        /// Cores of one API pod.
        #[arg(long, default_value_t = 2.0)]
        api_pod_cores: f64,
        /// Cores of one consumer pod.
        #[arg(long, default_value_t = 1.0)]
        consumer_pod_cores: f64,
        #[arg(long)]
        json: bool,
    },
    /// Drive the API over HTTP, then report requests, drain and integrity (the seed's report).
    Load {
        /// Base URL of the API; several, comma separated, take the requests in turn (API pods
        /// addressed directly, without a Service or load balancer in front).
        #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8080")]
        target: Vec<String>,
        #[arg(long, env = "CAMPAIGN")]
        campaign: String,
        /// Compresses the seed's 10 minutes (0.1: one minute).
        #[arg(long, default_value_t = 1.0)]
        time_scale: f64,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Settle every reservation nobody settled: those whose publish result was unknown, and
    /// those whose API process died or whose client hung up. Issued ones are kept, the others
    /// released. The operator does this on its own; this is one round of it.
    #[command(alias = "settle")]
    Reconcile {
        #[arg(long, env = "CAMPAIGN")]
        campaign: String,
        /// Only settle reservations older than this many seconds (more than the API's
        /// --publish-timeout-ms).
        #[arg(long, default_value_t = coupon_core::provision::DELIVERY_GRACE.as_secs())]
        min_age: u64,
        /// Wait up to this many seconds for the consumers to drain.
        #[arg(long, default_value_t = 60)]
        wait_drain: u64,
        #[arg(long)]
        json: bool,
    },
}

/// What shapes the load, shared by `load` and `demo`.
#[derive(clap::Args)]
struct LoadArgs {
    #[arg(long, value_enum, default_value_t = load::Scenario::Seed)]
    scenario: load::Scenario,
    /// Seed scenario: pause after each iteration, in milliseconds (2000 gives the seed's ≈34 req/s).
    #[arg(long, default_value_t = 2000)]
    think_ms: u64,
    /// Max and hot scenarios: concurrent connections.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Max and hot scenarios: how long, e.g. 30s or 2m.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Users are drawn from 1..=USERS.
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    /// Write the accepted request ids here (for `verify --accepted`).
    #[arg(long)]
    accepted: Option<PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the report as Markdown to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Also write the report as one self-contained HTML page (charts of how the run unfolded)
    /// to this file.
    #[arg(long)]
    html: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Against `--identity jwt`: sign an HS256 token per request with this secret (the user in
    /// `sub`) instead of sending `userId` in the body.
    #[arg(long, env = "JWT_HS256_SECRET", hide_env_values = true)]
    jwt_hs256_secret: Option<String>,
    #[arg(long, env = "JWT_ISSUER")]
    jwt_issuer: Option<String>,
    #[arg(long, env = "JWT_AUDIENCE")]
    jwt_audience: Option<String>,
}

impl LoadArgs {
    fn options(
        &self,
        targets: Vec<String>,
        time_scale: f64,
        coupons: &[(u32, i64)],
    ) -> load::LoadOptions {
        let mut by_size: Vec<_> = coupons.to_vec();
        by_size.sort_by_key(|(id, q)| (*q, *id));
        load::LoadOptions {
            targets,
            scenario: self.scenario,
            time_scale: time_scale.clamp(0.001, 100.0),
            think: Duration::from_millis(self.think_ms),
            connections: self.connections,
            duration: self.duration,
            coupons: coupons.iter().map(|(id, _)| *id).collect(),
            hot_coupons: by_size.iter().take(3).map(|(id, _)| *id).collect(),
            users: self.users.max(1),
            progress: !self.quiet && !self.json,
            tokens: self.jwt_hs256_secret.as_ref().map(|s| load::TokenSigner {
                secret: s.clone(),
                issuer: self.jwt_issuer.clone(),
                audience: self.jwt_audience.clone(),
            }),
        }
    }

    /// Prints the report; the exit status says whether every invariant held.
    fn finish(&self, report: &report::Report) -> anyhow::Result<ExitCode> {
        if let Some(path) = &self.markdown {
            write(path, &report.render_markdown())?;
        }
        if let Some(path) = &self.html {
            let html = page::drop_page(report).context("drawing the report page")?;
            write(path, &html)?;
        }
        if self.json {
            println!("{}", to_json(report));
        } else {
            print!("{}", report.render_text());
        }
        Ok(if report.passed {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?} is not a duration like 30s or 2m"))?;
    match unit {
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "ms" => Ok(Duration::from_millis(n)),
        _ => Err(anyhow::anyhow!("{s:?} is not a duration like 30s or 2m")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let Cli {
        backends,
        log_format,
        command,
    } = Cli::parse();
    init_logging(log_format);
    match execute(&backends, command).await {
        Ok(code) => code,
        Err(e) => {
            // A Kafka error gets what librdkafka said about the connection.
            let e = match (e.downcast::<coupon_core::Error>(), backends.kafka()) {
                (Ok(core), Ok(kafka)) => coupon_core::broker::explain(&kafka, core).await.into(),
                (Ok(core), Err(_)) => core.into(),
                (Err(other), _) => other,
            };
            eprintln!("couponctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// One function per subcommand, each on its own screen.
async fn execute(b: &ConnectionArgs, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Provision { file, json } => run_provision(b, file, json).await,
        Command::Verify {
            campaign,
            accepted,
            file,
            wait_drain,
            json,
        } => run_verify(b, campaign, accepted, file, wait_drain, json).await,
        Command::Demo {
            file,
            time_scale,
            load,
        } => run_demo(b, file, time_scale, load).await,
        Command::Plan {
            rates,
            from,
            issued_share,
            utilisation,
            api_pod_cores,
            consumer_pod_cores,
            json,
        } => run_plan(
            rates,
            from,
            issued_share,
            utilisation,
            api_pod_cores,
            consumer_pod_cores,
            json,
        ),
        Command::Bench {
            connections,
            duration,
            raw_ops,
            cluster_url,
            json,
            html,
        } => run_bench(b, connections, duration, raw_ops, cluster_url, json, html).await,
        Command::Load {
            target,
            campaign,
            time_scale,
            load,
        } => run_load(b, target, campaign, time_scale, load).await,
        Command::Reconcile {
            campaign,
            min_age,
            wait_drain,
            json,
        } => run_reconcile(b, campaign, min_age, wait_drain, json).await,
    }
}

/// `couponctl provision`.
async fn run_provision(b: &ConnectionArgs, file: PathBuf, json: bool) -> anyhow::Result<ExitCode> {
    let (redis, kafka) = (b.redis()?, b.kafka()?);
    let campaign = Campaign::from_yaml(&read(&file)?)?;
    let gate = RedisGate::connect(&redis).await?;
    let ledger = Ledger::connect(b.database_url()?, 2).await?;
    let topics = KafkaAdmin::new(&kafka)?;
    let report = provision(
        &campaign,
        &Stores {
            gate: &gate,
            ledger: &ledger,
            topics: &topics,
            kafka: &kafka,
            rebuild_after: coupon_core::provision::DELIVERY_GRACE,
        },
    )
    .await?;
    if json {
        println!("{}", to_json(&report));
    } else {
        println!("campaign {}: {report}", campaign.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// `couponctl verify`.
async fn run_verify(
    b: &ConnectionArgs,
    campaign: String,
    accepted: Option<PathBuf>,
    file: Option<PathBuf>,
    wait_drain: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (redis, kafka) = (b.redis()?, b.kafka()?);
    let spec = match &file {
        Some(f) => {
            let c = Campaign::from_yaml(&read(f)?)?;
            Some(
                c.coupons()
                    .iter()
                    .map(|c| (c.id, c.quantity))
                    .collect::<BTreeMap<_, _>>(),
            )
        }
        None => None,
    };
    let accepted = match &accepted {
        Some(f) => Some(AcceptedLog::parse(&read(f)?)?),
        None => None,
    };
    let gate = RedisGate::connect(&redis).await?;
    let ledger = Ledger::connect(b.database_url()?, 2).await?;
    let topic = topic_name(&campaign);
    wait_drained(
        &kafka,
        &consumer_group(&campaign),
        &topic,
        Duration::from_secs(wait_drain),
    )
    .await?;
    let report = verify(
        &VerifyInput {
            campaign: &campaign,
            topic: &topic,
            kafka: &kafka,
            spec,
            accepted: accepted.as_ref(),
        },
        &gate,
        &ledger,
    )
    .await?;
    if json {
        println!("{}", to_json(&report));
    } else {
        print!("{}", report.render());
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `couponctl demo`.
async fn run_demo(
    b: &ConnectionArgs,
    file: Option<PathBuf>,
    time_scale: f64,
    load: LoadArgs,
) -> anyhow::Result<ExitCode> {
    let text = match &file {
        Some(f) => read(f)?,
        None => demo::SEED_CAMPAIGN.to_string(),
    };
    let campaign = Campaign::from_yaml(&text)?;
    let coupons: Vec<_> = campaign
        .coupons()
        .iter()
        .map(|c| (c.id, c.quantity))
        .collect();
    let (mut report, running) = demo::run(
        b,
        &campaign,
        |target| load.options(vec![target], time_scale, &coupons),
        load.accepted.as_deref(),
    )
    .await?;
    if !load.json {
        println!(
            "couponctl demo: gate = {}, broker = {}, ledger = {}; real coupon-api and coupon-consumer code",
            running.gate, running.broker, running.ledger
        );
    }
    report.run.backends = vec![
        ("gate".into(), running.gate.into()),
        ("broker".into(), running.broker.into()),
        ("ledger".into(), running.ledger.into()),
        (
            "API and consumer".into(),
            "in this process (couponctl demo)".into(),
        ),
    ];
    load.finish(&report)
}

/// `couponctl plan`.
fn run_plan(
    rates: Vec<f64>,
    from: Option<PathBuf>,
    issued_share: f64,
    utilisation: f64,
    api_pod_cores: f64,
    consumer_pod_cores: f64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (costs, source) = match &from {
        Some(path) => (read_costs(path)?, path.display().to_string()),
        None => (plan::Costs::REFERENCE, "reference machine".to_string()),
    };
    let a = plan::Assumptions {
        issued_share,
        utilisation,
        api_pod_cores,
        consumer_pod_cores,
    };
    let valid = (0.0..=1.0).contains(&issued_share)
        && utilisation > 0.0
        && utilisation <= 1.0
        && api_pod_cores > 0.0
        && consumer_pod_cores > 0.0;
    if !valid {
        return Err(coupon_core::Error::Config(
            "--issued-share must be within 0..1, --utilisation within (0, 1] and pod cores positive".into(),
        )
        .into());
    }
    let rates = if rates.is_empty() {
        vec![10_000.0, 100_000.0, 1_000_000.0]
    } else {
        rates
    };
    let plans: Vec<_> = rates.iter().map(|r| plan::plan(*r, &costs, &a)).collect();
    if json {
        println!("{}", to_json(&plans));
    } else {
        print!("{}", plan::render(&plans, &costs, &a, &source));
    }
    Ok(ExitCode::SUCCESS)
}

/// `couponctl bench`.
async fn run_bench(
    b: &ConnectionArgs,
    connections: usize,
    duration: Duration,
    raw_ops: usize,
    cluster_url: Option<String>,
    json: bool,
    html: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let report = bench::run(
        b,
        bench::BenchOptions {
            connections,
            duration,
            raw_ops,
            cluster_url,
        },
    )
    .await?;
    if let Some(path) = &html {
        let page = page::bench_page(&report).context("drawing the bench page")?;
        write(path, &page)?;
    }
    if json {
        println!("{}", to_json(&report));
    } else {
        print!("{}", report.render());
    }
    Ok(ExitCode::SUCCESS)
}

/// `couponctl load`.
async fn run_load(
    b: &ConnectionArgs,
    target: Vec<String>,
    campaign: String,
    time_scale: f64,
    load: LoadArgs,
) -> anyhow::Result<ExitCode> {
    let (redis, kafka) = (b.redis()?, b.kafka()?);
    let gate = RedisGate::connect(&redis).await?;
    let ledger = Ledger::connect(b.database_url()?, 2).await?;
    let coupons = ledger.coupon_quantities(&campaign).await?;
    if coupons.is_empty() {
        return Err(coupon_core::Error::NotProvisioned(campaign).into());
    }
    let topic = topic_name(&campaign);
    let books = report::SystemUnderTest {
        campaign: &campaign,
        topic: &topic,
        kafka: &kafka,
        gate: &gate,
        ledger: &ledger,
    };
    let targets = target
        .iter()
        .map(|t| t.trim_end_matches('/').to_string())
        .collect();
    let mut report = report::load_and_report(
        &books,
        load.options(targets, time_scale, &coupons),
        load.accepted.as_deref(),
    )
    .await?;
    report.run.backends = vec![
        ("API".into(), target.join(", ")),
        ("gate".into(), without_credentials(b.redis_url())),
        ("broker".into(), b.kafka_brokers().to_string()),
        ("ledger".into(), without_credentials(b.database_url()?)),
    ];
    load.finish(&report)
}

/// `couponctl reconcile`.
async fn run_reconcile(
    b: &ConnectionArgs,
    campaign: String,
    min_age: u64,
    wait_drain: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (redis, kafka) = (b.redis()?, b.kafka()?);
    let gate: Arc<dyn StockGate> = Arc::new(RedisGate::connect(&redis).await?);
    let ledger = Ledger::connect(b.database_url()?, 2).await?;
    let lag = LagProbe::new(&kafka, &consumer_group(&campaign))?;
    let report = settle(
        &SettleScope {
            campaign: &campaign,
            topic: &topic_name(&campaign),
            gate: gate.as_ref(),
            ledger: &ledger,
            lag: &lag,
        },
        &SettleOptions {
            min_age: Duration::from_secs(min_age),
            drain_timeout: Duration::from_secs(wait_drain),
            ..SettleOptions::default()
        },
    )
    .await?;
    if json {
        println!("{}", to_json(&report));
    } else {
        println!("{report}");
    }
    Ok(if report.not_drained || report.gate_lost {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn write(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// A URL for the report: user and password dropped.
fn without_credentials(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.has_host() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(not a URL)".into(),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// The CPU costs in a `couponctl bench --json` report.
fn read_costs(path: &std::path::Path) -> coupon_core::Result<plan::Costs> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| coupon_core::Error::Config(format!("cannot read {}: {e}", path.display())))?;
    #[derive(serde::Deserialize)]
    struct Report {
        costs: plan::Costs,
    }
    serde_json::from_str::<Report>(&text)
        .map(|r| r.costs)
        .map_err(|e| {
            coupon_core::Error::Config(format!(
                "{} is not a `couponctl bench --json` report with costs: {e}",
                path.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::without_credentials;

    #[test]
    fn report_headers_show_no_credentials() {
        assert_eq!(
            without_credentials("postgres://ci:hunter2@db.local:5432/coupons"),
            "postgres://db.local:5432/coupons"
        );
        assert_eq!(
            without_credentials("rediss://:hunter2@cache:6380"),
            "rediss://cache:6380"
        );
        assert_eq!(
            without_credentials("sqlite:/tmp/ledger.db"),
            "sqlite:/tmp/ledger.db"
        );
        assert_eq!(without_credentials("not a url"), "(not a URL)");
    }
}
