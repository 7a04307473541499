//! The drop report and the bench report as one self-contained HTML page each (`--html`):
//! the charts of how the run unfolded above the same tables the terminal shows.

use coupon_core::verify::Status;
use coupon_report::chart::{self, Bars, Moment};
use coupon_report::page::{Block, Page, Section, Verdict};
use coupon_report::timeline::Timeline;

use crate::bench::BenchReport;
use crate::report::{Report, Table};

pub fn drop_page(r: &Report) -> Result<String, coupon_report::Error> {
    let tables = r.tables();
    let table = |prefix: &'static str| -> Vec<Block> {
        tables
            .iter()
            .filter(|t| t.title.starts_with(prefix))
            .map(to_block)
            .collect()
    };
    let mut sections = vec![
        Section {
            title: "Requests".into(),
            blocks: requests_charts(r)?,
        },
        Section {
            title: "Consumer".into(),
            blocks: consumer_charts(r)?,
        },
        Section {
            title: "Issuance".into(),
            blocks: vec![issuance_chart(r)?],
        },
        Section {
            title: "Integrity (I1-I6)".into(),
            blocks: vec![Block::Invariants(r.integrity.checks.clone())],
        },
    ];
    // The terminal's tables under the charts they explain.
    sections[0].blocks.extend(table("4."));
    sections[1].blocks.extend(table("5."));
    sections[2]
        .blocks
        .extend(table("6.4").into_iter().chain(table("7")));
    let page = Page {
        title: format!("Drop report: campaign {}", r.campaign),
        facts: header(r),
        verdict: drop_verdict(r),
        sections,
    };
    Ok(page.render())
}

/// When each tier's last coupon sold out, and the last answer.
fn moments(r: &Report) -> Vec<Moment> {
    let sold_out = r.tiers.iter().filter_map(|tier| {
        tier.sold_out_at_s.map(|at_s| Moment {
            at_s,
            label: format!("coupons {} sold out", tier.ids),
        })
    });
    sold_out
        .chain(std::iter::once(Moment {
            at_s: r.timeline.load_end_s,
            label: "last answer".into(),
        }))
        .collect()
}

fn requests_charts(r: &Report) -> Result<Vec<Block>, coupon_report::Error> {
    let (t, moments) = (&r.timeline, moments(r));
    let last_answer = &moments[moments.len() - 1..];
    Ok(vec![
        chart_block(
            chart::requests(t, &moments)?,
            "Each second's answers by outcome; the lines mark when a tier's last coupon sold out and the last answer.",
        ),
        chart_block(
            chart::latency(t, last_answer)?,
            "p50, p95 and p99 of the answers completed in each second (closed loops corrected for coordinated omission).",
        ),
        chart_block(
            chart::users(t, last_answer)?,
            "The load's shape: virtual users (seed) or connections.",
        ),
    ])
}

fn consumer_charts(r: &Report) -> Result<Vec<Block>, coupon_report::Error> {
    let last_answer = [Moment {
        at_s: r.timeline.load_end_s,
        label: "last answer".into(),
    }];
    let shares = Bars {
        title: "Events of this run per partition",
        value_desc: "share of events, %",
        categories: r
            .partitions
            .iter()
            .map(|p| format!("partition {}", p.partition))
            .collect(),
        series: vec![(
            "share".into(),
            r.partitions.iter().map(|p| p.share_pct).collect(),
        )],
        reference: (!r.partitions.is_empty()).then(|| 100.0 / r.partitions.len() as f64),
    };
    Ok(vec![
        chart_block(chart::lag(&r.timeline, &last_answer)?, &drain_caption(r)),
        chart_block(chart::bars(&shares)?, "The line is an even share."),
    ])
}

fn issuance_chart(r: &Report) -> Result<Block, coupon_report::Error> {
    let tiers = Bars {
        title: "Issued per tier",
        value_desc: "coupons",
        categories: r
            .tiers
            .iter()
            .map(|t| format!("coupons {}", t.ids))
            .collect(),
        series: vec![
            (
                "quantity".into(),
                r.tiers
                    .iter()
                    .map(|t| (t.quantity_each * t.coupons as i64) as f64)
                    .collect(),
            ),
            (
                "issued".into(),
                r.tiers.iter().map(|t| t.issued as f64).collect(),
            ),
        ],
        reference: None,
    };
    Ok(chart_block(
        chart::bars(&tiers)?,
        "Each tier's whole quantity next to what was issued.",
    ))
}

fn header(r: &Report) -> Vec<(String, String)> {
    let mut facts = vec![
        ("campaign".into(), r.campaign.clone()),
        (
            "scenario".into(),
            format!("{:?}", r.scenario).to_lowercase(),
        ),
        ("when".into(), r.run.started_at.clone()),
        ("machine".into(), r.run.machine.clone()),
    ];
    facts.extend(r.run.backends.iter().cloned());
    facts.push((
        "load".into(),
        format!(
            "{} requests in {:.1} s ({:.0} req/s), up to {} virtual users / connections",
            r.requests, r.duration_s, r.throughput, r.max_vus
        ),
    ));
    facts
}

fn drop_verdict(r: &Report) -> Verdict {
    let mut problems: Vec<String> = r
        .integrity
        .checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| format!("{} {}: {}", c.id, c.name, c.detail))
        .collect();
    if r.drained_after_s.is_none() {
        problems.push("the consumers did not drain the topic within 120 s".into());
    }
    Verdict {
        passed: r.passed,
        headline: if r.passed {
            format!(
                "every invariant held; {} of {} coupons issued to {} users",
                r.issued, r.quantity, r.users
            )
        } else {
            format!("{} problem(s): the books are not right", problems.len())
        },
        problems,
    }
}

fn drain_caption(r: &Report) -> String {
    match r.drained_after_s {
        Some(s) => format!(
            "Lag sampled about once a second by the operator's probe; peak {}, drained {s:.2} s after the last answer.",
            r.timeline.peak_lag()
        ),
        None => "The lag did NOT drain within 120 s of the last answer.".into(),
    }
}

pub fn bench_page(b: &BenchReport) -> Result<String, coupon_report::Error> {
    let ratios = Bars {
        title: "The system as a share of each raw limit",
        value_desc: "system / raw",
        categories: b.lines.iter().map(|l| l.what.clone()).collect(),
        series: vec![("ratio".into(), b.lines.iter().map(|l| l.ratio).collect())],
        reference: Some(1.0),
    };
    let page = Page {
        title: format!("Bench: campaign {}", b.campaign),
        facts: bench_facts(b),
        verdict: Verdict {
            passed: b.api_correct,
            headline: if b.api_correct {
                "every answer was correct (a 202 for each new user)".into()
            } else {
                "some answers were wrong".into()
            },
            problems: Vec::new(),
        },
        sections: vec![
            Section {
                title: "Each figure next to its raw limit".into(),
                blocks: vec![
                    chart_block(
                        chart::bars(&ratios)?,
                        "1.0 (the line) is the raw limit measured in this run on this machine.",
                    ),
                    to_block(&measured(b)),
                ],
            },
            Section {
                title: "The API phase (one Redis), second by second".into(),
                blocks: api_phase(&b.api_timeline)?,
            },
            Section {
                title: "CPU".into(),
                blocks: vec![to_block(&cpu(b))],
            },
        ],
    };
    Ok(page.render())
}

fn bench_facts(b: &BenchReport) -> Vec<(String, String)> {
    vec![
        ("campaign".into(), b.campaign.clone()),
        ("ledger".into(), b.ledger.clone()),
        ("when".into(), b.run.started_at.clone()),
        ("machine".into(), b.run.machine.clone()),
        (
            "API under max load".into(),
            format!(
                "{} requests, p50 {:.2} ms, p99 {:.2} ms",
                b.api_requests, b.api_p50_ms, b.api_p99_ms
            ),
        ),
        (
            "peak RSS".into(),
            format!(
                "coupon-api {:.1} MB, coupon-consumer {:.1} MB",
                b.api_rss_mb, b.consumer_rss_mb
            ),
        ),
    ]
}

fn measured(b: &BenchReport) -> Table {
    Table {
        title: "Measured".into(),
        head: ["measure", "system", "raw", "unit", "ratio"]
            .map(String::from)
            .to_vec(),
        rows: b
            .lines
            .iter()
            .map(|l| {
                vec![
                    l.what.clone(),
                    format!("{:.0}", l.system),
                    format!("{:.0}", l.raw),
                    l.unit.clone(),
                    format!("{:.2}x", l.ratio),
                ]
            })
            .collect(),
    }
}

fn cpu(b: &BenchReport) -> Table {
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    let head = [
        "phase",
        "accepted",
        "coupon-api",
        "redis",
        "broker",
        "consumer",
        "database",
    ];
    Table {
        title: "CPU ms per 1,000 accepted requests".into(),
        head: head.map(String::from).to_vec(),
        rows: b
            .cpu
            .iter()
            .map(|c| {
                vec![
                    c.setup.clone(),
                    c.accepted.to_string(),
                    cell(c.api_ms),
                    cell(c.redis_ms),
                    cell(c.broker_ms),
                    cell(c.consumer_ms),
                    cell(c.database_ms),
                ]
            })
            .collect(),
    }
}

fn api_phase(t: &Timeline) -> Result<Vec<Block>, coupon_report::Error> {
    Ok(vec![
        chart_block(
            chart::requests(t, &[])?,
            "Answers per second with every connection busy.",
        ),
        chart_block(
            chart::latency(t, &[])?,
            "Latency percentiles per second, corrected for coordinated omission.",
        ),
    ])
}

fn chart_block(svg: String, caption: &str) -> Block {
    Block::Chart {
        svg,
        caption: caption.into(),
    }
}

fn to_block(t: &Table) -> Block {
    Block::Table {
        title: t.title.clone(),
        head: t.head.clone(),
        rows: t.rows.clone(),
    }
}
