//! The CRD and every child object validate against the Kubernetes schemas (kubernetes-validate,
//! offline; scripts/tools.sh installs it from PyPI).

mod common;

use common::tools::{root, scratch, validate};
use std::process::Command;

#[test]
fn crd_and_children_validate_against_the_kubernetes_schemas() {
    let root = root();
    validate(&root.join("crds/couponcampaigns.coupons.fcfs.dev.yaml"));
    let out = Command::new(env!("CARGO_BIN_EXE_coupon-operator"))
        .args(["manifests", "-f"])
        .arg(root.join("examples/seed-campaign.yaml"))
        .output()
        .expect("coupon-operator runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(yaml.matches("\nkind: ").count(), 5, "{yaml}");
    let file = scratch("children.yaml", &yaml);
    validate(&file);
    let _ = std::fs::remove_file(file);
}
