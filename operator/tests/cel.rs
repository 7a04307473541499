//! The CRD's CEL rules, evaluated on the checked-in CRD (kube's `cel` feature, no API server):
//! the seed example passes, and one bad campaign per rule is refused with that rule's message.

mod common;

use common::campaigns::{campaign, rule_cases};
use kube::core::cel::Validator;
use serde_json::{Value, json};

const CRD: &str = include_str!("../../crds/couponcampaigns.coupons.fcfs.dev.yaml");

fn schema() -> Value {
    let crd: Value = serde_yaml::from_str(CRD).expect("CRD parses");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// The messages of the rules `obj` breaks (`old`: the stored object of an update).
fn broken(obj: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(&schema(), obj, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn the_seed_example_passes_every_rule_on_create_and_update() {
    let seed = campaign(json!({}));
    assert_eq!(broken(&seed, None), Vec::<String>::new());
    let grown = campaign(json!({"topic": {"partitions": 6}}));
    assert_eq!(broken(&grown, Some(&seed)), Vec::<String>::new());
    let windowed = campaign(json!({
        "startsAt": "2026-12-01T10:00:00Z", "endsAt": "2026-12-01T11:00:00Z"
    }));
    assert_eq!(broken(&windowed, None), Vec::<String>::new());
    let sharded = campaign(json!({"coupons": [
        {"ids": 21, "name": "launch special", "discount": 50000, "quantity": 100000, "shards": 4}
    ]}));
    assert_eq!(broken(&sharded, None), Vec::<String>::new());
}

#[test]
fn every_rule_refuses_its_bad_campaign_with_its_message() {
    let seed = campaign(json!({}));
    for bad in rule_cases() {
        let errors = broken(&bad.campaign, bad.updates_seed.then_some(&seed));
        assert!(
            errors.iter().any(|e| e.contains(bad.message)),
            "expected {:?}, got {errors:?}",
            bad.message
        );
        assert_eq!(errors.len(), 1, "only its own rule breaks: {errors:?}");
    }
}
