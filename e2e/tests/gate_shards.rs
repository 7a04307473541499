//! A coupon split over K shards keeps the promises of one counter: random interleavings of
//! many attempts, one script at a time, with attempts abandoned between any two steps (a
//! crash) and settlement rounds in between, on Redis and on the Redis Cluster.
//!
//! The model is the obviously correct one: one counter of `quantity` and the set of stored
//! (published and acknowledged) request ids. After every step: no user has two stored ids,
//! no more than `quantity` are stored, and a sold-out answer saw no stock anywhere (unless stock
//! came back while that attempt ran). At the end, once every attempt is gone and settlement has
//! run: nothing is left unsettled or claimed, gate stock = quantity − stored, and fresh users
//! get exactly that many coupons before the first sold-out, as from one counter.

use std::collections::{BTreeMap, BTreeSet};

use coupon_core::gate::{
    Attempt, Decision, GateCoupon, GateView, Provisioning, RedisGate, Released, Reserving, Settling,
};
use coupon_e2e::{redis_cluster_url, redis_url, unique};
use proptest::prelude::*;
use uuid::Uuid;

#[derive(Debug, Clone)]
enum Op {
    /// A request of `user` with its `key`-th request id (so retries replay).
    Begin { user: u64, key: usize },
    /// Runs one script of a live attempt.
    Step { slot: usize },
    /// A decided attempt's event is acknowledged: stored in the ledger.
    Publish { slot: usize },
    /// The broker certainly refused a fresh reservation's event: the API gives it back
    /// (unless a replay touched it since), as `Issuer::compensate` does.
    Refuse { slot: usize },
    /// The process dies: the attempt stops wherever it was, its event never sent.
    Crash { slot: usize },
    /// A settlement round that takes every reservation as old enough (so every publish still
    /// pending has missed its deadline).
    Settle,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..=8, 0usize..2).prop_map(|(user, key)| Op::Begin { user, key }),
        10 => any::<usize>().prop_map(|slot| Op::Step { slot }),
        3 => any::<usize>().prop_map(|slot| Op::Publish { slot }),
        1 => any::<usize>().prop_map(|slot| Op::Refuse { slot }),
        1 => any::<usize>().prop_map(|slot| Op::Crash { slot }),
        1 => Just(Op::Settle),
    ]
}

struct Live {
    attempt: Attempt,
    request_id: Uuid,
    user: u64,
    /// Stock gains seen when the attempt began.
    gains: u32,
}

struct Run<'a> {
    gate: &'a RedisGate,
    campaign: String,
    quantity: i64,
    ids: BTreeMap<(u64, usize), Uuid>,
    live: Vec<Live>,
    stored: BTreeMap<Uuid, u64>,
    /// How many times the gate's free stock went up (a give-back or release).
    gains: u32,
    remaining: i64,
    /// What happened, printed when a property fails.
    trace: Vec<String>,
}

impl Run<'_> {
    async fn remaining(&self) -> i64 {
        self.gate
            .snapshot(&self.campaign, 1)
            .await
            .expect("snapshot")
            .expect("coupon")
            .remaining
    }

    /// Notes whether free stock went up since the last look.
    async fn observe(&mut self) -> i64 {
        let now = self.remaining().await;
        if now > self.remaining {
            self.gains += 1;
        }
        self.remaining = now;
        now
    }

    async fn settle(&mut self) -> Result<(), TestCaseError> {
        // Settlement takes a reservation only once its publish deadline has passed: a decided
        // attempt that has not published by now never will.
        self.live.retain(|l| l.attempt.decision().is_none());
        let u = self
            .gate
            .unsettled(&self.campaign, 1, i64::MAX / 4, 10_000)
            .await
            .expect("unsettled");
        let (issued, orphans): (Vec<_>, Vec<_>) = u
            .ripe
            .into_iter()
            .partition(|r| self.stored.contains_key(&r.request_id));
        self.gate
            .settle_issued(&self.campaign, 1, &issued, i64::MAX / 4)
            .await
            .expect("settle issued");
        self.trace.push(format!("settle: kept {issued:?}"));
        for r in orphans {
            let outcome = self
                .gate
                .settle_released(&self.campaign, &r, i64::MAX / 4)
                .await
                .expect("settle released");
            self.trace.push(format!("settle: {r:?} -> {outcome:?}"));
            prop_assert_ne!(
                outcome,
                Released::Refreshed,
                "nothing is newer than the cutoff"
            );
        }
        self.observe().await;
        Ok(())
    }

    async fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Begin { user, key } => {
                let id = *self.ids.entry((user, key)).or_insert_with(Uuid::now_v7);
                let attempt = self.gate.begin(&self.campaign, 1, user, id);
                self.live.push(Live {
                    attempt,
                    request_id: id,
                    user,
                    gains: self.gains,
                });
            }
            Op::Step { slot } if !self.live.is_empty() => {
                let i = slot % self.live.len();
                if self.live[i].attempt.decision().is_some() {
                    return Ok(());
                }
                let before = format!("{:?}", self.live[i].attempt);
                let decided = self
                    .gate
                    .step(&mut self.live[i].attempt)
                    .await
                    .expect("step");
                let remaining = self.observe().await;
                self.trace.push(format!(
                    "step {before} -> {decided:?}, remaining {remaining}"
                ));
                let l = &self.live[i];
                match decided {
                    Some(Decision::SoldOut) if l.gains == self.gains => {
                        prop_assert_eq!(remaining, 0, "sold out while stock remained");
                    }
                    Some(Decision::Reserved | Decision::Replay) => {}
                    Some(_) => {
                        self.live.swap_remove(i);
                    }
                    None => {}
                }
            }
            Op::Publish { slot } if !self.live.is_empty() => {
                let i = slot % self.live.len();
                if matches!(
                    self.live[i].attempt.decision(),
                    Some(Decision::Reserved | Decision::Replay)
                ) {
                    let l = self.live.swap_remove(i);
                    self.trace
                        .push(format!("publish {} {}", l.user, l.request_id));
                    self.stored.insert(l.request_id, l.user);
                }
            }
            Op::Refuse { slot } if !self.live.is_empty() => {
                let i = slot % self.live.len();
                if let (Some(Decision::Reserved), Some(at)) = (
                    self.live[i].attempt.decision(),
                    self.live[i].attempt.reserved_at(),
                ) {
                    let l = self.live.swap_remove(i);
                    let outcome = self
                        .gate
                        .release_refused(&self.campaign, 1, l.user, l.request_id, at)
                        .await
                        .expect("release refused");
                    self.observe().await;
                    self.trace.push(format!(
                        "refused {} {} -> {outcome:?}",
                        l.user, l.request_id
                    ));
                }
            }
            Op::Crash { slot } if !self.live.is_empty() => {
                let l = self.live.swap_remove(slot % self.live.len());
                self.trace.push(format!("crash {:?}", l.attempt));
            }
            Op::Settle => self.settle().await?,
            _ => {}
        }
        let users: BTreeSet<u64> = self.stored.values().copied().collect();
        prop_assert_eq!(users.len(), self.stored.len(), "a user stored twice");
        prop_assert!(
            self.stored.len() as i64 <= self.quantity,
            "more than the quantity"
        );
        Ok(())
    }
}

async fn run(
    gate: &RedisGate,
    quantity: i64,
    shards: u16,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let campaign = unique("shards");
    let cfg = GateCoupon {
        quantity,
        starts_ms: 0,
        ends_ms: 0,
        shards,
    };
    gate.ensure(&campaign, 1, cfg, &[]).await.expect("ensure");
    let mut run = Run {
        gate,
        campaign,
        quantity,
        ids: BTreeMap::new(),
        live: Vec::new(),
        stored: BTreeMap::new(),
        gains: 0,
        remaining: quantity,
        trace: Vec::new(),
    };
    for op in ops {
        run.apply(op).await?;
    }
    // Everything still running dies; two rounds: a released claim's sibling unit is its own
    // entry, settled in the same or the next round.
    run.live.clear();
    run.settle().await?;
    run.settle().await?;
    let left = gate
        .unsettled(&run.campaign, 1, i64::MAX / 4, 10_000)
        .await
        .expect("unsettled");
    prop_assert_eq!(
        left.count,
        0,
        "reservations left unsettled: {:?}",
        left.ripe
    );
    let snap = gate
        .snapshot(&run.campaign, 1)
        .await
        .expect("snapshot")
        .expect("coupon");
    prop_assert_eq!(snap.shards, shards);
    prop_assert_eq!(snap.quantity, quantity);
    prop_assert_eq!(
        snap.remaining,
        quantity - run.stored.len() as i64,
        "gate stock vs stored\n{}",
        run.trace.join("\n")
    );
    prop_assert_eq!(snap.holders, run.stored.len() as i64, "claims left behind");
    // As from one counter: exactly the rest, then sold out.
    let mut issued = 0;
    for user in 1_000..1_000 + quantity as u64 + 2 {
        match gate
            .reserve(&run.campaign, 1, user, Uuid::now_v7())
            .await
            .expect("reserve")
        {
            Decision::Reserved => issued += 1,
            Decision::SoldOut => break,
            other => prop_assert!(false, "fresh user {} got {:?}", user, other),
        }
    }
    prop_assert_eq!(
        issued,
        snap.remaining,
        "every unit reachable, none stranded"
    );
    let after = gate
        .snapshot(&run.campaign, 1)
        .await
        .expect("snapshot")
        .expect("coupon");
    prop_assert_eq!(after.remaining, 0);
    gate.forget_campaign(&run.campaign, &[1])
        .await
        .expect("forget");
    Ok(())
}

fn case() -> impl Strategy<Value = (i64, u16, Vec<Op>)> {
    // One shard is the unsharded path every coupon takes by default.
    (1i64..=10, 1u16..=4, prop::collection::vec(op(), 1..120))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn sharded_coupon_keeps_the_promises_of_one_counter((quantity, shards, ops) in case()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let gate = RedisGate::connect(&redis_url()).await.expect("redis");
            run(&gate, quantity, shards, &ops).await
        })?;
    }

    #[test]
    fn sharded_coupon_keeps_the_promises_of_one_counter_on_the_cluster((quantity, shards, ops) in case()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let gate = RedisGate::connect(&redis_cluster_url()).await.expect("redis cluster");
            run(&gate, quantity, shards, &ops).await
        })?;
    }
}

/// Provisioning splits the quantity over the shards, grows every shard, refuses a shrink or a
/// new shard count without touching anything, and rebuilds a lost coupon from its holders
/// with each holder at its home and the stock summing to the rest.
#[tokio::test]
async fn provisioning_splits_grows_refuses_and_rebuilds() {
    use coupon_core::gate::Ensured;
    let gate = RedisGate::connect(&redis_cluster_url())
        .await
        .expect("redis cluster");
    let campaign = unique("split");
    let cfg = |quantity, shards| GateCoupon {
        quantity,
        starts_ms: 0,
        ends_ms: 0,
        shards,
    };
    let created = gate
        .ensure(&campaign, 1, cfg(10, 3), &[])
        .await
        .expect("ensure");
    assert_eq!(created, Ensured::Created { stock: 10 });
    let grown = gate
        .ensure(&campaign, 1, cfg(17, 3), &[])
        .await
        .expect("grow");
    assert_eq!(grown, Ensured::Grown { by: 7 });
    let snap = gate
        .snapshot(&campaign, 1)
        .await
        .expect("snapshot")
        .expect("coupon");
    assert_eq!((snap.quantity, snap.remaining, snap.shards), (17, 17, 3));
    assert_eq!(
        gate.ensure(&campaign, 1, cfg(16, 3), &[])
            .await
            .expect("shrink"),
        Ensured::Shrink { live: 17 }
    );
    assert_eq!(
        gate.ensure(&campaign, 1, cfg(17, 4), &[])
            .await
            .expect("reshard"),
        Ensured::Reshard { live: 3 }
    );
    // Every unit reachable after growing: 17 users get one each, the 18th is refused.
    let mut ids = Vec::new();
    for user in 1..=17u64 {
        let id = Uuid::now_v7();
        assert_eq!(
            gate.reserve(&campaign, 1, user, id).await.expect("reserve"),
            Decision::Reserved
        );
        ids.push((user, id));
    }
    assert_eq!(
        gate.reserve(&campaign, 1, 18, Uuid::now_v7())
            .await
            .expect("reserve"),
        Decision::SoldOut
    );
    // Redis lost it: rebuilt from five holders, twelve units left, every holder still known.
    gate.discard(&campaign, 1).await.expect("discard");
    assert_eq!(gate.snapshot(&campaign, 1).await.expect("snapshot"), None);
    let holders = &ids[..5];
    assert_eq!(
        gate.ensure(&campaign, 1, cfg(17, 3), holders)
            .await
            .expect("rebuild"),
        Ensured::Created { stock: 12 }
    );
    for (user, id) in holders {
        assert_eq!(
            gate.holder(&campaign, 1, *user).await.expect("holder"),
            Some(*id)
        );
        assert_eq!(
            gate.reserve(&campaign, 1, *user, Uuid::now_v7())
                .await
                .expect("reserve"),
            Decision::AlreadyIssued(*id)
        );
    }
    let mut issued = 0;
    for user in 100..130u64 {
        if gate
            .reserve(&campaign, 1, user, Uuid::now_v7())
            .await
            .expect("reserve")
            == Decision::Reserved
        {
            issued += 1;
        }
    }
    assert_eq!(issued, 12);
    gate.forget_campaign(&campaign, &[1]).await.expect("forget");
}
