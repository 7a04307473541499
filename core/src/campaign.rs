//! The campaign definition: the same YAML a user `kubectl apply`s, parsed and validated once here.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::error::BadCampaignName;
use crate::error::Error;

pub const API_GROUP: &str = "coupons.fcfs.dev";
pub const API_VERSION: &str = "coupons.fcfs.dev/v1alpha1";
pub const KIND: &str = "CouponCampaign";

pub use crate::ids::{CouponId, UserId};

/// The `spec` of a `CouponCampaign`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CampaignSpec {
    /// Coupon groups; `ids` may be a single id or an inclusive range like `"1-20"`.
    /// Bounded so the CRD's CEL rules stay within the API server's cost budget; a list map
    /// keyed by `ids`, so the API server refuses a repeated entry.
    // Uniqueness by list-map key, not CEL: a rule comparing every pair was estimated far over
    // the cost budget, and a real API server refused the CRD.
    #[schemars(
        length(min = 1, max = 200),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["ids"])
    )]
    pub coupons: Vec<CouponGroup>,
    /// Issuance opens at this instant (RFC 3339). Absent: open now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<DateTime<Utc>>,
    /// Issuance closes at this instant (RFC 3339), exclusive. Absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<DateTime<Utc>>,
    /// The Kafka topic carrying issuance events.
    #[serde(default)]
    pub topic: TopicSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicSpec {
    /// Partition count; may only grow once the topic exists.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Topic name; defaults to `coupons.<campaign>.issued`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn default_partitions() -> i32 {
    3
}

impl Default for TopicSpec {
    fn default() -> Self {
        Self {
            partitions: default_partitions(),
            name: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CouponGroup {
    pub ids: CouponIds,
    /// Display name; `{id}` is replaced by each coupon's id.
    pub name: String,
    /// Discount in the currency's minor unit as the seed used it (KRW).
    pub discount: i64,
    /// Coupons available per id.
    pub quantity: i64,
    /// Stock counters each coupon's quantity is split over, each on its own Redis slot (so a
    /// Redis Cluster spreads one hot coupon over its masters). 1 (the default) unless one
    /// coupon alone needs more than one Redis master's rate; fixed once the coupon exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub shards: Option<u16>,
}

/// One id or an inclusive range of ids; YAML `7` or `"1-20"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CouponIds {
    pub first: CouponId,
    pub last: CouponId,
}

impl CouponIds {
    pub fn iter(self) -> impl Iterator<Item = CouponId> {
        self.first..=self.last
    }
}

impl fmt::Display for CouponIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Why a coupon id range does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadCouponIds {
    #[error("coupon id {0:?} is not a positive integer")]
    NotAnInteger(String),
    #[error("coupon ids {0:?} must be positive and ascending (e.g. \"1-20\")")]
    NotAscending(String),
}

impl std::str::FromStr for CouponIds {
    type Err = BadCouponIds;
    fn from_str(s: &str) -> Result<Self, BadCouponIds> {
        let parse = |p: &str| {
            p.trim()
                .parse::<CouponId>()
                .map_err(|_| BadCouponIds::NotAnInteger(p.to_string()))
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => {
                let id = parse(s)?;
                (id, id)
            }
        };
        if first == 0 || last < first {
            return Err(BadCouponIds::NotAscending(s.to_string()));
        }
        Ok(Self { first, last })
    }
}

impl Serialize for CouponIds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.first == self.last {
            s.serialize_u32(self.first)
        } else {
            s.collect_str(self)
        }
    }
}

impl<'de> Deserialize<'de> for CouponIds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Int(n) => n.to_string(),
            Raw::Str(s) => s,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for CouponIds {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CouponIds".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // The structural int-or-string form Kubernetes accepts; the format is checked on parse.
        schemars::json_schema!({
            "description": "One coupon id (7) or an inclusive range (\"1-20\").",
            "x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer"}, {"type": "string"}]
        })
    }
}

/// The manifest a user applies; only what this system reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CampaignManifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: CampaignSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metadata {
    pub name: String,
}

/// One coupon after expanding the groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Coupon {
    pub id: CouponId,
    pub name: String,
    pub discount: i64,
    pub quantity: i64,
    /// Stock counters in the gate (see [`CouponGroup::shards`]).
    #[serde(default = "one_shard")]
    pub shards: u16,
}

fn one_shard() -> u16 {
    1
}

/// A validated campaign: a name safe for keys and topics, and its spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Campaign {
    pub name: String,
    pub spec: CampaignSpec,
}

impl Campaign {
    /// Parses and validates a `CouponCampaign` manifest.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let manifest: CampaignManifest =
            serde_yaml::from_str(text).map_err(|e| Error::CampaignParse(e.to_string()))?;
        if manifest.kind != KIND {
            return Err(Error::CampaignInvalid(vec![format!(
                "kind is {:?}, expected {KIND:?}",
                manifest.kind
            )]));
        }
        if manifest.api_version != API_VERSION {
            return Err(Error::CampaignInvalid(vec![format!(
                "apiVersion is {:?}, expected {API_VERSION:?}",
                manifest.api_version
            )]));
        }
        Self::new(manifest.metadata.name, manifest.spec)
    }

    pub fn new(name: String, spec: CampaignSpec) -> Result<Self, Error> {
        let mut problems = Vec::new();
        if let Err(e) = validate_name(&name) {
            problems.push(e.to_string());
        }
        problems.extend(validate_spec(&spec));
        if problems.is_empty() {
            Ok(Self { name, spec })
        } else {
            Err(Error::CampaignInvalid(problems))
        }
    }

    /// Every coupon, ordered by id.
    pub fn coupons(&self) -> Vec<Coupon> {
        let mut out: Vec<Coupon> = self
            .spec
            .coupons
            .iter()
            .flat_map(|g| {
                g.ids.iter().map(move |id| Coupon {
                    id,
                    name: g.name.replace("{id}", &id.to_string()),
                    discount: g.discount,
                    quantity: g.quantity,
                    shards: g.shards.unwrap_or(1),
                })
            })
            .collect();
        out.sort_by_key(|c| c.id);
        out
    }

    pub fn total_quantity(&self) -> i64 {
        self.coupons().iter().map(|c| c.quantity).sum()
    }

    pub fn topic(&self) -> String {
        self.spec
            .topic
            .name
            .clone()
            .unwrap_or_else(|| topic_name(&self.name))
    }

    pub fn window(&self) -> Window {
        Window {
            starts_at: self.spec.starts_at,
            ends_at: self.spec.ends_at,
        }
    }
}

/// The issuance window; `None` ends are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
}

impl Window {
    /// Milliseconds since the epoch, 0 for an open end (the gate's encoding).
    pub fn millis(self) -> (i64, i64) {
        let ms = |t: Option<DateTime<Utc>>| t.map_or(0, |t| t.timestamp_millis());
        (ms(self.starts_at), ms(self.ends_at))
    }
}

/// Default topic of a campaign's issuance events.
pub fn topic_name(campaign: &str) -> String {
    format!("coupons.{campaign}.issued")
}

/// Dead-letter topic for a campaign's poison events.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// Consumer group that writes a campaign's ledger.
pub fn consumer_group(campaign: &str) -> String {
    format!("coupon-consumer.{campaign}")
}

/// Campaign names end up in Redis keys, topic names and Kubernetes object names: a DNS label.
pub fn validate_name(name: &str) -> Result<(), BadCampaignName> {
    let ok = !name.is_empty()
        && name.len() <= 50
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(BadCampaignName(name.to_string()))
    }
}

fn validate_spec(spec: &CampaignSpec) -> Vec<String> {
    let mut problems = Vec::new();
    if spec.coupons.is_empty() {
        problems.push("spec.coupons is empty".to_string());
    }
    let mut seen = BTreeSet::new();
    for (i, g) in spec.coupons.iter().enumerate() {
        if g.quantity <= 0 {
            problems.push(format!(
                "spec.coupons[{i}] ({}): quantity must be positive, got {}",
                g.ids, g.quantity
            ));
        }
        if g.discount < 0 {
            problems.push(format!(
                "spec.coupons[{i}] ({}): discount must not be negative",
                g.ids
            ));
        }
        if g.name.trim().is_empty() {
            problems.push(format!("spec.coupons[{i}] ({}): name is empty", g.ids));
        }
        if let Some(k) = g.shards
            && !(1..=crate::gate::shards::MAX_SHARDS).contains(&k)
        {
            problems.push(format!(
                "spec.coupons[{i}] ({}): shards must be between 1 and {}, got {k}",
                g.ids,
                crate::gate::shards::MAX_SHARDS
            ));
        }
        if u64::from(g.ids.last - g.ids.first) >= 1_000_000 {
            problems.push(format!("spec.coupons[{i}]: range {} is too large", g.ids));
            continue;
        }
        let dups: Vec<_> = g.ids.iter().filter(|id| !seen.insert(*id)).collect();
        if let Some(first) = dups.first() {
            problems.push(format!(
                "spec.coupons[{i}]: coupon id {first} is defined more than once"
            ));
        }
    }
    if let (Some(s), Some(e)) = (spec.starts_at, spec.ends_at)
        && e <= s
    {
        problems.push(format!(
            "spec.endsAt ({e}) must be after spec.startsAt ({s})"
        ));
    }
    if !(1..=1000).contains(&spec.topic.partitions) {
        problems.push(format!(
            "spec.topic.partitions must be between 1 and 1000, got {}",
            spec.topic.partitions
        ));
    }
    if let Some(name) = &spec.topic.name {
        let valid = !name.is_empty()
            && name.len() <= 200
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            problems.push(format!(
                "spec.topic.name {name:?} is not a valid Kafka topic name"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = include_str!("../../examples/seed-campaign.yaml");

    #[test]
    fn seed_campaign_reproduces_the_seed_exactly() {
        let c = Campaign::from_yaml(SEED).expect("seed campaign parses");
        let coupons = c.coupons();
        assert_eq!(coupons.len(), 100);
        // The seed report says "109,000 in all", but its own tiers sum to 20 × 8,600 = 172,000.
        assert_eq!(c.total_quantity(), 172_000);
        assert_eq!(c.spec.topic.partitions, 3);
        let tier = |id: u32| {
            let c = &coupons[(id - 1) as usize];
            (c.id, c.quantity, c.discount)
        };
        assert_eq!(tier(1), (1, 100, 1_000));
        assert_eq!(tier(20), (20, 100, 1_000));
        assert_eq!(tier(21), (21, 500, 3_000));
        assert_eq!(tier(41), (41, 1_000, 5_000));
        assert_eq!(tier(80), (80, 2_000, 10_000));
        assert_eq!(tier(100), (100, 5_000, 20_000));
    }

    #[test]
    fn invalid_specs_say_what_is_wrong() {
        let yaml = r#"
apiVersion: coupons.fcfs.dev/v1alpha1
kind: CouponCampaign
metadata: {name: Bad_Name}
spec:
  startsAt: 2026-01-02T00:00:00Z
  endsAt: 2026-01-01T00:00:00Z
  topic: {partitions: 0}
  coupons:
    - {ids: "1-3", name: a, discount: 1, quantity: 0}
    - {ids: 3, name: b, discount: 1, quantity: 5}
"#;
        let Err(Error::CampaignInvalid(problems)) = Campaign::from_yaml(yaml) else {
            panic!("expected validation errors");
        };
        let all = problems.join("\n");
        for needle in [
            "campaign name",
            "quantity must be positive",
            "coupon id 3",
            "endsAt",
            "partitions",
        ] {
            assert!(all.contains(needle), "{needle:?} missing from {all}");
        }
    }

    #[test]
    fn ids_accept_int_and_range_and_reject_garbage() {
        assert_eq!(
            "7".parse::<CouponIds>(),
            Ok(CouponIds { first: 7, last: 7 })
        );
        assert_eq!(
            "1-20".parse::<CouponIds>(),
            Ok(CouponIds { first: 1, last: 20 })
        );
        assert!("20-1".parse::<CouponIds>().is_err());
        assert!("0".parse::<CouponIds>().is_err());
        assert!("x".parse::<CouponIds>().is_err());
    }
}
