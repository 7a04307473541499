//! Failure semantics: the broker refusing, the broker's answer lost, the database gone, poison
//! events, the gate lost. librdkafka's mock cluster injects the broker faults; a TCP proxy cuts
//! the database; everything else is real.

use std::time::Duration;

use axum::http::StatusCode;
use coupon_core::broker::{PublishTimeouts, Publisher};
use coupon_core::campaign::dead_letter_topic;
use coupon_core::event::IssuanceEvent;
use coupon_core::gate::{Decision, Reserving};
use coupon_core::ledger::Ledger;
use coupon_core::verify::AcceptedLog;
use coupon_e2e::{
    Proxy, Stack, assert_green, assert_refused, campaign, on_mock, request_id, unique,
};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const DRAIN: Duration = Duration::from_secs(30);

async fn settle(stack: &Stack) -> coupon_core::settlement::SettleReport {
    stack.settle(Duration::ZERO).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_refusal_releases_the_reservation() {
    let (mock, stack) = on_mock(
        &coupon_e2e::postgres_url(),
        campaign(&unique("refuse"), &[("1", 3)], 2),
        Duration::from_secs(5),
    )
    .await;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    let (s, j, headers) = stack.post_with("1", r#"{"userId":10}"#, &[]).await;
    assert_refused(
        &(s, j.clone()),
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    // A certain refusal was released at once: its status says so, nothing is left to settle.
    let refused = request_id(&j);
    assert_eq!(
        headers[axum::http::header::LOCATION],
        format!("/api/coupons/1/requests/{refused}").as_str()
    );
    assert_eq!(stack.request_status(1, refused).await, "released");
    assert_eq!(stack.remaining(1).await, 3, "stock given back");
    assert_eq!(
        stack.gate_snapshot(1).await.holders,
        0,
        "user's slot given back"
    );
    // The user retries as Retry-After says and gets the coupon once the broker accepts again
    // (librdkafka keeps the topic's authorization error until its next metadata refresh).
    let mut ok = stack.issue(1, 10).await;
    for _ in 0..40 {
        if ok.0 == StatusCode::ACCEPTED {
            break;
        }
        assert_refused(&ok, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        assert_eq!(
            stack.remaining(1).await,
            3,
            "every refusal released its reservation"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        ok = stack.issue(1, 10).await;
    }
    assert_eq!(ok.0, StatusCode::ACCEPTED, "{}", ok.1);
    stack.drain(DRAIN).await;
    let accepted = request_id(&ok.1);
    stack
        .wait_status(1, accepted, "issued", Duration::from_secs(10))
        .await;
    assert_eq!(stack.request_status(1, refused).await, "released");
    let report = settle(&stack).await;
    assert_eq!(
        (report.kept, report.released),
        (1, 0),
        "only the accepted one was left to settle: {report:?}"
    );
    let mut log = AcceptedLog::default();
    log.accepted.insert(accepted);
    assert_green(&stack.verify(Some(&log)).await);
    stack.shutdown().await;
}

/// The broker wrote the event but the API never learned it (the answer was lost): the
/// reservation stays unsettled, and settlement finds the row and keeps it. The mock cluster
/// cannot lose an answer after appending, so the API's side of it is played step by step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_result_written_is_kept_by_reconciliation() {
    let stack = Stack::start(
        &coupon_e2e::postgres_url(),
        campaign(&unique("unk-kept"), &[("1", 3)], 1),
    )
    .await;
    let name = stack.campaign.name.clone();
    let id = uuid::Uuid::now_v7();
    let gate = stack.gate.as_ref();
    assert_eq!(
        gate.reserve(&name, 1, 20, id).await.expect("reserve"),
        Decision::Reserved
    );
    let publisher = Publisher::new(
        &stack.brokers,
        &stack.campaign.topic(),
        PublishTimeouts::default(),
    )
    .expect("producer");
    publisher
        .publish(&IssuanceEvent::new(id, &name, 1, 20, chrono::Utc::now()))
        .await
        .expect("written");
    // Its event is in the log: the consumer stores it and marks it, or settlement finds it.
    assert!(
        ["pending", "issued"].contains(&stack.request_status(1, id).await.as_str()),
        "a reservation whose event is in the log is pending or issued"
    );
    stack.drain(DRAIN).await;
    stack
        .wait_status(1, id, "issued", Duration::from_secs(10))
        .await;
    let report = settle(&stack).await;
    assert_eq!(
        (report.unsettled, report.kept, report.released),
        (1, 1, 0),
        "{report:?}"
    );
    assert_eq!(stack.request_status(1, id).await, "issued");
    assert_eq!(stack.remaining(1).await, 2, "the coupon stays issued");
    assert_eq!(settle(&stack).await.unsettled, 0, "settled once");
    let mut log = AcceptedLog::default();
    log.ambiguous.insert(id);
    let verified = stack.verify(Some(&log)).await;
    assert_green(&verified);
    assert_eq!(verified.total_issued(), 1);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_result_never_written_is_released_by_reconciliation() {
    let (mock, stack) = on_mock(
        &coupon_e2e::mysql_url(),
        campaign(&unique("unk-lost"), &[("1", 3)], 1),
        Duration::from_millis(1500),
    )
    .await;
    mock.broker_down(1).expect("down");
    let answer = stack.issue(1, 30).await;
    assert_refused(&answer, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let id = request_id(&answer.1);
    assert_eq!(stack.remaining(1).await, 2, "kept until settled");
    assert_eq!(
        stack.request_status(1, id).await,
        "pending",
        "unknown until settled"
    );
    // Retried without the key while unknown: the user holds the coupon, so not twice.
    assert_refused(
        &stack.issue(1, 30).await,
        StatusCode::CONFLICT,
        "already_issued",
    );
    mock.broker_up(1).expect("up");
    let report = settle(&stack).await;
    assert_eq!(
        (report.unsettled, report.kept, report.released),
        (1, 0, 1),
        "{report:?}"
    );
    assert_eq!(stack.remaining(1).await, 3, "stock back");
    assert_eq!(stack.gate_snapshot(1).await.holders, 0, "slot back");
    assert_eq!(stack.request_status(1, id).await, "released");
    assert_eq!(settle(&stack).await.unsettled, 0, "settled once");
    let mut log = AcceptedLog::default();
    log.ambiguous.insert(id);
    assert_green(&stack.verify(Some(&log)).await);
    // The user can now get it for real.
    assert_eq!(stack.issue(1, 30).await.0, StatusCode::ACCEPTED);
    stack.shutdown().await;
}

/// The database goes away under load: 202s keep coming, the consumer retries, commits nothing,
/// and catches up with nothing lost once the database is back.
async fn database_outage_loses_nothing(db: &str) {
    let mut stack = Stack::start_idle(db, campaign(&unique("dbdown"), &[("1-4", 100)], 3)).await;
    let proxy = Proxy::start(&host_port(db)).await;
    let proxied = Ledger::connect(&proxy.url_for(db), 4)
        .await
        .expect("proxied ledger");
    stack.start_consumer(proxied);
    let mut log = AcceptedLog::default();
    for user in 1..=20u64 {
        let a = stack.issue(1 + (user % 4) as u32, user).await;
        assert_eq!(a.0, StatusCode::ACCEPTED, "{}", a.1);
        log.accepted.insert(request_id(&a.1));
    }
    stack.drain(DRAIN).await;
    proxy.cut();
    for user in 21..=120u64 {
        let a = stack.issue(1 + (user % 4) as u32, user).await;
        assert_eq!(
            a.0,
            StatusCode::ACCEPTED,
            "the API does not need the database: {}",
            a.1
        );
        log.accepted.insert(request_id(&a.1));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        stack.lag().await,
        100,
        "nothing committed while the database is down"
    );
    let books = stack
        .ledger
        .books(&stack.campaign.name)
        .await
        .expect("books");
    assert_eq!(books.iter().map(|b| b.issued).sum::<i64>(), 20);
    proxy.restore();
    stack.drain(DRAIN).await;
    let report = stack.verify(Some(&log)).await;
    assert_green(&report);
    assert_eq!(report.total_issued(), 120);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_loses_nothing() {
    database_outage_loses_nothing(&coupon_e2e::postgres_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_outage_loses_nothing() {
    database_outage_loses_nothing(&coupon_e2e::mysql_url()).await;
}

/// `host:port` of a backend's URL (the proxy's target).
fn host_port(url: &str) -> String {
    coupon_e2e::chaos::host_port(url).expect("a backend URL")
}

/// A malformed event goes to the dead-letter topic with its reason; the consumer goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_go_to_the_dead_letter_topic() {
    let stack = Stack::start(
        &coupon_e2e::postgres_url(),
        campaign(&unique("poison"), &[("1", 5)], 1),
    )
    .await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .create()
        .expect("producer");
    for payload in [&b"not json"[..], br#"{"v":9,"requestId":"x"}"#] {
        producer
            .send(
                FutureRecord::<(), [u8]>::to(&stack.campaign.topic()).payload(payload),
                Duration::from_secs(5),
            )
            .await
            .expect("garbage sent");
    }
    let good = stack.issue(1, 5).await;
    assert_eq!(good.0, StatusCode::ACCEPTED);
    producer.flush(Duration::from_secs(5)).expect("flush");
    stack.drain(DRAIN).await;
    let mut log = AcceptedLog::default();
    log.accepted.insert(request_id(&good.1));
    assert_green(&stack.verify(Some(&log)).await);

    let dlq: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    dlq.subscribe(&[&dead_letter_topic(&stack.campaign.topic())])
        .expect("subscribe");
    let mut reasons = Vec::new();
    let deadline = std::time::Instant::now() + DRAIN;
    while reasons.len() < 2 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = dlq.poll(Duration::from_millis(200)) {
            let headers = m.headers().expect("headers");
            let reason = headers
                .iter()
                .find(|h| h.key == "reason")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned());
            reasons.push(reason.expect("reason header"));
        }
    }
    reasons.sort();
    assert_eq!(reasons, vec!["malformed", "unsupported_version"]);
    stack.shutdown().await;
}

/// Redis loses a coupon: the API refuses rather than issue from an empty gate, and provisioning
/// rebuilds stock and holders from the drained ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_gate_refuses_then_rebuilds_from_the_ledger() {
    let stack = Stack::start(
        &coupon_e2e::mysql_url(),
        campaign(&unique("lost"), &[("1", 5)], 1),
    )
    .await;
    for user in 1..=2 {
        assert_eq!(stack.issue(1, user).await.0, StatusCode::ACCEPTED);
    }
    stack.drain(DRAIN).await;
    let mut conn = stack.gate.connection();
    let _: () = redis::cmd("DEL")
        .arg(coupon_core::gate::coupon_key(&stack.campaign.name, 1))
        .arg(coupon_core::gate::holders_key(&stack.campaign.name, 1))
        .query_async(&mut conn)
        .await
        .expect("del");
    assert_refused(
        &stack.issue(1, 3).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    let report = stack.reprovision(&stack.campaign).await.expect("rebuild");
    assert_eq!(report.gates_rebuilt, vec![1]);
    assert_eq!(stack.remaining(1).await, 3);
    assert_refused(
        &stack.issue(1, 2).await,
        StatusCode::CONFLICT,
        "already_issued",
    );
    assert_eq!(stack.issue(1, 3).await.0, StatusCode::ACCEPTED);
    stack.drain(DRAIN).await;
    assert_green(&stack.verify(None).await);
    stack.shutdown().await;
}

/// Redis goes away: the API answers 503 at once (no hang, nothing issued from an empty gate) and
/// serves again when it is back; the books still balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_answers_unavailable_and_recovers() {
    let mut stack = Stack::start(
        &coupon_e2e::postgres_url(),
        campaign(&unique("redisdown"), &[("1", 5)], 1),
    )
    .await;
    let proxy = Proxy::start(&host_port(&coupon_e2e::redis_url())).await;
    stack
        .route_gate_through(
            &proxy.url_for(&coupon_e2e::redis_url()),
            PublishTimeouts::default(),
        )
        .await;
    let mut log = AcceptedLog::default();
    let ok = stack.issue(1, 1).await;
    assert_eq!(ok.0, StatusCode::ACCEPTED, "{}", ok.1);
    log.accepted.insert(request_id(&ok.1));
    proxy.cut();
    let started = std::time::Instant::now();
    assert_refused(
        &stack.issue(1, 2).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered in {:?}",
        started.elapsed()
    );
    proxy.restore();
    let mut again = stack.issue(1, 2).await;
    for _ in 0..40 {
        if again.0 == StatusCode::ACCEPTED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        again = stack.issue(1, 2).await;
    }
    assert_eq!(again.0, StatusCode::ACCEPTED, "{}", again.1);
    log.accepted.insert(request_id(&again.1));
    stack.drain(DRAIN).await;
    let report = stack.verify(Some(&log)).await;
    assert_green(&report);
    assert_eq!(report.total_issued(), 2);
    stack.shutdown().await;
}
