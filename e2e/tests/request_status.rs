//! The client's side of a 202, on the real gate, broker and ledger: the `Location` of a 202 is
//! `pending` until a consumer stored the event and `issued` after, never `issued` before the
//! ledger holds it; the user's list; the identity rules on both.

use std::time::Duration;

use axum::http::{StatusCode, header};
use coupon_api::admission::{Admission, Limits};
use coupon_api::identity::{Identity, IdentityMode, JwtSettings};
use coupon_core::verify::AcceptedLog;
use coupon_e2e::{Stack, assert_green, assert_refused, campaign, request_id, unique};

const SECRET: &str = "an-hs256-secret-of-thirty-two-bytes!";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_202_is_pending_until_stored_then_issued() {
    let mut stack = Stack::start_idle(
        &coupon_e2e::postgres_url(),
        campaign(&unique("status"), &[("1-2", 5)], 2),
    )
    .await;
    let (s, accepted, headers) = stack.post_with("1", r#"{"userId":7}"#, &[]).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{accepted}");
    let id = request_id(&accepted);
    let location = format!("/api/coupons/1/requests/{id}");
    assert_eq!(headers[header::LOCATION], location.as_str());

    // No consumer yet: the event is in the broker, not in the ledger.
    let (s, pending, headers) = stack.get_with(&location, &[]).await;
    assert_eq!(s, StatusCode::OK, "{pending}");
    assert_eq!(pending["status"], "pending", "{pending}");
    assert_eq!(
        (pending["userId"].as_u64(), pending["couponId"].as_u64()),
        (Some(7), Some(1))
    );
    assert!(pending["reservedAt"].is_string(), "{pending}");
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    let (_, list, _) = stack.get_with("/api/users/7/coupons", &[]).await;
    assert_eq!(list["coupons"][0]["status"], "pending", "{list}");
    assert!(
        stack
            .ledger
            .stored_among(&[id])
            .await
            .expect("ledger")
            .is_empty()
    );

    let ledger = stack.ledger.clone();
    stack.start_consumer(ledger);
    stack
        .wait_status(1, id, "issued", Duration::from_secs(30))
        .await;
    // Issued means stored: the row is there the moment the status says so.
    assert!(
        stack
            .ledger
            .stored_among(&[id])
            .await
            .expect("ledger")
            .contains(&id)
    );
    let (_, issued, headers) = stack.get_with(&location, &[]).await;
    assert!(issued["storedAt"].is_string(), "{issued}");
    assert!(headers.get(header::RETRY_AFTER).is_none());

    // The list: one coupon of two, issued; another user holds nothing.
    let (s, list, _) = stack.get_with("/api/users/7/coupons", &[]).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list["userId"], 7);
    let coupons = list["coupons"].as_array().expect("coupons");
    assert_eq!(coupons.len(), 1, "{list}");
    assert_eq!(coupons[0]["couponId"], 1);
    assert_eq!(coupons[0]["requestId"], id.to_string());
    assert_eq!(coupons[0]["status"], "issued");
    // A client echoing the body's number may write the user as 7.0, which the body accepts.
    let (s, echoed, _) = stack.get_with("/api/users/7.0/coupons", &[]).await;
    assert_eq!((s, &echoed["coupons"]), (StatusCode::OK, &list["coupons"]));
    let (_, none, _) = stack.get_with("/api/users/8/coupons", &[]).await;
    assert_eq!(none["coupons"], serde_json::json!([]), "{none}");

    // Settlement settles it as issued and drops the consumer's mark: still issued.
    let report = stack.settle(Duration::ZERO).await;
    assert_eq!((report.kept, report.released), (1, 0), "{report:?}");
    assert_eq!(stack.request_status(1, id).await, "issued");

    // What is not a request of this coupon.
    for (path, status, code) in [
        (
            format!("/api/coupons/2/requests/{id}"),
            StatusCode::NOT_FOUND,
            "unknown_request",
        ),
        (
            format!("/api/coupons/1/requests/{}", uuid::Uuid::now_v7()),
            StatusCode::NOT_FOUND,
            "unknown_request",
        ),
        (
            format!("/api/coupons/9/requests/{id}"),
            StatusCode::NOT_FOUND,
            "unknown_coupon",
        ),
        (
            "/api/coupons/1/requests/not-a-uuid".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/api/users/0/coupons".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/api/users/+7/coupons".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ] {
        let (s, j, _) = stack.get_with(&path, &[]).await;
        assert_refused(&(s, j), status, code);
    }
    let mut log = AcceptedLog::default();
    log.accepted.insert(id);
    assert_green(&stack.verify(Some(&log)).await);
    stack.shutdown().await;
}

fn jwt() -> Identity {
    Identity::new(
        &IdentityMode::Jwt,
        &JwtSettings {
            hs256_secret: Some(SECRET.into()),
            user_claim: "sub".into(),
            ..JwtSettings::default()
        },
    )
    .expect("identity")
}

fn bearer(user: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    coupon_api::identity::hs256_bearer(SECRET, &serde_json::json!({"sub": user, "exp": now + 600}))
}

/// With `header` or `jwt` identity a user sees only their own list and requests; another
/// user's request is unknown to them (not forbidden: that would say it exists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_ones_own_list_and_requests_with_header_or_jwt_identity() {
    let mut stack = Stack::start(
        &coupon_e2e::postgres_url(),
        campaign(&unique("status-id"), &[("1", 5)], 1),
    )
    .await;
    let header_identity = Identity::new(
        &IdentityMode::Header("x-user-id".parse().expect("header name")),
        &JwtSettings::default(),
    )
    .expect("identity");
    stack
        .admit_with(Admission::new(header_identity, Limits::default(), None))
        .await;
    let (s, j, _) = stack.post_with("1", "", &[("x-user-id", "5")]).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{j}");
    let id = request_id(&j);
    let location = format!("/api/coupons/1/requests/{id}");
    let (s, own, _) = stack
        .get_with("/api/users/5/coupons", &[("x-user-id", "5")])
        .await;
    assert_eq!(s, StatusCode::OK, "{own}");
    assert_eq!(own["coupons"][0]["requestId"], id.to_string());
    let (s, j, _) = stack
        .get_with("/api/users/5/coupons", &[("x-user-id", "6")])
        .await;
    assert_refused(&(s, j), StatusCode::UNAUTHORIZED, "identity_mismatch");
    let (s, j, _) = stack.get_with("/api/users/5/coupons", &[]).await;
    assert_refused(&(s, j), StatusCode::UNAUTHORIZED, "unauthenticated");
    let (s, j, _) = stack.get_with(&location, &[("x-user-id", "5")]).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    let (s, j, _) = stack.get_with(&location, &[("x-user-id", "6")]).await;
    assert_refused(&(s, j), StatusCode::NOT_FOUND, "unknown_request");
    let (s, j, _) = stack.get_with(&location, &[]).await;
    assert_refused(&(s, j), StatusCode::UNAUTHORIZED, "unauthenticated");

    stack
        .admit_with(Admission::new(jwt(), Limits::default(), None))
        .await;
    let (five, six) = (bearer("5"), bearer("6"));
    let (s, own, _) = stack
        .get_with("/api/users/5/coupons", &[("authorization", &five)])
        .await;
    assert_eq!(s, StatusCode::OK, "{own}");
    assert_eq!(own["coupons"][0]["requestId"], id.to_string());
    let (s, j, _) = stack
        .get_with("/api/users/5/coupons", &[("authorization", &six)])
        .await;
    assert_refused(&(s, j), StatusCode::UNAUTHORIZED, "identity_mismatch");
    let (s, j, _) = stack.get_with(&location, &[("authorization", &six)]).await;
    assert_refused(&(s, j), StatusCode::NOT_FOUND, "unknown_request");
    let (s, j, _) = stack.get_with(&location, &[("authorization", &five)]).await;
    assert_eq!(s, StatusCode::OK, "{j}");

    stack.drain(Duration::from_secs(30)).await;
    let mut log = AcceptedLog::default();
    log.accepted.insert(id);
    assert_green(&stack.verify(Some(&log)).await);
    stack.shutdown().await;
}

/// A request whose `coupon-api` process was SIGKILLed while its publish waited for a broker that
/// was down: `pending` (the reservation is unsettled, no process is left to answer), then
/// `released` once settlement gives the stock back, because its event never reached the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_api_process_leaves_its_request_pending_until_settled() {
    use coupon_e2e::binaries::{Kill, bin, wait_ready};
    let (mock, stack) = coupon_e2e::on_mock(
        &coupon_e2e::postgres_url(),
        campaign(&unique("status-kill"), &[("1", 3)], 1),
        Duration::from_secs(5),
    )
    .await;
    let name = stack.campaign.name.clone();
    let addr = format!("127.0.0.1:{}", coupon_e2e::free_port());
    let mut api = Kill(
        bin("coupon-api")
            .env("REDIS_URL", coupon_e2e::redis_url())
            .env("KAFKA_BROKERS", &stack.brokers)
            .env("CAMPAIGN", &name)
            .env("LISTEN", &addr)
            .env("PUBLISH_TIMEOUT_MS", "30000")
            .spawn()
            .expect("coupon-api"),
    );
    wait_ready(&mut api, &addr).await;
    mock.broker_down(1).expect("down");
    let key = "killed-before-the-broker-answered";
    let post = {
        let url = format!("http://{addr}/api/coupons/1/issue");
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(r#"{"userId":44}"#)
                .send()
                .await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stack.remaining(1).await == 3 {
        assert!(tokio::time::Instant::now() < deadline, "never reserved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    api.0.kill().expect("kill -9");
    let _ = api.0.wait();
    assert!(
        post.await.expect("join").is_err(),
        "the client lost its answer"
    );
    let id = coupon_api::request::keyed_request_id(&name, 1, 44, key);
    // Another API replica (this test's router on the same gate) answers for it.
    assert_eq!(stack.request_status(1, id).await, "pending");
    let (_, list, _) = stack.get_with("/api/users/44/coupons", &[]).await;
    assert_eq!(list["coupons"][0]["status"], "pending", "{list}");
    mock.broker_up(1).expect("up");
    let report = stack.settle(Duration::ZERO).await;
    assert_eq!((report.kept, report.released), (0, 1), "{report:?}");
    assert_eq!(stack.request_status(1, id).await, "released");
    let (_, list, _) = stack.get_with("/api/users/44/coupons", &[]).await;
    assert_eq!(list["coupons"], serde_json::json!([]), "{list}");
    assert_eq!(stack.remaining(1).await, 3, "stock back");
    let mut log = AcceptedLog::default();
    log.ambiguous.insert(id);
    assert_green(&stack.verify(Some(&log)).await);
    stack.shutdown().await;
}
