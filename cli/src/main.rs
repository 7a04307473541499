//! `couponctl`: operate a campaign without Kubernetes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use coupon_core::broker::{KafkaAdmin, wait_drained};
use coupon_core::campaign::{Campaign, consumer_group, topic_name};
use coupon_core::config::{BackendArgs, LogFormat, init_logging};
use coupon_core::gate::{RedisGate, StockGate};
use coupon_core::ledger::Ledger;
use coupon_core::provision::{Backends, provision};
use coupon_core::reconcile::{ReconcileOptions, reconcile};
use coupon_core::verify::{AcceptedLog, VerifyInput, verify};

#[derive(Parser)]
#[command(name = "couponctl", version, about)]
struct Cli {
    #[command(flatten)]
    backends: BackendArgs,
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
    /// Settle reservations whose publish result was unknown.
    Reconcile {
        #[arg(long, env = "CAMPAIGN")]
        campaign: String,
        /// Only settle entries older than this many seconds.
        #[arg(long, default_value_t = 30)]
        min_age: u64,
        /// Wait up to this many seconds for the consumers to drain.
        #[arg(long, default_value_t = 60)]
        wait_drain: u64,
        #[arg(long)]
        json: bool,
    },
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
            eprintln!("couponctl: {e}");
            ExitCode::from(2)
        }
    }
}

async fn execute(b: &BackendArgs, command: Command) -> Result<ExitCode, coupon_core::Error> {
    match command {
        Command::Provision { file, json } => {
            let campaign = Campaign::from_yaml(&read(&file)?)?;
            let gate = RedisGate::connect(&b.redis_url).await?;
            let ledger = Ledger::connect(b.database_url()?, 2).await?;
            let topics = KafkaAdmin::new(&b.kafka_brokers)?;
            let report = provision(
                &campaign,
                &Backends {
                    gate: &gate,
                    ledger: &ledger,
                    topics: &topics,
                    brokers: &b.kafka_brokers,
                },
            )
            .await?;
            if json {
                println!("{}", to_json(&report));
            } else {
                println!(
                    "campaign {}: topic {} ({} partitions{}), {} coupons created, {} grown, {} gates rebuilt, {} coupons in all",
                    campaign.name,
                    report.topic,
                    report.partitions,
                    if report.topic_created {
                        ", created"
                    } else {
                        ""
                    },
                    report.coupons_created,
                    report.coupons_grown.len(),
                    report.gates_rebuilt.len(),
                    report.total_quantity
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            campaign,
            accepted,
            file,
            wait_drain,
            json,
        } => {
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
            let gate = RedisGate::connect(&b.redis_url).await?;
            let ledger = Ledger::connect(b.database_url()?, 2).await?;
            let topic = topic_name(&campaign);
            wait_drained(
                &b.kafka_brokers,
                &consumer_group(&campaign),
                &topic,
                Duration::from_secs(wait_drain),
            )
            .await?;
            let report = verify(
                &VerifyInput {
                    campaign: &campaign,
                    topic: &topic,
                    brokers: &b.kafka_brokers,
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
        Command::Reconcile {
            campaign,
            min_age,
            wait_drain,
            json,
        } => {
            let gate: Arc<dyn StockGate> = Arc::new(RedisGate::connect(&b.redis_url).await?);
            let ledger = Ledger::connect(b.database_url()?, 2).await?;
            let report = reconcile(
                &campaign,
                &topic_name(&campaign),
                &b.kafka_brokers,
                gate.as_ref(),
                &ledger,
                &ReconcileOptions {
                    min_age: Duration::from_secs(min_age),
                    drain_timeout: Duration::from_secs(wait_drain),
                },
            )
            .await?;
            if json {
                println!("{}", to_json(&report));
            } else {
                println!(
                    "{} pending: {} kept (issued), {} released, {} too young{}",
                    report.pending,
                    report.kept,
                    report.released,
                    report.too_young,
                    if report.not_drained {
                        "; consumers did not drain in time, nothing settled"
                    } else {
                        ""
                    }
                );
            }
            Ok(if report.not_drained {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn read(path: &PathBuf) -> Result<String, coupon_core::Error> {
    std::fs::read_to_string(path)
        .map_err(|e| coupon_core::Error::Unexpected(format!("cannot read {}: {e}", path.display())))
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}
