//! SIGTERM to the real `coupon-api` binary while requests wait on a slow broker: readiness goes
//! false first, every request already reserved finishes with its real answer, the producer is
//! flushed, the process exits 0 within its bound, and the books hold every 202.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coupon_core::verify::AcceptedLog;
use coupon_e2e::chaos::default_bin_dir;
use coupon_e2e::{assert_green, campaign, on_mock, request_id, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let (mock, stack) = on_mock(
        &coupon_e2e::postgres_url(),
        campaign(&unique("sigterm"), &[("1", 100)], 2),
        Duration::from_secs(5),
    )
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut api = Command::new(default_bin_dir().join("coupon-api"))
        .env("CAMPAIGN", &stack.campaign.name)
        .env("REDIS_URL", coupon_e2e::redis_url())
        .env("KAFKA_BROKERS", &stack.brokers)
        .env("LISTEN", &addr)
        .env("PUBLISH_TIMEOUT_MS", "5000")
        .env("DRAIN_DELAY_MS", "700")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("coupon-api is built (cargo build --workspace --bins)");
    let http = reqwest::Client::new();
    let ready = |http: reqwest::Client, addr: String| async move {
        http.get(format!("http://{addr}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready(http.clone(), addr.clone()).await != Some(200) {
        assert!(Instant::now() < deadline, "coupon-api not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every broker answer now takes 0.8 s: these requests are mid-publish at SIGTERM. Group
    // commit keeps one produce request in flight per broker and librdkafka sends one request
    // per partition, so 20 events over 2 partitions take three round trips, four with a
    // metadata call: 3.2 s of the 5 s deadline (at 1.5 s the last ones timed out as 503s, on
    // CI and in 2 of 3 runs here).
    mock.broker_round_trip_time(1, Duration::from_millis(800))
        .expect("rtt");
    let in_flight: Vec<_> = (1..=20u64)
        .map(|user| {
            let (http, addr) = (http.clone(), addr.clone());
            tokio::spawn(async move {
                let r = http
                    .post(format!("http://{addr}/api/coupons/1/issue"))
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"userId":{user}}}"#))
                    .send()
                    .await
                    .expect("answered, not dropped");
                let status = r.status().as_u16();
                let body = r.bytes().await.unwrap_or_default();
                (status, serde_json::from_slice(&body).unwrap_or_default())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &api.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        ready(http.clone(), addr.clone()).await,
        Some(503),
        "readiness goes false first, while the listener still answers"
    );

    let mut log = AcceptedLog::default();
    for h in in_flight {
        let (status, body) = h.await.expect("task");
        assert_eq!(status, 202, "a reserved request finishes: {body}");
        log.accepted.insert(request_id(&body));
    }
    let exit = tokio::task::spawn_blocking(move || api.wait())
        .await
        .expect("join")
        .expect("wait");
    let took = sent.elapsed();
    assert!(exit.success(), "clean exit: {exit:?}");
    assert!(
        took < Duration::from_secs(10),
        "exits within its bound: {took:?}"
    );
    mock.broker_round_trip_time(1, Duration::ZERO).expect("rtt");
    stack.drain(Duration::from_secs(30)).await;
    let report = stack.settle(Duration::ZERO).await;
    assert_eq!(
        (report.unsettled, report.kept, report.released),
        (20, 20, 0),
        "{report:?}"
    );
    let verified = stack.verify(Some(&log)).await;
    assert_green(&verified);
    assert_eq!(verified.total_issued(), 20);
    stack.shutdown().await;
}
