//! Chaos under a hot load on real Redis, Apache Kafka and both databases: clients hanging up, the
//! API, the consumer and the broker SIGKILLed, the database cut, Redis restarted empty. After healing, every
//! promise holds: every 202 stored, no duplicate, ledger remaining = quantity - issued, gate
//! remaining = ledger remaining, no coupon answered sold_out with stock left. The outcome (with
//! the timeline and the time from the last fault to balanced books) is printed.

use coupon_e2e::chaos::{ChaosOptions, Fault, run};
use coupon_e2e::{mysql_url, postgres_url};

async fn chaos(faults: &[Fault], db: &str) {
    let outcome = run(&ChaosOptions::new(faults, db))
        .await
        .unwrap_or_else(|e| panic!("chaos run failed: {e}"));
    let text = outcome.render();
    println!("{text}");
    assert!(outcome.problems.is_empty(), "{text}");
    assert!(
        outcome.clients.requests > 2000,
        "a hot load of several thousand requests: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_hanging_up_strand_nothing_postgres() {
    chaos(&[Fault::HangUps], &postgres_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_killed_repeatedly_strands_nothing_mariadb() {
    chaos(&[Fault::KillApi], &mysql_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_killed_repeatedly_loses_nothing_postgres() {
    chaos(&[Fault::KillConsumer], &postgres_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_cut_loses_nothing_mariadb() {
    chaos(&[Fault::CutDatabase], &mysql_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_empty_is_rebuilt_postgres() {
    chaos(&[Fault::RestartRedis], &postgres_url()).await;
}

/// Every fault in one run, on each database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_postgres() {
    chaos(&Fault::ALL, &postgres_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_mariadb() {
    chaos(&Fault::ALL, &mysql_url()).await;
}

/// The Apache Kafka broker SIGKILLed mid-load and restarted on its log directory, three times:
/// the API answers 503 while it is gone, settlement decides the unknown outcomes, the books
/// balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_killed_loses_nothing_postgres() {
    chaos(&Fault::KAFKA, &postgres_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_killed_loses_nothing_mariadb() {
    chaos(&Fault::KAFKA, &mysql_url()).await;
}

/// The broker down, refusing, answering past the delivery deadline, and the idempotent
/// producer's fatal error, on librdkafka's mock cluster (faults a real broker cannot be made to
/// show on demand).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_faults_postgres() {
    chaos(&Fault::BROKER, &postgres_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_faults_mariadb() {
    chaos(&Fault::BROKER, &mysql_url()).await;
}
