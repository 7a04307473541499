//! The seed campaign and one bad campaign per rule of the CRD: the CEL test evaluates the rules
//! with kube's evaluator, the control-plane test sends the same campaigns to a real API server.

use serde_json::{Value, json};

pub const SEED: &str = include_str!("../../../examples/seed-campaign.yaml");

/// The seed campaign as the API server stores it: defaults applied, then `patch` merged into
/// its spec.
pub fn campaign(patch: Value) -> Value {
    let mut cc: Value = serde_yaml::from_str(SEED).expect("seed parses");
    let spec = cc["spec"].as_object_mut().expect("spec");
    spec.insert(
        "consumers".into(),
        json!({"minReplicas": 1, "maxReplicas": 6, "targetLagPerReplica": 1000,
               "scaleDownStabilizationSeconds": 60}),
    );
    if let Value::Object(p) = patch {
        for (k, v) in p {
            spec.insert(k, v);
        }
    }
    cc
}

/// A campaign some rule refuses, and that rule's message.
pub struct Bad {
    pub campaign: Value,
    /// True when the rule judges a change: the campaign is an update of the seed.
    pub updates_seed: bool,
    pub message: &'static str,
}

/// The seed with `patch`, refused on create with `message`.
fn bad(patch: Value, message: &'static str) -> Bad {
    Bad {
        campaign: campaign(patch),
        updates_seed: false,
        message,
    }
}

/// One bad campaign per CEL rule (`x-kubernetes-validations`).
pub fn rule_cases() -> Vec<Bad> {
    vec![
        bad(
            json!({"coupons": [{"ids": "1-5", "name": "c", "discount": 1, "quantity": -3}]}),
            "every coupon quantity must be positive",
        ),
        bad(
            json!({"startsAt": "2026-12-01T11:00:00Z", "endsAt": "2026-12-01T10:00:00Z"}),
            "endsAt must be after startsAt",
        ),
        Bad {
            campaign: campaign(json!({"topic": {"partitions": 2}})),
            updates_seed: true,
            message: "topic partitions may only grow",
        },
        bad(
            json!({"consumers": {"minReplicas": 5, "maxReplicas": 2,
                "targetLagPerReplica": 1000, "scaleDownStabilizationSeconds": 60}}),
            "consumers.minReplicas must not exceed maxReplicas",
        ),
    ]
}

/// One bad campaign per kind of structural-schema constraint (list-map keys, pattern, enum,
/// bounds, item counts, types); only a real API server checks these.
pub fn schema_cases() -> Vec<Bad> {
    vec![
        bad(
            json!({"coupons": [
                {"ids": "1-5", "name": "a", "discount": 1, "quantity": 3},
                {"ids": "1-5", "name": "b", "discount": 1, "quantity": 3}
            ]}),
            "spec.coupons[1]: Duplicate value",
        ),
        bad(json!({"api": {"identity": "cookie"}}), "spec.api.identity"),
        bad(json!({"deletionPolicy": "Shred"}), "spec.deletionPolicy"),
        bad(json!({"coupons": []}), "spec.coupons"),
        bad(
            json!({"coupons": [{"ids": 1, "name": "c", "discount": 1, "quantity": 5, "shards": 65}]}),
            "spec.coupons[0].shards",
        ),
        bad(json!({"startsAt": "tomorrow morning"}), "spec.startsAt"),
        bad(
            json!({"topic": {"partitions": "three"}}),
            "spec.topic.partitions",
        ),
    ]
}
