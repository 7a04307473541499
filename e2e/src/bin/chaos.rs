//! `coupon-chaos`: the suite's chaos scenarios against the local stack, for a user to watch: a
//! timeline of faults, then the books after healing. Exits 1 when a promise is broken.

use anyhow::Context as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use coupon_e2e::chaos::{ChaosOptions, Fault, default_bin_dir, run};

#[derive(Parser)]
#[command(about = "Faults under a hot load, then the books after healing")]
struct Args {
    /// Faults to inject, in turn: hang-ups, kill-api, kill-consumer, cut-database, restart-redis
    /// (all = these five); kill-broker (a private Apache Kafka node, SIGKILLed and restarted);
    /// broker-down, broker-refuses, broker-slow, producer-fatal (librdkafka's mock cluster).
    #[arg(long = "fault", value_delimiter = ',', default_value = "all")]
    faults: Vec<String>,
    /// The ledger (PostgreSQL or MySQL/MariaDB).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Where `coupon-api` and `coupon-consumer` are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// How long the load runs, in seconds (default: by the number of faults).
    #[arg(long)]
    seconds: Option<u64>,
    /// How many times the periodic faults are injected (default: at least 3).
    #[arg(long)]
    rounds: Option<usize>,
    #[arg(long, default_value_t = 24)]
    clients: usize,
    /// Also write the run as one self-contained HTML page (faults marked on every timeline).
    #[arg(long)]
    html: Option<PathBuf>,
    /// Also write the outcome as JSON (per-second samples included) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let Args {
        faults,
        database_url,
        brokers,
        bin_dir,
        seconds,
        rounds,
        clients,
        html,
        json,
    } = Args::parse();
    let mut chosen = Vec::new();
    for f in &faults {
        match (f.as_str(), Fault::parse(f)) {
            ("all", _) => chosen.extend(Fault::ALL),
            (_, Some(fault)) => chosen.push(fault),
            (other, None) => {
                eprintln!("coupon-chaos: unknown fault {other:?}");
                return ExitCode::from(2);
            }
        }
    }
    let mut opts = ChaosOptions::new(&chosen, &database_url);
    opts.brokers = brokers;
    opts.bin_dir = bin_dir.unwrap_or_else(default_bin_dir);
    opts.clients = clients;
    if let Some(s) = seconds {
        opts.load = Duration::from_secs(s);
    }
    if let Some(r) = rounds {
        opts.rounds = r;
    }
    match run(&opts).await {
        Ok(outcome) => {
            print!("{}", outcome.render());
            if let Err(e) = write_files(&outcome, html.as_deref(), json.as_deref()) {
                eprintln!("coupon-chaos: {e:#}");
                return ExitCode::from(2);
            }
            if outcome.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("coupon-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn write_files(
    outcome: &coupon_e2e::chaos::ChaosOutcome,
    html: Option<&std::path::Path>,
    json: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let write = |path: &std::path::Path, text: String| {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    if let Some(path) = html {
        write(path, coupon_e2e::chaos_page::page(outcome)?)?;
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&outcome.to_json())?;
        write(path, text)?;
    }
    Ok(())
}
