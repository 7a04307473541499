//! The chart installed into the real control plane and the operator run as a host process with
//! the chart's ServiceAccount identity (a TokenRequest token in its kubeconfig) and the env the
//! chart's Deployment gives it, so the real authorizer judges every call it makes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::cluster::Cluster;
use super::tools::binary;

/// A helm release of charts/coupon-operator; uninstalled on drop (so a failed test leaves no
/// ClusterRole behind; the namespace guards remove the rest).
pub struct Release<'a> {
    cluster: &'a Cluster,
    pub name: String,
    pub namespace: String,
}

impl<'a> Release<'a> {
    pub fn install(cluster: &'a Cluster, namespace: &str, values: &[&str]) -> Self {
        let release = Self::named(
            cluster,
            &format!("op-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]),
            namespace,
        );
        let mut args = vec![
            "install",
            &release.name,
            "charts/coupon-operator",
            "-n",
            namespace,
        ];
        for v in values {
            args.extend(["--set", v]);
        }
        let (ok, out, err) = cluster.helm(&args);
        assert!(ok, "helm install: {out}{err}");
        release
    }

    /// The guard alone, for a test that runs `helm install` itself.
    pub fn named(cluster: &'a Cluster, name: &str, namespace: &str) -> Self {
        Self {
            cluster,
            name: name.to_string(),
            namespace: namespace.to_string(),
        }
    }

    /// The operator Deployment the chart rendered, as the server stores it.
    pub fn deployment(&self) -> Value {
        let out = self.cluster.ok(
            &[
                "get",
                "deployment",
                "-n",
                &self.namespace,
                "-l",
                &format!("app.kubernetes.io/instance={}", self.name),
                "-o",
                "json",
            ],
            None,
        );
        let list: Value = serde_json::from_str(&out).expect("json");
        list["items"][0].clone()
    }

    pub fn service_account(&self) -> String {
        self.deployment()["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .expect("serviceAccountName")
            .to_string()
    }

    /// A kubeconfig in `dir` that authenticates as the release's ServiceAccount with a token
    /// from the TokenRequest API.
    pub fn service_account_kubeconfig(&self, dir: &Path) -> PathBuf {
        let sa = self.service_account();
        let token = self.cluster.ok(
            &[
                "create",
                "token",
                &sa,
                "-n",
                &self.namespace,
                "--duration",
                "2h",
            ],
            None,
        );
        let admin: Value =
            serde_yaml::from_str(&std::fs::read_to_string(&self.cluster.kubeconfig).expect("read"))
                .expect("kubeconfig yaml");
        let cluster = &admin["clusters"][0]["cluster"];
        let config = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "cp", "cluster": cluster}],
            "users": [{"name": sa, "user": {"token": token.trim()}}],
            "contexts": [{"name": "sa", "context": {"cluster": "cp", "user": sa, "namespace": self.namespace}}],
            "current-context": "sa",
        });
        let path = dir.join(format!("{sa}.kubeconfig"));
        std::fs::write(&path, config.to_string()).expect("write kubeconfig");
        path
    }

    /// The operator container's env as the pod would see it (values, and the downward API's
    /// namespace and name).
    pub fn operator_env(&self, pod_name: &str) -> Vec<(String, String)> {
        let deployment = self.deployment();
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let mut env = Vec::new();
        for e in container["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().expect("env name").to_string();
            let value = match (
                &e["value"],
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            ) {
                (Value::String(v), _) => v.clone(),
                (_, Some("metadata.namespace")) => self.namespace.clone(),
                (_, Some("metadata.name")) => pod_name.to_string(),
                (other, field) => panic!("env {name}: cannot resolve {other} / {field:?}"),
            };
            env.push((name, value));
        }
        env
    }
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        let _ = self.cluster.helm(&[
            "uninstall",
            &self.name,
            "-n",
            &self.namespace,
            "--ignore-not-found",
        ]);
    }
}

/// `coupon-operator run` as a host process; killed on drop. Its log is kept in `log`.
pub struct Operator {
    child: Child,
    pub log: PathBuf,
    pub health: String,
}

impl Operator {
    pub fn start(release: &Release, kubeconfig: &Path, pod_name: &str, dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let health = format!("127.0.0.1:{port}");
        let log = dir.join(format!("{pod_name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary("coupon-operator"))
            .arg("run")
            .envs(release.operator_env(pod_name))
            .env("KUBECONFIG", kubeconfig)
            .env("HEALTH_LISTEN", &health)
            .env("LOG_FORMAT", "text")
            .env("RUST_LOG", "info,kube=warn")
            .env("TMPDIR", dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("coupon-operator starts");
        Self { child, log, health }
    }

    /// The last lines of its log, for a failing assertion.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Its /metrics page (empty while it does not answer).
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let Ok(mut conn) = std::net::TcpStream::connect(&self.health) else {
            return String::new();
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let request = format!("GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n", self.health);
        let mut page = String::new();
        if conn.write_all(request.as_bytes()).is_ok() {
            let _ = conn.read_to_string(&mut page);
        }
        page
    }

    /// SIGKILL, as a node loss or the OOM killer does it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The API server's audit log, one event per line (see scripts/cluster.sh's policy).
fn audit_events() -> Vec<Value> {
    let path = std::env::var_os("KUBE_AUDIT_LOG").expect(
        "KUBE_AUDIT_LOG is not set: start the control plane with eval \"$(scripts/cluster.sh up)\"",
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("the audit log {path:?} is unreadable ({e}): scripts/cluster.sh up writes it")
    });
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// Every call `user` made, in RBAC's terms: (apiGroup, resource[/subresource], verb), and
/// whether the authorizer allowed it.
pub fn calls_by(user: &str) -> std::collections::BTreeSet<(String, String, String, bool)> {
    audit_events()
        .into_iter()
        .filter(|e| e["user"]["username"] == user)
        .filter_map(|e| {
            let r = &e["objectRef"];
            let resource = r["resource"].as_str()?;
            let resource = match r["subresource"].as_str() {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.to_string(),
            };
            let allowed = e["annotations"]["authorization.k8s.io/decision"] == "allow";
            Some((
                r["apiGroup"].as_str().unwrap_or("").to_string(),
                resource,
                e["verb"].as_str()?.to_string(),
                allowed,
            ))
        })
        .collect()
}

/// Writes by `user` in the API server's audit log (create, update, patch, delete), as
/// (verb, resource/subresource, name, HTTP code), excluding Leases and Events.
pub fn writes_by(user: &str) -> Vec<(String, String, String, u64)> {
    const WRITES: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];
    audit_events()
        .into_iter()
        .filter(|e| e["stage"] == "ResponseComplete" && e["user"]["username"] == user)
        .filter(|e| WRITES.iter().any(|w| e["verb"] == *w))
        .filter_map(|e| {
            let r = &e["objectRef"];
            let resource = r["resource"].as_str()?.to_string();
            if resource == "leases" || resource == "events" {
                return None;
            }
            let resource = match r["subresource"].as_str() {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource,
            };
            Some((
                e["verb"].as_str()?.to_string(),
                resource,
                r["name"].as_str().unwrap_or("").to_string(),
                e["responseStatus"]["code"].as_u64().unwrap_or(0),
            ))
        })
        .collect()
}

/// A name no earlier run used: campaigns own Redis keys and a Kafka topic by name.
pub fn campaign_name(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// `kubectl get -n NS WHAT -o json`, parsed.
pub fn get(cluster: &Cluster, ns: &str, what: &[&str]) -> Value {
    let mut args = vec!["get", "-n", ns];
    args.extend(what);
    args.extend(["-o", "json"]);
    serde_json::from_str(&cluster.ok(&args, None)).expect("json")
}

/// A generic Secret with literal values.
pub fn secret(cluster: &Cluster, ns: &str, name: &str, data: &[(&str, &str)]) {
    let mut args = vec![
        "create".to_string(),
        "secret".into(),
        "generic".into(),
        name.into(),
        "-n".into(),
        ns.into(),
    ];
    args.extend(data.iter().map(|(k, v)| format!("--from-literal={k}={v}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cluster.ok(&args, None);
}

/// Polls the campaign until `done` holds; panics with the operator's log after `within`.
pub async fn wait_campaign(
    cluster: &Cluster,
    op: &Operator,
    ns: &str,
    name: &str,
    within: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let out = cluster.kubectl(&["get", "cc", name, "-n", ns, "-o", "json"], None);
        if out.ok {
            let cc: Value = serde_json::from_str(&out.stdout).expect("json");
            if done(&cc) {
                return cc;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not reached in {within:?}; status {}\noperator log:\n{}",
                cc["status"],
                op.tail()
            );
        } else {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: {}\noperator log:\n{}",
                out.stderr,
                op.tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A scratch directory, removed on drop; others may read it (the pods' processes run as their
/// own user and must reach their files in here).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir =
            std::env::temp_dir().join(format!("on-cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("tempdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The Events about object `name` in `ns`, as (reason, note).
pub fn events(cluster: &Cluster, ns: &str, name: &str) -> Vec<(String, String)> {
    let field = format!("involvedObject.name={name}");
    let list = get(cluster, ns, &["events", "--field-selector", &field]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let text = |v: &Value| v.as_str().unwrap_or("").to_string();
            (
                text(&e["reason"]),
                text(e.get("note").unwrap_or(&e["message"])),
            )
        })
        .collect()
}
