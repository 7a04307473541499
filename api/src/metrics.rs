//! The API's Prometheus metrics.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Latency buckets from 250 µs to 5 s: the gate answers in well under a millisecond.
const LATENCY_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
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
        let registry = Registry::new();
        let labels = |o: Opts| o.const_label("campaign", campaign);
        let hlabels = |o: HistogramOpts| o.const_label("campaign", campaign);
        let requests = IntCounterVec::new(
            labels(Opts::new(
                "coupon_api_requests_total",
                "Issue requests by outcome (accepted or the refusal code)",
            )),
            &["outcome"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            hlabels(
                HistogramOpts::new(
                    "coupon_api_request_duration_seconds",
                    "Issue request latency by outcome",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let publish_latency = Histogram::with_opts(hlabels(
            HistogramOpts::new(
                "coupon_api_publish_duration_seconds",
                "Time from publish to the broker's acknowledgement",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        ))
        .expect("valid metric");
        let publish_failures = IntCounterVec::new(
            labels(Opts::new(
                "coupon_api_publish_failures_total",
                "Publishes not acknowledged, by kind (refused: released; unknown: reconciled later)",
            )),
            &["kind"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::with_opts(labels(Opts::new(
            "coupon_api_in_flight_requests",
            "Issue requests being processed",
        )))
        .expect("valid metric");
        let client_gone = IntCounter::with_opts(labels(Opts::new(
            "coupon_api_client_gone_total",
            "Issue requests whose client hung up before the answer (each still ran to its end)",
        )))
        .expect("valid metric");
        let producer_recreated = IntGauge::with_opts(labels(Opts::new(
            "coupon_api_producer_recreated",
            "Times the Kafka producer was replaced after a fatal error",
        )))
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(publish_latency.clone()),
            Box::new(publish_failures.clone()),
            Box::new(in_flight.clone()),
            Box::new(client_gone.clone()),
            Box::new(producer_recreated.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        // Every outcome exists from the start, so rate() sees the first refusal of each kind.
        for outcome in std::iter::once("accepted").chain(crate::error::ApiError::CODES) {
            requests.with_label_values(&[outcome]);
            latency.with_label_values(&[outcome]);
        }
        for kind in coupon_core::broker::PublishFailure::LABELS {
            publish_failures.with_label_values(&[kind]);
        }
        Self {
            registry,
            requests,
            latency,
            publish_latency,
            publish_failures,
            in_flight,
            client_gone,
            producer_recreated,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
