//! Apache Kafka's secured listeners, as `scripts/services.sh up` starts them: SSL (a CA of its
//! own) and SASL_SSL with SCRAM-SHA-512 users under Kafka's StandardAuthorizer. Every binary
//! provisions, grows the topic, issues, consumes and reads lag over each, the SASL run with each
//! workload's own least-privileged principal; a wrong password, a stranger CA and plaintext sent
//! to the TLS port fail at start with a clear error and no secret; and the ACLs hold: the
//! consumer's principal cannot produce, the API's cannot read.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use coupon_core::campaign::{consumer_group, dead_letter_topic, topic_name};
use coupon_e2e::binaries::{Environments, bin, run_drop};
use coupon_e2e::kafka_node::kafka_script;
use coupon_e2e::tls::{Pki, TempDir, free_port};
use coupon_e2e::unique;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

/// The secured listeners of the suite's broker.
struct Listeners {
    ssl: String,
    sasl: String,
    ca: PathBuf,
    users: HashMap<String, String>,
}

fn listeners() -> Listeners {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run the tests through scripts/test.sh (services.sh starts the secured listeners)")
        })
    };
    let users = std::fs::read_to_string(var("KAFKA_USERS_FILE")).expect("the SCRAM users file");
    Listeners {
        ssl: var("KAFKA_SSL_BROKERS"),
        sasl: var("KAFKA_SASL_BROKERS"),
        ca: var("KAFKA_CA_FILE").into(),
        users: users
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect(),
    }
}

impl Listeners {
    /// The `KAFKA_CLIENT_*` variables of a SCRAM user on the SASL_SSL listener.
    fn sasl_env(&self, user: &str, password: &str) -> Vec<(String, String)> {
        vec![
            ("KAFKA_BROKERS".into(), self.sasl.clone()),
            ("KAFKA_CLIENT_SECURITY_PROTOCOL".into(), "SASL_SSL".into()),
            ("KAFKA_CLIENT_SASL_MECHANISM".into(), "SCRAM-SHA-512".into()),
            ("KAFKA_CLIENT_SASL_USERNAME".into(), user.into()),
            ("KAFKA_CLIENT_SASL_PASSWORD".into(), password.into()),
            (
                "KAFKA_CLIENT_SSL_CA_LOCATION".into(),
                self.ca.display().to_string(),
            ),
        ]
    }

    fn user_env(&self, user: &str) -> Vec<(String, String)> {
        self.sasl_env(user, &self.users[user])
    }

    fn client(&self, user: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in self.user_env(user) {
            match k.strip_prefix("KAFKA_CLIENT_") {
                Some(prop) => c.set(prop.to_lowercase().replace('_', "."), v),
                None => c.set("bootstrap.servers", v),
            };
        }
        c
    }
}

/// Redis and the ledger from the suite's services; Kafka is each test's business.
fn backends() -> Vec<(String, String)> {
    vec![
        ("REDIS_URL".into(), coupon_e2e::redis_url()),
        ("DATABASE_URL".into(), coupon_e2e::postgres_url()),
    ]
}

/// `kafka-acls --add` through the broker's own AclCommand, on the PLAINTEXT listener (whose
/// ANONYMOUS principal is a super user on the test broker).
fn grant(user: &str, operations: &[&str], resources: &[(&str, &str)]) {
    let mut c = Command::new(kafka_script());
    c.args(["tool", "org.apache.kafka.tools.AclCommand"])
        .args(["--bootstrap-server", &coupon_e2e::kafka_brokers(), "--add"])
        .args(["--allow-principal", &format!("User:{user}")]);
    for op in operations {
        c.args(["--operation", op]);
    }
    for (kind, name) in resources {
        c.args([&format!("--{kind}"), *name]);
    }
    let out = c.output().expect("kafka.sh tool runs");
    assert!(
        out.status.success(),
        "AclCommand for {user}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The least privilege each workload needs on one campaign (what the README lists).
fn grant_campaign(campaign: &str) {
    let topic = topic_name(campaign);
    let dlq = dead_letter_topic(&topic);
    let group = consumer_group(campaign);
    std::thread::scope(|s| {
        s.spawn(|| grant("coupon-api", &["Write", "Describe"], &[("topic", &topic)]));
        s.spawn(|| {
            grant(
                "coupon-consumer",
                &["Read", "Describe"],
                &[("topic", &topic), ("group", &group)],
            );
        });
        s.spawn(|| {
            grant(
                "coupon-consumer",
                &["Write", "Describe"],
                &[("topic", &dlq)],
            )
        });
        s.spawn(|| {
            grant(
                "coupon-operator",
                &["Create", "Alter", "Describe", "DescribeConfigs"],
                &[("topic", &topic), ("topic", &dlq)],
            );
        });
        s.spawn(|| grant("coupon-operator", &["Describe"], &[("group", &group)]));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_binary_over_the_ssl_listener() {
    let l = listeners();
    let dir = TempDir::new("kafka-ssl");
    // What a managed Kafka's console hands out: a properties file.
    let props = dir.0.join("client.properties");
    std::fs::write(
        &props,
        format!(
            "security.protocol=SSL\nssl.ca.location={}\nclient.id=coupon-ssl-test\n",
            l.ca.display()
        ),
    )
    .expect("properties file");
    let mut common = backends();
    common.push(("KAFKA_BROKERS".into(), l.ssl.clone()));
    common.push(("KAFKA_PROPERTIES_FILE".into(), props.display().to_string()));
    let envs = Environments {
        common,
        own: HashMap::new(),
    };
    let drop = run_drop(&envs, &unique("kafka-ssl"), 2).await;
    assert!(drop.accepted > 0, "nothing accepted over SSL");
    assert_eq!(partitions(&drop.campaign), 3, "the topic grew over SSL");
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

/// Topic partitions as the PLAINTEXT listener sees them.
fn partitions(campaign: &str) -> usize {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", coupon_e2e::kafka_brokers())
        .create()
        .expect("client");
    let topic = topic_name(campaign);
    let md = c
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .expect("metadata");
    md.topics()[0].partitions().len()
}

/// Each way of getting the connection wrong, for each binary that reaches Kafka at start: it
/// exits within a bound, says what is wrong, and prints no secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_at_start_clearly_and_print_no_secret() {
    let l = listeners();
    let pki = Pki::new();
    let secret = "wrong-hunter2-password";
    let stranger = pki.stranger_ca().display().to_string();
    let cases: Vec<(&str, Vec<(String, String)>, &[&str])> = vec![
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
