//! The binary fails fast, with a clear message, when a backend is unreachable at start.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn unreachable_backends_fail_fast_with_a_clear_message() {
    let redis_ok = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    for (redis, kafka, needle) in [
        (
            "redis://127.0.0.1:1",
            "127.0.0.1:9092",
            "cannot reach Redis",
        ),
        (redis_ok.as_str(), "127.0.0.1:1", "cannot reach Kafka"),
    ] {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_coupon-api"))
            .args(["--campaign", "fail-fast", "--listen", "127.0.0.1:0"])
            .args(["--redis-url", redis, "--kafka-brokers", kafka])
            .output()
            .expect("coupon-api runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "took {:?}",
            started.elapsed()
        );
    }
}
