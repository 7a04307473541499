//! `couponctl demo`, `load` and `bench` as users run them: the report's numbers come from real
//! runs, a broken ledger makes the demo fail, and each report's page renders in a real browser.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use coupon_core::ledger::Ledger;
use coupon_e2e::browser::{self, Rendered};
use coupon_e2e::{Stack, campaign, unique};

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr (tail):\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// The demo on embedded defaults only: no service URL reaches it.
fn embedded_demo(extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_couponctl"))
        .args([
            "demo",
            "--time-scale",
            "0.01",
            "--think-ms",
            "100",
            "--json",
        ])
        .args(extra)
        .env_remove("REDIS_URL")
        .env_remove("KAFKA_BROKERS")
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .output()
        .expect("couponctl runs")
}

/// A path for a test's page in a fresh directory.
fn page_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&dir).expect("dir");
    dir.join("report.html")
}

/// The page as headless chromium draws it with no network, and its screenshot (kept in
/// `SCREENSHOT_DIR` when set).
async fn rendered(page: &Path, name: &str) -> Rendered {
    let shot = browser::screenshot_path(page, name);
    browser::open(page, Some(&shot))
        .await
        .unwrap_or_else(|e| panic!("chromium on {}: {e:#}", page.display()))
}

/// Every chart drawn, nothing fetched, no error, the verdict on the first screen.
fn assert_drawn(seen: &Rendered, charts: usize, verdict: &str) {
    assert_eq!(seen.charts.len(), charts, "{seen:#?}");
    for c in &seen.charts {
        assert!(
            c.shapes > 0 && c.width > 500.0 && c.height > 100.0,
            "chart not drawn: {c:?}"
        );
    }
    assert!(seen.errors.is_empty(), "console errors: {:?}", seen.errors);
    assert_eq!(seen.resources, 0, "the page fetched something");
    let (text, visible) = seen.verdict.clone().expect("a verdict");
    assert!(
        text.starts_with(verdict) && visible,
        "verdict {text:?}, visible {visible}"
    );
}

/// The sampled 202s were each polled through their Location until `issued`.
fn assert_followed_to_the_ledger(r: &serde_json::Value) {
    let s = &r["toStoredMs"];
    assert!(s["samples"].as_u64().is_some_and(|n| n > 0), "{s}");
    assert_eq!(
        (s["notIssued"].as_u64(), s["notSeen"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    assert!(
        s["p50"].as_f64().is_some_and(|p| p > 0.0) && s["p99"].as_f64() >= s["p50"].as_f64(),
        "{s}"
    );
}

fn report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_demo_runs_the_seed_scenario_and_proves_the_books() {
    let page = page_path("demo-page");
    let out = embedded_demo(&["--html", &page.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let r = report(&out);
    assert_eq!(r["passed"], true, "{}", text(&out));
    assert_followed_to_the_ledger(&r);
    let requests = r["requests"].as_u64().expect("requests");
    assert!(
        requests > 100,
        "a 6 s seed run at 100 ms think time sends hundreds: {requests}"
    );
    // Random users and coupons repeat a (user, coupon) pair now and then (~7 % of runs):
    // that answer is a correct `already_issued`, not a sell-out.
    let repeats = r["outcomes"]["already_issued"].as_u64().unwrap_or(0);
    assert_eq!(
        r["outcomes"]["accepted"].as_u64().map(|a| a + repeats),
        Some(requests),
        "no sell-out at this volume"
    );
    assert_eq!(
        r["issued"].as_u64(),
        r["outcomes"]["accepted"].as_u64(),
        "every 202 is a row (and a repeated pair's already_issued is none)"
    );
    assert_eq!(r["coupons"], 100);
    assert_eq!(r["quantity"], 172_000);
    assert!(r["drainedAfterS"].as_f64().is_some(), "drained");
    let checks = r["integrity"]["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 6);
    assert!(checks.iter().all(|c| c["status"] == "pass"), "{checks:?}");
    let shares: Vec<f64> = r["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["sharePct"].as_f64().unwrap_or(0.0))
        .collect();
    assert_eq!(shares.len(), 3);
    assert!((shares.iter().sum::<f64>() - 100.0).abs() < 0.01);

    // Second by second, the same answers, the seed's ramp, the lag of three partitions.
    let seconds = r["timeline"]["seconds"].as_array().expect("seconds");
    let answered: u64 = seconds
        .iter()
        .flat_map(|s| s["outcomes"].as_object().expect("outcomes").values())
        .map(|n| n.as_u64().unwrap_or(0))
        .sum();
    assert_eq!(answered, requests, "every answer in its second");
    assert!(seconds.len() >= 5, "a 6 s run: {} seconds", seconds.len());
    let vus: Vec<u64> = seconds
        .iter()
        .map(|s| s["vus"].as_u64().unwrap_or(0))
        .collect();
    let peak = vus.iter().copied().max().unwrap_or(0);
    assert!(
        peak > 50 && peak <= 100 && vus[0] < peak,
        "the ramp: {vus:?}"
    );
    assert!(
        seconds
            .iter()
            .any(|s| s["latencyMs"]["p99"].as_f64().is_some_and(|p| p > 0.0))
    );
    let lag = r["timeline"]["lag"].as_array().expect("lag");
    assert!(
        !lag.is_empty()
            && lag
                .iter()
                .all(|s| s["partitions"].as_array().is_some_and(|p| p.len() == 3))
    );

    let seen = rendered(&page, "demo").await;
    assert_drawn(&seen, 6, "PASS");
    assert_eq!(seen.failing_rows, 0);
    let _ = std::fs::remove_dir_all(page.parent().expect("dir"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_fails_when_the_ledger_loses_rows() {
    let dir = std::env::temp_dir().join(unique("broken-ledger"));
    std::fs::create_dir_all(&dir).expect("dir");
    let url = format!("sqlite:{}", dir.join("ledger.db").display());
    let Ledger::Sqlite(pool) = Ledger::connect(&url, 1).await.expect("ledger") else {
        panic!("sqlite ledger expected");
    };
    // A ledger that silently drops every fifth issued row.
    sqlx::query(
        "CREATE TRIGGER lose_rows BEFORE INSERT ON user_coupons WHEN NEW.user_id % 5 = 0 \
         BEGIN SELECT RAISE(IGNORE); END",
    )
    .execute(&pool)
    .await
    .expect("trigger");
    pool.close().await;
    let page = page_path("broken-ledger-page");
    let out = embedded_demo(&[
        "--database-url",
        &url,
        "--users",
        "50",
        "--html",
        &page.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let r = report(&out);
    assert_eq!(r["passed"], false);
    let failed: Vec<_> = r["integrity"]["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        failed.contains(&"I3".to_string()) && failed.contains(&"I4".to_string()),
        "{failed:?}"
    );
    // The page cannot be misread: FAIL first, each failing invariant's row marked.
    let seen = rendered(&page, "demo-failing").await;
    assert_drawn(&seen, 6, "FAIL");
    assert_eq!(seen.failing_rows, failed.len(), "{seen:#?}");
    let (verdict, _) = seen.verdict.clone().unwrap_or_default();
    assert!(
        verdict.contains("I4"),
        "the verdict names the broken invariant: {verdict}"
    );
    let _ = std::fs::remove_dir_all(page.parent().expect("dir"));
    let _ = std::fs::remove_dir_all(dir);
}

/// A short seed scenario against the real API on real Redis, broker and PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_against_real_services_reports_what_the_ledger_holds() {
    let stack = Stack::start(
        &coupon_e2e::postgres_url(),
        campaign(&unique("load"), &[("1-5", 20), ("6-10", 1000)], 3),
    )
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = stack.app.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let accepted = std::env::temp_dir().join(format!("{}.accepted", stack.campaign.name));
    let markdown = std::env::temp_dir().join(format!("{}.md", stack.campaign.name));
    let page = page_path("load-page");
    let html = page.display().to_string();
    let bin = env!("CARGO_BIN_EXE_couponctl");
    let (target, name) = (format!("http://{addr}"), stack.campaign.name.clone());
    let (acc, md) = (
        accepted.display().to_string(),
        markdown.display().to_string(),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args([
                "load",
                "--target",
                &target,
                "--campaign",
                &name,
                "--scenario",
                "hot",
            ])
            .args(["--connections", "20", "--duration", "4s", "--users", "300"])
            .args([
                "--json",
                "--accepted",
                &acc,
                "--markdown",
                &md,
                "--html",
                &html,
            ])
            .env("REDIS_URL", coupon_e2e::redis_url())
            .env("KAFKA_BROKERS", coupon_e2e::kafka_brokers())
            .env("DATABASE_URL", coupon_e2e::postgres_url())
            .env("RUST_LOG", "warn")
            .output()
            .expect("couponctl runs")
    })
    .await
    .expect("joined");
    assert!(out.status.success(), "{}", text(&out));
    let r = report(&out);
    let stored = stack
        .ledger
        .request_ids(&stack.campaign.name)
        .await
        .expect("ids");
    let accepted_ids = std::fs::read_to_string(&accepted).expect("accepted log");
    assert_eq!(
        accepted_ids.lines().count(),
        stored.len(),
        "the accepted log is the ledger"
    );
    assert_eq!(
        r["outcomes"]["accepted"].as_u64(),
        Some(stored.len() as u64)
    );
    assert_eq!(r["issued"].as_u64(), Some(stored.len() as u64));
    // The hot scenario sells the three 20-coupon ids out and refuses repeats.
    assert!(
        r["outcomes"]["sold_out"].as_u64().unwrap_or(0) > 0,
        "{}",
        text(&out)
    );
    assert!(
        r["outcomes"]["already_issued"].as_u64().unwrap_or(0) > 0,
        "{}",
        text(&out)
    );
    let requests: u64 = r["outcomes"]
        .as_object()
        .expect("outcomes")
        .values()
        .filter_map(|v| v.as_u64())
        .sum();
    assert_eq!(r["requests"].as_u64(), Some(requests));
    assert_eq!(r["passed"], true, "{}", text(&out));
    assert_followed_to_the_ledger(&r);
    let md = std::fs::read_to_string(&markdown).expect("markdown report");
    assert!(
        md.contains("## 6 Integrity (I1-I6)") && md.contains("| I5 |"),
        "{md}"
    );
    // The hot scenario's sell-outs are on the page; the backends' credentials are not.
    let sold_out = r["timeline"]["soldOut"].as_array().expect("soldOut");
    assert!(
        sold_out
            .iter()
            .any(|s| s["couponId"].as_u64().is_some_and(|c| c <= 5))
    );
    let text_of_page = std::fs::read_to_string(&page).expect("page");
    let db = url::Url::parse(&coupon_e2e::postgres_url()).expect("url");
    if let Some(password) = db.password() {
        assert!(
            !text_of_page.contains(&format!(":{password}@")),
            "the page shows the database's credentials"
        );
    }
    let host = db.host_str().unwrap_or_default();
    assert!(
        text_of_page.contains(&format!("{}://{host}", db.scheme())),
        "the ledger is in the header, without credentials"
    );
    assert!(
        text_of_page.contains(&format!("http://{addr}")),
        "the target is in the header"
    );
    let seen = rendered(&page, "load").await;
    assert_drawn(&seen, 6, "PASS");
    let _ = std::fs::remove_dir_all(page.parent().expect("dir"));
    stack.shutdown().await;
}

/// `couponctl bench`, small, on the real services: every figure next to its raw limit with the
/// ratio of the two, the API phase second by second, and the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_sets_each_figure_beside_its_raw_limit() {
    let page = page_path("bench-page");
    let html = page.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_couponctl"))
            .args(["bench", "--connections", "10", "--duration", "3s"])
            .args(["--raw-ops", "3000", "--json", "--html", &html])
            .env("REDIS_URL", coupon_e2e::redis_url())
            .env("KAFKA_BROKERS", coupon_e2e::kafka_brokers())
            .env("DATABASE_URL", coupon_e2e::postgres_url())
            .env("RUST_LOG", "warn")
            .output()
            .expect("couponctl runs")
    })
    .await
    .expect("joined");
    assert!(out.status.success(), "{}", text(&out));
    let r = report(&out);
    assert_eq!(r["apiCorrect"], true, "{}", text(&out));
    let lines = r["lines"].as_array().expect("lines");
    assert!(lines.len() >= 4, "{lines:?}");
    for l in lines {
        let (system, raw, ratio) = (
            l["system"].as_f64().unwrap_or(0.0),
            l["raw"].as_f64().unwrap_or(0.0),
            l["ratio"].as_f64().unwrap_or(0.0),
        );
        assert!(system > 0.0 && raw > 0.0, "{l}");
        assert!((ratio - system / raw).abs() <= 1e-9 * ratio.max(1.0), "{l}");
    }
    let answered: u64 = r["apiTimeline"]["seconds"]
        .as_array()
        .expect("seconds")
        .iter()
        .flat_map(|s| s["outcomes"].as_object().expect("outcomes").values())
        .map(|n| n.as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        Some(answered),
        r["apiRequests"].as_u64(),
        "every answer in its second"
    );
    let seen = rendered(&page, "bench").await;
    assert_drawn(&seen, 3, "PASS");
    let _ = std::fs::remove_dir_all(page.parent().expect("dir"));
}
