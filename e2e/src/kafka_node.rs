//! A private Apache Kafka node for tests that must kill or reconfigure the broker without
//! touching the shared one: `scripts/kafka.sh` formats a directory of its own and starts one
//! KRaft node on four loopback ports (PLAINTEXT, SSL, SASL_SSL, controller). SIGKILL and a
//! restart on the same log directory are what the broker-kill chaos does. Also the shared
//! node's secured listeners and its ACLs, for the SSL, SASL and least-privilege tests.

use anyhow::Context as _;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use coupon_core::campaign::{consumer_group, dead_letter_topic, topic_name};
use rdkafka::ClientConfig;
use tokio::process::Command;

/// `scripts/kafka.sh` of this checkout (`KAFKA_SH` overrides it).
pub fn kafka_script() -> PathBuf {
    std::env::var_os("KAFKA_SH").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka.sh"),
        PathBuf::from,
    )
}

pub struct KafkaNode {
    pub dir: PathBuf,
    /// The PLAINTEXT port; SSL is `port + 1`, SASL_SSL `port + 2`, the controller `port + 3`.
    pub port: u16,
    pid: Option<u32>,
}

impl KafkaNode {
    /// Formats `dir` (if new) and starts the node; returns once it serves.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        let mut node = Self {
            dir: dir.to_path_buf(),
            port: four_free_ports()?,
            pid: None,
        };
        node.restart().await?;
        Ok(node)
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the node again on its directory and ports (after [`KafkaNode::kill9`]).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let out = Command::new(kafka_script())
            .arg("start")
            .arg(&self.dir)
            .arg(self.port.to_string())
            .output()
            .await
            .with_context(|| format!("{}", kafka_script().display()))?;
        if !out.status.success() {
            return Err(anyhow::anyhow!(
                "kafka.sh start {}: {}",
                self.dir.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let pid = String::from_utf8_lossy(&out.stdout).trim().parse::<u32>();
        self.pid = Some(pid.context("kafka.sh start printed no pid")?);
        Ok(())
    }

    /// Deletes the node's log (`data/` may be a link into a tmpfs: the target goes too).
    pub fn remove_data(&self) {
        let link = self.dir.join("data");
        if let Ok(target) = std::fs::canonicalize(&link) {
            let _ = std::fs::remove_dir_all(&target);
            let _ = std::fs::remove_file(target.with_extension("owner"));
        }
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_dir_all(&link);
    }

    /// SIGKILL: no shutdown code runs, the log is left as the process had it.
    pub async fn kill9(&mut self) {
        let Some(pid) = self.pid.take() else { return };
        let _ = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .await;
        let proc = PathBuf::from(format!("/proc/{pid}"));
        for _ in 0..100 {
            if !proc.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for KafkaNode {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}

/// A base port whose next three are free too, below the ephemeral range: a killed node's
/// ports must still be free when it restarts, and the load's outgoing connections take
/// ephemeral ports (one once took a restarting node's SSL port).
fn four_free_ports() -> anyhow::Result<u16> {
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_from.saturating_sub(4).max(10_100));
    let mut rng = rand::rng();
    for _ in 0..200 {
        let base = rand::Rng::random_range(&mut rng, low..high);
        let free = (0..4).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return Ok(base);
        }
    }
    Err(anyhow::anyhow!("no four consecutive free loopback ports"))
}

/// The secured listeners of the suite's broker (`scripts/services.sh up` exports them).
pub struct Listeners {
    pub ssl: String,
    pub sasl: String,
    pub ca: PathBuf,
    pub users: HashMap<String, String>,
}

pub fn listeners() -> Listeners {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run the tests through scripts/test.sh (services.sh starts the secured listeners)")
        })
    };
    Listeners {
        ssl: var("KAFKA_SSL_BROKERS"),
        sasl: var("KAFKA_SASL_BROKERS"),
        ca: var("KAFKA_CA_FILE").into(),
        users: read_users(Path::new(&var("KAFKA_USERS_FILE"))),
    }
}

/// `user=password` lines, as `scripts/kafka.sh` writes them at format time.
fn read_users(file: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("the SCRAM users file {}: {e}", file.display()));
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(u, p)| (u.to_string(), p.to_string()))
        .collect()
}

impl KafkaNode {
    /// This node's secured listeners and SCRAM users.
    pub fn listeners(&self) -> Listeners {
        Listeners {
            ssl: format!("127.0.0.1:{}", self.port + 1),
            sasl: format!("127.0.0.1:{}", self.port + 2),
            ca: self.dir.join("tls/ca.pem"),
            users: read_users(&self.dir.join("users.properties")),
        }
    }
}

impl Listeners {
    /// The `KAFKA_CLIENT_*` variables of a SCRAM user on the SASL_SSL listener.
    pub fn sasl_env(&self, user: &str, password: &str) -> Vec<(String, String)> {
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

    pub fn user_env(&self, user: &str) -> Vec<(String, String)> {
        self.sasl_env(user, &self.users[user])
    }

    pub fn client(&self, user: &str) -> ClientConfig {
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

/// `kafka-acls --add` through the broker's own AclCommand, on the PLAINTEXT listener (whose
/// ANONYMOUS principal is a super user on the test broker).
pub fn grant(user: &str, operations: &[&str], resources: &[(&str, &str)]) {
    let mut c = std::process::Command::new(kafka_script());
    c.args(["tool", "org.apache.kafka.tools.AclCommand"])
        .args(["--bootstrap-server", &crate::kafka_brokers(), "--add"])
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

/// The least privilege each workload needs on one campaign (what docs/security.md lists).
pub fn grant_campaign(campaign: &str) {
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

/// Topic partitions as the PLAINTEXT listener sees them.
pub fn partitions(campaign: &str) -> usize {
    use rdkafka::consumer::Consumer;
    let c: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", crate::kafka_brokers())
        .create()
        .expect("client");
    let topic = topic_name(campaign);
    let md = c
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .expect("metadata");
    md.topics().first().map_or(0, |t| t.partitions().len())
}
