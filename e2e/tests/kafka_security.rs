//! Apache Kafka's secured listeners, as `scripts/services.sh up` starts them: SSL (a CA of its
//! own) and SASL_SSL with SCRAM-SHA-512 users under Kafka's StandardAuthorizer. Every binary
//! provisions, grows the topic, issues, consumes and reads lag over SASL_SSL as its workload's
//! own least-privileged principal (over SSL: `tls.rs`); a wrong password, a stranger CA and plaintext sent
//! to the TLS port fail at start with a clear error and no secret; and the ACLs hold: the
//! consumer's principal cannot produce, the API's cannot read.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use coupon_core::campaign::{consumer_group, topic_name};
use coupon_e2e::binaries::{Environments, bin, run_drop};
use coupon_e2e::kafka_node::{KafkaNode, grant_campaign, listeners, partitions};
use coupon_e2e::tls::Pki;
use coupon_e2e::{free_port, unique};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

/// Redis and the ledger from the suite's services; Kafka is each test's business.
fn backends() -> Vec<(String, String)> {
    vec![
        ("REDIS_URL".into(), coupon_e2e::redis_url()),
        ("DATABASE_URL".into(), coupon_e2e::postgres_url()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_binary_over_sasl_scram_with_its_own_least_privilege() {
    let l = listeners();
    let name = unique("kafka-sasl");
    grant_campaign(&name);
    let envs = Environments {
        common: backends(),
        own: HashMap::from([
            ("coupon-api", l.user_env("coupon-api")),
            ("coupon-consumer", l.user_env("coupon-consumer")),
            // couponctl provisions and verifies: the operator's job and principal.
            ("couponctl", l.user_env("coupon-operator")),
        ]),
    };
    let drop = run_drop(&envs, &name, 2).await;
    assert!(drop.accepted > 0, "nothing accepted over SASL_SSL");
    assert_eq!(
        partitions(&drop.campaign),
        3,
        "the operator's principal grew the topic"
    );

    // The ACLs hold: the consumer's principal cannot produce, the API's cannot read.
    let topic = topic_name(&name);
    let producer: FutureProducer = l
        .client("coupon-consumer")
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer");
    let sent = producer
        .send(
            FutureRecord::to(&topic).key("k").payload("forged"),
            Duration::from_secs(10),
        )
        .await;
    match sent {
        Err((KafkaError::MessageProduction(code), _)) => assert_eq!(
            code,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            "the consumer's principal producing"
        ),
        other => panic!("the consumer's principal produced to {topic}: {other:?}"),
    }
    let reader: BaseConsumer = l
        .client("coupon-api")
        .set("group.id", consumer_group(&name))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Beginning)
        .expect("partition");
    reader.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(15);
    let refused = loop {
        match reader.poll(Duration::from_millis(500)) {
            Some(Err(e)) => break e,
            Some(Ok(m)) => panic!("the API's principal read {topic}: offset {}", {
                use rdkafka::Message;
                m.offset()
            }),
            None => assert!(Instant::now() < deadline, "no answer to the API's read"),
        }
    };
    assert!(
        format!("{refused:?}").contains("Authorization"),
        "the API's principal reading: {refused:?}"
    );
}

/// A checkout deleted and cloned again at the same path (CI's clone, every run) is a new node:
/// `kafka.sh` formats it afresh with new SCRAM users, though the old log lives on in the tmpfs
/// its `data/` linked to. Before, the old log was taken for this node's: formatting was skipped,
/// no users file was written and the secured listeners' tests could not log in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_cloned_again_at_the_same_path_gets_a_new_node_and_users() {
    let dir = std::env::temp_dir().join(unique("kafka-reclone"));
    let node_dir = dir.join(".services/kafka");
    let mut first = KafkaNode::start(&node_dir).await.expect("first node");
    let first_users = first.listeners().users;
    first.kill9().await;
    drop(first);
    std::fs::remove_dir_all(&dir).expect("the checkout removed");

    let second = KafkaNode::start(&node_dir).await.expect("second node");
    let l = second.listeners();
    assert_ne!(
        l.users["coupon-api"], first_users["coupon-api"],
        "the second node kept the first one's users"
    );
    let admin: BaseConsumer = l.client("admin").create().expect("client");
    let metadata = tokio::task::spawn_blocking(move || {
        admin
            .fetch_metadata(None, Duration::from_secs(20))
            .map(|m| m.brokers().len())
    })
    .await
    .expect("joins");
    assert_eq!(
        metadata.expect("the new users log in over SASL_SSL"),
        1,
        "one broker"
    );
    second.remove_data();
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What is wrong, the Kafka variables that are wrong that way, what the error must say.
type WrongCase = (&'static str, Vec<(String, String)>, &'static [&'static str]);

/// Each way of getting the connection wrong, for each binary that reaches Kafka at start: it
/// exits within a bound, says what is wrong, and prints no secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_at_start_clearly_and_print_no_secret() {
    let l = listeners();
    let pki = Pki::new();
    let secret = "wrong-hunter2-password";
    let stranger = pki.stranger_ca().display().to_string();
    let cases: Vec<WrongCase> = vec![
        (
            "a wrong SCRAM password",
            l.sasl_env("coupon-api", secret),
            &["authentication", "SASL"],
        ),
        (
            "a stranger CA",
            vec![
                ("KAFKA_BROKERS".into(), l.ssl.clone()),
                ("KAFKA_CLIENT_SECURITY_PROTOCOL".into(), "SSL".into()),
                ("KAFKA_CLIENT_SSL_CA_LOCATION".into(), stranger),
            ],
            &["certificate verify failed"],
        ),
        (
            "plaintext sent to the TLS port",
            vec![("KAFKA_BROKERS".into(), l.ssl.clone())],
            &["security.protocol"],
        ),
    ];
    let campaign = unique("kafka-wrong");
    // Nine failing starts of several seconds each: side by side.
    std::thread::scope(|scope| {
        for (what, kafka, expected) in &cases {
            for (name, args) in [
                ("coupon-api", vec![]),
                ("coupon-consumer", vec![]),
                ("couponctl", vec!["verify", "--campaign", campaign.as_str()]),
            ] {
                let campaign = &campaign;
                scope.spawn(move || {
                    let mut c = bin(name);
                    c.args(&args)
                        .env("CAMPAIGN", campaign)
                        .env("LISTEN", format!("127.0.0.1:{}", free_port()))
                        .env("METRICS_LISTEN", format!("127.0.0.1:{}", free_port()));
                    for (k, v) in backends().iter().chain(kafka) {
                        c.env(k, v);
                    }
                    let started = Instant::now();
                    let out = c.output().expect("runs");
                    let took = started.elapsed();
                    let text = format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                    assert!(!out.status.success(), "{name} with {what} started:\n{text}");
                    assert!(
                        took < Duration::from_secs(30),
                        "{name} with {what} took {took:?} to fail"
                    );
                    let lower = text.to_lowercase();
                    assert!(
                        expected.iter().any(|e| lower.contains(&e.to_lowercase())),
                        "{name} with {what} does not say so ({expected:?}):\n{text}"
                    );
                    assert!(
                        !text.contains(secret),
                        "{name} printed the password:\n{text}"
                    );
                });
            }
        }
    });
}
