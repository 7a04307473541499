//! Every metric a dashboard or an alert rule queries is exported: the coupon-api and
//! coupon-consumer binaries run against real Redis, Apache Kafka and PostgreSQL, the operator
//! reconciles the same campaign through the fake API server and serves its /metrics router,
//! and the three /metrics pages are scraped over HTTP and compared with the queries.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::provisioned;
use common::tools::{binary, chart};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.0 request; the status code and body.
async fn http(addr: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Polls `path` until `ready` holds for the body, for at most 30 s.
async fn wait_for(addr: &str, path: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, body)) = http(addr, "GET", path, "").await
            && ready(&body)
        {
            return body;
        }
        assert!(Instant::now() < deadline, "{addr}{path} not ready in 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Metric family → the label sets of its samples, from a Prometheus text page.
fn families(page: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in page
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = line[end..]
            .strip_prefix('{')
            .and_then(|l| l.split_once('}'))
            .map(|(l, _)| l.to_string())
            .unwrap_or_default();
        out.entry(line[..end].to_string()).or_default().push(labels);
    }
    out
}

/// Every `coupon_*` identifier in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("coupon_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let len = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(expr.len() - start);
        if boundary {
            names.push(expr[start..start + len].to_string());
        }
        i = start + len;
    }
    names
}

/// Every `expr` of the dashboards' targets and of the alert rules, with where it came from.
fn queries() -> Vec<(String, String)> {
    fn walk(where_: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(e)) = m.get("expr") {
                    out.push((where_.to_string(), e.clone()));
                }
                m.values().for_each(|v| walk(where_, v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(where_, v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(chart().join("dashboards")).expect("dashboards") {
        let path = entry.expect("entry").path();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        walk(&path.display().to_string(), &json, &mut out);
    }
    let rules = chart().join("alerts/coupon-alerts.yaml");
    let yaml: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&rules).expect("read")).expect("yaml");
    walk(&rules.display().to_string(), &yaml, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboards_and_alerts_query_is_exported() {
    let name = coupon_e2e::unique("obs");
    let (api, ctx) = provisioned(
        &name,
        json!({"topic": {"partitions": 1}, "coupons": [{"ids": "1-2", "name": "c{id}", "discount": 100, "quantity": 5}]}),
    )
    .await;

    let api_addr = format!("127.0.0.1:{}", coupon_e2e::free_port());
    let _api_proc = Killed(
        Command::new(binary("coupon-api"))
            .args(["--campaign", &name, "--listen", &api_addr])
            .env("REDIS_URL", coupon_e2e::redis_url())
            .env("KAFKA_BROKERS", coupon_e2e::kafka_brokers())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("coupon-api starts"),
    );
    wait_for(&api_addr, "/readyz", |_| true).await;
    for (user, expect) in [(1, 202), (1, 409)] {
        let (status, body) = http(
            &api_addr,
            "POST",
            "/api/coupons/1/issue",
            &format!("{{\"userId\": {user}}}"),
        )
        .await
        .expect("issue answered");
        assert_eq!(status, expect, "{body}");
    }
    let api_page = wait_for(&api_addr, "/metrics", |_| true).await;

    let consumer_addr = format!("127.0.0.1:{}", coupon_e2e::free_port());
    let _consumer_proc = Killed(
        Command::new(binary("coupon-consumer"))
            .args(["--campaign", &name])
            .env("KAFKA_BROKERS", coupon_e2e::kafka_brokers())
            .env("DATABASE_URL", coupon_e2e::postgres_url())
            .env("METRICS_LISTEN", &consumer_addr)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("coupon-consumer starts"),
    );
    let consumer_page = wait_for(&consumer_addr, "/metrics", |page| {
        page.contains("coupon_consumer_events_total{campaign=")
            && page.lines().any(|l| {
                l.starts_with("coupon_consumer_events_total")
                    && l.contains("inserted")
                    && l.ends_with(" 1")
            })
    })
    .await;

    // The operator looks again once the event is in the ledger, and serves its router.
    common::run(&api, &ctx, &name).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let operator_addr = listener.local_addr().expect("addr").to_string();
    let router = ctx.metrics.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let operator_page = wait_for(&operator_addr, "/metrics", |_| true).await;
    assert!(
        operator_page.contains(&format!(
            "coupon_operator_coupons_issued{{campaign=\"{name}\",coupon=\"1\"}} 1"
        )),
        "{operator_page}"
    );

    let mut exported = BTreeMap::new();
    for page in [&api_page, &consumer_page, &operator_page] {
        exported.extend(families(page));
    }
    let queries = queries();
    assert!(
        queries.len() > 20,
        "dashboards and rules hold their queries"
    );
    let mut used = BTreeSet::new();
    for (source, expr) in &queries {
        for metric in metric_names(expr) {
            let Some(samples) = exported.get(&metric) else {
                panic!("{source} queries {metric}, which no binary exports:\n{expr}");
            };
            // Dashboards and alerts select and group by campaign.
            if expr.contains("campaign") && metric != "coupon_operator_reconciles_total" {
                assert!(
                    samples
                        .iter()
                        .all(|l| l.contains(&format!("campaign=\"{name}\""))),
                    "{metric} samples lack the campaign label: {samples:?}"
                );
            }
            used.insert(metric);
        }
    }
    for must in [
        "coupon_operator_consumer_lag",
        "coupon_operator_consumer_lag_total",
        "coupon_operator_consumer_replicas_current",
        "coupon_operator_consumer_replicas_desired",
        "coupon_api_requests_total",
        "coupon_api_request_duration_seconds_bucket",
        "coupon_operator_stock_remaining",
        "coupon_consumer_batch_size_bucket",
        "coupon_consumer_transaction_duration_seconds_bucket",
        "coupon_consumer_dead_letters_total",
        "coupon_operator_stock_drift",
    ] {
        assert!(used.contains(must), "no dashboard or alert shows {must}");
    }
}

/// Grafana sends the dashboards' queries to Prometheus with its variables filled in; each must
/// be valid PromQL (checked by promtool as recording rules, which it parses fully).
#[test]
fn every_dashboard_query_is_valid_promql() {
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    let mut n = 0;
    for (source, expr) in queries().iter().filter(|(s, _)| s.ends_with(".json")) {
        let expr = expr
            .replace("$campaign", "seed")
            .replace("$__rate_interval", "1m")
            .replace("$__range", "30m")
            .replace("$__interval", "15s");
        assert!(!expr.contains('$'), "{source}: unknown variable in {expr}");
        rules.push_str(&format!(
            "      - record: dashboard:query{n}\n        expr: {}\n",
            serde_json::to_string(&expr).expect("json string")
        ));
        n += 1;
    }
    assert!(n > 20, "{n} queries");
    let file = common::tools::scratch("dashboard-queries.yaml", &rules);
    let (ok, out, err) =
        common::tools::run("promtool", &["check", "rules", &file.to_string_lossy()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("SUCCESS: {n} rules found")), "{out}");
}
