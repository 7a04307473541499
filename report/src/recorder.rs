//! Records answers into per-second buckets while a load runs: counts by code and a latency
//! histogram per second (2 significant digits: 1% precision is plenty for a chart). Buckets
//! older than a few seconds are sealed into percentiles, so a long run keeps no histograms.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use coupon_core::campaign::CouponId;
use hdrhistogram::Histogram;

use crate::timeline::{Percentiles, Second, SoldOut};

/// One answer as the client saw it.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub coupon: CouponId,
    /// `accepted` or the refusal's `code` (or a client-side label such as `transport_error`).
    pub code: &'a str,
    /// From sending to the answer; `None` when there was none to time (a hang-up).
    pub latency: Option<Duration>,
    /// A closed loop's usual interval between requests, to back-fill the requests a stall kept
    /// it from sending (coordinated omission); zero for none.
    pub expected_interval: Duration,
}

pub struct Recorder {
    started: Instant,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    seconds: Vec<Bucket>,
    sold_out: BTreeMap<CouponId, f64>,
}

#[derive(Default)]
struct Bucket {
    outcomes: BTreeMap<String, u64>,
    histogram: Option<Histogram<u64>>,
    sealed: Option<Percentiles>,
    vus: usize,
}

/// Answers this much older than now are complete: their bucket is sealed.
const SEAL_AFTER: u64 = 3;

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            state: Mutex::new(State::default()),
        }
    }

    /// Time since the recorder started: the timeline's clock.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn record(&self, answer: Answer<'_>) {
        let at = self.elapsed();
        let mut state = self.lock();
        if answer.code == "sold_out" {
            state
                .sold_out
                .entry(answer.coupon)
                .or_insert(at.as_secs_f64());
        }
        let bucket = state.bucket(at.as_secs());
        *bucket.outcomes.entry(answer.code.to_string()).or_default() += 1;
        if let (Some(latency), None) = (answer.latency, bucket.sealed) {
            let h = bucket.histogram.get_or_insert_with(new_histogram);
            let us = (latency.as_micros() as u64).clamp(1, h.high());
            let interval = answer.expected_interval.as_micros() as u64;
            let _ = h.record_correct(us, interval);
        }
    }

    /// The virtual users (or connections) active now; the most seen in a second is kept.
    pub fn users(&self, active: usize) {
        let at = self.elapsed().as_secs();
        let mut state = self.lock();
        let bucket = state.bucket(at);
        bucket.vus = bucket.vus.max(active);
    }

    /// Seals the buckets no answer can still land in; call it about once a second.
    pub fn seal(&self) {
        let now = self.elapsed().as_secs();
        let mut state = self.lock();
        let ripe = now.saturating_sub(SEAL_AFTER) as usize;
        for bucket in state.seconds.iter_mut().take(ripe) {
            bucket.seal();
        }
    }

    /// The seconds and sell-outs recorded so far.
    pub fn finish(&self) -> (Vec<Second>, Vec<SoldOut>) {
        let mut state = self.lock();
        let seconds = state
            .seconds
            .iter_mut()
            .enumerate()
            .map(|(t, b)| {
                b.seal();
                Second {
                    t: t as u32,
                    outcomes: b.outcomes.clone(),
                    latency_ms: b.sealed,
                    vus: b.vus,
                }
            })
            .collect();
        let sold_out = state
            .sold_out
            .iter()
            .map(|(&coupon_id, &at_s)| SoldOut { coupon_id, at_s })
            .collect();
        (seconds, sold_out)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves counts that are still counts.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn bucket(&mut self, second: u64) -> &mut Bucket {
        let i = second as usize;
        if self.seconds.len() <= i {
            self.seconds.resize_with(i + 1, Bucket::default);
        }
        &mut self.seconds[i]
    }
}

impl Bucket {
    fn seal(&mut self) {
        if let Some(h) = self.histogram.take() {
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            self.sealed = Some(Percentiles {
                p50: ms(0.50),
                p95: ms(0.95),
                p99: ms(0.99),
            });
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s; 2 significant digits keep a bucket's histogram near 20 KB.
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("constant bounds are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(code: &str, ms: u64) -> Answer<'_> {
        Answer {
            coupon: 7,
            code,
            latency: Some(Duration::from_millis(ms)),
            expected_interval: Duration::ZERO,
        }
    }

    #[test]
    fn answers_land_in_their_second_with_percentiles() {
        let r = Recorder::new();
        for ms in 1..=100 {
            r.record(answer("accepted", ms));
        }
        r.record(answer("sold_out", 5));
        r.record(answer("sold_out", 5));
        r.users(40);
        let (seconds, sold_out) = r.finish();
        assert_eq!(seconds.len(), 1);
        let s = &seconds[0];
        assert_eq!(s.outcomes["accepted"], 100);
        assert_eq!(s.outcomes["sold_out"], 2);
        assert_eq!(s.vus, 40);
        let p = s.latency_ms.expect("percentiles");
        assert!((49.0..=51.0).contains(&p.p50), "p50 {}", p.p50);
        assert!((98.0..=100.5).contains(&p.p99), "p99 {}", p.p99);
        // The first sell-out is kept, not the second.
        assert_eq!(sold_out.len(), 1);
        assert_eq!(sold_out[0].coupon_id, 7);
    }

    #[test]
    fn a_stalled_closed_loop_is_back_filled() {
        let r = Recorder::new();
        for _ in 0..99 {
            r.record(answer("accepted", 1));
        }
        r.record(Answer {
            expected_interval: Duration::from_millis(1),
            ..answer("accepted", 1000)
        });
        let (seconds, _) = r.finish();
        let p = seconds[0].latency_ms.expect("percentiles");
        // 1,000 back-filled samples from 1 s down: the median is no longer 1 ms.
        assert!(p.p50 > 100.0, "p50 {}", p.p50);
    }
}
