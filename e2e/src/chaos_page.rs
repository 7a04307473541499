//! A chaos run as one self-contained HTML page: each fault shaded on every timeline, the time
//! from the last fault to balanced books, what the clients saw and the invariants.

use coupon_report::chart::{self, Moment};
use coupon_report::page::{Block, Page, Section, Verdict};

use crate::chaos::ChaosOutcome;

pub fn page(o: &ChaosOutcome) -> Result<String, coupon_report::Error> {
    let faults: Vec<&str> = o.faults.iter().map(|f| f.name()).collect();
    let page = Page {
        title: format!("Chaos: {}", faults.join(", ")),
        facts: facts(o, &faults),
        verdict: verdict(o),
        sections: vec![
            Section {
                title: "How the run unfolded".into(),
                blocks: charts(o)?,
            },
            Section {
                title: "What happened".into(),
                blocks: vec![Block::Table {
                    title: "Notes".into(),
                    head: vec!["at".into(), "what".into()],
                    rows: o
                        .notes
                        .iter()
                        .map(|(at, line)| vec![format!("{at:.1} s"), line.clone()])
                        .collect(),
                }],
            },
            Section {
                title: "Clients and settlement".into(),
                blocks: vec![Block::Table {
                    title: "Answers".into(),
                    head: vec!["what".into(), "count".into()],
                    rows: clients(o),
                }],
            },
            Section {
                title: "Integrity (I1-I6)".into(),
                blocks: vec![Block::Invariants(o.report.checks.clone())],
            },
        ],
    };
    Ok(page.render())
}

fn facts(o: &ChaosOutcome, faults: &[&str]) -> Vec<(String, String)> {
    let c = &o.clients;
    let mut facts = vec![
        ("campaign".into(), o.campaign.clone()),
        ("faults".into(), faults.join(", ")),
        ("when".into(), o.run.started_at.clone()),
        ("machine".into(), o.run.machine.clone()),
    ];
    facts.extend(o.run.backends.iter().cloned());
    facts.push((
        "load".into(),
        format!(
            "{} requests: {} accepted, {} answers lost (ambiguous), {} retries",
            c.requests,
            c.accepted.len(),
            c.ambiguous.len(),
            c.retries
        ),
    ));
    facts
}

/// The timelines, each with the faults shaded and the moments the books turned.
fn charts(o: &ChaosOutcome) -> Result<Vec<Block>, coupon_report::Error> {
    let t = &o.timeline;
    let mut moments = vec![Moment {
        at_s: o.last_fault_s,
        label: "last fault over".into(),
    }];
    if let Some(at_s) = o.balanced_at_s {
        moments.push(Moment {
            at_s,
            label: "books balanced".into(),
        });
    }
    let chart = |svg: String, caption: &str| Block::Chart {
        svg,
        caption: caption.into(),
    };
    Ok(vec![
        chart(
            chart::requests(t, &moments)?,
            "Final answers per second (a request retried after a lost answer counts once); shaded: each fault, from its start to its repair.",
        ),
        chart(
            chart::latency(t, &moments)?,
            "Latency per second, from a request's first attempt to its final answer (retries included).",
        ),
        chart(
            chart::lag(t, &moments)?,
            "Consumer lag per partition; gaps are seconds the broker could not be asked.",
        ),
    ])
}

fn verdict(o: &ChaosOutcome) -> Verdict {
    let passed = o.problems.is_empty();
    Verdict {
        passed,
        headline: match (passed, o.balanced_after) {
            (true, Some(d)) => format!(
                "every promise kept; books balanced {:.1} s after the last fault",
                d.as_secs_f64()
            ),
            (true, None) => "every promise kept".into(),
            (false, _) => format!("{} broken promise(s)", o.problems.len()),
        },
        problems: o.problems.clone(),
    }
}

fn clients(o: &ChaosOutcome) -> Vec<Vec<String>> {
    let c = &o.clients;
    let mut rows = vec![
        vec!["requests".into(), c.requests.to_string()],
        vec!["accepted (202)".into(), c.accepted.len().to_string()],
        vec![
            "answers lost (ambiguous)".into(),
            c.ambiguous.len().to_string(),
        ],
        vec!["retries with the same key".into(), c.retries.to_string()],
    ];
    rows.extend(
        c.refused
            .iter()
            .map(|(code, n)| vec![format!("refused: {code}"), n.to_string()]),
    );
    rows.push(vec![
        "unexpected answers".into(),
        c.unexpected.len().to_string(),
    ]);
    rows.push(vec![
        "reservations settled: kept (issued)".into(),
        o.kept.to_string(),
    ]);
    rows.push(vec![
        "reservations settled: released (no event)".into(),
        o.released.to_string(),
    ]);
    rows
}
