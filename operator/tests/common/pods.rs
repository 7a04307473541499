//! A Deployment's pod template, run as host processes: no kubelet runs on the test control
//! plane, so the test plays the kubelet. The container's command and args, its env (values as
//! they are, `secretKeyRef`/`configMapKeyRef` read from the server, the downward API's pod name
//! and namespace) and its Secret/ConfigMap volumes (written as files with the modes and owner
//! the kubelet gives them) are taken exactly from the server's copy of the Deployment; the
//! process runs as the pod's `runAsUser`/`runAsGroup` when the test runs as root. Whatever
//! cannot be resolved (a missing Secret or key, an unknown env or volume source) panics: a pod
//! spec that could not run is a failure.
//!
//! Two translations only, both forced by running on the host:
//! - every volume's `mountPath` (e.g. /etc/coupon/...) is created under a temporary root
//!   instead (the test cannot write /etc), and that prefix is rewritten in args, env values and
//!   in the mounted files' own text (a Kafka properties file naming /etc/coupon/tls/...);
//! - a listen address on a declared container port (`0.0.0.0:8080`) gets a free loopback port
//!   (several pods share the host's network); probes are sent to that port.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cluster::Cluster;
use super::tools::binary;

/// One container of a Deployment's pod template, resolved against the server.
pub struct Pod {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Container port → the loopback port the process listens on instead.
    pub ports: BTreeMap<i64, u16>,
    /// (uid, gid) of the pod's security context, when the test can switch to it (runs as root).
    pub user: Option<(u32, u32)>,
    pub root: PathBuf,
    container: Value,
}

/// `Secret.data` and `binaryData` values are standard base64.
pub fn b64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_else(|e| panic!("not base64 ({e}): {s:?}"))
}

/// A Secret's or ConfigMap's keys and values.
type Data = BTreeMap<String, Vec<u8>>;

/// A Secret's or ConfigMap's data from the server; `None` when it does not exist.
fn object_data(cluster: &Cluster, ns: &str, kind: &str, name: &str) -> Option<Data> {
    let out = cluster.kubectl(&["get", kind, name, "-n", ns, "-o", "json"], None);
    if !out.ok {
        assert!(
            out.stderr.contains("NotFound"),
            "kubectl get {kind} {name}: {}",
            out.stderr
        );
        return None;
    }
    let obj: Value = serde_json::from_str(&out.stdout).expect("json");
    let mut data = BTreeMap::new();
    let entries = |k: &str| obj[k].as_object().cloned().unwrap_or_default();
    for (k, v) in entries("data") {
        let v = v.as_str().expect("data value");
        data.insert(
            k,
            if kind == "secret" {
                b64_decode(v)
            } else {
                v.as_bytes().to_vec()
            },
        );
    }
    for (k, v) in entries("binaryData") {
        data.insert(k, b64_decode(v.as_str().expect("binaryData value")));
    }
    Some(data)
}

/// Kubernetes' `$(VAR)` expansion of env values, command and args (`$$` escapes).
fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(var) = tail
            .strip_prefix("$(")
            .and_then(|t| t.split_once(')'))
            .map(|(v, _)| v)
            .filter(|v| env.iter().any(|(k, _)| k == v))
        {
            let value = &env.iter().rev().find(|(k, _)| k == var).expect("defined").1;
            out.push_str(value);
            rest = &tail[var.len() + 3..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Replaces every occurrence of a mount path (longest first, in one pass) with its host copy.
fn relocate(text: &str, mounts: &[String], root: &Path) -> String {
    let mut mounts: Vec<&String> = mounts.iter().collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    let mut out = String::new();
    let mut i = 0;
    while i < text.len() {
        match mounts.iter().find(|m| text[i..].starts_with(m.as_str())) {
            Some(m) => {
                out.push_str(&root.display().to_string());
                out.push_str(m);
                i += m.len();
            }
            None => {
                let c = text[i..].chars().next().expect("char");
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

impl Pod {
    /// The single container of `deployment`'s pod template as pod `name` of namespace `ns`,
    /// its volumes written under `root`.
    pub fn from_deployment(
        cluster: &Cluster,
        ns: &str,
        deployment: &Value,
        name: &str,
        root: &Path,
    ) -> Self {
        let spec = &deployment["spec"]["template"]["spec"];
        let what = deployment["metadata"]["name"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        let containers = spec["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "{what}: one container expected");
        assert!(
            spec["initContainers"].is_null(),
            "{what}: init containers cannot run here"
        );
        let c = containers[0].clone();
        assert!(
            c["workingDir"].is_null(),
            "{what}: workingDir is not supported"
        );
        let root = root.join(name);
        std::fs::create_dir_all(&root).expect("pod root");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");

        // The security context: container over pod.
        let sc = |k: &str| {
            c["securityContext"][k]
                .as_u64()
                .or(spec["securityContext"][k].as_u64())
        };
        let uid = sc("runAsUser");
        let gid = sc("runAsGroup").unwrap_or(0);
        let fs_group = spec["securityContext"]["fsGroup"].as_u64();
        if let Some(g) = fs_group {
            // std's Command cannot add a supplementary group; the primary one is enough when
            // they agree.
            assert_eq!(
                Some(g),
                Some(gid),
                "{what}: fsGroup differs from runAsGroup, cannot emulate"
            );
        }
        let as_root = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false);
        let user = match uid {
            Some(u) if as_root => Some((u as u32, gid as u32)),
            _ => None,
        };

        // Env, in order, as the kubelet resolves it.
        let mut secrets: BTreeMap<(String, String), Option<Data>> = BTreeMap::new();
        let mut data = |kind: &str, obj: &str| {
            secrets
                .entry((kind.to_string(), obj.to_string()))
                .or_insert_with(|| object_data(cluster, ns, kind, obj))
                .clone()
        };
        let mut env: Vec<(String, String)> = Vec::new();
        for from in c["envFrom"].as_array().into_iter().flatten() {
            let prefix = from["prefix"].as_str().unwrap_or("");
            let (kind, r) = if from["secretRef"].is_object() {
                ("secret", &from["secretRef"])
            } else if from["configMapRef"].is_object() {
                ("configmap", &from["configMapRef"])
            } else {
                panic!("{what}: unknown envFrom source {from}")
            };
            let obj = r["name"].as_str().expect("envFrom name");
            match data(kind, obj) {
                Some(d) => {
                    for (k, v) in d {
                        let v = String::from_utf8(v).expect("utf-8 env");
                        env.push((format!("{prefix}{k}"), v));
                    }
                }
                None => assert!(
                    r["optional"] == true,
                    "{what}: envFrom {kind}/{obj} does not exist"
                ),
            }
        }
        for e in c["env"].as_array().into_iter().flatten() {
            let var = e["name"].as_str().expect("env name").to_string();
            let value = if let Some(v) = e["value"].as_str() {
                Some(expand(v, &env))
            } else if e["valueFrom"].is_null() {
                Some(String::new())
            } else {
                let from = &e["valueFrom"];
                let (kind, r) = if from["secretKeyRef"].is_object() {
                    ("secret", &from["secretKeyRef"])
                } else if from["configMapKeyRef"].is_object() {
                    ("configmap", &from["configMapKeyRef"])
                } else if let Some(field) = from["fieldRef"]["fieldPath"].as_str() {
                    let v = match field {
                        "metadata.name" => name.to_string(),
                        "metadata.namespace" => ns.to_string(),
                        other => panic!("{what}: env {var}: fieldRef {other} is not emulated"),
                    };
                    env.push((var, v));
                    continue;
                } else {
                    panic!("{what}: env {var}: unknown source {from}")
                };
                let obj = r["name"].as_str().expect("ref name");
                let key = r["key"].as_str().expect("ref key");
                let optional = r["optional"] == true;
                match data(kind, obj).map(|d| d.get(key).cloned()) {
                    Some(Some(v)) => Some(String::from_utf8(v).expect("utf-8 env")),
                    Some(None) => {
                        assert!(optional, "{what}: env {var}: {kind} {obj} has no key {key}");
                        None
                    }
                    None => {
                        assert!(optional, "{what}: env {var}: {kind} {obj} does not exist");
                        None
                    }
                }
            };
            if let Some(v) = value {
                env.push((var, v));
            }
        }

        // Volumes: each mount's files under `root`, as the kubelet writes them (owned by root,
        // the group fsGroup when set, mode defaultMode or the item's, read-only).
        let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
        let mut mount_paths = Vec::new();
        let mut files: Vec<(PathBuf, Vec<u8>, u32)> = Vec::new();
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let vname = m["name"].as_str().expect("mount name");
            let at = m["mountPath"].as_str().expect("mountPath").to_string();
            let v = volumes
                .iter()
                .find(|v| v["name"] == vname)
                .unwrap_or_else(|| panic!("{what}: mount {vname} names no volume"));
            let (kind, src, obj) = if let Some(s) = v["secret"].as_object() {
                ("secret", s, s.get("secretName"))
            } else if let Some(s) = v["configMap"].as_object() {
                ("configmap", s, s.get("name"))
            } else if v["emptyDir"].is_object() {
                let dir = PathBuf::from(format!("{}{at}", root.display()));
                std::fs::create_dir_all(&dir).expect("emptyDir");
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                    .expect("chmod");
                mount_paths.push(at);
                continue;
            } else {
                panic!("{what}: volume {vname}: source not emulated: {v}")
            };
            let obj = obj.and_then(Value::as_str).expect("volume object name");
            let optional = src.get("optional") == Some(&Value::Bool(true));
            let default_mode = src
                .get("defaultMode")
                .and_then(Value::as_u64)
                .unwrap_or(0o644) as u32;
            let Some(d) = data(kind, obj) else {
                assert!(
                    optional,
                    "{what}: volume {vname}: {kind} {obj} does not exist"
                );
                continue;
            };
            let mut entries: Vec<(String, Vec<u8>, u32)> = Vec::new();
            match src.get("items").and_then(Value::as_array) {
                Some(items) => {
                    for it in items {
                        let key = it["key"].as_str().expect("item key");
                        let path = it["path"].as_str().expect("item path");
                        let mode = it["mode"].as_u64().map_or(default_mode, |m| m as u32);
                        match d.get(key) {
                            Some(b) => entries.push((path.into(), b.clone(), mode)),
                            None => assert!(
                                optional,
                                "{what}: volume {vname}: {kind} {obj} has no key {key}"
                            ),
                        }
                    }
                }
                None => entries.extend(d.iter().map(|(k, b)| (k.clone(), b.clone(), default_mode))),
            }
            let sub = m["subPath"].as_str().unwrap_or("");
            for (path, bytes, mode) in entries {
                let rel = if sub.is_empty() {
                    path
                } else if path == sub {
                    String::new()
                } else if let Some(r) = path.strip_prefix(&format!("{sub}/")) {
                    r.to_string()
                } else {
                    continue;
                };
                let file = if rel.is_empty() {
                    format!("{}{at}", root.display())
                } else {
                    format!("{}{at}/{rel}", root.display())
                };
                files.push((PathBuf::from(file), bytes, mode));
            }
            mount_paths.push(at);
        }
        for (file, bytes, mode) in files {
            let dir = file.parent().expect("parent");
            std::fs::create_dir_all(dir).expect("mount dir");
            let mut d = dir.to_path_buf();
            while d.starts_with(&root) {
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod dir");
                if !d.pop() {
                    break;
                }
            }
            // The mounted text names mount paths as the pod sees them; relocated like env.
            let bytes = match String::from_utf8(bytes) {
                Ok(text) => relocate(&text, &mount_paths, &root).into_bytes(),
                Err(e) => e.into_bytes(),
            };
            std::fs::write(&file, bytes).expect("write mounted file");
            let mode = if fs_group.is_some() {
                mode | 0o440
            } else {
                mode
            };
            if user.is_some() {
                std::os::unix::fs::chown(&file, Some(0), Some(fs_group.unwrap_or(0) as u32))
                    .expect("chown");
            }
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }

        // Ports: a listen address on a declared container port moves to a free loopback port.
        let mut ports = BTreeMap::new();
        for p in c["ports"].as_array().into_iter().flatten() {
            let port = p["containerPort"].as_i64().expect("containerPort");
            ports.insert(port, coupon_e2e::free_port());
        }
        let listen = |v: &str| -> Option<String> {
            let (host, port) = v.rsplit_once(':')?;
            let host_port = ports.get(&port.parse::<i64>().ok()?)?;
            matches!(host, "0.0.0.0" | "[::]" | "").then(|| format!("127.0.0.1:{host_port}"))
        };
        let mut relocated = ports.keys().map(|_| false).collect::<Vec<_>>();
        let mut translate = |v: &str| -> String {
            if let Some(l) = listen(v) {
                let port: i64 = v.rsplit_once(':').expect("port").1.parse().expect("port");
                let i = ports.keys().position(|p| *p == port).expect("declared");
                relocated[i] = true;
                return l;
            }
            relocate(v, &mount_paths, &root)
        };
        let env: Vec<(String, String)> =
            env.iter().map(|(k, v)| (k.clone(), translate(v))).collect();
        let command: Vec<String> = c["command"]
            .as_array()
            .unwrap_or_else(|| {
                panic!("{what}: no command (the image's entrypoint is unknown here)")
            })
            .iter()
            .map(|a| translate(&expand(a.as_str().expect("command"), &env)))
            .collect();
        let args: Vec<String> = c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| translate(&expand(a.as_str().expect("arg"), &env)))
            .collect();
        for (i, port) in ports.keys().enumerate() {
            assert!(
                relocated[i],
                "{what}: container port {port} is not set in args or env; cannot move it"
            );
        }
        let (program, rest) = command.split_first().expect("command");
        let mut all_args = rest.to_vec();
        all_args.extend(args);
        // The binary goes into the pod's root, as into an image: the pod's user may not reach
        // the build directory (a checkout in a private temporary directory, as CI's is).
        let image_bin = root.join("bin");
        std::fs::create_dir_all(&image_bin).expect("bin dir");
        std::fs::set_permissions(&image_bin, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let in_image = image_bin.join(program);
        if !in_image.exists() {
            // Once per pod root: a running binary cannot be overwritten.
            std::fs::copy(binary(program), &in_image).expect("copy the binary into the pod's root");
        }
        Pod {
            name: name.to_string(),
            program: in_image,
            args: all_args,
            env,
            ports,
            user,
            root,
            container: c,
        }
    }

    /// Starts the process with exactly the resolved env (nothing inherited), output to `log`.
    pub fn spawn(&self, log: &Path) -> Process {
        use std::os::unix::process::CommandExt;
        let file = std::fs::File::create(log).expect("log file");
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            // The kubelet sets HOSTNAME to the pod's name.
            .env("HOSTNAME", &self.name)
            .envs(self.env.iter().cloned())
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", self.program.display()));
        Process {
            child,
            log: log.to_path_buf(),
        }
    }

    /// `(loopback address, path)` of an httpGet probe (`readinessProbe`, `livenessProbe`).
    pub fn probe(&self, kind: &str) -> (String, String) {
        let get = &self.container[kind]["httpGet"];
        assert!(get.is_object(), "{}: no httpGet {kind}", self.name);
        let port = match &get["port"] {
            Value::Number(n) => n.as_i64().expect("port"),
            Value::String(named) => self.container["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == named.as_str())
                .and_then(|p| p["containerPort"].as_i64())
                .unwrap_or_else(|| panic!("{}: {kind} names unknown port {named}", self.name)),
            other => panic!("{}: {kind} port {other}", self.name),
        };
        let host_port = self
            .ports
            .get(&port)
            .unwrap_or_else(|| panic!("{}: {kind} port {port} is not a container port", self.name));
        (
            format!("127.0.0.1:{host_port}"),
            get["path"].as_str().unwrap_or("/").to_string(),
        )
    }

    /// The loopback address of container port `port`.
    pub fn addr(&self, port: i64) -> String {
        format!("127.0.0.1:{}", self.ports[&port])
    }
}

/// A pod's process; killed on drop.
pub struct Process {
    child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Panics with its log when it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.log.display(), self.tail());
        }
    }

    /// SIGTERM (what the kubelet sends), then waits up to `grace` before SIGKILL.
    pub fn terminate(&mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HTTP to a process on loopback; the client keeps its connections alive.
pub struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    pub fn new(addr: &str) -> Self {
        Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
        }
    }

    /// One request with an optional JSON body; `Err` on a transport failure.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| e.to_string())?;
        Ok((status, text))
    }
}

/// Polls `GET path` on `addr` until it answers `want`; panics after `within`.
pub async fn wait_http(addr: &str, path: &str, want: u16, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let last = match Http::new(addr).call("GET", path, None).await {
            Ok((s, _)) if s == want => return,
            Ok((s, b)) => format!("{s} {b}"),
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: GET {addr}{path} did not answer {want} in {within:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
