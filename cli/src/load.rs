//! The load generator: drives the API over HTTP like the seed's k6 test (or harder), records
//! every accepted request id, and measures latency with HdrHistogram.

use anyhow::Context as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use coupon_core::campaign::{CouponId, UserId};
use coupon_report::recorder::{Answer, Recorder};
use coupon_report::timeline::{Second, SoldOut};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// The seed's k6 test: 0→20 VUs (1 min), →50 (2 min), →100 (2 min), 100 (4 min), →0 (1 min).
    Seed,
    /// Closed loop, no think time: throughput.
    Max,
    /// Most traffic on the few smallest coupons from a small user pool: sell-out storms.
    Hot,
}

/// The seed's stages: (duration, target VUs at its end).
pub const SEED_STAGES: [(u64, usize); 5] = [(60, 20), (120, 50), (120, 100), (240, 100), (60, 0)];

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Base URLs of the API; requests go to them in turn (pods addressed without a Service).
    pub targets: Vec<String>,
    pub scenario: Scenario,
    /// Compresses the seed stages (0.1: one minute) without changing their shape.
    pub time_scale: f64,
    /// Pause after each seed iteration; 2 s reproduces the seed's ≈34 req/s.
    pub think: Duration,
    pub connections: usize,
    pub duration: Duration,
    /// Coupons to draw from, uniformly (seed, max).
    pub coupons: Vec<CouponId>,
    /// The smallest coupons, which take 90% of the hot scenario's traffic.
    pub hot_coupons: Vec<CouponId>,
    pub users: UserId,
    pub progress: bool,
    /// Signs a token per request for an API on `--identity jwt`.
    pub tokens: Option<TokenSigner>,
}

/// HS256 tokens for load against `--identity jwt` (the user in `sub`, valid for an hour).
#[derive(Clone)]
pub struct TokenSigner {
    pub secret: String,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    pub fn bearer(&self, user: UserId) -> String {
        let claims = serde_json::json!({
            "sub": user.to_string(),
            "iss": self.issuer,
            "aud": self.audience,
            "exp": chrono::Utc::now().timestamp() + 3600,
        });
        coupon_api::identity::hs256_bearer(&self.secret, &claims)
    }
}

/// One request's outcome class: `accepted` or the refusal code (or a transport failure).
fn classify(status: u16, body: &[u8]) -> (String, Option<Uuid>) {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let id = json["requestId"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok());
    if status == 202 {
        return ("accepted".into(), id);
    }
    let code = json["code"]
        .as_str()
        .map_or_else(|| format!("http_{status}"), str::to_string);
    (code, id)
}

/// A sample of the 202s is followed to the ledger: their status resource (the 202's
/// `Location`) is polled until it reads `issued`, timing the wait the seed report could not see.
const STORED_SAMPLE_EVERY: Duration = Duration::from_millis(100);
const STORED_SAMPLE_MAX: usize = 1000;
/// The figure's resolution; about ten polls per sampled request at the usual wait.
pub const STORED_POLL: Duration = Duration::from_millis(5);
const STORED_GIVE_UP: Duration = Duration::from_secs(30);

/// Time from a 202 to its status reading `issued`, over the sampled requests.
pub struct StoredTimes {
    /// Microseconds.
    pub histogram: Histogram<u64>,
    pub sampled: u64,
    /// Read `released` or unknown instead (a 202 must not: counted so the report shows it).
    pub not_issued: u64,
    /// Still `pending` after 30 s (the consumer is down, far behind, or marks nothing:
    /// then settlement says `issued` after its grace).
    pub not_seen: u64,
}

struct StoredWatch {
    /// Load-clock milliseconds of the last sample (`u64::MAX`: none yet), and how many.
    last_ms: AtomicU64,
    taken: AtomicUsize,
    polls: std::sync::Mutex<Vec<tokio::task::JoinHandle<Result<Duration, &'static str>>>>,
}

impl StoredWatch {
    fn new() -> Self {
        Self {
            last_ms: AtomicU64::new(u64::MAX),
            taken: AtomicUsize::new(0),
            polls: std::sync::Mutex::default(),
        }
    }

    /// Whether this 202 is the next sample (one per interval, all connections together).
    fn take(&self, now_ms: u64) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now_ms >= last + STORED_SAMPLE_EVERY.as_millis() as u64;
        due && self
            .last_ms
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && self.taken.fetch_add(1, Ordering::Relaxed) < STORED_SAMPLE_MAX
    }

    async fn finish(&self) -> StoredTimes {
        let polls = self
            .polls
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        let mut out = StoredTimes {
            histogram: new_histogram(),
            sampled: polls.len() as u64,
            not_issued: 0,
            not_seen: 0,
        };
        for p in polls {
            match p.await {
                Ok(Ok(waited)) => {
                    let _ = out.histogram.record(waited.as_micros().max(1) as u64);
                }
                Ok(Err("pending")) | Err(_) => out.not_seen += 1,
                Ok(Err(_)) => out.not_issued += 1,
            }
        }
        out
    }
}

/// Polls a 202's status resource until it leaves `pending`; the wait since the 202 if issued.
async fn follow(
    client: reqwest::Client,
    url: String,
    accepted: Instant,
    bearer: Option<String>,
) -> Result<Duration, &'static str> {
    while accepted.elapsed() < STORED_GIVE_UP {
        let mut get = client.get(&url);
        if let Some(b) = &bearer {
            get = get.header("authorization", b);
        }
        if let Ok(r) = get.send().await {
            let body = r.bytes().await.unwrap_or_default();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            match json["status"].as_str() {
                Some("issued") => return Ok(accepted.elapsed()),
                Some("pending") => {}
                _ => return Err("not issued"),
            }
        }
        tokio::time::sleep(STORED_POLL).await;
    }
    Err("pending")
}

#[derive(Default)]
struct WorkerLog {
    histogram: Option<Histogram<u64>>,
    outcomes: BTreeMap<String, u64>,
    accepted: Vec<Uuid>,
    ambiguous: Vec<Uuid>,
}

pub struct LoadOutcome {
    pub elapsed: Duration,
    /// Microseconds; corrected for coordinated omission in the closed-loop scenarios.
    pub histogram: Histogram<u64>,
    pub outcomes: BTreeMap<String, u64>,
    pub accepted: Vec<Uuid>,
    /// 503 answers that carried a request id: may or may not be issued.
    pub ambiguous: Vec<Uuid>,
    pub max_vus: usize,
    pub to_stored: StoredTimes,
    /// Answers per second by code, latency percentiles and users, on the recorder's clock.
    pub seconds: Vec<Second>,
    pub sold_out: Vec<SoldOut>,
}

impl LoadOutcome {
    pub fn requests(&self) -> u64 {
        self.outcomes.values().sum()
    }
}

struct Shared {
    client: reqwest::Client,
    opts: LoadOptions,
    started: Instant,
    sent: AtomicU64,
    accepted: AtomicU64,
    active_vus: AtomicUsize,
    next_target: AtomicUsize,
    recorder: Arc<Recorder>,
    stored: StoredWatch,
}

fn target_vus(elapsed: Duration, scale: f64) -> Option<usize> {
    let mut t = elapsed.as_secs_f64();
    let mut from = 0usize;
    for (secs, to) in SEED_STAGES {
        let len = secs as f64 * scale;
        if t < len {
            let share = t / len;
            return Some((from as f64 + (to as f64 - from as f64) * share).round() as usize);
        }
        t -= len;
        from = to;
    }
    None
}

pub fn seed_duration(scale: f64) -> Duration {
    Duration::from_secs_f64(SEED_STAGES.iter().map(|(s, _)| *s as f64).sum::<f64>() * scale)
}

impl Shared {
    fn pick(&self, rng: &mut SmallRng) -> (CouponId, UserId) {
        let o = &self.opts;
        match o.scenario {
            Scenario::Hot if !o.hot_coupons.is_empty() && rng.random_bool(0.9) => {
                let c = o.hot_coupons[rng.random_range(0..o.hot_coupons.len())];
                (c, rng.random_range(1..=o.users.clamp(1, 5_000)))
            }
            _ => {
                let c = o.coupons[rng.random_range(0..o.coupons.len())];
                (c, rng.random_range(1..=o.users.max(1)))
            }
        }
    }

    /// Sends one request and logs its answer; `expected_interval` is the closed loop's usual
    /// pace (zero for the seed's paced users), for the per-second latency.
    async fn send(
        &self,
        log: &mut WorkerLog,
        coupon: CouponId,
        user: UserId,
        expected_interval: Duration,
    ) -> Duration {
        let targets = &self.opts.targets;
        let target = &targets[self.next_target.fetch_add(1, Ordering::Relaxed) % targets.len()];
        let url = format!("{target}/api/coupons/{coupon}/issue");
        let started = Instant::now();
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/json");
        request = match &self.opts.tokens {
            Some(signer) => request.header("authorization", signer.bearer(user)),
            None => request.body(format!(r#"{{"userId":{user}}}"#)),
        };
        let result = request.send().await;
        let (code, id, location) = match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let location = (status == 202)
                    .then(|| resp.headers().get(reqwest::header::LOCATION).cloned())
                    .flatten();
                let body = resp.bytes().await.unwrap_or_default();
                let (code, id) = classify(status, &body);
                (code, id, location)
            }
            Err(_) => ("transport_error".into(), None, None),
        };
        let took = started.elapsed();
        if let Some(path) = location.as_ref().and_then(|l| l.to_str().ok())
            && self.stored.take(self.started.elapsed().as_millis() as u64)
        {
            let bearer = self.opts.tokens.as_ref().map(|t| t.bearer(user));
            let poll = tokio::spawn(follow(
                self.client.clone(),
                format!("{target}{path}"),
                Instant::now(),
                bearer,
            ));
            if let Ok(mut polls) = self.stored.polls.lock() {
                polls.push(poll);
            }
        }
        self.recorder.record(Answer {
            coupon,
            code: &code,
            latency: Some(took),
            expected_interval,
        });
        match (code.as_str(), id) {
            ("accepted", Some(id)) => {
                log.accepted.push(id);
                self.accepted.fetch_add(1, Ordering::Relaxed);
            }
            ("unavailable", Some(id)) => log.ambiguous.push(id),
            _ => {}
        }
        *log.outcomes.entry(code).or_default() += 1;
        self.sent.fetch_add(1, Ordering::Relaxed);
        took
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

async fn seed_vu(shared: Arc<Shared>, index: usize) -> WorkerLog {
    let mut log = WorkerLog {
        histogram: Some(new_histogram()),
        ..WorkerLog::default()
    };
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut active = false;
    while let Some(target) = target_vus(shared.started.elapsed(), shared.opts.time_scale) {
        if index >= target {
            if active {
                shared.active_vus.fetch_sub(1, Ordering::Relaxed);
                active = false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        if !active {
            shared.active_vus.fetch_add(1, Ordering::Relaxed);
            active = true;
        }
        let (coupon, user) = shared.pick(&mut rng);
        let took = shared.send(&mut log, coupon, user, Duration::ZERO).await;
        if let Some(h) = log.histogram.as_mut() {
            let _ = h.record(took.as_micros().max(1) as u64);
        }
        tokio::time::sleep(shared.opts.think).await;
    }
    if active {
        shared.active_vus.fetch_sub(1, Ordering::Relaxed);
    }
    log
}

async fn closed_loop(shared: Arc<Shared>) -> WorkerLog {
    let mut log = WorkerLog {
        histogram: Some(new_histogram()),
        ..WorkerLog::default()
    };
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let (mut n, mut total_us) = (0u64, 0u64);
    while shared.started.elapsed() < shared.opts.duration {
        let (coupon, user) = shared.pick(&mut rng);
        let usual = Duration::from_micros(total_us.checked_div(n).unwrap_or(0));
        let took = shared
            .send(&mut log, coupon, user, usual)
            .await
            .as_micros()
            .max(1) as u64;
        n += 1;
        total_us += took;
        // A closed loop sends less while the server stalls; correcting with the usual interval
        // back-fills the requests that would have waited (coordinated omission).
        if let Some(h) = log.histogram.as_mut() {
            let _ = h.record_correct(took, (total_us / n).max(1));
        }
    }
    log
}

/// Runs the load; answers go to `recorder` second by second as well.
pub async fn run(opts: LoadOptions, recorder: Arc<Recorder>) -> anyhow::Result<LoadOutcome> {
    if opts.coupons.is_empty() {
        return Err(anyhow::anyhow!("no coupons to request"));
    }
    if opts.targets.is_empty() {
        return Err(anyhow::anyhow!("no API to send requests to"));
    }
    let connections = match opts.scenario {
        Scenario::Seed => SEED_STAGES.iter().map(|(_, v)| *v).max().unwrap_or(1),
        Scenario::Max | Scenario::Hot => opts.connections.max(1),
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()
        .context("http client")?;
    let total = match opts.scenario {
        Scenario::Seed => seed_duration(opts.time_scale),
        _ => opts.duration,
    };
    let shared = Arc::new(Shared {
        client,
        opts,
        started: Instant::now(),
        sent: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        active_vus: AtomicUsize::new(0),
        next_target: AtomicUsize::new(0),
        recorder,
        stored: StoredWatch::new(),
    });
    let sampler = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                shared.recorder.users(match shared.opts.scenario {
                    Scenario::Seed => shared.active_vus.load(Ordering::Relaxed),
                    _ => connections,
                });
                shared.recorder.seal();
            }
        })
    };
    let progress = shared.opts.progress.then(|| progress_bar(total));
    let ticker = progress.clone().map(|bar| {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let elapsed = shared.started.elapsed();
                let sent = shared.sent.load(Ordering::Relaxed);
                bar.set_position(elapsed.as_millis().min(total.as_millis()) as u64);
                bar.set_message(format!(
                    "{sent} requests, {:.0} req/s, {} accepted, {} VUs",
                    sent as f64 / elapsed.as_secs_f64().max(0.001),
                    shared.accepted.load(Ordering::Relaxed),
                    match shared.opts.scenario {
                        Scenario::Seed => shared.active_vus.load(Ordering::Relaxed),
                        _ => connections,
                    }
                ));
            }
        })
    });
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let shared = shared.clone();
            tokio::spawn(async move {
                match shared.opts.scenario {
                    Scenario::Seed => seed_vu(shared, i).await,
                    Scenario::Max | Scenario::Hot => closed_loop(shared).await,
                }
            })
        })
        .collect();
    let mut outcome = LoadOutcome {
        elapsed: Duration::ZERO,
        histogram: new_histogram(),
        outcomes: BTreeMap::new(),
        accepted: Vec::new(),
        ambiguous: Vec::new(),
        max_vus: connections,
        to_stored: StoredTimes {
            histogram: new_histogram(),
            sampled: 0,
            not_issued: 0,
            not_seen: 0,
        },
        seconds: Vec::new(),
        sold_out: Vec::new(),
    };
    for t in tasks {
        let log = t.await.context("load worker failed")?;
        if let Some(h) = &log.histogram {
            let _ = outcome.histogram.add(h);
        }
        for (k, v) in log.outcomes {
            *outcome.outcomes.entry(k).or_default() += v;
        }
        outcome.accepted.extend(log.accepted);
        outcome.ambiguous.extend(log.ambiguous);
    }
    outcome.elapsed = shared.started.elapsed();
    outcome.to_stored = shared.stored.finish().await;
    sampler.abort();
    (outcome.seconds, outcome.sold_out) = shared.recorder.finish();
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    Ok(outcome)
}

fn progress_bar(total: Duration) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total.as_millis() as u64);
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}%  {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// The accepted log `verify --accepted` reads: one id per line, `?id` for ambiguous answers.
pub fn accepted_log(outcome: &LoadOutcome) -> String {
    let mut out = String::with_capacity((outcome.accepted.len() + outcome.ambiguous.len()) * 38);
    for id in &outcome.accepted {
        out.push_str(&id.to_string());
        out.push('\n');
    }
    for id in &outcome.ambiguous {
        out.push('?');
        out.push_str(&id.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_stages_ramp_like_k6() {
        let at = |s: u64| target_vus(Duration::from_secs(s), 1.0);
        assert_eq!(at(0), Some(0));
        assert_eq!(at(30), Some(10));
        assert_eq!(at(60), Some(20));
        assert_eq!(at(120), Some(35));
        assert_eq!(at(300), Some(100));
        assert_eq!(at(599), Some(2));
        assert_eq!(at(600), None);
        assert_eq!(seed_duration(0.1), Duration::from_secs(60));
        // Time-scaled, the same shape.
        assert_eq!(target_vus(Duration::from_secs(3), 0.1), Some(10));
    }

    #[test]
    fn answers_are_classified_by_code() {
        let id = Uuid::now_v7();
        let body = format!(r#"{{"requestId":"{id}"}}"#);
        assert_eq!(
            classify(202, body.as_bytes()),
            ("accepted".into(), Some(id))
        );
        assert_eq!(classify(409, br#"{"code":"sold_out"}"#).0, "sold_out");
        assert_eq!(classify(502, b"<html>").0, "http_502");
    }
}
