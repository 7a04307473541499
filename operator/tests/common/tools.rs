//! The command-line checkers the install tests call (scripts/tools.sh installs them into
//! .tools/bin and scripts/test.sh puts that on PATH): helm, kubernetes-validate, promtool.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn chart() -> PathBuf {
    root().join("charts/coupon-operator")
}

/// Runs a tool; (success, stdout + stderr). Panics with the install hint when it is missing.
pub fn run(tool: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!("{tool} is not on PATH ({e}); run eval \"$(scripts/tools.sh)\"")
        });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A workspace binary next to this test's own executable (scripts/test.sh builds them first with
/// `cargo build --workspace --bins`: `cargo test` alone builds only the tested package's own).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run scripts/test.sh or cargo build --workspace --bins first",
        path.display()
    );
    path
}

/// A unique scratch file under the system temp dir.
pub fn scratch(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}-{name}", std::process::id()));
    std::fs::write(&path, text).expect("write scratch file");
    path
}

pub fn validate(file: &Path) {
    let (ok, out, err) = run(
        "kubernetes-validate",
        &["--strict", "-k", "1.33.0", &file.to_string_lossy()],
    );
    let text = format!("{out}{err}");
    assert!(ok && !text.contains("ERROR"), "{}:\n{text}", file.display());
}

/// `helm template` of the chart with `--set` values; the documents, parsed.
pub fn helm_template(sets: &[&str]) -> Result<Vec<serde_yaml::Value>, String> {
    let chart = chart();
    let mut args = vec![
        "template",
        "coupon-operator",
        chart.to_str().expect("utf-8 path"),
    ];
    args.extend(["--namespace", "coupon-system"]);
    for s in sets {
        args.extend(["--set", s]);
    }
    let (ok, out, err) = run("helm", &args);
    if !ok {
        return Err(err);
    }
    Ok(out
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).ok())
        .filter(|v| v.get("kind").is_some())
        .collect())
}

pub const EVERY_OPTION: &[&str] = &[
    "metrics.serviceMonitor.enabled=true",
    "metrics.podMonitor.enabled=true",
    "prometheusRule.enabled=true",
];

/// The `(apiGroup, resource, verb)` grants of the chart's ClusterRoles and Roles, rendered with
/// `sets`; with `only_in`, Roles of other namespaces (and every ClusterRole) are left out.
pub fn chart_grants(sets: &[&str], only_in: Option<&str>) -> Vec<(String, String, String)> {
    let docs = helm_template(sets).expect("chart renders");
    let mut grants = Vec::new();
    for d in docs
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("ClusterRole") | Some("Role")))
        .filter(|d| {
            only_in.is_none_or(|ns| {
                d["kind"].as_str() == Some("Role")
                    && (d["metadata"]["namespace"].as_str() == Some(ns)
                        || d["metadata"]["name"]
                            .as_str()
                            .is_some_and(|n| n.ends_with("leader-election")))
            })
        })
    {
        for rule in d["rules"].as_sequence().into_iter().flatten() {
            let strs = |k: &str| -> Vec<String> {
                rule[k]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            };
            for g in strs("apiGroups") {
                for r in strs("resources") {
                    for v in strs("verbs") {
                        grants.push((g.clone(), r.clone(), v));
                    }
                }
            }
        }
    }
    grants
}
