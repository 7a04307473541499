//! Reconcile against a fake API server (an in-memory store behind a tower service, recording
//! every request), while provisioning, lag and scaling run on real Redis, Apache Kafka and
//! PostgreSQL.
//! The connection Secret the fake serves points at those real services.

mod common;

use std::sync::Arc;

use common::{NS, cc_path, cluster, provisioned, run};
use coupon_core::broker::{PublishTimeouts, Publisher, partition_count};
use coupon_core::campaign::topic_name;
use coupon_core::event::IssuanceEvent;
use coupon_operator::context::Context;
use coupon_operator::controller::FINALIZER;
use serde_json::{Value, json};

fn spec(partitions: i32, extra: Value) -> Value {
    let mut s = json!({"topic": {"partitions": partitions}, "coupons": [{"ids": "1-3", "name": "c{id}", "discount": 100, "quantity": 10}]});
    if let (Some(s), Some(e)) = (s.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_reconcile_creates_everything_and_an_unchanged_campaign_writes_nothing() {
    let name = coupon_e2e::unique("op");
    let api = cluster(&name, spec(3, json!({})));
    let ctx = Arc::new(Context::new(api.client()));
    run(&api, &ctx, &name).await;
    assert_eq!(
        api.take_writes(),
        vec![format!(
            "PATCH /apis/coupons.fcfs.dev/v1alpha1/couponcampaigns/{name}"
        )],
        "the finalizer first"
    );
    assert_eq!(
        api.get(&cc_path(&name))["metadata"]["finalizers"][0],
        FINALIZER
    );

    run(&api, &ctx, &name).await;
    assert_eq!(
        api.take_writes(),
        vec![
            format!("PATCH /apis/apps/v1/deployments/{name}-api"),
            format!("PATCH /api/v1/services/{name}-api"),
            format!("PATCH /apis/apps/v1/deployments/{name}-consumer"),
            format!("PATCH /apis/policy/v1/poddisruptionbudgets/{name}-api"),
            format!("PATCH /apis/policy/v1/poddisruptionbudgets/{name}-consumer"),
            format!("PATCH /apis/coupons.fcfs.dev/v1alpha1/couponcampaigns/{name}/status"),
            "EVENT Provisioned".to_string(),
            "EVENT WorkloadsApplied".to_string(),
        ]
    );
    // Real side effects: topic, ledger rows, gate.
    assert_eq!(
        partition_count(&coupon_e2e::kafka_brokers(), &topic_name(&name))
            .await
            .expect("md"),
        Some(3)
    );
    let status = api.get(&cc_path(&name))["status"].clone();
    assert_eq!(
        (
            status["quantity"].as_i64(),
            status["remaining"].as_i64(),
            status["issued"].as_i64()
        ),
        (Some(30), Some(30), Some(0)),
        "{status}"
    );
    assert_eq!(status["phase"], "Live");
    assert_eq!(status["observedGeneration"], 1);
    let consumer = api.get(&format!(
        "/apis/apps/v1/namespaces/{NS}/deployments/{name}-consumer"
    ));
    assert_eq!(
        consumer["metadata"]["labels"]["app.kubernetes.io/instance"],
        name.as_str()
    );
    assert_eq!(
        consumer["metadata"]["ownerReferences"][0]["kind"],
        "CouponCampaign"
    );
    assert_eq!(consumer["spec"]["replicas"], 1);

    run(&api, &ctx, &name).await;
    assert_eq!(
        api.take_writes(),
        Vec::<String>::new(),
        "an unchanged campaign writes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_decrease_sets_a_condition_and_leaves_the_topic() {
    let name = coupon_e2e::unique("op-shrink");
    let (api, ctx) = provisioned(&name, spec(3, json!({}))).await;
    let mut cc = api.get(&cc_path(&name));
    cc["spec"]["topic"]["partitions"] = json!(2);
    cc["metadata"]["generation"] = json!(2);
    api.put(&cc_path(&name), cc);
    run(&api, &ctx, &name).await;
    assert_eq!(
        api.take_writes(),
        vec![
            format!("PATCH /apis/coupons.fcfs.dev/v1alpha1/couponcampaigns/{name}/status"),
            "EVENT PartitionDecreaseRefused".to_string()
        ],
        "no topic call, no child rewritten"
    );
    let status = api.get(&cc_path(&name))["status"].clone();
    assert_eq!(status["phase"], "Degraded");
    let topic = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "TopicReady")
        .expect("TopicReady")
        .clone();
    assert_eq!(
        (topic["status"].as_str(), topic["reason"].as_str()),
        (Some("False"), Some("PartitionDecreaseRefused")),
        "{topic}"
    );
    assert_eq!(
        partition_count(&coupon_e2e::kafka_brokers(), &topic_name(&name))
            .await
            .expect("md"),
        Some(3),
        "live topic untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_scales_the_consumer_deployment() {
    let name = coupon_e2e::unique("op-scale");
    let (api, ctx) = provisioned(
        &name,
        spec(
            3,
            json!({"consumers": {"minReplicas": 1, "maxReplicas": 5, "targetLagPerReplica": 10}}),
        ),
    )
    .await;
    // 25 events and nobody consuming: ceil(25 / 10) = 3, which is also the partition count.
    let publisher = Publisher::new(
        &coupon_e2e::kafka_brokers(),
        &topic_name(&name),
        PublishTimeouts::default(),
    )
    .expect("producer");
    for user in 1..=25u64 {
        publisher
            .publish(&IssuanceEvent::new(
                uuid::Uuid::now_v7(),
                &name,
                1,
                user,
                chrono::Utc::now(),
            ))
            .await
            .expect("published");
    }
    run(&api, &ctx, &name).await;
    let writes = api.take_writes();
    assert!(
        writes.contains(&format!("PATCH /apis/apps/v1/deployments/{name}-consumer")),
        "{writes:?}"
    );
    assert!(writes.contains(&"EVENT Scaled".to_string()), "{writes:?}");
    let consumer = api.get(&format!(
        "/apis/apps/v1/namespaces/{NS}/deployments/{name}-consumer"
    ));
    assert_eq!(consumer["spec"]["replicas"], 3);
    let status = api.get(&cc_path(&name))["status"].clone();
    assert_eq!(status["lag"], 25);
    assert_eq!(status["consumers"]["summary"], "3/3");
    let metrics = ctx.metrics.render();
    for line in [
        format!("coupon_operator_consumer_lag_total{{campaign=\"{name}\"}} 25"),
        format!("coupon_operator_consumer_replicas_desired{{campaign=\"{name}\"}} 3"),
    ] {
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_runs_cleanup_and_removes_the_finalizer() {
    let name = coupon_e2e::unique("op-del");
    let (api, ctx) = provisioned(&name, spec(1, json!({"deletionPolicy": "Delete"}))).await;
    let gate = coupon_core::gate::RedisGate::connect(&coupon_e2e::redis_url())
        .await
        .expect("redis");
    use coupon_core::gate::GateView;
    assert!(gate.catalog(&name).await.expect("catalog").is_some());
    let mut cc = api.get(&cc_path(&name));
    cc["metadata"]["deletionTimestamp"] = json!("2026-11-24T00:00:00Z");
    api.put(&cc_path(&name), cc);
    run(&api, &ctx, &name).await;
    assert_eq!(
        api.take_writes(),
        vec![
            "EVENT Cleanup".to_string(),
            format!("PATCH /apis/coupons.fcfs.dev/v1alpha1/couponcampaigns/{name}")
        ]
    );
    assert!(
        api.get(&cc_path(&name))["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty())
    );
    assert!(
        gate.catalog(&name).await.expect("catalog").is_none(),
        "Delete policy removed the Redis keys"
    );
    assert!(gate.snapshot(&name, 1).await.expect("snapshot").is_none());
    let metrics = ctx.metrics.render();
    assert!(
        !metrics.contains(&format!("campaign=\"{name}\"")),
        "a deleted campaign's series are dropped:\n{metrics}"
    );
}

/// Redis loses a coupon: the operator sees it, rebuilds stock and holders from the drained
/// ledger, and the campaign is Live again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_gate_is_rebuilt_from_the_ledger() {
    use coupon_core::gate::{GateView, Reserving};
    let name = coupon_e2e::unique("op-lost");
    let (api, ctx) = provisioned(&name, spec(1, json!({}))).await;
    let (gate, ledger) = common::backends().await;
    // Two coupons issued and in the ledger (the topic is empty, so it is drained).
    let events: Vec<_> = (1..=2u64)
        .map(|u| IssuanceEvent::new(uuid::Uuid::now_v7(), &name, 2, u, chrono::Utc::now()))
        .collect();
    for e in &events {
        assert_eq!(
            gate.reserve(&name, 2, e.user_id, e.request_id)
                .await
                .expect("reserve"),
            coupon_core::gate::Decision::Reserved
        );
    }
    ledger.record_batch(&name, &events).await.expect("recorded");
    let mut conn = gate.connection();
    let _: () = redis::cmd("DEL")
        .arg(coupon_core::gate::coupon_key(&name, 2))
        .arg(coupon_core::gate::holders_key(&name, 2))
        .query_async(&mut conn)
        .await
        .expect("del");
    // First the loss is marked and a delivery deadline waited out: a publish in flight when
    // Redis lost its state may still land.
    run(&api, &ctx, &name).await;
    let writes = api.take_writes();
    assert!(
        writes.contains(&"EVENT GateRebuildWaiting".to_string()),
        "{writes:?}"
    );
    tokio::time::sleep(common::SETTLE_AFTER).await;
    run(&api, &ctx, &name).await;
    let writes = api.take_writes();
    assert!(
        writes.contains(&"EVENT Provisioned".to_string()),
        "{writes:?}"
    );
    let snap = gate
        .snapshot(&name, 2)
        .await
        .expect("snapshot")
        .expect("rebuilt");
    assert_eq!((snap.remaining, snap.holders), (8, 2));
    assert_eq!(
        gate.holder(&name, 2, 1).await.expect("holder"),
        Some(events[0].request_id)
    );
    let status = api.get(&cc_path(&name))["status"].clone();
    assert_eq!(status["phase"], "Live");
    assert_eq!(
        (status["issued"].as_i64(), status["remaining"].as_i64()),
        (Some(2), Some(28))
    );
}

/// Redis grants a coupon that never reaches the topic (a publish lost after the reserve): once
/// the topic is drained the operator reports the difference per coupon, and 0 elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_between_redis_and_the_ledger_is_reported_per_coupon() {
    use coupon_core::gate::Reserving;
    let name = coupon_e2e::unique("op-drift");
    let (api, ctx) = provisioned(&name, spec(1, json!({}))).await;
    let m = ctx.metrics.render();
    for coupon in 1..=3 {
        for line in [
            format!(
                "coupon_operator_stock_remaining{{campaign=\"{name}\",coupon=\"{coupon}\"}} 10"
            ),
            format!("coupon_operator_stock_quantity{{campaign=\"{name}\",coupon=\"{coupon}\"}} 10"),
            format!("coupon_operator_coupons_issued{{campaign=\"{name}\",coupon=\"{coupon}\"}} 0"),
            format!("coupon_operator_stock_drift{{campaign=\"{name}\",coupon=\"{coupon}\"}} 0"),
        ] {
            assert!(m.contains(&line), "{line} not in\n{m}");
        }
    }
    let gate = coupon_core::gate::RedisGate::connect(&coupon_e2e::redis_url())
        .await
        .expect("redis");
    gate.reserve(&name, 2, 77, uuid::Uuid::now_v7())
        .await
        .expect("reserve");
    run(&api, &ctx, &name).await;
    let m = ctx.metrics.render();
    for line in [
        format!("coupon_operator_stock_remaining{{campaign=\"{name}\",coupon=\"2\"}} 9"),
        format!("coupon_operator_stock_drift{{campaign=\"{name}\",coupon=\"2\"}} 1"),
        format!("coupon_operator_stock_drift{{campaign=\"{name}\",coupon=\"1\"}} 0"),
        format!("coupon_operator_consumer_replicas_max{{campaign=\"{name}\"}} 6"),
    ] {
        assert!(m.contains(&line), "{line} not in\n{m}");
    }
}

/// Least privilege: every call the operator makes in a campaign's life (leader election,
/// provisioning, children, status, events, scaling, cleanup) is granted by the chart's RBAC, and
/// the chart grants nothing else but the list/watch the controller's watches need; in both modes:
/// cluster-wide, and `watchNamespaces` (Roles in the campaign's namespace and the lease's only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_rbac_grants_exactly_what_the_operator_calls() {
    use coupon_operator::lease::LeaseLock;
    use k8s_openapi::api::coordination::v1::Lease;
    let name = coupon_e2e::unique("op-rbac");
    let api = cluster(
        &name,
        spec(
            1,
            json!({"deletionPolicy": "Delete", "consumers": {"targetLagPerReplica": 1}}),
        ),
    );
    let lock = LeaseLock::new(
        kube::Api::<Lease>::namespaced(api.client(), NS),
        "coupon-operator",
        "pod-a",
        std::time::Duration::from_secs(15),
    );
    let now = k8s_openapi::jiff::Timestamp::now();
    assert!(lock.try_acquire_or_renew(now).await.expect("acquire"));
    assert!(lock.try_acquire_or_renew(now).await.expect("renew"));
    let ctx = Arc::new(Context::new(api.client()));
    run(&api, &ctx, &name).await;
    run(&api, &ctx, &name).await;
    let mut cc = api.get(&cc_path(&name));
    cc["metadata"]["deletionTimestamp"] = json!("2026-11-24T00:00:00Z");
    api.put(&cc_path(&name), cc);
    run(&api, &ctx, &name).await;

    let used: std::collections::BTreeSet<_> = api.rbac_calls().into_iter().collect();
    let namespaced = format!("watchNamespaces={{{NS}}}");
    for (sets, only_in) in [(vec![], None), (vec![namespaced.as_str()], Some(NS))] {
        let grants = common::tools::chart_grants(&sets, only_in);
        for call in &used {
            assert!(
                grants.contains(call),
                "{sets:?}: the chart does not grant {call:?}"
            );
        }
        let watches = [
            ("coupons.fcfs.dev", "couponcampaigns"),
            ("apps", "deployments"),
        ];
        for g in &grants {
            let watch = (g.2 == "list" || g.2 == "watch")
                && watches.contains(&(g.0.as_str(), g.1.as_str()));
            assert!(
                watch || used.contains(g),
                "{sets:?}: the chart grants {g:?}, which the operator never calls"
            );
        }
    }
}

/// Two reservations older than the delivery deadline: one reached the ledger, one's process
/// died before publishing. The settlement timer keeps the first and releases the second (stock
/// and slot back), counts both, records an Event, and the next reconcile turns `BooksBalanced`
/// from False to True.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settlement_timer_keeps_the_issued_and_releases_the_orphaned() {
    use coupon_core::gate::{Decision, GateView, Reserving};
    let name = coupon_e2e::unique("op-settle");
    let (api, ctx) = provisioned(&name, spec(1, json!({}))).await;
    let (gate, ledger) = common::backends().await;
    let issued = IssuanceEvent::new(uuid::Uuid::now_v7(), &name, 2, 1, chrono::Utc::now());
    let orphan = uuid::Uuid::now_v7();
    for (user, id) in [(1, issued.request_id), (2, orphan)] {
        assert_eq!(
            gate.reserve(&name, 2, user, id).await.expect("reserve"),
            Decision::Reserved
        );
    }
    ledger
        .record_batch(&name, std::slice::from_ref(&issued))
        .await
        .expect("recorded");

    run(&api, &ctx, &name).await;
    let balanced = |api: &common::FakeApi| {
        api.get(&cc_path(&name))["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == "BooksBalanced")
            .expect("BooksBalanced")
            .clone()
    };
    let c = balanced(&api);
    assert_eq!(c["status"], "False", "{c}");
    assert!(
        c["message"]
            .as_str()
            .unwrap_or_default()
            .contains("coupon 2: gate 8, ledger 9"),
        "{c}"
    );
    api.take_writes();

    tokio::time::sleep(common::SETTLE_AFTER).await;
    let rounds = coupon_operator::settle_timer::settle_all(&ctx).await;
    let round = rounds[&format!("{NS}/{name}")].as_ref().expect("settled");
    assert_eq!(
        (round.unsettled, round.kept, round.released),
        (2, 1, 1),
        "{round:?}"
    );
    assert_eq!(
        api.take_writes(),
        vec!["EVENT ReservationsReleased".to_string()]
    );
    let snap = gate.snapshot(&name, 2).await.expect("snap").expect("gate");
    assert_eq!(
        (snap.remaining, snap.holders),
        (9, 1),
        "stock and slot back"
    );
    let m = ctx.metrics.render();
    for line in [
        format!(
            "coupon_operator_settled_reservations_total{{campaign=\"{name}\",outcome=\"kept\"}} 1"
        ),
        format!(
            "coupon_operator_settled_reservations_total{{campaign=\"{name}\",outcome=\"released\"}} 1"
        ),
        format!("coupon_operator_unsettled_reservations{{campaign=\"{name}\"}} 2"),
    ] {
        assert!(m.contains(&line), "{line} not in\n{m}");
    }

    run(&api, &ctx, &name).await;
    let c = balanced(&api);
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("True"), Some("Balanced")),
        "{c}"
    );
    assert!(
        c["message"]
            .as_str()
            .unwrap_or_default()
            .contains("1 of 30 issued; last settlement: 2 unsettled"),
        "{c}"
    );
    let again = coupon_operator::settle_timer::settle_all(&ctx).await;
    let again = again[&format!("{NS}/{name}")].as_ref().expect("settled");
    assert_eq!((again.unsettled, again.released), (0, 0), "settled once");
}

/// `connections.tls` and `connections.kafkaProperties` name Secrets: the operator reaches a
/// Redis with only a TLS port (client certificate, ACL user), a PostgreSQL that refuses plain
/// connections and Kafka's SASL_SSL listener as its own SCRAM principal (only the ACLs of this
/// campaign's topics and group) through the TLS Secret's files (the /etc/coupon/tls prefix
/// swapped for its private copy), provisions the campaign there, grows its topic, reads its
/// lag, and mounts both Secrets into its workloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secured_connections_reach_tls_backends_and_are_mounted_into_workloads() {
    use coupon_core::connections::RedisConnection;
    use coupon_core::gate::{GateView, RedisGate};
    use coupon_e2e::tls::{Pki, TlsPostgres, TlsRedis};
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki);
    let pg = TlsPostgres::start(&pki).expect("PostgreSQL server binaries");
    let name = coupon_e2e::unique("op-tls");
    let kafka = coupon_e2e::kafka_node::listeners();
    coupon_e2e::kafka_node::grant_campaign(&name);
    let secret = |key: &str| json!({"name": "secured", "key": key});
    let api = cluster(
        &name,
        spec(
            2,
            json!({"connections": {
                "redis": secret("REDIS_URL"),
                "kafka": secret("KAFKA_BROKERS"),
                "database": secret("DATABASE_URL"),
                "kafkaProperties": {"name": "kafka-client", "key": "client.properties"},
                "apiKafkaProperties": {"name": "kafka-api", "key": "client.properties"},
                "consumerKafkaProperties": {"name": "kafka-consumer", "key": "client.properties"},
                "tls": {"secretName": "coupon-tls", "redisCa": "ca.pem",
                        "redisClientCert": "client.pem", "redisClientKey": "client.key"}
            }}),
        ),
    );
    let b64 = common::b64;
    let put_secret = |secret_name: &str, data: Value| {
        api.put(
            &format!("/api/v1/namespaces/{NS}/secrets/{secret_name}"),
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": secret_name, "namespace": NS}, "data": data}),
        );
    };
    put_secret(
        "secured",
        json!({
            "REDIS_URL": b64(&redis.url()),
            "KAFKA_BROKERS": b64(&kafka.sasl),
            "DATABASE_URL": b64(&pg.url("sslmode=verify-full&sslrootcert=/etc/coupon/tls/ca.pem")),
        }),
    );
    let pem = |f: &str| b64(&std::fs::read_to_string(pki.path(f)).expect("pem"));
    put_secret(
        "coupon-tls",
        json!({"ca.pem": pem("ca.pem"), "client.pem": pem("client.pem"), "client.key": pem("client.key"),
               "kafka-ca.pem": b64(&std::fs::read_to_string(&kafka.ca).expect("kafka CA"))}),
    );
    // Each workload its own principal: the operator's here, the API's and the consumer's
    // mounted into their pods.
    for (secret_name, user) in [
        ("kafka-client", "coupon-operator"),
        ("kafka-api", "coupon-api"),
        ("kafka-consumer", "coupon-consumer"),
    ] {
        let properties = format!(
            "client.id={user}-tls-test\nsecurity.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n\
             sasl.username={user}\nsasl.password={}\nssl.ca.location=/etc/coupon/tls/kafka-ca.pem\n",
            kafka.users[user]
        );
        put_secret(secret_name, json!({"client.properties": b64(&properties)}));
    }
    let ctx = Arc::new(Context::new(api.client()));
    run(&api, &ctx, &name).await;
    run(&api, &ctx, &name).await;
    let status = api.get(&cc_path(&name))["status"].clone();
    assert_eq!(status["phase"], "Live", "{status}");
    assert_eq!(status["quantity"].as_i64(), Some(30), "{status}");
    assert!(
        status["lag"].is_number(),
        "lag read over SASL_SSL: {status}"
    );

    // The topic grows through the operator's principal.
    let mut cc = api.get(&cc_path(&name));
    cc["spec"]["topic"]["partitions"] = json!(3);
    cc["metadata"]["generation"] = json!(2);
    api.put(&cc_path(&name), cc);
    run(&api, &ctx, &name).await;
    assert_eq!(
        partition_count(&coupon_e2e::kafka_brokers(), &topic_name(&name))
            .await
            .expect("md"),
        Some(3),
        "grown over SASL_SSL"
    );

    // The stock went to the TLS Redis (and nowhere else reachable without the certificate).
    let tls = RedisConnection::new(redis.url())
        .with_files(
            Some(&pki.path("ca.pem")),
            Some(&pki.path("client.pem")),
            Some(&pki.path("client.key")),
        )
        .expect("files");
    let gate = RedisGate::connect(tls).await.expect("TLS gate");
    assert!(gate.catalog(&name).await.expect("catalog").is_some());

    for (component, own) in [("api", "kafka-api"), ("consumer", "kafka-consumer")] {
        let pod = api.get(&format!(
            "/apis/apps/v1/namespaces/{NS}/deployments/{name}-{component}"
        ))["spec"]["template"]["spec"]
            .clone();
        let volumes: Vec<&str> = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["secret"]["secretName"].as_str())
            .collect();
        assert_eq!(volumes, ["coupon-tls", own], "{component}");
    }
}
