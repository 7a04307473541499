//! The CRD in crds/ is what the Rust types generate, and the seed example is a valid resource.

use coupon_operator::crd::{CouponCampaign, DeletionPolicy, crd_yaml};

const CHECKED_IN: &str = include_str!("../../crds/couponcampaigns.coupons.fcfs.dev.yaml");

#[test]
fn crds_directory_matches_the_types() {
    assert!(
        crd_yaml() == CHECKED_IN,
        "crds/ drifted from the Rust types: run `cargo run -p coupon-operator -- crdgen > crds/couponcampaigns.coupons.fcfs.dev.yaml`"
    );
}

#[test]
fn the_seed_example_is_accepted_with_defaults() {
    let cc: CouponCampaign =
        serde_yaml::from_str(include_str!("../../examples/seed-campaign.yaml")).expect("parses");
    assert_eq!(cc.spec.campaign.coupons.len(), 5);
    assert_eq!(cc.spec.campaign.topic.partitions, 3);
    assert_eq!(cc.spec.deletion_policy, DeletionPolicy::Retain);
    assert_eq!(cc.spec.connections.database.name, "coupon-backends");
    assert_eq!(cc.spec.consumers.min_replicas, 1);
    let campaign =
        coupon_core::campaign::Campaign::new("seed".into(), cc.spec.campaign).expect("valid");
    assert_eq!(campaign.coupons().len(), 100);
}

#[test]
fn the_schema_carries_the_cel_rules_and_printer_columns() {
    let crd = crd_yaml();
    for needle in [
        "x-kubernetes-validations",
        "self.topic.partitions >= oldSelf.topic.partitions",
        "x-kubernetes-int-or-string: true",
        "shortNames:\n    - cc",
        "jsonPath: .status.phase",
        "jsonPath: .status.lag",
    ] {
        assert!(
            crd.contains(needle),
            "{needle:?} missing from the CRD:\n{crd}"
        );
    }
}
