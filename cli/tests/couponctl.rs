//! `couponctl` as users run it: provision, verify (exit status and JSON), reconcile, on real
//! services (REDIS_URL, KAFKA_BROKERS, DATABASE_URL).

use std::process::{Command, Output};

fn couponctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_couponctl"))
        .args(args)
        .env("REDIS_URL", env_or("REDIS_URL", "redis://127.0.0.1:6379"))
        .env("KAFKA_BROKERS", env_or("KAFKA_BROKERS", "127.0.0.1:9092"))
        .env(
            "DATABASE_URL",
            env_or("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/coupons"),
        )
        .output()
        .expect("couponctl runs")
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn provision_verify_and_a_broken_ledger_fails_verification() {
    let name = format!("cli-{}", &uuid_like()[..10]);
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let manifest = dir.join("campaign.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: coupons.fcfs.dev/v1alpha1\nkind: CouponCampaign\nmetadata: {{name: {name}}}\nspec:\n  topic: {{partitions: 2}}\n  coupons:\n    - {{ids: \"1-3\", name: \"c{{id}}\", discount: 500, quantity: 4}}\n"
        ),
    )
    .expect("manifest written");
    let path = manifest.to_str().expect("utf-8 path");

    let out = couponctl(&["provision", "-f", path]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 coupons created"),
        "{}",
        text(&out)
    );
    // Idempotent.
    let out = couponctl(&["provision", "-f", path, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["couponsCreated"], 0);

    let out = couponctl(&["verify", "--campaign", &name, "--wait-drain", "5"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("I5"),
        "{}",
        text(&out)
    );

    // Break the books behind the system's back: the ledger's stock no longer agrees.
    let ledger_fix = std::process::Command::new("psql")
        .arg(env_or("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/coupons"))
        .arg("-c")
        .arg(format!(
            "UPDATE coupon_stocks SET remaining_quantity = remaining_quantity - 1 WHERE campaign = '{name}' AND coupon_id = 2"
        ))
        .output()
        .expect("psql");
    assert!(ledger_fix.status.success(), "{}", text(&ledger_fix));
    let out = couponctl(&["verify", "--campaign", &name, "--wait-drain", "0", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let i3 = report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["id"] == "I3"))
        .expect("I3 reported");
    assert_eq!(i3["status"], "fail", "{i3}");
    assert!(
        i3["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("coupon 2"),
        "{i3}"
    );

    // A reservation whose API died before publishing: `reconcile` finds it and releases it.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        use coupon_core::gate::{Decision, RedisGate, Reserving};
        let gate = RedisGate::connect(&env_or("REDIS_URL", "redis://127.0.0.1:6379"))
            .await
            .expect("redis");
        let id = uuid::Uuid::now_v7();
        assert_eq!(
            gate.reserve(&name, 1, 9, id).await.expect("reserve"),
            Decision::Reserved
        );
    });
    let out = couponctl(&[
        "reconcile",
        "--campaign",
        &name,
        "--min-age",
        "0",
        "--wait-drain",
        "5",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with("1 unsettled, 1 old enough: 0 kept (issued), 1 released"),
        "{}",
        text(&out)
    );
    let out = couponctl(&["settle", "--campaign", &name, "--min-age", "0"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("0 unsettled"),
        "{}",
        text(&out)
    );
}

#[test]
fn bad_manifests_and_unprovisioned_campaigns_get_clear_errors() {
    let dir = std::env::temp_dir().join(format!("cli-bad-{}", &uuid_like()[..10]));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: coupons.fcfs.dev/v1alpha1\nkind: CouponCampaign\nmetadata: {name: x}\nspec:\n  coupons:\n    - {ids: \"1-2\", name: a, discount: 1, quantity: -1}\n",
    )
    .expect("write");
    let out = couponctl(&["provision", "-f", bad.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("quantity must be positive"),
        "{}",
        text(&out)
    );

    let out = couponctl(&[
        "verify",
        "--campaign",
        "never-provisioned-campaign",
        "--wait-drain",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not provisioned"),
        "{}",
        text(&out)
    );
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}", nanos, std::process::id())
}

/// `couponctl plan` as a user runs it: the table for the asked rates, the same as JSON, a
/// bench report's costs read back, and a clear refusal of a file that is not one.
#[test]
fn plan_prints_the_capacity_of_a_rate() {
    let out = couponctl(&["plan", "--rate", "100000", "--issued-share", "0.5"]);
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("100000"), "{table}");
    assert!(table.contains("50% of requests issued"), "{table}");
    let out = couponctl(&["plan", "--rate", "100000", "--rate", "1000000", "--json"]);
    let plans: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let pods = |i: usize| plans[i]["apiPods"].as_u64().expect("apiPods");
    assert!(pods(1) > pods(0), "{plans}");
    let dir = std::env::temp_dir().join(format!("plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let report = dir.join("bench.json");
    std::fs::write(
        &report,
        r#"{"costs": {"apiUs": 1000, "redisUs": 10, "brokerUs": 10, "consumerUs": 1, "databaseUs": 1, "drainPerConsumer": 1000000}}"#,
    )
    .expect("write");
    let out = couponctl(&[
        "plan",
        "--rate",
        "1200",
        "--from",
        report.to_str().expect("path"),
        "--json",
    ]);
    let plans: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    // 1,200/s × 1 ms = 1.2 cores of API: exactly what one 2-core pod at 60 % offers.
    assert_eq!(plans[0]["apiPods"], 1, "{plans}");
    std::fs::write(&report, "{}").expect("write");
    let out = couponctl(&["plan", "--from", report.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a `couponctl bench --json` report"),
        "{}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(dir);
}
