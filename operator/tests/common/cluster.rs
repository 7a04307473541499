//! A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager), started by
//! `scripts/cluster.sh up` (scripts/test.sh does), reached through its admin kubeconfig and the
//! kubectl built with it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::tools::root;

pub const CRD_NAME: &str = "couponcampaigns.coupons.fcfs.dev";

pub struct Cluster {
    pub kubectl: PathBuf,
    pub kubeconfig: PathBuf,
}

/// What one kubectl call printed.
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Cluster {
    /// The control plane named by `KUBECONFIG` and `KUBECTL`; panics with the way to start one.
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    panic!(
                        "{name} is not set: start the control plane with \
                     eval \"$(scripts/cluster.sh up)\" (scripts/test.sh does)"
                    )
                })
        };
        Self {
            kubectl: var("KUBECTL"),
            kubeconfig: var("KUBECONFIG"),
        }
    }

    /// Runs the built kubectl with the admin kubeconfig, `stdin` piped in when given.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(&self.kubectl)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .current_dir(root())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", self.kubectl.display()));
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
        }
        let out = child.wait_with_output().expect("kubectl output");
        Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs helm (`scripts/tools.sh` puts it on PATH) with the admin kubeconfig; (success,
    /// stdout, stderr).
    pub fn helm(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("helm")
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .current_dir(root())
            .output()
            .unwrap_or_else(|e| {
                panic!("helm is not on PATH ({e}); run eval \"$(scripts/tools.sh)\"")
            });
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// kubectl that must succeed; its stdout.
    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.ok,
            "kubectl {args:?} failed: {}{}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    /// A kube client with the admin identity.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("kubeconfig is usable");
        kube::Client::try_from(config).expect("client")
    }

    /// The CRDs of `crds/` applied and Established (idempotent: tests share the cluster).
    pub fn install_crds(&self) {
        self.ok(
            &["apply", "--server-side", "--force-conflicts", "-f", "crds/"],
            None,
        );
        self.ok(
            &[
                "wait",
                "--for=condition=Established",
                &format!("crd/{CRD_NAME}"),
                "--timeout=60s",
            ],
            None,
        );
    }

    /// A fresh namespace for one test, deleted (without waiting) when the guard drops.
    pub fn namespace(&self, prefix: &str) -> Namespace<'_> {
        let name = format!(
            "{prefix}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        self.ok(&["create", "namespace", &name], None);
        Namespace {
            cluster: self,
            name,
        }
    }

    /// Polls `kubectl args` until `done` holds on its stdout; panics after `within`.
    pub async fn wait_for(
        &self,
        args: &[&str],
        within: Duration,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let out = self.kubectl(args, None);
            if out.ok && done(&out.stdout) {
                return out.stdout;
            }
            assert!(
                Instant::now() < deadline,
                "kubectl {args:?} did not get there in {within:?}: {}{}",
                out.stdout,
                out.stderr
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

pub struct Namespace<'a> {
    cluster: &'a Cluster,
    pub name: String,
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}
