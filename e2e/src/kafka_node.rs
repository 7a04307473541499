//! A private Apache Kafka node for tests that must kill or reconfigure the broker without
//! touching the shared one: `scripts/kafka.sh` formats a directory of its own and starts one
//! KRaft node on four loopback ports (PLAINTEXT, SSL, SASL_SSL, controller). SIGKILL and a
//! restart on the same log directory are what the broker-kill chaos does.

use std::path::{Path, PathBuf};
use std::time::Duration;

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
    pub async fn start(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
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
    pub async fn restart(&mut self) -> Result<(), String> {
        let out = Command::new(kafka_script())
            .arg("start")
            .arg(&self.dir)
            .arg(self.port.to_string())
            .output()
            .await
            .map_err(|e| format!("{}: {e}", kafka_script().display()))?;
        if !out.status.success() {
            return Err(format!(
                "kafka.sh start {}: {}",
                self.dir.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let pid = String::from_utf8_lossy(&out.stdout).trim().parse::<u32>();
        self.pid = Some(pid.map_err(|e| format!("kafka.sh start printed no pid: {e}"))?);
        Ok(())
    }

    /// Deletes the node's log (`data/` may be a link into a tmpfs: the target goes too).
    pub fn remove_data(&self) {
        let link = self.dir.join("data");
        if let Ok(target) = std::fs::canonicalize(&link) {
            let _ = std::fs::remove_dir_all(target);
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

/// A base port whose next three are free too.
fn four_free_ports() -> Result<u16, String> {
    for _ in 0..50 {
        let base = crate::tls::free_port();
        if base > u16::MAX - 4 {
            continue;
        }
        let free = (0..4).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return Ok(base);
        }
    }
    Err("no four consecutive free loopback ports".into())
}
