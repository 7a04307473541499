//! The workspace's binaries run as users run them (environment variables only), for the tests of
//! secured and least-privileged connections: provision (then grow the topic), serve a load
//! through `coupon-api` and `coupon-consumer`, and `couponctl verify` the books.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::chaos::default_bin_dir;
use crate::free_port;
use crate::tls::TempDir;

/// A workspace binary with no backend from the test's own environment.
pub fn bin(name: &str) -> Command {
    let mut c = Command::new(default_bin_dir().join(name));
    for var in [
        "REDIS_URL",
        "DATABASE_URL",
        "KAFKA_BROKERS",
        "KAFKA_PROPERTIES_FILE",
    ] {
        c.env_remove(var);
    }
    c.env("RUST_LOG", "warn").stdin(Stdio::null());
    c
}

/// Its stdout and stderr; panics (showing both) unless it succeeded.
pub fn ok(out: &Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

/// A child killed when dropped.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The environment of each binary: `common` for all, then the binary's own (its credentials).
#[derive(Default)]
pub struct Environments {
    pub common: Vec<(String, String)>,
    pub own: HashMap<&'static str, Vec<(String, String)>>,
}

impl Environments {
    pub fn command(&self, name: &'static str) -> Command {
        let mut c = bin(name);
        let own = self.own.get(name).into_iter().flatten();
        for (k, v) in self.common.iter().chain(own) {
            c.env(k, v);
        }
        c
    }
}

/// What a drop over these environments did.
pub struct DropOutcome {
    pub campaign: String,
    pub accepted: usize,
    pub verify: String,
}

/// Provisions campaign `name` on `partitions`, provisions it again on `partitions + 1` (the topic
/// grows), runs `coupon-api` and `coupon-consumer`, a 3 s load, and a green `couponctl verify`.
pub async fn run_drop(envs: &Environments, name: &str, partitions: i32) -> DropOutcome {
    let dir = TempDir::new(name);
    let manifest = dir.0.join("campaign.yaml");
    for p in [partitions, partitions + 1] {
        write_manifest(&manifest, name, p);
        ok(
            &envs
                .command("couponctl")
                .args(["provision", "-f", &manifest.display().to_string()])
                .output()
                .expect("couponctl runs"),
            "couponctl provision",
        );
    }
    let addr = format!("127.0.0.1:{}", free_port());
    let mut api = Kill(
        envs.command("coupon-api")
            .env("CAMPAIGN", name)
            .env("LISTEN", &addr)
            .spawn()
            .expect("coupon-api"),
    );
    let _consumer = Kill(
        envs.command("coupon-consumer")
            .env("CAMPAIGN", name)
            .env("METRICS_LISTEN", format!("127.0.0.1:{}", free_port()))
            .spawn()
            .expect("coupon-consumer"),
    );
    wait_ready(&mut api, &addr).await;
    let accepted = dir.0.join("accepted.txt");
    let out = envs
        .command("couponctl")
        .args([
            "load",
            "--target",
            &format!("http://{addr}"),
            "--campaign",
            name,
        ])
        .args([
            "--scenario",
            "max",
            "--connections",
            "16",
            "--duration",
            "3s",
        ])
        .args(["--users", "500", "--quiet", "--accepted"])
        .arg(&accepted)
        .output()
        .expect("couponctl load");
    ok(&out, "couponctl load");
    let accepted_ids = std::fs::read_to_string(&accepted).expect("accepted ids");
    let verify = ok(
        &envs
            .command("couponctl")
            .args([
                "verify",
                "--campaign",
                name,
                "--wait-drain",
                "30",
                "--accepted",
            ])
            .arg(&accepted)
            .output()
            .expect("couponctl verify"),
        "couponctl verify",
    );
    assert!(
        verify.contains("PASS") && !verify.contains("FAIL"),
        "{verify}"
    );
    DropOutcome {
        campaign: name.to_string(),
        accepted: accepted_ids.lines().count(),
        verify,
    }
}

fn write_manifest(path: &Path, name: &str, partitions: i32) {
    std::fs::write(
        path,
        format!(
            "apiVersion: coupons.fcfs.dev/v1alpha1\nkind: CouponCampaign\nmetadata: {{name: {name}}}\nspec:\n  topic: {{partitions: {partitions}}}\n  coupons:\n    - {{ids: \"1-5\", name: \"secured {{id}}\", discount: 1000, quantity: 40}}\n"
        ),
    )
    .expect("manifest");
}

pub async fn wait_ready(api: &mut Kill, addr: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return;
        }
        if let Ok(Some(status)) = api.0.try_wait() {
            panic!("coupon-api exited: {status}");
        }
        assert!(Instant::now() < deadline, "coupon-api not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
