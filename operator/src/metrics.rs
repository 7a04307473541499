//! The operator's Prometheus metrics: exact lag per partition, the consumer replicas it wants,
//! and the books it reads every reconcile (stock per coupon, Redis/ledger drift), served with
//! /healthz by [`Metrics::router`].

use axum::Router;
use axum::routing::get;
use coupon_core::broker::PartitionLag;
use coupon_core::metrics::MetricRegistry;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec};

#[derive(Clone)]
pub struct Metrics {
    registry: MetricRegistry,
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
    /// Reservations settled by the timer, by outcome (kept: issued; released: no event).
    pub settled: IntCounterVec,
    pub unsettled: IntGaugeVec,
    pub unsettled_oldest_age: GaugeVec,
}

use crate::books::CampaignBooks;
use crate::scaling::Scale;

const CAMPAIGN: &[&str] = &["campaign"];
const COUPON: &[&str] = &["campaign", "coupon"];

impl Default for Metrics {
    fn default() -> Self {
        let r = MetricRegistry::new();
        let g = |name: &str, help: &str, labels: &[&str]| r.gauge_vec(name, help, labels);
        Self {
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
            reconciles: r.counter_vec(
                "coupon_operator_reconciles_total",
                "Reconciles by result (ok or the error label)",
                &["result"],
            ),
            settled: r.counter_vec(
                "coupon_operator_settled_reservations_total",
                "Reservations settled, by outcome: kept (the ledger has the event) or released \
                 (no event: stock and the user's slot given back)",
                &["campaign", "outcome"],
            ),
            unsettled: g(
                "coupon_operator_unsettled_reservations",
                "Reservations the gate made that are not settled yet (in flight or orphaned)",
                CAMPAIGN,
            ),
            unsettled_oldest_age: r.float_gauge_vec(
                "coupon_operator_unsettled_oldest_age_seconds",
                "Age of the oldest unsettled reservation (0 when none); it stays low while \
                 settlement keeps up",
                CAMPAIGN,
            ),
            registry: r,
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        self.registry.render()
    }

    /// `/healthz` and `/metrics`, what the operator's Service and probes reach.
    pub fn router(&self) -> Router {
        let metrics = self.clone();
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/metrics", get(move || async move { metrics.render() }))
    }

    /// Lag, replicas and books of one reconcile pass.
    pub(crate) fn observe(
        &self,
        campaign: &str,
        lags: &[PartitionLag],
        books: &CampaignBooks,
        scale: &Scale,
    ) {
        for l in lags {
            self.lag
                .with_label_values(&[campaign, &l.partition.to_string()])
                .set(l.lag);
        }
        let one = [campaign];
        self.lag_total
            .with_label_values(&one)
            .set(scale.plan.total_lag);
        self.replicas_current
            .with_label_values(&one)
            .set(i64::from(scale.current));
        self.replicas_desired
            .with_label_values(&one)
            .set(i64::from(scale.desired));
        self.replicas_max
            .with_label_values(&one)
            .set(i64::from(scale.max));
        // Redis and the ledger must agree once nothing is in flight; while events wait in the
        // topic the difference is expected, so drift is only judged on a drained topic.
        let drained = scale.plan.total_lag == 0;
        for (b, left) in books.books.iter().zip(&books.gate) {
            let labels = [campaign, &b.coupon_id.to_string()];
            if let Some(left) = left {
                self.stock_remaining.with_label_values(&labels).set(*left);
            }
            self.stock_quantity
                .with_label_values(&labels)
                .set(b.total_quantity);
            self.issued.with_label_values(&labels).set(b.issued);
            let drift = match left {
                Some(left) if drained => b.remaining - left,
                _ => 0,
            };
            self.drift.with_label_values(&labels).set(drift);
        }
    }

    /// Creates a campaign's settlement series at zero, so rates and alerts see the first release.
    pub fn init_settlement(&self, campaign: &str) {
        for outcome in ["kept", "released"] {
            let _ = self.settled.with_label_values(&[campaign, outcome]);
        }
        let _ = self.unsettled.with_label_values(&[campaign]);
        let _ = self.unsettled_oldest_age.with_label_values(&[campaign]);
    }

    /// Drops every series of a deleted campaign, so dashboards and alerts forget it.
    pub fn forget(&self, campaign: &str, partitions: i32, coupons: &[String]) {
        for vec in [
            &self.lag_total,
            &self.replicas_desired,
            &self.replicas_current,
            &self.replicas_max,
            &self.unsettled,
        ] {
            let _ = vec.remove_label_values(&[campaign]);
        }
        let _ = self.unsettled_oldest_age.remove_label_values(&[campaign]);
        for outcome in ["kept", "released"] {
            let _ = self.settled.remove_label_values(&[campaign, outcome]);
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
