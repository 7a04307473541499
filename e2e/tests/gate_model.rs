//! The embedded gate and the Redis scripts agree: a random sequence of operations gets the same
//! answers from both and leaves the same state (stock, holders, sold-out refusals, unsettled
//! reservations, every request's status), settlement and the consumer's stored marks included.

use std::collections::BTreeSet;

use coupon_core::gate::{
    GateCoupon, GateView, MemoryGate, Provisioning, RedisGate, RequestStage, RequestStatus,
    Reservation, Reserving, Settling, StockGate, StoredMark, StoredMarks,
};
use coupon_e2e::{redis_url, unique};
use proptest::prelude::*;
use uuid::Uuid;

#[derive(Debug, Clone)]
enum Op {
    Reserve {
        coupon: u32,
        user: u64,
        id: usize,
    },
    Release {
        coupon: u32,
        user: u64,
        id: usize,
    },
    Grow {
        coupon: u32,
        by: i64,
    },
    /// Settlement found the event in the ledger.
    SettleIssued {
        coupon: u32,
        user: u64,
        id: usize,
    },
    /// Settlement found no event; `late`: the cutoff is after every reservation (else before).
    SettleReleased {
        coupon: u32,
        user: u64,
        id: usize,
        late: bool,
    },
    /// A consumer committed this request's event.
    MarkStored {
        coupon: u32,
        id: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    // Coupons 1-2 are open, 3 has closed, 4 has not opened; few users and request ids, so
    // duplicates, replays and sold-outs happen often.
    prop_oneof![
        6 => (1u32..=4, 1u64..=5, 0usize..6).prop_map(|(coupon, user, id)| Op::Reserve { coupon, user, id }),
        2 => (1u32..=4, 1u64..=5, 0usize..6).prop_map(|(coupon, user, id)| Op::Release { coupon, user, id }),
        1 => (1u32..=4, 0i64..=2).prop_map(|(coupon, by)| Op::Grow { coupon, by }),
        1 => (1u32..=4, 1u64..=5, 0usize..6).prop_map(|(coupon, user, id)| Op::SettleIssued { coupon, user, id }),
        2 => (1u32..=4, 1u64..=5, 0usize..6, any::<bool>()).prop_map(|(coupon, user, id, late)| Op::SettleReleased { coupon, user, id, late }),
        1 => (1u32..=4, 0usize..6).prop_map(|(coupon, id)| Op::MarkStored { coupon, id }),
    ]
}

fn window(coupon: u32) -> (i64, i64) {
    let now = chrono::Utc::now().timestamp_millis();
    match coupon {
        3 => (now - 7_200_000, now - 3_600_000),
        4 => (now + 3_600_000, now + 7_200_000),
        _ => (0, 0),
    }
}

async fn run(ops: &[Op], redis: &RedisGate) -> Result<(), TestCaseError> {
    let campaign = unique("model");
    let memory = MemoryGate::new();
    let ids: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
    let mut quantity = [0i64, 2, 1, 2, 2];
    let ensure_both = |coupon: u32, quantity: i64| {
        let (starts_ms, ends_ms) = window(coupon);
        let cfg = GateCoupon {
            quantity,
            starts_ms,
            ends_ms,
            shards: 1,
        };
        let (campaign, memory) = (campaign.clone(), &memory);
        async move {
            let a = redis
                .ensure(&campaign, coupon, cfg, &[])
                .await
                .expect("redis ensure");
            let b = memory
                .ensure(&campaign, coupon, cfg, &[])
                .await
                .expect("memory ensure");
            (a, b)
        }
    };
    for coupon in 1..=4u32 {
        let (a, b) = ensure_both(coupon, quantity[coupon as usize]).await;
        prop_assert_eq!(a, b);
    }
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Reserve { coupon, user, id } => {
                let a = redis
                    .reserve(&campaign, coupon, user, ids[id])
                    .await
                    .expect("redis");
                let b = memory
                    .reserve(&campaign, coupon, user, ids[id])
                    .await
                    .expect("memory");
                prop_assert_eq!(a, b, "step {}: {:?}", step, op);
            }
            Op::Release { coupon, user, id } => {
                let a = redis
                    .release(&campaign, coupon, user, ids[id])
                    .await
                    .expect("redis");
                let b = memory
                    .release(&campaign, coupon, user, ids[id])
                    .await
                    .expect("memory");
                prop_assert_eq!(a, b, "step {}: {:?}", step, op);
            }
            Op::Grow { coupon, by } => {
                quantity[coupon as usize] += by;
                let (a, b) = ensure_both(coupon, quantity[coupon as usize]).await;
                prop_assert_eq!(a, b, "step {}: {:?}", step, op);
            }
            Op::SettleIssued { coupon, user, id } => {
                let r = [reservation(coupon, user, ids[id])];
                redis
                    .settle_issued(&campaign, coupon, &r, i64::MAX)
                    .await
                    .expect("redis");
                memory
                    .settle_issued(&campaign, coupon, &r, i64::MAX)
                    .await
                    .expect("memory");
            }
            Op::SettleReleased {
                coupon,
                user,
                id,
                late,
            } => {
                let r = reservation(coupon, user, ids[id]);
                let cutoff = if late { i64::MAX / 4 } else { 0 };
                let a = redis
                    .settle_released(&campaign, &r, cutoff)
                    .await
                    .expect("redis");
                let b = memory
                    .settle_released(&campaign, &r, cutoff)
                    .await
                    .expect("memory");
                prop_assert_eq!(a, b, "step {}: {:?}", step, op);
            }
            Op::MarkStored { coupon, id } => {
                let marks = [StoredMark {
                    coupon,
                    request_id: ids[id],
                }];
                redis
                    .mark_stored(&campaign, &marks, 1)
                    .await
                    .expect("redis");
                memory
                    .mark_stored(&campaign, &marks, 1)
                    .await
                    .expect("memory");
            }
        }
        // The status of every request id for the coupon this step touched.
        let (Op::Reserve { coupon, .. }
        | Op::Release { coupon, .. }
        | Op::Grow { coupon, .. }
        | Op::SettleIssued { coupon, .. }
        | Op::SettleReleased { coupon, .. }
        | Op::MarkStored { coupon, .. }) = *op;
        for id in &ids {
            // By id alone, and as one of the users (in turn, to keep the case short).
            for user in [None, Some(step as u64 % 5 + 1)] {
                let a = status(redis, &campaign, coupon, *id, user).await;
                let b = status(&memory, &campaign, coupon, *id, user).await;
                prop_assert_eq!(
                    a,
                    b,
                    "step {}: {:?}: status of {} as {:?}",
                    step,
                    op,
                    id,
                    user
                );
            }
        }
    }
    for coupon in 1..=4u32 {
        let a = redis.snapshot(&campaign, coupon).await.expect("redis");
        let b = memory.snapshot(&campaign, coupon).await.expect("memory");
        prop_assert_eq!(a, b, "final state of coupon {}", coupon);
        for user in 1..=5u64 {
            let a = redis.holder(&campaign, coupon, user).await.expect("redis");
            let b = memory
                .holder(&campaign, coupon, user)
                .await
                .expect("memory");
            prop_assert_eq!(a, b, "holder of coupon {} user {}", coupon, user);
        }
        if let Some(s) = a {
            prop_assert!(s.remaining >= 0 && s.remaining + s.holders == s.quantity);
        }
        let a = unsettled(redis, &campaign, coupon).await;
        let b = unsettled(&memory, &campaign, coupon).await;
        prop_assert_eq!(&a, &b, "unsettled reservations of coupon {}", coupon);
        // Every unsettled reservation is one the gate still holds (a release removes it).
        for (user, id) in &a {
            let holder = redis.holder(&campaign, coupon, *user).await.expect("redis");
            prop_assert_eq!(holder, Some(*id), "unsettled {}:{} is held", user, id);
        }
    }
    Ok(())
}

fn reservation(coupon: u32, user: u64, request_id: Uuid) -> Reservation {
    Reservation {
        request_id,
        coupon,
        user,
        at_ms: 0,
        shard: 0,
    }
}

/// A request's status without its times (two clocks), but with which times are known.
async fn status(
    gate: &dyn StockGate,
    campaign: &str,
    coupon: u32,
    id: Uuid,
    user: Option<u64>,
) -> Option<(u64, &'static str, bool)> {
    let s = gate
        .request_status(campaign, coupon, id, user)
        .await
        .expect("status")?;
    let RequestStatus { user, stage } = s;
    Some(match stage {
        RequestStage::Pending { reserved_at_ms } => (user, "pending", reserved_at_ms.is_some()),
        RequestStage::Issued { stored_at_ms } => (user, "issued", stored_at_ms.is_some()),
        RequestStage::Released { .. } => (user, "released", true),
    })
}

/// The (user, request id) of every unsettled reservation (times differ: two clocks).
async fn unsettled(gate: &dyn StockGate, campaign: &str, coupon: u32) -> BTreeSet<(u64, Uuid)> {
    let u = gate
        .unsettled(campaign, coupon, i64::MAX / 4, 1000)
        .await
        .expect("unsettled");
    assert_eq!(u.count as usize, u.ripe.len());
    u.ripe.iter().map(|r| (r.user, r.request_id)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn memory_gate_agrees_with_the_redis_script(ops in prop::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let redis = RedisGate::connect(&redis_url()).await.expect("redis");
            run(&ops, &redis).await
        })?;
    }

    /// The same scripts on a three-master Redis Cluster (each touches one slot).
    #[test]
    fn memory_gate_agrees_with_the_redis_cluster(ops in prop::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let cluster = RedisGate::connect(&coupon_e2e::redis_cluster_url()).await.expect("redis cluster");
            run(&ops, &cluster).await
        })?;
    }
}
