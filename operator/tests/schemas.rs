//! The CRD and every child object validate against the Kubernetes schemas (kubernetes-validate,
//! offline; scripts/test.sh installs it from PyPI).

use std::process::Command;

fn validate(file: &std::path::Path) {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.33.0"])
        .arg(file)
        .output()
        .expect("kubernetes-validate is installed (pip install kubernetes-validate)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("ERROR"),
        "{}:\n{text}",
        file.display()
    );
}

#[test]
fn crd_and_children_validate_against_the_kubernetes_schemas() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
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
    let file = std::env::temp_dir().join(format!("children-{}.yaml", std::process::id()));
    std::fs::write(&file, yaml).expect("write");
    validate(&file);
    let _ = std::fs::remove_file(file);
}
