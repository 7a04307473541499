//! Chaos under a hot load on real Redis, Apache Kafka and both databases: clients hanging up, the
//! API, the consumer and the broker SIGKILLed, the database cut, Redis restarted empty. After healing, every
//! promise holds: every 202 stored, no duplicate, ledger remaining = quantity - issued, gate
//! remaining = ledger remaining, no coupon answered sold_out with stock left. The outcome (with
//! the timeline and the time from the last fault to balanced books) is printed.

use coupon_e2e::chaos::{ChaosOptions, ChaosOutcome, Fault, run};
use coupon_e2e::{browser, chaos_page, mysql_url, postgres_url, unique};

async fn chaos(faults: &[Fault], db: &str) {
    let opts = ChaosOptions::new(faults, db);
    let outcome = run(&opts)
        .await
        .unwrap_or_else(|e| panic!("chaos run failed: {e:#}"));
    let text = outcome.render();
    println!("{text}");
    assert!(outcome.problems.is_empty(), "{text}");
    assert!(
        outcome.clients.requests > 2000,
        "a hot load of several thousand requests: {text}"
    );
    page_shows_the_run(&outcome, &opts).await;
}

/// The run's page, as chromium draws it with no network: each fault marked, every chart drawn,
/// the verdict first; the per-second answers add up to the clients' own count.
async fn page_shows_the_run(outcome: &ChaosOutcome, opts: &ChaosOptions) {
    let t = &outcome.timeline;
    let periodic = opts.faults.iter().filter(|f| **f != Fault::HangUps).count();
    let expected_marks = if periodic > 0 { opts.rounds } else { 0 }
        + usize::from(opts.faults.contains(&Fault::HangUps));
    assert_eq!(t.marks.len(), expected_marks, "{:?}", t.marks);
    assert!(
        t.marks
            .iter()
            .all(|m| m.from_s <= m.until_s && m.until_s <= t.load_end_s)
    );
    let answered: u64 = t.seconds.iter().map(|s| s.total()).sum();
    // The final probe after the load is the clients' one request not in the load's seconds.
    assert_eq!(
        answered + 1,
        outcome.clients.requests,
        "every answer in its second"
    );
    assert!(!t.lag.is_empty(), "lag sampled");
    assert!(
        outcome
            .balanced_at_s
            .is_some_and(|b| b >= outcome.last_fault_s)
    );

    let dir = std::env::temp_dir().join(unique("chaos-page"));
    std::fs::create_dir_all(&dir).expect("dir");
    let page = dir.join("chaos.html");
    let html = chaos_page::page(outcome).expect("page");
    std::fs::write(&page, html).expect("written");
    let shot = browser::screenshot_path(&page, "chaos");
    let seen = browser::open(&page, Some(&shot))
        .await
        .unwrap_or_else(|e| panic!("chromium: {e:#}"));
    assert_eq!(seen.charts.len(), 3, "{seen:#?}");
    assert!(
        seen.charts.iter().all(|c| c.shapes > 0 && c.width > 500.0),
        "{seen:#?}"
    );
    assert!(seen.errors.is_empty() && seen.resources == 0, "{seen:#?}");
    let (verdict, visible) = seen.verdict.clone().expect("verdict");
    assert!(verdict.starts_with("PASS") && visible, "{verdict}");
    let (width, height) = seen.screenshot.expect("a screenshot");
    assert!(width == 1100 && height > 900, "screenshot {width}x{height}");
    let _ = std::fs::remove_dir_all(dir);
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
