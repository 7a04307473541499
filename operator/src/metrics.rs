//! The operator's Prometheus metrics: exact lag per partition, the consumer replicas it wants,
//! and the books it reads every reconcile (stock per coupon, Redis/ledger drift), served with
//! /healthz by [`Metrics::router`].

use axum::Router;
use axum::routing::get;
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub lag: IntGaugeVec,
    pub lag_total: IntGaugeVec,
    pub replicas_desired: IntGaugeVec,
    pub replicas_current: IntGaugeVec,
    pub replicas_max: IntGaugeVec,
    pub stock_remaining: IntGaugeVec,
    pub stock_quantity: IntGaugeVec,
    pub issued: IntGaugeVec,
    pub drift: IntGaugeVec,
    pub reconciles: IntCounterVec,
}

const CAMPAIGN: &[&str] = &["campaign"];
const COUPON: &[&str] = &["campaign", "coupon"];

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
                CAMPAIGN,
            ),
            replicas_desired: g(
                "coupon_operator_consumer_replicas_desired",
                "Consumer replicas the autoscaler decided",
                CAMPAIGN,
            ),
            replicas_current: g(
                "coupon_operator_consumer_replicas_current",
                "Consumer replicas before this decision",
                CAMPAIGN,
            ),
            replicas_max: g(
                "coupon_operator_consumer_replicas_max",
                "The campaign's spec.consumers.maxReplicas, the autoscaler's ceiling",
                CAMPAIGN,
            ),
            stock_remaining: g(
                "coupon_operator_stock_remaining",
                "Coupons the Redis gate can still grant, per coupon",
                COUPON,
            ),
            stock_quantity: g(
                "coupon_operator_stock_quantity",
                "The coupon's total quantity (ledger)",
                COUPON,
            ),
            issued: g(
                "coupon_operator_coupons_issued",
                "Issuance rows in the ledger, per coupon",
                COUPON,
            ),
            drift: g(
                "coupon_operator_stock_drift",
                "Ledger remaining minus Redis remaining, judged when the topic is drained (0 while \
                 events are in flight); positive: stock held by publishes the ledger never got, \
                 negative: the ledger issued more than the gate granted",
                COUPON,
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
            Box::new(m.replicas_max.clone()),
            Box::new(m.stock_remaining.clone()),
            Box::new(m.stock_quantity.clone()),
            Box::new(m.issued.clone()),
            Box::new(m.drift.clone()),
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

    /// `/healthz` and `/metrics`, what the operator's Service and probes reach.
    pub fn router(&self) -> Router {
        let metrics = self.clone();
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/metrics", get(move || async move { metrics.render() }))
    }

    /// Drops every series of a deleted campaign, so dashboards and alerts forget it.
    pub fn forget(&self, campaign: &str, partitions: i32, coupons: &[String]) {
        for vec in [
            &self.lag_total,
            &self.replicas_desired,
            &self.replicas_current,
            &self.replicas_max,
        ] {
            let _ = vec.remove_label_values(&[campaign]);
        }
        for p in 0..partitions {
            let _ = self.lag.remove_label_values(&[campaign, &p.to_string()]);
        }
        for coupon in coupons {
            for vec in [
                &self.stock_remaining,
                &self.stock_quantity,
                &self.issued,
                &self.drift,
            ] {
                let _ = vec.remove_label_values(&[campaign, coupon]);
            }
        }
    }
}
