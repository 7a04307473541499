//! Verification of the invariants I1–I6 across the spec, the gate (Redis), the ledger (database)
//! and the topic's offsets. Unlike the seed's check, it never compares the database with itself.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use serde::Serialize;
use uuid::Uuid;

use crate::broker::{PartitionLag, group_lag};
use crate::campaign::{CouponId, consumer_group};
use crate::error::{Error, Result};
use crate::gate::{GateSnapshot, GateView};
use crate::ledger::Ledger;

/// The load generator's log: request ids answered 202, and ids of ambiguous answers (503 with a
/// request id) that may or may not have been issued. One id per line, ambiguous ones prefixed `?`.
#[derive(Debug, Clone, Default)]
pub struct AcceptedLog {
    pub accepted: HashSet<Uuid>,
    pub ambiguous: HashSet<Uuid>,
}

impl AcceptedLog {
    pub fn parse(text: &str) -> Result<Self> {
        let mut log = Self::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (set, id) = match line.strip_prefix('?') {
                Some(rest) => (&mut log.ambiguous, rest.trim()),
                None => (&mut log.accepted, line),
            };
            let id = Uuid::parse_str(id).map_err(|_| Error::BadLogLine {
                what: "accepted log",
                line: n + 1,
                value: line.to_string(),
            })?;
            set.insert(id);
        }
        Ok(log)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub id: &'static str,
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

/// One coupon seen three ways.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CouponLine {
    pub coupon_id: CouponId,
    pub spec_quantity: i64,
    pub issued: i64,
    pub db_remaining: i64,
    pub redis_remaining: Option<i64>,
    pub refused_sold_out: i64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub campaign: String,
    pub coupons: Vec<CouponLine>,
    pub partitions: Vec<PartitionLag>,
    pub checks: Vec<Check>,
    /// Request ids answered 202 that the ledger does not hold (I4; empty without an accepted log).
    pub not_stored: Vec<Uuid>,
}

impl VerifyReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    pub fn total_issued(&self) -> i64 {
        self.coupons.iter().map(|c| c.issued).sum()
    }

    pub fn total_lag(&self) -> i64 {
        self.partitions.iter().map(|p| p.lag).sum()
    }

    /// A table for people.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let quantity: i64 = self.coupons.iter().map(|c| c.spec_quantity).sum();
        let remaining: i64 = self.coupons.iter().map(|c| c.db_remaining).sum();
        let _ = writeln!(
            s,
            "campaign {}: {} coupons, quantity {quantity}, issued {}, remaining {remaining}, lag {}",
            self.campaign,
            self.coupons.len(),
            self.total_issued(),
            self.total_lag()
        );
        let _ = writeln!(s, "{:<4} {:<34} {:<7} detail", "id", "invariant", "result");
        for c in &self.checks {
            let status = match c.status {
                Status::Pass => "PASS",
                Status::Fail => "FAIL",
                Status::Skipped => "skip",
            };
            let _ = writeln!(s, "{:<4} {:<34} {:<7} {}", c.id, c.name, status, c.detail);
        }
        s
    }
}

/// What verification reads.
pub struct VerifyInput<'a> {
    pub campaign: &'a str,
    pub topic: &'a str,
    pub kafka: &'a crate::connections::KafkaConnection,
    /// Quantities from the spec file; `None` reads them from the ledger's `coupons` rows.
    pub spec: Option<BTreeMap<CouponId, i64>>,
    pub accepted: Option<&'a AcceptedLog>,
}

/// Reads the three sides, then judges each invariant on what was read.
pub async fn verify(
    input: &VerifyInput<'_>,
    gate: &dyn GateView,
    ledger: &Ledger,
) -> Result<VerifyReport> {
    let books = ledger.books(input.campaign).await?;
    if books.is_empty() {
        return Err(Error::NotProvisioned(input.campaign.to_string()));
    }
    let spec: BTreeMap<CouponId, i64> = match &input.spec {
        Some(spec) => spec.clone(),
        None => books
            .iter()
            .map(|b| (b.coupon_id, b.total_quantity))
            .collect(),
    };
    let mut coupons = Vec::with_capacity(books.len());
    for b in &books {
        let snap: Option<GateSnapshot> = gate.snapshot(input.campaign, b.coupon_id).await?;
        coupons.push(CouponLine {
            coupon_id: b.coupon_id,
            spec_quantity: spec.get(&b.coupon_id).copied().unwrap_or(b.total_quantity),
            issued: b.issued,
            db_remaining: b.remaining,
            redis_remaining: snap.map(|s| s.remaining),
            refused_sold_out: snap.map_or(0, |s| s.refused_sold_out),
        });
    }
    let partitions = group_lag(input.kafka, &consumer_group(input.campaign), input.topic).await?;
    let lag: i64 = partitions.iter().map(|p| p.lag).sum();
    let dups = ledger.duplicate_pairs(input.campaign).await?;
    let stored = match input.accepted {
        Some(_) => Some(ledger.request_ids(input.campaign).await?),
        None => None,
    };
    let unknown_in_ledger: Vec<CouponId> = spec
        .keys()
        .filter(|id| !books.iter().any(|b| b.coupon_id == **id))
        .copied()
        .collect();
    let (i4, not_stored) = every_202_stored(input.accepted.zip(stored.as_ref()));
    let checks = vec![
        no_over_issue(&coupons),
        no_duplicate(dups),
        stock_agrees(&coupons, &unknown_in_ledger, lag),
        i4,
        no_stranded_stock(&coupons),
        lag_drained(&partitions),
    ];
    Ok(VerifyReport {
        campaign: input.campaign.to_string(),
        coupons,
        partitions,
        checks,
        not_stored,
    })
}

/// I1: no coupon issued beyond its quantity.
fn no_over_issue(coupons: &[CouponLine]) -> Check {
    let over: Vec<_> = coupons
        .iter()
        .filter(|c| c.issued > c.spec_quantity)
        .collect();
    Check {
        id: "I1",
        name: "no over-issue",
        status: pass_if(over.is_empty()),
        detail: match over.first() {
            None => format!("{} coupons, every one issued <= quantity", coupons.len()),
            Some(c) => format!(
                "{} coupons over-issued, e.g. coupon {}: {} issued of {}",
                over.len(),
                c.coupon_id,
                c.issued,
                c.spec_quantity
            ),
        },
    }
}

/// I2: no user holds one coupon twice (`dups`: the ledger's (user, coupon) pairs with two rows).
fn no_duplicate(dups: i64) -> Check {
    Check {
        id: "I2",
        name: "no duplicate (user, coupon)",
        status: pass_if(dups == 0),
        detail: format!("{dups} (user, coupon) pairs with more than one row"),
    }
}

/// I3: quantity − issued = the ledger's remaining = the gate's remaining, on a drained topic,
/// for every coupon of the spec.
fn stock_agrees(coupons: &[CouponLine], unknown_in_ledger: &[CouponId], lag: i64) -> Check {
    let disagree: Vec<_> = coupons
        .iter()
        .filter(|c| {
            c.spec_quantity - c.issued != c.db_remaining
                || c.redis_remaining != Some(c.db_remaining)
        })
        .collect();
    Check {
        id: "I3",
        name: "stock agrees: spec, ledger, Redis",
        status: pass_if(disagree.is_empty() && unknown_in_ledger.is_empty() && lag == 0),
        detail: if lag > 0 {
            format!("topic not drained (lag {lag}); stock cannot agree yet")
        } else if let Some(id) = unknown_in_ledger.first() {
            format!("coupon {id} is in the spec but not in the ledger")
        } else {
            match disagree.first() {
                None => format!(
                    "quantity - issued = ledger remaining = Redis remaining for all {} coupons",
                    coupons.len()
                ),
                Some(c) => format!(
                    "{} coupons disagree, e.g. coupon {}: quantity {} - issued {} vs ledger {} vs Redis {}",
                    disagree.len(),
                    c.coupon_id,
                    c.spec_quantity,
                    c.issued,
                    c.db_remaining,
                    c.redis_remaining
                        .map_or("missing".to_string(), |r| r.to_string())
                ),
            }
        },
    }
}

/// I4: every 202 is in the ledger, and every row was a 202 (or an ambiguous answer); with the
/// 202s the ledger lacks. Skipped without an accepted log.
fn every_202_stored(seen: Option<(&AcceptedLog, &HashSet<Uuid>)>) -> (Check, Vec<Uuid>) {
    const ID: &str = "I4";
    const NAME: &str = "every 202 stored, every row a 202";
    let Some((log, stored)) = seen else {
        let skipped = Check {
            id: ID,
            name: NAME,
            status: Status::Skipped,
            detail: "no accepted log given (--accepted FILE)".into(),
        };
        return (skipped, Vec::new());
    };
    let lost: Vec<Uuid> = log
        .accepted
        .iter()
        .filter(|id| !stored.contains(id))
        .copied()
        .collect();
    let unexplained: Vec<_> = stored
        .iter()
        .filter(|id| !log.accepted.contains(id) && !log.ambiguous.contains(id))
        .collect();
    // A few ids to look up in the logs.
    let examples = lost.iter().chain(unexplained.iter().copied()).take(3);
    let examples: Vec<String> = examples.map(ToString::to_string).collect();
    let check = Check {
        id: ID,
        name: NAME,
        status: pass_if(lost.is_empty() && unexplained.is_empty()),
        detail: format!(
            "{} accepted, {} stored, {} accepted but not stored, {} stored but never accepted ({} ambiguous){}",
            log.accepted.len(),
            stored.len(),
            lost.len(),
            unexplained.len(),
            log.ambiguous.len(),
            if examples.is_empty() {
                String::new()
            } else {
                format!("; e.g. {}", examples.join(", "))
            }
        ),
    };
    (check, lost)
}

/// I5: no coupon refused a user as sold out while the ledger still had stock for it.
fn no_stranded_stock(coupons: &[CouponLine]) -> Check {
    let stranded: Vec<_> = coupons
        .iter()
        .filter(|c| c.refused_sold_out > 0 && c.db_remaining > 0)
        .collect();
    let refused_coupons = coupons.iter().filter(|c| c.refused_sold_out > 0).count();
    Check {
        id: "I5",
        name: "no stranded stock",
        status: pass_if(stranded.is_empty()),
        detail: match stranded.first() {
            None => {
                format!("{refused_coupons} coupons refused users as sold out, all at 0 remaining")
            }
            Some(c) => format!(
                "{} coupons refused users as sold out with stock left, e.g. coupon {}: {} refused, {} remaining",
                stranded.len(),
                c.coupon_id,
                c.refused_sold_out,
                c.db_remaining
            ),
        },
    }
}

/// I6: the consumer group has committed every partition's end (and there are partitions).
fn lag_drained(partitions: &[PartitionLag]) -> Check {
    let lag: i64 = partitions.iter().map(|p| p.lag).sum();
    let per_partition: Vec<String> = partitions
        .iter()
        .map(|p| {
            format!(
                "p{}: {} - {} = {}",
                p.partition,
                p.end,
                p.committed.map_or("none".to_string(), |c| c.to_string()),
                p.lag
            )
        })
        .collect();
    Check {
        id: "I6",
        name: "lag exact and drained",
        status: pass_if(lag == 0 && !partitions.is_empty()),
        detail: format!(
            "end - committed: {} (total {lag})",
            per_partition.join(", ")
        ),
    }
}

fn pass_if(ok: bool) -> Status {
    if ok { Status::Pass } else { Status::Fail }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A coupon of quantity 10 with `issued` rows, the ledger and gate in step.
    fn line(issued: i64) -> CouponLine {
        CouponLine {
            coupon_id: 1,
            spec_quantity: 10,
            issued,
            db_remaining: 10 - issued,
            redis_remaining: Some(10 - issued),
            refused_sold_out: 0,
        }
    }

    #[test]
    fn i1_fails_on_a_coupon_issued_past_its_quantity() {
        assert_eq!(no_over_issue(&[line(10)]).status, Status::Pass);
        let over = no_over_issue(&[line(3), line(11)]);
        assert_eq!(over.status, Status::Fail);
        assert!(over.detail.contains("11 issued of 10"), "{}", over.detail);
    }

    #[test]
    fn i2_fails_on_any_duplicate_pair() {
        assert_eq!(no_duplicate(0).status, Status::Pass);
        assert_eq!(no_duplicate(1).status, Status::Fail);
    }

    #[test]
    fn i3_fails_when_a_side_disagrees_or_the_topic_is_not_drained() {
        assert_eq!(stock_agrees(&[line(4)], &[], 0).status, Status::Pass);
        let ledger_off = CouponLine {
            db_remaining: 7,
            ..line(4)
        };
        let gate_off = CouponLine {
            redis_remaining: Some(5),
            ..line(4)
        };
        let gate_gone = CouponLine {
            redis_remaining: None,
            ..line(4)
        };
        for broken in [ledger_off, gate_off, gate_gone] {
            assert_eq!(stock_agrees(&[broken], &[], 0).status, Status::Fail);
        }
        assert_eq!(stock_agrees(&[line(4)], &[2], 0).status, Status::Fail);
        let undrained = stock_agrees(&[line(4)], &[], 3);
        assert_eq!(undrained.status, Status::Fail);
        assert!(undrained.detail.contains("lag 3"));
    }

    #[test]
    fn i4_fails_on_a_lost_202_and_on_a_row_nobody_was_told_of() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let log = AcceptedLog {
            accepted: HashSet::from([a]),
            ambiguous: HashSet::from([b]),
        };
        let (ok, lost) = every_202_stored(Some((&log, &HashSet::from([a, b]))));
        assert_eq!((ok.status, lost.len()), (Status::Pass, 0));
        let (missing, lost) = every_202_stored(Some((&log, &HashSet::new())));
        assert_eq!((missing.status, lost), (Status::Fail, vec![a]));
        let (extra, _) = every_202_stored(Some((&log, &HashSet::from([a, c]))));
        assert_eq!(extra.status, Status::Fail);
        assert_eq!(every_202_stored(None).0.status, Status::Skipped);
    }

    #[test]
    fn i5_fails_on_a_sold_out_answer_with_stock_left() {
        let sold_out = CouponLine {
            refused_sold_out: 4,
            ..line(10)
        };
        assert_eq!(no_stranded_stock(&[sold_out]).status, Status::Pass);
        let stranded = CouponLine {
            refused_sold_out: 4,
            ..line(9)
        };
        assert_eq!(no_stranded_stock(&[stranded]).status, Status::Fail);
    }

    #[test]
    fn i6_fails_on_lag_or_no_partition() {
        let p = |lag| PartitionLag {
            partition: 0,
            start: 0,
            end: 10,
            committed: Some(10 - lag),
            lag,
        };
        assert_eq!(lag_drained(&[p(0), p(0)]).status, Status::Pass);
        assert_eq!(lag_drained(&[p(0), p(2)]).status, Status::Fail);
        assert_eq!(lag_drained(&[]).status, Status::Fail);
    }
}
