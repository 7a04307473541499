use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use coupon_core::config::{LogFormat, init_logging};
use coupon_operator::context::Context;
use coupon_operator::controller::{error_policy, reconcile};
use coupon_operator::crd::CouponCampaign;
use coupon_operator::lease::LeaseLock;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The CouponCampaign operator.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address of /healthz and /metrics.
    #[arg(long, env = "HEALTH_LISTEN", default_value = "0.0.0.0:8081")]
    health_listen: SocketAddr,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Image of the API and consumer workloads when a campaign names none (the chart passes
    /// its own image).
    #[arg(long, env = "WORKLOAD_IMAGE", default_value = coupon_operator::children::DEFAULT_WORKLOAD_IMAGE)]
    workload_image: String,
    /// Pull policy of the workloads' containers (Always, IfNotPresent, Never); unset leaves
    /// Kubernetes' default. The chart passes its image.pullPolicy.
    #[arg(long, env = "WORKLOAD_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    workload_image_pull_policy: Option<String>,
    /// Seconds between settlement rounds (every reservation ends issued or released).
    #[arg(long, env = "SETTLE_EVERY_SECS", default_value_t = 10)]
    settle_every_secs: u64,
    /// Reservations are settled, and a lost gate rebuilt, only this many milliseconds after the
    /// fact; must exceed the API's --publish-timeout-ms with a margin.
    #[arg(long, env = "SETTLE_AFTER_MS", default_value_t = coupon_core::provision::DELIVERY_GRACE.as_millis() as u64)]
    settle_after_ms: u64,
    /// Reconcile campaigns in these namespaces only (comma separated); empty watches every
    /// namespace. The chart's watchNamespaces grants namespaced Roles to match.
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinition (what crds/ holds).
    Crdgen,
    /// Reconcile CouponCampaigns (the default), in-cluster or from the kubeconfig.
    Run,
    /// Print the child objects the operator would apply for a campaign manifest.
    Manifests {
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let Args {
        command,
        health_listen,
        log_format,
        workload_image,
        workload_image_pull_policy,
        settle_every_secs,
        settle_after_ms,
        watch_namespaces,
    } = Args::parse();
    let workload_image = coupon_operator::children::WorkloadImage {
        name: workload_image,
        pull_policy: workload_image_pull_policy,
    };
    match command.unwrap_or(Command::Run) {
        Command::Crdgen => {
            print!("{}", coupon_operator::crd::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Manifests { file } => {
            match coupon_operator::children::manifests_for(&file, &workload_image) {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("coupon-operator: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Run => {
            init_logging(log_format);
            let settlement = Settlement {
                every: Duration::from_secs(settle_every_secs.max(1)),
                after: Duration::from_millis(settle_after_ms),
            };
            let namespaces: Vec<String> = watch_namespaces
                .into_iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect();
            match run(health_listen, workload_image, settlement, namespaces).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("coupon-operator: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

struct Settlement {
    every: Duration,
    after: Duration,
}

async fn run(
    health_listen: SocketAddr,
    workload_image: coupon_operator::children::WorkloadImage,
    settlement: Settlement,
    namespaces: Vec<String>,
) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("no Kubernetes API (in-cluster or kubeconfig)")?;
    let listener = tokio::net::TcpListener::bind(health_listen)
        .await
        .with_context(|| format!("cannot listen on {health_listen}"))?;
    let mut ctx = Context::new(client.clone())
        .with_workload_image(workload_image)
        .with_settle_after(settlement.after);
    ctx.settle_every = settlement.every;
    let ctx = Arc::new(ctx);
    let router = ctx.metrics.router();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    // Only the Lease holder reconciles; a replica that loses it exits and restarts as a follower.
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into());
    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("coupon-operator-{}", std::process::id()));
    let lock = LeaseLock::new(
        Api::<Lease>::namespaced(client.clone(), &namespace),
        "coupon-operator",
        &identity,
        Duration::from_secs(15),
    );
    while !lock
        .try_acquire_or_renew(Timestamp::now())
        .await
        .context("lease")?
    {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tracing::info!(%identity, "leading");
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(lock.duration() / 3).await;
            match lock.try_acquire_or_renew(Timestamp::now()).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!("lost the lease; exiting so that only one replica acts");
                    std::process::exit(1);
                }
                Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
            }
        }
    });
    // Settlement runs on the leader only, like reconcile (a second settler would only redo work).
    let stop_settling = CancellationToken::new();
    tokio::spawn(coupon_operator::settle_timer::run(
        ctx.clone(),
        stop_settling.clone(),
    ));
    tracing::info!(?namespaces, "coupon-operator reconciling CouponCampaigns");
    // One controller per watched namespace (namespaced Roles suffice), or one for all.
    let scopes: Vec<(Api<CouponCampaign>, Api<Deployment>)> = if namespaces.is_empty() {
        vec![(Api::all(client.clone()), Api::all(client.clone()))]
    } else {
        namespaces
            .iter()
            .map(|ns| {
                (
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                )
            })
            .collect()
    };
    let controllers = scopes.into_iter().map(|(campaigns, deployments)| {
        Controller::new(campaigns, watcher::Config::default())
            .owns(deployments, watcher::Config::default())
            .shutdown_on_signal()
            .run(reconcile, error_policy, ctx.clone())
            .boxed()
    });
    futures::stream::select_all(controllers)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile");
            }
        })
        .await;
    stop_settling.cancel();
    Ok(())
}
