//! How a run unfolded, second by second: what the load generator saw (answers by outcome,
//! latency percentiles, virtual users), the consumer lag per partition, when coupons sold out
//! and when faults hit. Serialised into the JSON reports for other tools to plot.

use std::collections::BTreeMap;

use coupon_core::campaign::CouponId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeline {
    /// One entry per second since the load started (second `t` covers `[t, t+1)`).
    pub seconds: Vec<Second>,
    /// Consumer lag per partition (index = partition), sampled about once a second by the
    /// operator's probe, until the lag drained after the load.
    pub lag: Vec<LagSample>,
    /// When each coupon first answered `sold_out`, in seconds since the start.
    pub sold_out: Vec<SoldOut>,
    /// Faults (and other spans) marked on every chart.
    pub marks: Vec<Mark>,
    /// When the last answer arrived, in seconds since the start.
    pub load_end_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Second {
    pub t: u32,
    /// Answers completed in this second, by code (`accepted` or the refusal's `code`).
    pub outcomes: BTreeMap<String, u64>,
    /// Of the answers completed in this second; `None` when none carried a latency.
    pub latency_ms: Option<Percentiles>,
    /// Virtual users (seed) or connections (closed loop) active in this second.
    pub vus: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LagSample {
    pub at_s: f64,
    pub partitions: Vec<i64>,
}

impl LagSample {
    pub fn total(&self) -> i64 {
        self.partitions.iter().sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SoldOut {
    pub coupon_id: CouponId,
    pub at_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mark {
    pub from_s: f64,
    pub until_s: f64,
    pub label: String,
}

/// The six kinds of answer the page draws; each answer code belongs to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Accepted,
    SoldOut,
    AlreadyIssued,
    /// Refused before any stock was reserved: window, unknown coupon, bad input, identity,
    /// rate limit, overload.
    Refused,
    /// The answer was lost or said `unavailable` with a request id: the coupon may or may not
    /// be issued (settlement decides).
    Ambiguous,
    /// Transport failures and answers the API never gives: bugs or a broken network.
    Error,
}

impl Class {
    pub const ALL: [Class; 6] = [
        Class::Accepted,
        Class::SoldOut,
        Class::AlreadyIssued,
        Class::Refused,
        Class::Ambiguous,
        Class::Error,
    ];

    pub fn of(code: &str) -> Class {
        match code {
            "accepted" => Class::Accepted,
            "sold_out" => Class::SoldOut,
            "already_issued" => Class::AlreadyIssued,
            "not_open" | "closed" | "unknown_coupon" | "invalid_request" | "unauthenticated"
            | "identity_mismatch" | "rate_limited" | "overloaded" => Class::Refused,
            "unavailable" | "hung_up" | "answer_lost" => Class::Ambiguous,
            _ => Class::Error,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Class::Accepted => "accepted",
            Class::SoldOut => "sold out",
            Class::AlreadyIssued => "already issued",
            Class::Refused => "refused",
            Class::Ambiguous => "ambiguous",
            Class::Error => "errors",
        }
    }
}

impl Second {
    pub fn count(&self, class: Class) -> u64 {
        self.outcomes
            .iter()
            .filter(|(code, _)| Class::of(code) == class)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn total(&self) -> u64 {
        self.outcomes.values().sum()
    }
}

impl Timeline {
    /// The span every chart shares, so the timelines line up: the load and the drain after it.
    pub fn span_s(&self) -> f64 {
        let lag_end = self.lag.last().map_or(0.0, |s| s.at_s);
        let marks_end = self.marks.iter().map(|m| m.until_s).fold(0.0, f64::max);
        (self.seconds.len() as f64)
            .max(self.load_end_s)
            .max(lag_end)
            .max(marks_end)
            .max(1.0)
    }

    pub fn peak_lag(&self) -> i64 {
        self.lag.iter().map(LagSample::total).max().unwrap_or(0)
    }

    /// When the last coupon of `coupons` first answered sold out: the moment a whole tier was
    /// gone; `None` if one of them never did.
    pub fn sold_out_at(&self, coupons: &[CouponId]) -> Option<f64> {
        coupons.iter().try_fold(0.0f64, |latest, id| {
            let at = self.sold_out.iter().find(|s| s.coupon_id == *id)?.at_s;
            Some(latest.max(at))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_code_has_its_class() {
        assert_eq!(Class::of("accepted"), Class::Accepted);
        assert_eq!(Class::of("sold_out"), Class::SoldOut);
        assert_eq!(Class::of("already_issued"), Class::AlreadyIssued);
        assert_eq!(Class::of("rate_limited"), Class::Refused);
        assert_eq!(Class::of("unavailable"), Class::Ambiguous);
        assert_eq!(Class::of("transport_error"), Class::Error);
        assert_eq!(Class::of("http_502"), Class::Error);
    }

    #[test]
    fn a_tier_is_sold_out_when_its_last_coupon_is() {
        let t = Timeline {
            sold_out: vec![
                SoldOut {
                    coupon_id: 1,
                    at_s: 3.0,
                },
                SoldOut {
                    coupon_id: 2,
                    at_s: 7.5,
                },
            ],
            ..Timeline::default()
        };
        assert_eq!(t.sold_out_at(&[1, 2]), Some(7.5));
        assert_eq!(t.sold_out_at(&[1, 2, 3]), None);
    }
}
