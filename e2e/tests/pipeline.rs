//! The issuance pipeline end to end on real Redis, a real Kafka-protocol broker (KAFKA_BROKERS)
//! and both PostgreSQL and MariaDB: every scenario runs once per database.

use std::collections::HashSet;
use std::time::Duration;

use axum::http::StatusCode;
use coupon_core::campaign::{Campaign, CampaignSpec};
use coupon_core::verify::{AcceptedLog, Status};
use coupon_e2e::{Stack, assert_green, assert_refused, campaign, request_id, unique};
use futures::future::join_all;

/// Runs `$scenario(database_url)` as one test per database.
macro_rules! on_both_databases {
    ($($scenario:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(&coupon_e2e::postgres_url()).await;
                }
            )*
        }
        mod mariadb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(&coupon_e2e::mysql_url()).await;
                }
            )*
        }
    };
}

on_both_databases!(
    happy_path,
    burst_on_a_quantity_100_coupon,
    duplicates_never_debit_stock,
    window_refusals_consume_nothing,
    bad_input_reserves_nothing,
    replayed_batch_changes_nothing,
    idempotency_key_retry_gets_the_same_answer,
    provisioning_is_idempotent_and_grows_only,
);

const DRAIN: Duration = Duration::from_secs(30);

async fn happy_path(db: &str) {
    let stack = Stack::start(db, campaign(&unique("happy"), &[("1-3", 10)], 3)).await;
    let mut log = AcceptedLog::default();
    for user in 1..=5 {
        let (status, body) = stack.issue(1 + (user % 3) as u32, user).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        log.accepted.insert(request_id(&body));
    }
    let (status, body) = stack.get("/api/coupons/2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"quantity\":10"), "{body}");
    stack.drain(DRAIN).await;
    let report = stack.verify(Some(&log)).await;
    assert_green(&report);
    assert_eq!(report.total_issued(), 5);
    assert!(
        report.checks.iter().all(|c| c.status == Status::Pass),
        "{}",
        report.render()
    );
    let metrics = stack.get("/metrics").await.1;
    assert!(metrics.contains("coupon_api_requests_total"), "{metrics}");
    stack.shutdown().await;
}

/// The burst with the gate on a three-master Redis Cluster: the coupons' slots live on
/// different masters, and the books balance the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_on_a_redis_cluster() {
    let name = unique("burst-cluster");
    let stack = Stack::start_on_cluster(
        &coupon_e2e::postgres_url(),
        campaign(&name, &[("1", 100), ("2", 100)], 3),
    )
    .await;
    burst(stack).await;
}

/// One hot coupon split over four shards (on the cluster, over its three masters): 2,000
/// users race for 500 units. Exactly 500 win, no user twice, and no sold-out answer came back
/// before a request that still won was sent (no refusal while any shard had stock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_coupon_over_four_shards_on_a_redis_cluster() {
    let spec = sharded(campaign(&unique("hot-cluster"), &[("1", 500)], 3), 4);
    sharded_burst(Stack::start_on_cluster(&coupon_e2e::postgres_url(), spec).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_coupon_over_four_shards() {
    let spec = sharded(campaign(&unique("hot"), &[("1", 500)], 3), 4);
    sharded_burst(Stack::start(&coupon_e2e::mysql_url(), spec).await).await;
}

fn sharded(mut c: Campaign, shards: u16) -> Campaign {
    for g in &mut c.spec.coupons {
        g.shards = Some(shards);
    }
    c
}

async fn sharded_burst(stack: Stack) {
    use futures::StreamExt;
    let started = std::time::Instant::now();
    // 64 at a time, so requests keep being sent after the first sold-out answers arrive.
    let answers: Vec<_> = futures::stream::iter(1..=2000u64)
        .map(|user| {
            let stack = &stack;
            async move {
                let sent = started.elapsed();
                let (status, body) = stack.issue(1, user).await;
                (sent, started.elapsed(), status, body)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let accepted: Vec<_> = answers
        .iter()
        .filter(|a| a.2 == StatusCode::ACCEPTED)
        .collect();
    assert_eq!(accepted.len(), 500, "exactly the quantity accepted");
    let users: HashSet<_> = accepted.iter().map(|a| a.3["userId"].as_u64()).collect();
    assert_eq!(users.len(), 500, "no user twice");
    let sold_out: Vec<_> = answers
        .iter()
        .filter(|a| a.3["code"] == "sold_out")
        .collect();
    assert_eq!(
        sold_out.len(),
        1500,
        "every other request refused as sold out"
    );
    let first_refusal = sold_out.iter().map(|a| a.1).min().expect("refusals");
    let late_winners = accepted.iter().filter(|a| a.0 > first_refusal).count();
    assert_eq!(
        late_winners, 0,
        "requests sent after a sold-out answer still got a coupon: stock remained"
    );
    let snap = stack.gate_snapshot(1).await;
    assert_eq!((snap.shards, snap.remaining, snap.quantity), (4, 0, 500));
    assert_eq!(
        snap.refused_sold_out, 1500,
        "each refusal counted once, at its home"
    );
    stack.drain(DRAIN).await;
    let mut log = AcceptedLog::default();
    log.accepted
        .extend(accepted.iter().map(|a| request_id(&a.3)));
    let report = stack.verify(Some(&log)).await;
    assert_green(&report);
    assert_eq!(report.total_issued(), 500);
    stack.shutdown().await;
}

/// 1,000 distinct users and then repeating users race for 100 coupons: exactly 100 win.
async fn burst_on_a_quantity_100_coupon(db: &str) {
    burst(Stack::start(db, campaign(&unique("burst"), &[("1", 100), ("2", 100)], 3)).await).await;
}

async fn burst(stack: Stack) {
    let distinct = join_all((1..=1000u64).map(|user| stack.issue(1, user))).await;
    // Coupon 2: 300 users asking four times each, all at once.
    let repeating = join_all((0..1200u64).map(|i| stack.issue(2, 1 + i % 300))).await;
    let mut log = AcceptedLog::default();
    for (coupon, answers) in [(1, &distinct), (2, &repeating)] {
        let accepted: Vec<_> = answers
            .iter()
            .filter(|a| a.0 == StatusCode::ACCEPTED)
            .collect();
        assert_eq!(accepted.len(), 100, "coupon {coupon}: exactly 100 accepted");
        let users: HashSet<_> = accepted.iter().map(|a| a.1["userId"].as_u64()).collect();
        assert_eq!(users.len(), 100, "coupon {coupon}: no user twice");
        for a in answers.iter().filter(|a| a.0 != StatusCode::ACCEPTED) {
            let code = a.1["code"].as_str().unwrap_or_default();
            assert!(
                code == "sold_out" || code == "already_issued",
                "unexpected refusal {}",
                a.1
            );
        }
        log.accepted
            .extend(accepted.iter().map(|a| request_id(&a.1)));
        assert_eq!(stack.remaining(coupon).await, 0);
    }
    stack.drain(DRAIN).await;
    // Every 202 reads `issued` as soon as it is stored, before any settlement: the consumer
    // marked each batch, both coupons' (on a cluster, their keys on different masters).
    let coupon_of = |a: &(StatusCode, serde_json::Value)| a.1["couponId"].as_u64();
    for a in distinct
        .iter()
        .chain(&repeating)
        .filter(|a| a.0 == StatusCode::ACCEPTED)
    {
        let coupon = coupon_of(a).expect("couponId") as u32;
        stack
            .wait_status(coupon, request_id(&a.1), "issued", Duration::from_secs(5))
            .await;
    }
    let report = stack.verify(Some(&log)).await;
    assert_green(&report);
    assert_eq!(report.total_issued(), 200);
    for line in &report.coupons {
        assert_eq!(
            (line.issued, line.db_remaining, line.redis_remaining),
            (100, 0, Some(0))
        );
        assert!(
            line.refused_sold_out > 0,
            "the sold-out refusals are counted for I5"
        );
    }
    stack.shutdown().await;
}

async fn duplicates_never_debit_stock(db: &str) {
    let stack = Stack::start(db, campaign(&unique("dup"), &[("1", 2)], 1)).await;
    let first = stack.issue(1, 7).await;
    assert_eq!(first.0, StatusCode::ACCEPTED);
    for _ in 0..5 {
        let again = stack.issue(1, 7).await;
        assert_refused(&again, StatusCode::CONFLICT, "already_issued");
        assert_eq!(again.1["requestId"], first.1["requestId"]);
    }
    assert_eq!(stack.remaining(1).await, 1, "repeats took no stock");
    // Another user still gets the last coupon, then it is sold out.
    assert_eq!(stack.issue(1, 8).await.0, StatusCode::ACCEPTED);
    assert_refused(&stack.issue(1, 9).await, StatusCode::CONFLICT, "sold_out");
    stack.drain(DRAIN).await;
    assert_green(&stack.verify(None).await);
    stack.shutdown().await;
}

async fn window_refusals_consume_nothing(db: &str) {
    let now = chrono::Utc::now();
    for (label, starts, ends, code) in [
        (
            "early",
            now + chrono::Duration::hours(1),
            now + chrono::Duration::hours(2),
            "not_open",
        ),
        (
            "late",
            now - chrono::Duration::hours(2),
            now - chrono::Duration::hours(1),
            "closed",
        ),
    ] {
        let base = campaign(&unique(label), &[("1", 5)], 1);
        let spec = CampaignSpec {
            starts_at: Some(starts),
            ends_at: Some(ends),
            ..base.spec.clone()
        };
        let stack = Stack::start(db, Campaign::new(base.name.clone(), spec).expect("valid")).await;
        for user in 1..=3 {
            assert_refused(&stack.issue(1, user).await, StatusCode::FORBIDDEN, code);
        }
        assert_eq!(stack.remaining(1).await, 5, "{label}: no stock consumed");
        let snap = stack.gate_snapshot(1).await;
        assert_eq!(snap.holders, 0, "{label}: no user marked");
        stack.shutdown().await;
    }
}

async fn bad_input_reserves_nothing(db: &str) {
    let stack = Stack::start(db, campaign(&unique("bad"), &[("1", 5)], 1)).await;
    let big = format!(r#"{{"userId":1,"pad":"{}"}}"#, "x".repeat(4096));
    for (coupon, body, status) in [
        ("999", r#"{"userId":1}"#, StatusCode::NOT_FOUND),
        ("abc", r#"{"userId":1}"#, StatusCode::BAD_REQUEST),
        ("-1", r#"{"userId":1}"#, StatusCode::BAD_REQUEST),
        ("1", r#"{"userId":-5}"#, StatusCode::BAD_REQUEST),
        ("1", r#"{"userId":"5"}"#, StatusCode::BAD_REQUEST),
        ("1", r#"{"user":5}"#, StatusCode::BAD_REQUEST),
        ("1", "{oops", StatusCode::BAD_REQUEST),
        ("1", "", StatusCode::BAD_REQUEST),
        ("1", big.as_str(), StatusCode::PAYLOAD_TOO_LARGE),
    ] {
        let answer = stack.post(coupon, body, None).await;
        let code = if status == StatusCode::NOT_FOUND {
            "unknown_coupon"
        } else {
            "invalid_request"
        };
        assert_refused(&answer, status, code);
    }
    assert_eq!(stack.remaining(1).await, 5);
    assert_eq!(stack.gate_snapshot(1).await.holders, 0);
    stack.shutdown().await;
}

/// The same events written twice (a redelivery after a crash) change nothing.
async fn replayed_batch_changes_nothing(db: &str) {
    let stack = Stack::start_idle(db, campaign(&unique("replay"), &[("1-2", 3)], 1)).await;
    let name = stack.campaign.name.clone();
    let events: Vec<_> = (1..=4u64)
        .map(|u| {
            coupon_core::event::IssuanceEvent::new(
                uuid::Uuid::now_v7(),
                &name,
                1 + (u % 2) as u32,
                u,
                chrono::Utc::now(),
            )
        })
        .collect();
    let first = stack
        .ledger
        .record_batch(&name, &events)
        .await
        .expect("first");
    assert_eq!((first.inserted, first.redelivered), (4, 0));
    let books = stack.ledger.books(&name).await.expect("books");
    let again = stack
        .ledger
        .record_batch(&name, &events)
        .await
        .expect("again");
    assert_eq!(
        (again.inserted, again.redelivered, again.poison.len()),
        (0, 4, 0)
    );
    assert_eq!(
        stack.ledger.books(&name).await.expect("books"),
        books,
        "nothing changed"
    );
    // A second request of the same user, and one more than the stock allows, are refused.
    let dup = coupon_core::event::IssuanceEvent::new(
        uuid::Uuid::now_v7(),
        &name,
        1,
        2,
        chrono::Utc::now(),
    );
    let extra: Vec<_> = (10..12u64)
        .map(|u| {
            coupon_core::event::IssuanceEvent::new(
                uuid::Uuid::now_v7(),
                &name,
                1,
                u,
                chrono::Utc::now(),
            )
        })
        .collect();
    let mixed = stack
        .ledger
        .record_batch(&name, &[dup, extra[0].clone(), extra[1].clone()])
        .await
        .expect("mixed");
    let reasons: Vec<_> = mixed.poison.iter().map(|(i, r)| (*i, r.label())).collect();
    assert_eq!(mixed.inserted, 1, "coupon 1 had one left");
    assert_eq!(reasons, vec![(0, "duplicate_user"), (2, "over_issue")]);
    let books = stack.ledger.books(&name).await.expect("books");
    assert_eq!((books[0].issued, books[0].remaining), (3, 0));
    stack.shutdown().await;
}

async fn idempotency_key_retry_gets_the_same_answer(db: &str) {
    let stack = Stack::start(db, campaign(&unique("idem"), &[("1", 5)], 1)).await;
    let body = r#"{"userId":77}"#;
    let first = stack.post("1", body, Some("k-1")).await;
    assert_eq!(first.0, StatusCode::ACCEPTED, "{}", first.1);
    let retry = stack.post("1", body, Some("k-1")).await;
    assert_eq!(retry.0, StatusCode::ACCEPTED, "{}", retry.1);
    assert_eq!(retry.1["requestId"], first.1["requestId"]);
    // A different key is a different request from the same user.
    assert_refused(
        &stack.post("1", body, Some("k-2")).await,
        StatusCode::CONFLICT,
        "already_issued",
    );
    assert_eq!(stack.remaining(1).await, 4);
    stack.drain(DRAIN).await;
    let mut log = AcceptedLog::default();
    log.accepted.insert(request_id(&first.1));
    let report = stack.verify(Some(&log)).await;
    assert_green(&report);
    assert_eq!(
        report.total_issued(),
        1,
        "the replayed event was stored once"
    );
    stack.shutdown().await;
}

async fn provisioning_is_idempotent_and_grows_only(db: &str) {
    let name = unique("prov");
    let stack = Stack::start(db, campaign(&name, &[("1-2", 5)], 2)).await;
    assert!(stack.provisioned.topic_created);
    assert_eq!(stack.provisioned.coupons_created, 2);
    assert_eq!(stack.issue(1, 1).await.0, StatusCode::ACCEPTED);
    stack.drain(DRAIN).await;
    // Same spec again: nothing changes, live stock is not reset.
    let again = stack
        .reprovision(&campaign(&name, &[("1-2", 5)], 2))
        .await
        .expect("again");
    assert!(!again.topic_created && again.coupons_created == 0 && again.coupons_grown.is_empty());
    assert_eq!(stack.remaining(1).await, 4);
    // Grow coupon 1 by 3 and add coupon 3.
    let grown_spec = campaign(&name, &[("1", 8), ("2", 5), ("3", 1)], 2);
    let grown = stack.reprovision(&grown_spec).await.expect("grow");
    assert_eq!(grown.coupons_grown, vec![(1, 3)]);
    assert_eq!(grown.coupons_created, 1);
    assert_eq!(stack.remaining(1).await, 7, "only the difference was added");
    assert_eq!(stack.remaining(3).await, 1);
    // Shrinking is refused and changes nothing.
    let shrink = stack
        .reprovision(&campaign(&name, &[("1", 8), ("2", 5), ("3", 1)], 1))
        .await;
    assert_eq!(
        shrink.expect_err("fewer partitions").label(),
        "partition_decrease"
    );
    let fewer = stack
        .reprovision(&campaign(&name, &[("1", 2), ("2", 5), ("3", 1)], 2))
        .await;
    assert_eq!(
        fewer.expect_err("lower quantity").label(),
        "quantity_decrease"
    );
    assert_eq!(stack.remaining(1).await, 7);
    let topic = name_topic(&name);
    let partitions = || coupon_core::broker::partition_count(&stack.brokers, &topic);
    assert_eq!(
        partitions().await.expect("metadata"),
        Some(2),
        "topic untouched"
    );
    // Growing the topic: the broker adds the partition and nothing else changes.
    let grown = stack
        .reprovision(&campaign(&name, &[("1", 8), ("2", 5), ("3", 1)], 3))
        .await
        .expect("grow the topic");
    assert_eq!(grown.partitions_added, 1);
    assert_eq!(partitions().await.expect("metadata"), Some(3));
    assert_green(&stack.verify_against(&grown_spec).await);
    stack.shutdown().await;
}

fn name_topic(name: &str) -> String {
    coupon_core::campaign::topic_name(name)
}
