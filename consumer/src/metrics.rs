//! The consumer's Prometheus metrics.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub events: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub stored_marks: IntCounterVec,
    pub batch_size: Histogram,
    pub transaction: Histogram,
    pub db_errors: IntCounter,
    pub lag: IntGaugeVec,
    pub lag_total: IntGauge,
}

impl Metrics {
    pub fn new(campaign: &str) -> Self {
        let registry = Registry::new();
        let o = |name: &str, help: &str| Opts::new(name, help).const_label("campaign", campaign);
        let h = |name: &str, help: &str, buckets: Vec<f64>| {
            HistogramOpts::new(name, help)
                .const_label("campaign", campaign)
                .buckets(buckets)
        };
        let m = Self {
            events: IntCounterVec::new(
                o(
                    "coupon_consumer_events_total",
                    "Events processed by result (inserted, redelivered, dead_lettered)",
                ),
                &["result"],
            )
            .expect("valid metric"),
            dead_letters: IntCounterVec::new(
                o(
                    "coupon_consumer_dead_letters_total",
                    "Events sent to the dead-letter topic by reason",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            stored_marks: IntCounterVec::new(
                o(
                    "coupon_consumer_stored_marks_total",
                    "Committed requests marked stored in the gate for their status, by outcome (marked, failed, timeout)",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            batch_size: Histogram::with_opts(h(
                "coupon_consumer_batch_size",
                "Events per ledger transaction",
                vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0],
            ))
            .expect("valid metric"),
            transaction: Histogram::with_opts(h(
                "coupon_consumer_transaction_duration_seconds",
                "Time to write one batch to the ledger, commit included",
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            ))
            .expect("valid metric"),
            db_errors: IntCounter::with_opts(o(
                "coupon_consumer_db_errors_total",
                "Failed ledger transactions (retried with back-off)",
            ))
            .expect("valid metric"),
            lag: IntGaugeVec::new(
                o(
                    "coupon_consumer_lag",
                    "End offset minus committed offset, per partition",
                ),
                &["topic", "partition"],
            )
            .expect("valid metric"),
            lag_total: IntGauge::with_opts(o(
                "coupon_consumer_lag_total",
                "Sum of the per-partition lag",
            ))
            .expect("valid metric"),
            registry,
        };
        for c in [
            Box::new(m.events.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.dead_letters.clone()),
            Box::new(m.stored_marks.clone()),
            Box::new(m.batch_size.clone()),
            Box::new(m.transaction.clone()),
            Box::new(m.db_errors.clone()),
            Box::new(m.lag.clone()),
            Box::new(m.lag_total.clone()),
        ] {
            m.registry.register(c).expect("metric registered once");
        }
        // Every series exists from the start, so rate() and increase() see the first event.
        for result in ["inserted", "redelivered", "dead_lettered"] {
            m.events.with_label_values(&[result]);
        }
        for outcome in ["marked", "failed", "timeout"] {
            m.stored_marks.with_label_values(&[outcome]);
        }
        for reason in coupon_core::event::PoisonReason::LABELS {
            m.dead_letters.with_label_values(&[reason]);
        }
        m
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
