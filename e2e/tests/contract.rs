//! schemathesis fuzzes the real API (served over HTTP on the real gate, broker and ledger) from
//! its own `/openapi.json`: every response matches the contract, no 5xx but a documented 503,
//! and afterwards the books are green (no invalid request reserved anything).

use std::process::Command;
use std::time::Duration;

use coupon_e2e::{Stack, assert_green, campaign, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_finds_nothing_and_the_books_stay_green() {
    let stack = Stack::start(
        &coupon_e2e::postgres_url(),
        campaign(&unique("fuzz"), &[("1-5", 3)], 1),
    )
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
    let report = std::env::temp_dir().join(unique("schemathesis"));
    std::fs::create_dir_all(&report).expect("report dir");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("schemathesis")
            // Its caches go to the scratch directory, not the checkout.
            .current_dir(&report)
            .args(["run", &format!("http://{addr}/openapi.json")])
            .args(["--checks", "all", "--max-examples", "60", "--seed", "1"])
            .args([
                "--generation-database",
                "none",
                "--no-color",
                "--workers",
                "2",
            ])
            .args(["--report", "junit", "--report-dir"])
            .arg(&report)
            .output()
    })
    .await
    .expect("join")
    .expect("schemathesis is installed (scripts/tools.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    assert!(text.contains("passed"), "{text}");
    stop.cancel();
    let _ = server.await;
    stack.drain(Duration::from_secs(30)).await;
    assert_green(&stack.verify(None).await);
    stack.shutdown().await;
}
