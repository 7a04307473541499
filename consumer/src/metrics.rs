//! The consumer's Prometheus metrics.

use coupon_core::metrics::MetricRegistry;
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

#[derive(Clone)]
pub struct Metrics {
    registry: MetricRegistry,
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
        let r = MetricRegistry::new().with_label("campaign", campaign);
        let m = Self {
            events: r.counter_vec(
                "coupon_consumer_events_total",
                "Events processed by result (inserted, redelivered, dead_lettered)",
                &["result"],
            ),
            dead_letters: r.counter_vec(
                "coupon_consumer_dead_letters_total",
                "Events sent to the dead-letter topic by reason",
                &["reason"],
            ),
            stored_marks: r.counter_vec(
                "coupon_consumer_stored_marks_total",
                "Committed requests marked stored in the gate for their status, by outcome (marked, failed, timeout)",
                &["outcome"],
            ),
            batch_size: r.histogram(
                "coupon_consumer_batch_size",
                "Events per ledger transaction",
                &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0],
            ),
            transaction: r.histogram(
                "coupon_consumer_transaction_duration_seconds",
                "Time to write one batch to the ledger, commit included",
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            ),
            db_errors: r.counter(
                "coupon_consumer_db_errors_total",
                "Failed ledger transactions (retried with back-off)",
            ),
            lag: r.gauge_vec(
                "coupon_consumer_lag",
                "End offset minus committed offset, per partition",
                &["topic", "partition"],
            ),
            lag_total: r.gauge(
                "coupon_consumer_lag_total",
                "Sum of the per-partition lag",
            ),
            registry: r,
        };
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
        self.registry.render()
    }
}
