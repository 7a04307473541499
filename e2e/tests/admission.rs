//! Identity, rate limits and load shedding on the real API router, gate, broker and ledger:
//! every refusal is a JSON `code`, nothing refused is reserved, and the books stay green.

use std::time::Duration;

use axum::http::StatusCode;
use coupon_api::admission::{Admission, Limits};
use coupon_api::identity::{Identity, IdentityMode, JwtSettings};
use coupon_e2e::{Stack, assert_green, assert_refused, campaign, unique};

const SECRET: &str = "an-hs256-secret-of-thirty-two-bytes!";

fn token(sub: &str, exp_from_now: i64, secret: &str) -> String {
    let claims = serde_json::json!({
        "sub": sub, "iss": "https://id.example", "aud": "coupons",
        "exp": chrono::Utc::now().timestamp() + exp_from_now,
    });
    coupon_api::identity::hs256_bearer(secret, &claims)
}

fn jwt_identity() -> Identity {
    Identity::new(
        &IdentityMode::Jwt,
        &JwtSettings {
            hs256_secret: Some(SECRET.into()),
            issuer: Some("https://id.example".into()),
            audience: Some("coupons".into()),
            user_claim: "sub".into(),
            ..JwtSettings::default()
        },
    )
    .expect("identity")
}

async fn finish(stack: Stack, accepted: i64) {
    stack.drain(Duration::from_secs(30)).await;
    let report = stack.verify(None).await;
    assert_green(&report);
    let issued: i64 = stack
        .ledger
        .books(&stack.campaign.name)
        .await
        .expect("books")
        .iter()
        .map(|b| b.issued)
        .sum();
    assert_eq!(
        issued, accepted,
        "exactly the accepted requests are in the ledger"
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_identity_refuses_forged_expired_and_mismatched_requests() {
    let mut stack = Stack::start(
        &coupon_e2e::postgres_url(),
        campaign(&unique("jwt"), &[("1-3", 10)], 1),
    )
    .await;
    stack
        .admit_with(Admission::new(jwt_identity(), Limits::default(), None))
        .await;
    let good = token("42", 600, SECRET);
    let forged = token("42", 600, "somebody-else's-secret-32-bytes-long");
    let expired = token("42", -600, SECRET);
    for (headers, body, code) in [
        (vec![], r#"{"userId":42}"#, "unauthenticated"),
        (
            vec![("authorization", forged.as_str())],
            "",
            "unauthenticated",
        ),
        (
            vec![("authorization", expired.as_str())],
            "",
            "unauthenticated",
        ),
        (
            vec![("authorization", "Bearer not.a.jwt")],
            "",
            "unauthenticated",
        ),
        (
            vec![("authorization", good.as_str())],
            r#"{"userId":43}"#,
            "identity_mismatch",
        ),
    ] {
        let (status, json, answer) = stack.post_with("1", body, &headers).await;
        assert_refused(&(status, json), StatusCode::UNAUTHORIZED, code);
        if code == "unauthenticated" {
            assert_eq!(answer["www-authenticate"], "Bearer");
        }
    }
    assert_eq!(
        stack.remaining(1).await,
        10,
        "nothing reserved for a refused identity"
    );
    let (status, json, _) = stack
        .post_with("1", "", &[("authorization", good.as_str())])
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    let (status, json, _) = stack
        .post_with("2", r#"{"userId":42}"#, &[("authorization", good.as_str())])
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    finish(stack, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_header_names_the_user() {
    let mut stack = Stack::start(
        &coupon_e2e::mysql_url(),
        campaign(&unique("hdr"), &[("1", 10)], 1),
    )
    .await;
    let identity = Identity::new(
        &"header:x-user-id".parse().expect("mode"),
        &JwtSettings::default(),
    )
    .expect("identity");
    stack
        .admit_with(Admission::new(identity, Limits::default(), None))
        .await;
    let (s, j, _) = stack.post_with("1", r#"{"userId":5}"#, &[]).await;
    assert_refused(&(s, j), StatusCode::UNAUTHORIZED, "unauthenticated");
    let (s, j, _) = stack
        .post_with("1", r#"{"userId":6}"#, &[("x-user-id", "5")])
        .await;
    assert_refused(&(s, j), StatusCode::UNAUTHORIZED, "identity_mismatch");
    let (s, j, _) = stack.post_with("1", "", &[("x-user-id", "5")]).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{j}");
    let (s, j, _) = stack.post_with("1", "{}", &[("x-user-id", "5")]).await;
    assert_refused(&(s, j), StatusCode::CONFLICT, "already_issued");
    finish(stack, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_the_rate_gets_429_with_retry_after() {
    let mut stack = Stack::start(
        &coupon_e2e::postgres_url(),
        campaign(&unique("rate"), &[("1-10", 10)], 1),
    )
    .await;
    let limits = Limits {
        per_user: 1,
        burst: 3,
        ..Limits::default()
    };
    stack
        .admit_with(Admission::new(Identity::Body, limits, None))
        .await;
    let mut accepted = 0;
    for coupon in 1..=3 {
        let (s, j) = stack.issue(coupon, 77).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{j}");
        accepted += 1;
    }
    let (s, j, headers) = stack.post_with("4", r#"{"userId":77}"#, &[]).await;
    assert_refused(&(s, j), StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry: u64 = headers["retry-after"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(
        stack.remaining(4).await,
        10,
        "a limited request reserves nothing"
    );
    let (s, j) = stack.issue(4, 78).await;
    assert_eq!(s, StatusCode::ACCEPTED, "another user is not limited: {j}");
    accepted += 1;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, j) = stack.issue(4, 77).await;
    assert_eq!(s, StatusCode::ACCEPTED, "the bucket refilled: {j}");
    accepted += 1;
    finish(stack, accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_api_sheds_quickly_and_reserves_nothing_for_what_it_shed() {
    let (mock, mut stack) = coupon_e2e::on_mock(
        &coupon_e2e::postgres_url(),
        campaign(&unique("shed"), &[("1", 1000)], 1),
        Duration::from_secs(5),
    )
    .await;
    let limits = Limits {
        max_in_flight: 4,
        queue_wait: Duration::from_millis(20),
        ..Limits::default()
    };
    stack
        .admit_with(Admission::new(Identity::Body, limits, None))
        .await;
    // Every publish now takes 300 ms: four requests fill the process.
    mock.broker_round_trip_time(1, Duration::from_millis(300))
        .expect("rtt");
    let stack = std::sync::Arc::new(stack);
    let answers = futures::future::join_all((1..=40u64).map(|user| {
        let stack = stack.clone();
        async move {
            let started = std::time::Instant::now();
            let (s, j) = stack.issue(1, user).await;
            (s, j, started.elapsed())
        }
    }))
    .await;
    let shed: Vec<_> = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    let accepted = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::ACCEPTED)
        .count() as i64;
    assert!(
        !shed.is_empty(),
        "nothing shed with 40 requests for 4 slots"
    );
    assert!(accepted >= 4, "the slots served requests: {accepted}");
    for (s, j, took) in &shed {
        assert_refused(
            &(*s, j.clone()),
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
        );
        assert!(*took < Duration::from_millis(250), "shed after {took:?}");
    }
    assert_eq!(
        stack.remaining(1).await,
        1000 - accepted,
        "only accepted requests hold stock"
    );
    mock.broker_round_trip_time(1, Duration::ZERO).expect("rtt");
    let stack = std::sync::Arc::into_inner(stack).expect("one owner");
    finish(stack, accepted).await;
    drop(mock);
}

/// Served over TCP, the per-address bucket sees each connection's peer address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_limit_applies_to_the_peer_over_tcp() {
    let mut stack = Stack::start(
        &coupon_e2e::postgres_url(),
        campaign(&unique("peer"), &[("1", 10)], 1),
    )
    .await;
    let limits = Limits {
        per_client: 1,
        burst: 2,
        ..Limits::default()
    };
    stack
        .admit_with(Admission::new(Identity::Body, limits, None))
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let addr = listener.local_addr().expect("addr");
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(coupon_api::serve(
        listener,
        stack.state.clone(),
        stop.clone().cancelled_owned(),
        Duration::ZERO,
        Duration::from_secs(6),
    ));
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for user in 1..=3u64 {
        let answer = http
            .post(format!("http://{addr}/api/coupons/1/issue"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"userId":{user}}}"#))
            .send()
            .await
            .expect("answered");
        statuses.push(answer.status().as_u16());
    }
    assert_eq!(
        statuses,
        [202, 202, 429],
        "a burst of 2 from 127.0.0.1, then limited"
    );
    stop.cancel();
    let _ = server.await;
    finish(stack, 2).await;
}
