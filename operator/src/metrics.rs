//! The operator's Prometheus metrics: exact lag per partition and the consumer replicas it wants.

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub lag: IntGaugeVec,
    pub lag_total: IntGaugeVec,
    pub replicas_desired: IntGaugeVec,
    pub replicas_current: IntGaugeVec,
    pub reconciles: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let g = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let m = Self {
            registry: Registry::new(),
            lag: g(
                "coupon_operator_consumer_lag",
                "End offset minus the group's committed offset, per partition",
                &["campaign", "partition"],
            ),
            lag_total: g(
                "coupon_operator_consumer_lag_total",
                "Sum of the per-partition lag",
                &["campaign"],
            ),
            replicas_desired: g(
                "coupon_operator_consumer_replicas_desired",
                "Consumer replicas the autoscaler decided",
                &["campaign"],
            ),
            replicas_current: g(
                "coupon_operator_consumer_replicas_current",
                "Consumer replicas before this decision",
                &["campaign"],
            ),
            reconciles: IntCounterVec::new(
                Opts::new(
                    "coupon_operator_reconciles_total",
                    "Reconciles by result (ok or the error label)",
                ),
                &["result"],
            )
            .expect("valid metric"),
        };
        for c in [
            Box::new(m.lag.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.lag_total.clone()),
            Box::new(m.replicas_desired.clone()),
            Box::new(m.replicas_current.clone()),
            Box::new(m.reconciles.clone()),
        ] {
            m.registry.register(c).expect("metric registered once");
        }
        m
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
