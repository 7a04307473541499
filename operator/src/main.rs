use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use clap::{Parser, Subcommand};
use coupon_core::config::{LogFormat, init_logging};
use coupon_operator::controller::{Context, error_policy, reconcile};
use coupon_operator::crd::CouponCampaign;
use coupon_operator::lease::LeaseLock;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use std::time::Duration;

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
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinition (what crds/ holds).
    Crdgen,
    /// Reconcile CouponCampaigns (the default), in-cluster or from the kubeconfig.
    Run,
}

#[tokio::main]
async fn main() -> ExitCode {
    let Args {
        command,
        health_listen,
        log_format,
    } = Args::parse();
    match command.unwrap_or(Command::Run) {
        Command::Crdgen => {
            print!("{}", coupon_operator::crd::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Run => {
            init_logging(log_format);
            match run(health_listen).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("coupon-operator: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(health_listen: SocketAddr) -> Result<(), String> {
    let client = Client::try_default()
        .await
        .map_err(|e| format!("no Kubernetes API (in-cluster or kubeconfig): {e}"))?;
    let listener = tokio::net::TcpListener::bind(health_listen)
        .await
        .map_err(|e| format!("cannot listen on {health_listen}: {e}"))?;
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            Router::new().route("/healthz", get(|| async { "ok" })),
        )
        .await;
    });
    let ctx = Arc::new(Context::new(client.clone()));
    tracing::info!("coupon-operator reconciling CouponCampaigns");
    Controller::new(
        Api::<CouponCampaign>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Deployment>::all(client), watcher::Config::default())
    .shutdown_on_signal()
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "reconcile");
        }
    })
    .await;
    Ok(())
}
