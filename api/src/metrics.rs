//! The API's Prometheus metrics.

use coupon_core::metrics::MetricRegistry;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge};

/// Latency buckets from 250 µs to 5 s: the gate answers in well under a millisecond.
const LATENCY_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

#[derive(Clone)]
pub struct Metrics {
    registry: MetricRegistry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub publish_latency: Histogram,
    pub publish_failures: IntCounterVec,
    pub in_flight: IntGauge,
    pub client_gone: IntCounter,
    pub producer_recreated: IntGauge,
}

impl Metrics {
    pub fn new(campaign: &str) -> Self {
        let r = MetricRegistry::new().with_label("campaign", campaign);
        let m = Self {
            requests: r.counter_vec(
                "coupon_api_requests_total",
                "Issue requests by outcome (accepted or the refusal code)",
                &["outcome"],
            ),
            latency: r.histogram_vec(
                "coupon_api_request_duration_seconds",
                "Issue request latency by outcome",
                LATENCY_BUCKETS,
                &["outcome"],
            ),
            publish_latency: r.histogram(
                "coupon_api_publish_duration_seconds",
                "Time from publish to the broker's acknowledgement",
                LATENCY_BUCKETS,
            ),
            publish_failures: r.counter_vec(
                "coupon_api_publish_failures_total",
                "Publishes not acknowledged, by kind (refused: released; unknown: reconciled later)",
                &["kind"],
            ),
            in_flight: r.gauge(
                "coupon_api_in_flight_requests",
                "Issue requests being processed",
            ),
            client_gone: r.counter(
                "coupon_api_client_gone_total",
                "Issue requests whose client hung up before the answer (each still ran to its end)",
            ),
            producer_recreated: r.gauge(
                "coupon_api_producer_recreated",
                "Times the Kafka producer was replaced after a fatal error",
            ),
            registry: r,
        };
        // Every outcome exists from the start, so rate() sees the first refusal of each kind.
        for outcome in std::iter::once("accepted").chain(crate::error::ApiError::CODES) {
            m.requests.with_label_values(&[outcome]);
            m.latency.with_label_values(&[outcome]);
        }
        for kind in coupon_core::broker::PublishFailure::LABELS {
            m.publish_failures.with_label_values(&[kind]);
        }
        m
    }

    pub fn render(&self) -> String {
        self.registry.render()
    }
}
