//! The campaign's status in words: conditions, the phase, and whether the books balance.

use coupon_core::ledger::CouponBook;
use coupon_core::settlement::SettleReport;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    tri_state(
        type_,
        if ok { "True" } else { "False" },
        reason,
        message,
        generation,
    )
}

fn tri_state(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

/// A condition whose status did not change keeps its original transition time.
pub fn keep_transition_times(old: &[Condition], new: Vec<Condition>) -> Vec<Condition> {
    new.into_iter()
        .map(|mut c| {
            if let Some(o) = old
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == c.status)
            {
                c.last_transition_time = o.last_transition_time.clone();
            }
            c
        })
        .collect()
}

/// `BooksBalanced`: I3 across the gate and the ledger. Judged only on a drained topic (while
/// events wait, the gate is ahead of the ledger by design): True when every coupon's gate stock
/// equals the ledger's, False with the coupons that differ, Unknown while draining.
pub fn books_balanced(
    books: &[CouponBook],
    gate: &[Option<i64>],
    lag: i64,
    last_round: Option<&SettleReport>,
    generation: Option<i64>,
) -> Condition {
    let issued: i64 = books.iter().map(|b| b.issued).sum();
    let quantity: i64 = books.iter().map(|b| b.total_quantity).sum();
    let settlement = match last_round {
        Some(r) => format!(
            "; last settlement: {} unsettled{}, {} kept, {} released",
            r.unsettled,
            r.oldest_age_ms
                .map(|a| format!(" (oldest {:.1} s)", a as f64 / 1000.0))
                .unwrap_or_default(),
            r.kept,
            r.released
        ),
        None => String::new(),
    };
    let differ: Vec<String> = books
        .iter()
        .zip(gate)
        .filter(|(b, g)| **g != Some(b.remaining))
        .map(|(b, g)| match g {
            Some(g) => format!("coupon {}: gate {g}, ledger {}", b.coupon_id, b.remaining),
            None => format!("coupon {}: gate lost, ledger {}", b.coupon_id, b.remaining),
        })
        .collect();
    let (status, reason, head) = if lag > 0 {
        (
            "Unknown",
            "Draining",
            format!("{lag} events not yet in the ledger; judged once drained"),
        )
    } else if differ.is_empty() {
        (
            "True",
            "Balanced",
            format!(
                "gate = ledger on {} coupons: {issued} of {quantity} issued",
                books.len()
            ),
        )
    } else {
        const SHOWN: usize = 5;
        let more = differ.len().saturating_sub(SHOWN);
        (
            "False",
            if last_round.is_some_and(|r| r.unsettled > 0) {
                "Settling"
            } else {
                "Unbalanced"
            },
            format!(
                "gate and ledger differ on {} of {} coupons ({}{})",
                differ.len(),
                books.len(),
                differ[..differ.len().min(SHOWN)].join("; "),
                if more > 0 {
                    format!("; {more} more")
                } else {
                    String::new()
                }
            ),
        )
    };
    tri_state(
        "BooksBalanced",
        status,
        reason,
        format!("{head}{settlement}"),
        generation,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(id: u32, quantity: i64, issued: i64) -> CouponBook {
        CouponBook {
            coupon_id: id,
            total_quantity: quantity,
            issued,
            remaining: quantity - issued,
        }
    }

    #[test]
    fn balanced_only_on_a_drained_topic_with_every_coupon_equal() {
        let books = [book(1, 10, 4), book(2, 5, 5)];
        let c = books_balanced(&books, &[Some(6), Some(0)], 0, None, Some(1));
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Balanced"));
        assert_eq!(c.message, "gate = ledger on 2 coupons: 9 of 15 issued");

        let c = books_balanced(&books, &[Some(5), Some(0)], 3, None, Some(1));
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("Unknown", "Draining")
        );

        let round = SettleReport {
            unsettled: 1,
            oldest_age_ms: Some(2500),
            ..SettleReport::default()
        };
        let c = books_balanced(&books, &[Some(5), None], 0, Some(&round), Some(1));
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Settling")
        );
        assert_eq!(
            c.message,
            "gate and ledger differ on 2 of 2 coupons (coupon 1: gate 5, ledger 6; coupon 2: gate \
             lost, ledger 0); last settlement: 1 unsettled (oldest 2.5 s), 0 kept, 0 released"
        );
    }
}
