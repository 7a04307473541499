//! Redis Cluster under change: the slot holding a hot coupon's keys migrates to another master
//! (CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE) while hundreds of users race for
//! it. The client follows ASK and MOVED; exactly the quantity is issued and the books balance.

use std::time::Duration;

use axum::http::StatusCode;
use coupon_e2e::{Stack, assert_green, campaign, unique};
use futures::future::join_all;
use redis::AsyncCommands;

/// `(node id, "host:port")` of every master, and the id of the one serving `slot`.
async fn masters(
    conn: &mut redis::aio::MultiplexedConnection,
    slot: u16,
) -> (Vec<(String, String)>, String) {
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(conn)
        .await
        .expect("cluster nodes");
    let mut masters = Vec::new();
    let mut owner = String::new();
    for line in nodes.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || !f[2].contains("master") {
            continue;
        }
        let addr = f[1].split('@').next().unwrap_or_default().to_string();
        masters.push((f[0].to_string(), addr));
        for range in &f[8..] {
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>())
                && (lo..=hi).contains(&slot)
            {
                owner = f[0].to_string();
            }
        }
    }
    (masters, owner)
}

async fn node(addr: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{addr}"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("node connection")
}

/// Moves `slot` from `from` to `to` the way `redis-cli --cluster reshard` does.
async fn migrate(
    slot: u16,
    from: &(String, String),
    to: &(String, String),
    all: &[(String, String)],
) {
    let (mut src, mut dst) = (node(&from.1).await, node(&to.1).await);
    let set = |state: &str, id: &str| {
        let mut c = redis::cmd("CLUSTER");
        c.arg("SETSLOT").arg(slot).arg(state).arg(id);
        c
    };
    let () = set("IMPORTING", &from.0)
        .query_async(&mut dst)
        .await
        .expect("importing");
    let () = set("MIGRATING", &to.0)
        .query_async(&mut src)
        .await
        .expect("migrating");
    let (host, port) = to.1.rsplit_once(':').expect("host:port");
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query_async(&mut src)
            .await
            .expect("keys in slot");
        if keys.is_empty() {
            break;
        }
        let () = redis::cmd("MIGRATE")
            .arg(host)
            .arg(port)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys)
            .query_async(&mut src)
            .await
            .expect("migrate");
    }
    for (_, addr) in all {
        let mut c = node(addr).await;
        let () = set("NODE", &to.0)
            .query_async(&mut c)
            .await
            .expect("setslot node");
    }
}

/// Known failing (issue 11, open): in 2 of 6 runs the gate's cluster connection kept timing out
/// for 45 s after the slot moved, while the cluster itself was consistent (`cluster_state:ok`,
/// no slot left migrating). Run it with `cargo test -p coupon-e2e --test cluster -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "issue 11: the cluster connection can stay timed out after a slot migration"]
async fn a_slot_moving_mid_burst_changes_nothing() {
    let name = unique("reshard");
    let stack = Stack::start_on_cluster(
        &coupon_e2e::postgres_url(),
        campaign(&name, &[("1", 300)], 3),
    )
    .await;
    let seed = coupon_e2e::redis_cluster_url()
        .trim_start_matches("redis+cluster://")
        .split(',')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut conn = node(&seed).await;
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(format!("{{{name}:1}}"))
        .query_async(&mut conn)
        .await
        .expect("keyslot");
    let (all, owner) = masters(&mut conn, slot).await;
    let from = all.iter().find(|m| m.0 == owner).expect("owner").clone();
    let to = all
        .iter()
        .find(|m| m.0 != owner)
        .expect("another master")
        .clone();

    let burst = join_all((1..=2000u64).map(|user| stack.issue(1, user)));
    let moving = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        migrate(slot, &from, &to, &all).await;
    };
    let (answers, ()) = tokio::join!(burst, moving);

    // The first commands after the move may time out while the client refreshes its slot map
    // (an API would answer 503 `unavailable` for them, reserving nothing); wait until the gate
    // answers again before reading the books.
    let mut answered = false;
    for _ in 0..20 {
        use coupon_core::gate::StockGate;
        if stack.gate.snapshot(&name, 1).await.is_ok() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(answered, "the gate answers again after the slot moved");
    let (_, now) = masters(&mut conn, slot).await;
    assert_eq!(now, to.0, "the slot moved");
    let moved: bool = node(&to.1)
        .await
        .exists(format!("coupon:{{{name}:1}}"))
        .await
        .expect("exists");
    assert!(moved, "the coupon's keys live on the new master");
    let accepted = answers
        .iter()
        .filter(|a| a.0 == StatusCode::ACCEPTED)
        .count();
    assert_eq!(accepted, 300, "exactly the quantity issued");
    for a in answers.iter().filter(|a| a.0 != StatusCode::ACCEPTED) {
        let code = a.1["code"].as_str().unwrap_or_default();
        assert!(
            code == "sold_out" || code == "unavailable",
            "unexpected refusal {}",
            a.1
        );
    }
    assert_eq!(stack.remaining(1).await, 0);
    stack.drain(Duration::from_secs(30)).await;
    assert_green(&stack.verify(None).await);
    stack.shutdown().await;
}
