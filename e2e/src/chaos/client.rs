//! The load: clients that retry as a real one would (or hang up), the per-second sampler of
//! lag, and the HTTP probes of the running API.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use coupon_api::request::keyed_request_id;
use coupon_core::broker::LagProbe;
use coupon_core::campaign::{CouponId, UserId};
use coupon_report::recorder::{Answer, Recorder};
use coupon_report::timeline::LagSample;
use rand::Rng;
use rand::rngs::SmallRng;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::*;

pub(super) struct LoadClient {
    pub(super) http: reqwest::Client,
    pub(super) addr: String,
    pub(super) campaign: String,
    pub(super) log: Arc<Mutex<ClientLog>>,
    pub(super) stop: CancellationToken,
    pub(super) rng: SmallRng,
    pub(super) recorder: Arc<Recorder>,
}

impl LoadClient {
    pub(super) fn pick(&mut self) -> (CouponId, UserId, String) {
        let coupon = if self.rng.random_bool(0.9) {
            self.rng.random_range(HOT)
        } else {
            self.rng.random_range(*HOT.end() + 1..=COUPONS)
        };
        let user = self.rng.random_range(1..=USERS);
        let key = Uuid::from_u128(self.rng.random()).simple().to_string();
        (coupon, user, key)
    }

    pub(super) fn record(&self, f: impl FnOnce(&mut ClientLog)) {
        if let Ok(mut l) = self.log.lock() {
            f(&mut l);
        }
    }

    /// The request's final answer, per second, timed from its first attempt.
    pub(super) fn answered(&self, coupon: CouponId, code: &str, since: Option<Instant>) {
        self.recorder.record(Answer {
            coupon,
            code,
            latency: since.map(|s| s.elapsed()),
            expected_interval: Duration::ZERO,
        });
    }

    /// A real client: on a lost answer or a 503 it retries with the same key, then gives up.
    pub(super) async fn patient_loop(mut self) {
        while !self.stop.is_cancelled() {
            let (coupon, user, key) = self.pick();
            let id = keyed_request_id(&self.campaign, coupon, user, &key);
            let url = format!("http://{}/api/coupons/{coupon}/issue", self.addr);
            let body = format!(r#"{{"userId":{user}}}"#);
            let mut settled = false;
            let asked = Instant::now();
            for attempt in 0..4u32 {
                if attempt > 0 {
                    self.record(|l| l.retries += 1);
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                let answer = self
                    .http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("idempotency-key", &key)
                    .body(body.clone())
                    .send()
                    .await;
                let (status, json) = match answer {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let bytes = r.bytes().await.unwrap_or_default();
                        (
                            status,
                            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default(),
                        )
                    }
                    Err(_) => continue,
                };
                let code = json["code"].as_str().unwrap_or("").to_string();
                match status {
                    202 => {
                        self.record(|l| {
                            l.requests += 1;
                            l.accepted.insert(id);
                            l.coupon_of.insert(id, coupon);
                        });
                        self.answered(coupon, "accepted", Some(asked));
                        settled = true;
                    }
                    503 => continue,
                    400..=499 => {
                        self.answered(coupon, &code, Some(asked));
                        self.record(|l| {
                            l.requests += 1;
                            if code == "sold_out" {
                                l.sold_out.insert(coupon);
                            }
                            *l.refused.entry(code).or_default() += 1;
                        });
                        settled = true;
                    }
                    other => {
                        self.answered(coupon, &format!("http_{other}"), Some(asked));
                        self.record(|l| {
                            l.requests += 1;
                            l.unexpected.push(format!("HTTP {other}: {json}"));
                        });
                        settled = true;
                    }
                }
                break;
            }
            if !settled {
                self.answered(coupon, "answer_lost", Some(asked));
                self.record(|l| {
                    l.requests += 1;
                    l.ambiguous.insert(id);
                    l.coupon_of.insert(id, coupon);
                });
            }
        }
    }

    /// An impatient client: sends the request and closes the connection within 0-4 ms.
    pub(super) async fn hang_up_loop(mut self) {
        while !self.stop.is_cancelled() {
            let (coupon, user, key) = self.pick();
            let id = keyed_request_id(&self.campaign, coupon, user, &key);
            let body = format!(r#"{{"userId":{user}}}"#);
            let request = format!(
                "POST /api/coupons/{coupon}/issue HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nIdempotency-Key: {key}\r\nContent-Length: {}\r\n\r\n{body}",
                self.addr,
                body.len()
            );
            let patience = Duration::from_micros(self.rng.random_range(0..4000));
            if let Ok(mut s) = tokio::net::TcpStream::connect(&self.addr).await {
                let _ = s.write_all(request.as_bytes()).await;
                tokio::time::sleep(patience).await;
                drop(s);
            }
            self.answered(coupon, "hung_up", None);
            self.record(|l| {
                l.requests += 1;
                l.ambiguous.insert(id);
                l.coupon_of.insert(id, coupon);
                *l.refused.entry("hung_up".into()).or_default() += 1;
            });
            // Paced, so the closed connections do not exhaust loopback's ephemeral ports.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Until stopped: the clients in each second (for the recorder) and the lag per partition
/// about once a second (a broker down leaves a gap). The lag samples are returned.
pub(super) async fn sample(
    recorder: Arc<Recorder>,
    probe: LagProbe,
    topic: String,
    clients: usize,
    stop: CancellationToken,
) -> Vec<LagSample> {
    let mut lag = Vec::new();
    let mut next_lag = Instant::now();
    while !stop.is_cancelled() {
        recorder.users(clients);
        recorder.seal();
        if Instant::now() >= next_lag {
            next_lag = Instant::now() + Duration::from_secs(1);
            let probed = tokio::time::timeout(Duration::from_secs(2), probe.lag(&topic)).await;
            if let Ok(Ok(mut parts)) = probed {
                parts.sort_by_key(|p| p.partition);
                lag.push(LagSample {
                    at_s: recorder.elapsed().as_secs_f64(),
                    partitions: parts.iter().map(|p| p.lag).collect(),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    lag
}

/// One patient request by a user the load never uses, on a coupon that stays on sale.
pub(super) async fn final_probe(
    http: &reqwest::Client,
    addr: &str,
    campaign: &str,
) -> anyhow::Result<Uuid> {
    let (coupon, user) = (PROBE_COUPON, USERS + 1);
    let key = Uuid::now_v7().simple().to_string();
    let mut last = String::new();
    for _ in 0..20 {
        let answer = http
            .post(format!("http://{addr}/api/coupons/{coupon}/issue"))
            .header("content-type", "application/json")
            .header("idempotency-key", &key)
            .body(format!(r#"{{"userId":{user}}}"#))
            .send()
            .await;
        match answer {
            Ok(r) if r.status().as_u16() == 202 => {
                return Ok(keyed_request_id(campaign, coupon, user, &key));
            }
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(anyhow::anyhow!("no 202 in 10 s (last: {last})"))
}

/// One sample of an unlabelled metric on the API's /metrics page.
pub(super) async fn scrape(http: &reqwest::Client, addr: &str, metric: &str) -> Option<i64> {
    let page = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    page.lines()
        .filter(|l| l.starts_with(metric))
        .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as i64)
}

pub(super) async fn wait_ready(
    http: &reqwest::Client,
    addr: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = http.get(format!("http://{addr}/readyz")).send().await
            && r.status().as_u16() == 200
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(anyhow::anyhow!(
                "coupon-api on {addr} not ready within {within:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
