//! The CRD on a real API server (`scripts/cluster.sh up`: etcd, kube-apiserver and
//! kube-controller-manager built from source): applied and Established, the seed example
//! applied with the built kubectl, every CEL rule and schema constraint enforced by the server
//! itself with its own message, and the printer columns as `kubectl get` prints them.

mod common;

use common::campaigns::{Bad, campaign, rule_cases, schema_cases};
use common::cluster::Cluster;
use serde_json::{Value, json};

/// `bad` sent to the server as a create (or as an update of the stored seed): refused, naming
/// its rule.
fn assert_refused(cluster: &Cluster, ns: &str, n: usize, bad: &Bad) {
    let mut cc = bad.campaign.clone();
    let name = if bad.updates_seed {
        "seed".to_string()
    } else {
        format!("bad-{n}")
    };
    cc["metadata"] = json!({"name": name, "namespace": ns});
    let out = cluster.kubectl(&["apply", "-f", "-"], Some(&cc.to_string()));
    assert!(
        !out.ok,
        "the server accepted a bad campaign ({}): {}",
        bad.message, out.stdout
    );
    assert!(
        out.stderr.contains(bad.message),
        "refused, but not with {:?}: {}",
        bad.message,
        out.stderr
    );
    let stored = cluster.kubectl(&["get", "-n", ns, "couponcampaign", &name], None);
    assert_eq!(
        stored.ok, bad.updates_seed,
        "a refused create stores nothing: {}",
        stored.stdout
    );
}

#[tokio::test]
async fn the_api_server_enforces_every_rule_and_prints_the_columns() {
    let cluster = Cluster::from_env();
    cluster.install_crds();
    let ns = cluster.namespace("crd");
    let applied = cluster.ok(
        &["apply", "-n", &ns.name, "-f", "examples/seed-campaign.yaml"],
        None,
    );
    assert!(
        applied.contains("couponcampaign.coupons.fcfs.dev/seed created"),
        "{applied}"
    );

    // Defaults come from the structural schema, applied by the server.
    let stored: Value = serde_json::from_str(&cluster.ok(
        &[
            "get",
            "-n",
            &ns.name,
            "couponcampaign",
            "seed",
            "-o",
            "json",
        ],
        None,
    ))
    .expect("json");
    assert_eq!(stored["spec"]["deletionPolicy"], "Retain");
    assert_eq!(stored["spec"]["consumers"]["minReplicas"], 1);
    assert_eq!(stored["spec"]["api"]["identity"], "body");

    for (n, bad) in rule_cases().iter().chain(schema_cases().iter()).enumerate() {
        assert_refused(&cluster, &ns.name, n, bad);
    }
    // A change no rule forbids is accepted: partitions grow.
    let mut grown = campaign(json!({"topic": {"partitions": 6}}));
    grown["metadata"] = json!({"name": "seed", "namespace": ns.name});
    cluster.ok(&["apply", "-f", "-"], Some(&grown.to_string()));

    const COLUMNS: [&str; 7] = [
        "NAME",
        "PHASE",
        "ISSUED",
        "REMAINING",
        "LAG",
        "CONSUMERS",
        "AGE",
    ];
    const WIDE: [&str; 3] = ["QUANTITY", "PARTITIONS", "BOOKS"];
    let table = cluster.ok(&["get", "-n", &ns.name, "couponcampaigns"], None);
    assert_eq!(header(&table), COLUMNS, "{table}");
    assert!(
        table.lines().nth(1).unwrap_or("").starts_with("seed "),
        "{table}"
    );
    let wide = cluster.ok(&["get", "-n", &ns.name, "cc", "-o", "wide"], None);
    assert_eq!(header(&wide), [&COLUMNS[..], &WIDE[..]].concat(), "{wide}");
    assert_eq!(cell(&wide, "PARTITIONS"), "6", "{wide}");
}

/// The column names of a table kubectl printed.
fn header(table: &str) -> Vec<&str> {
    table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect()
}

/// The first row's value in `column` of a table kubectl printed (columns may be blank).
fn cell(table: &str, column: &str) -> String {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or("");
    let row = lines.next().unwrap_or("");
    let start = header
        .find(column)
        .unwrap_or_else(|| panic!("no {column}: {table}"));
    let end = header[start..]
        .find(char::is_whitespace)
        .and_then(|w| {
            header[start + w..]
                .find(|c: char| !c.is_whitespace())
                .map(|n| start + w + n)
        })
        .unwrap_or(row.len());
    row.get(start..end.min(row.len()))
        .unwrap_or("")
        .trim()
        .to_string()
}
