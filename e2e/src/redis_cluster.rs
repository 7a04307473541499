//! A private Redis Cluster for one test: masters with replicas on their own loopback ports,
//! nothing on disk, so a test may fail a master over without disturbing the shared cluster.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivateCluster {
    nodes: Vec<(u16, Child)>,
    _dir: tempdir::Dir,
    pub masters: usize,
}

/// A temporary directory removed on drop (no extra crate for one use).
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl PrivateCluster {
    /// `masters` masters, each with one replica, on ports `base..base + 2 × masters`.
    pub fn start(base: u16, masters: usize) -> Self {
        let dir =
            std::env::temp_dir().join(format!("coupon-cluster-{base}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let dir = tempdir::Dir(dir);
        let mut nodes = Vec::new();
        for port in base..base + 2 * masters as u16 {
            let node_dir = dir.0.join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .args([
                    "--cluster-node-timeout",
                    "2000",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server (Debian's redis-server package)");
            nodes.push((port, child));
        }
        for (port, _) in &nodes {
            let deadline = Instant::now() + Duration::from_secs(10);
            while cli(*port, &["ping"]).trim() != "PONG" {
                assert!(Instant::now() < deadline, "redis node {port} did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(created.success(), "the cluster was not created");
        let cluster = Self {
            nodes,
            _dir: dir,
            masters,
        };
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .take(self.masters)
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Waits until every node reports `cluster_state:ok`, every slot is served and every
    /// replica is in sync with its master (a failover waits for that).
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = self.nodes.iter().all(|(p, _)| {
                let info = cli(*p, &["cluster", "info"]);
                let replication = cli(*p, &["info", "replication"]);
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The port of the master serving `slot`, and of its replica.
    pub fn master_and_replica(&self, slot: u16) -> (u16, u16) {
        let any = self.nodes[0].0;
        let text = cli(any, &["cluster", "nodes"]);
        let mut master = None;
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") {
                continue;
            }
            let serves = f[8..].iter().any(|r| {
                let (lo, hi) = r.split_once('-').unwrap_or((r, r));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
            });
            if serves {
                master = Some((f[0].to_string(), port_of(f[1])));
            }
        }
        let (id, master_port) = master.expect("a master serves the slot");
        let replica = text
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[2].contains("slave") && f[3] == id)
            .map(|f| port_of(f[1]))
            .expect("the master has a replica");
        (master_port, replica)
    }

    /// Coordinated failover: the replica catches up with its master, then takes over.
    pub fn fail_over_to(&self, replica: u16) {
        let answer = cli(replica, &["cluster", "failover"]);
        assert!(
            answer.trim() == "OK",
            "CLUSTER FAILOVER answered {answer:?}"
        );
    }

    pub fn is_master(&self, port: u16) -> bool {
        cli(port, &["role"]).lines().next() == Some("master")
    }
}

fn port_of(addr: &str) -> u16 {
    addr.split('@')
        .next()
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .expect("node address")
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
