//! The drop report, in the shape of the seed's sections 4 (requests), 5 (consumer), 6 (integrity)
//! and 7 (summary): a terminal table for people, Markdown for documents, JSON for machines.

use anyhow::Context as _;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use coupon_core::broker::LagProbe;
use coupon_core::campaign::{CouponId, consumer_group};
use coupon_core::gate::GateView;
use coupon_core::ledger::Ledger;
use coupon_core::verify::{AcceptedLog, Status, VerifyInput, VerifyReport, verify};
use coupon_report::recorder::Recorder;
use coupon_report::run::RunInfo;
use coupon_report::timeline::{LagSample, Timeline};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

use crate::load::{self, LoadOptions, LoadOutcome, Scenario};

/// Where the system under test keeps its state.
pub struct SystemUnderTest<'a> {
    pub campaign: &'a str,
    pub topic: &'a str,
    pub kafka: &'a coupon_core::connections::KafkaConnection,
    pub gate: &'a dyn GateView,
    pub ledger: &'a Ledger,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// The wait from a 202 to the ledger, as a client polling its `Location` sees it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ToStored {
    pub samples: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    /// The polls' interval: the figures' resolution.
    pub poll_ms: f64,
    /// Sampled 202s that read `released` or unknown (a broken promise) or stayed `pending`.
    pub not_issued: u64,
    pub not_seen: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionShare {
    pub partition: i32,
    pub events: i64,
    pub share_pct: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tier {
    pub ids: String,
    pub quantity_each: i64,
    pub coupons: usize,
    pub issued: i64,
    pub issue_rate_pct: f64,
    pub sold_out_coupons: usize,
    /// When the tier's last coupon first answered sold out (seconds since the start).
    pub sold_out_at_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub run: RunInfo,
    pub campaign: String,
    pub scenario: Scenario,
    pub requests: u64,
    pub duration_s: f64,
    pub throughput: f64,
    pub max_vus: usize,
    pub latency_ms: Latency,
    /// From a 202 to its status reading `issued`, over a sample of the 202s (`None`: no 202).
    pub to_stored_ms: Option<ToStored>,
    pub outcomes: BTreeMap<String, u64>,
    /// Second by second: answers, latency, users, lag per partition, sell-outs.
    pub timeline: Timeline,
    /// Seconds from the last answer until the lag was zero; `None` if it never drained.
    pub drained_after_s: Option<f64>,
    pub partitions: Vec<PartitionShare>,
    /// Largest distance of a partition's share from an even share, in percentage points.
    pub partition_skew_pct: f64,
    pub coupons: usize,
    pub quantity: i64,
    pub issued: i64,
    pub users: i64,
    pub remaining: i64,
    pub tiers: Vec<Tier>,
    pub integrity: VerifyReport,
    pub passed: bool,
}

/// Runs the load, samples the lag while it runs and until it drains, then verifies.
pub async fn load_and_report(
    books: &SystemUnderTest<'_>,
    opts: LoadOptions,
    accepted_file: Option<&std::path::Path>,
) -> anyhow::Result<Report> {
    let group = consumer_group(books.campaign);
    let probe = LagProbe::new(books.kafka, &group)?;
    let before = probe.lag(books.topic).await?;
    let run = RunInfo::now();
    let recorder = Arc::new(Recorder::new());
    let lag = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (probe, lag, recorder) = (probe.clone(), lag.clone(), recorder.clone());
        let topic = books.topic.to_string();
        tokio::spawn(async move {
            loop {
                if let Ok(sample) = sample_lag(&probe, &topic, &recorder).await
                    && let Ok(mut l) = lag.lock()
                {
                    l.push(sample);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let scenario = opts.scenario;
    let outcome = load::run(opts, recorder.clone()).await?;
    let finished = Instant::now();
    let load_end_s = recorder.elapsed().as_secs_f64();
    sampler.abort();
    let _ = sampler.await;
    // The aborted sampler's samples are kept in the shared vector.
    let mut lag_samples = std::mem::take(&mut *lag.lock().unwrap_or_else(|e| e.into_inner()));
    let mut drained_after_s = None;
    let deadline = finished + Duration::from_secs(120);
    while Instant::now() < deadline {
        let sample = sample_lag(&probe, books.topic, &recorder).await?;
        let drained = sample.total() == 0;
        lag_samples.push(sample);
        if drained {
            drained_after_s = Some(finished.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = probe.lag(books.topic).await?;
    let partitions = shares(&before, &after);
    let log = AcceptedLog {
        accepted: outcome.accepted.iter().copied().collect(),
        ambiguous: outcome.ambiguous.iter().copied().collect(),
    };
    if let Some(path) = accepted_file {
        std::fs::write(path, load::accepted_log(&outcome))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let integrity = verify(
        &VerifyInput {
            campaign: books.campaign,
            topic: books.topic,
            kafka: books.kafka,
            spec: None,
            accepted: Some(&log),
        },
        books.gate,
        books.ledger,
    )
    .await?;
    let users = books.ledger.distinct_users(books.campaign).await?;
    let timeline = Timeline {
        seconds: outcome.seconds.clone(),
        lag: lag_samples,
        sold_out: outcome.sold_out.clone(),
        marks: Vec::new(),
        load_end_s,
    };
    Ok(build(
        run,
        books.campaign,
        scenario,
        &outcome,
        timeline,
        drained_after_s,
        partitions,
        integrity,
        users,
    ))
}

/// Lag per partition, in partition order, by the probe the operator scales on.
async fn sample_lag(
    probe: &LagProbe,
    topic: &str,
    recorder: &Recorder,
) -> anyhow::Result<LagSample> {
    let mut lags = probe.lag(topic).await?;
    lags.sort_by_key(|p| p.partition);
    Ok(LagSample {
        at_s: recorder.elapsed().as_secs_f64(),
        partitions: lags.iter().map(|p| p.lag).collect(),
    })
}

fn shares(
    before: &[coupon_core::broker::PartitionLag],
    after: &[coupon_core::broker::PartitionLag],
) -> Vec<PartitionShare> {
    let events: Vec<(i32, i64)> = after
        .iter()
        .map(|a| {
            let b = before
                .iter()
                .find(|b| b.partition == a.partition)
                .map_or(0, |b| b.end);
            (a.partition, a.end - b)
        })
        .collect();
    let total: i64 = events.iter().map(|(_, n)| n).sum();
    events
        .into_iter()
        .map(|(partition, n)| PartitionShare {
            partition,
            events: n,
            share_pct: if total > 0 {
                100.0 * n as f64 / total as f64
            } else {
                0.0
            },
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn build(
    run: RunInfo,
    campaign: &str,
    scenario: Scenario,
    o: &LoadOutcome,
    timeline: Timeline,
    drained_after_s: Option<f64>,
    partitions: Vec<PartitionShare>,
    integrity: VerifyReport,
    users: i64,
) -> Report {
    let h = &o.histogram;
    let ms = |us: u64| us as f64 / 1000.0;
    let even = if partitions.is_empty() {
        0.0
    } else {
        100.0 / partitions.len() as f64
    };
    let skew = partitions
        .iter()
        .map(|p| (p.share_pct - even).abs())
        .fold(0.0, f64::max);
    let mut tiers: BTreeMap<i64, Vec<(CouponId, i64)>> = BTreeMap::new();
    for c in &integrity.coupons {
        tiers
            .entry(c.spec_quantity)
            .or_default()
            .push((c.coupon_id, c.issued));
    }
    let tiers = tiers
        .into_iter()
        .map(|(quantity_each, coupons)| {
            let issued: i64 = coupons.iter().map(|(_, i)| i).sum();
            let first = coupons.iter().map(|(id, _)| *id).min().unwrap_or(0);
            let last = coupons.iter().map(|(id, _)| *id).max().unwrap_or(0);
            Tier {
                ids: if first == last {
                    first.to_string()
                } else {
                    format!("{first}-{last}")
                },
                quantity_each,
                coupons: coupons.len(),
                issued,
                issue_rate_pct: 100.0 * issued as f64
                    / (quantity_each * coupons.len() as i64).max(1) as f64,
                sold_out_coupons: coupons.iter().filter(|(_, i)| *i >= quantity_each).count(),
                sold_out_at_s: timeline
                    .sold_out_at(&coupons.iter().map(|(id, _)| *id).collect::<Vec<_>>()),
            }
        })
        .collect();
    let requests = o.requests();
    Report {
        run,
        campaign: campaign.to_string(),
        scenario,
        requests,
        duration_s: o.elapsed.as_secs_f64(),
        throughput: requests as f64 / o.elapsed.as_secs_f64().max(0.001),
        max_vus: o.max_vus,
        latency_ms: Latency {
            min: ms(h.min()),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        },
        to_stored_ms: (o.to_stored.sampled > 0).then(|| {
            let s = &o.to_stored.histogram;
            ToStored {
                samples: o.to_stored.sampled,
                p50: ms(s.value_at_quantile(0.50)),
                p95: ms(s.value_at_quantile(0.95)),
                p99: ms(s.value_at_quantile(0.99)),
                max: ms(s.max()),
                poll_ms: crate::load::STORED_POLL.as_secs_f64() * 1000.0,
                not_issued: o.to_stored.not_issued,
                not_seen: o.to_stored.not_seen,
            }
        }),
        outcomes: o.outcomes.clone(),
        timeline,
        drained_after_s,
        partitions,
        partition_skew_pct: skew,
        coupons: integrity.coupons.len(),
        quantity: integrity.coupons.iter().map(|c| c.spec_quantity).sum(),
        issued: integrity.total_issued(),
        users,
        remaining: integrity.coupons.iter().map(|c| c.db_remaining).sum(),
        tiers,
        // A 202 that reads released or unknown broke its promise; one still pending only
        // waits for settlement (a consumer without REDIS_URL marks nothing).
        passed: integrity.passed() && drained_after_s.is_some() && o.to_stored.not_issued == 0,
        integrity,
    }
}

/// One table of the report: a title, a header row and rows.
pub(crate) struct Table {
    pub title: String,
    pub head: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

fn table(title: &str, head: &[&str], rows: Vec<Vec<String>>) -> Table {
    Table {
        title: title.into(),
        head: head.iter().map(|s| s.to_string()).collect(),
        rows,
    }
}

fn n(v: impl Into<f64>) -> String {
    let v: f64 = v.into();
    let int = v.round() as i64;
    let digits = int.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if int < 0 { format!("-{out}") } else { out }
}

impl Report {
    /// The report's sections in the seed report's order, one table each.
    pub(crate) fn tables(&self) -> Vec<Table> {
        vec![
            self.requests_table(),
            self.outcomes_table(),
            self.lag_table(),
            self.partitions_table(),
            self.integrity_table(),
            self.tiers_table(),
            self.summary_table(),
        ]
    }

    fn requests_table(&self) -> Table {
        let l = &self.latency_ms;
        let mut rows = vec![
            vec!["requests".into(), n(self.requests as f64)],
            vec!["duration".into(), format!("{:.1} s", self.duration_s)],
            vec!["throughput".into(), format!("{:.2} req/s", self.throughput)],
            vec![
                "virtual users / connections (max)".into(),
                self.max_vus.to_string(),
            ],
            vec![
                "latency min / mean".into(),
                format!("{:.2} / {:.2} ms", l.min, l.mean),
            ],
            vec![
                "latency p50 / p95 / p99".into(),
                format!("{:.2} / {:.2} / {:.2} ms", l.p50, l.p95, l.p99),
            ],
            vec!["latency max".into(), format!("{:.2} ms", l.max)],
        ];
        if let Some(s) = &self.to_stored_ms {
            rows.push(vec![
                format!(
                    "202 → stored p50 / p95 / p99 ({} sampled, polled every {:.0} ms)",
                    s.samples, s.poll_ms
                ),
                format!("{:.1} / {:.1} / {:.1} ms", s.p50, s.p95, s.p99),
            ]);
            if s.not_issued + s.not_seen > 0 {
                rows.push(vec![
                    "sampled 202s read released or unknown / still pending after 30 s (consumer without REDIS_URL?)".into(),
                    format!("{} / {}", s.not_issued, s.not_seen),
                ]);
            }
        }
        table("4.1 Requests", &["metric", "value"], rows)
    }

    fn outcomes_table(&self) -> Table {
        let total = self.requests.max(1) as f64;
        let rows = self
            .outcomes
            .iter()
            .map(|(k, v)| {
                let share = format!("{:.2}%", 100.0 * *v as f64 / total);
                vec![k.clone(), n(*v as f64), share]
            })
            .collect();
        table("4.2 Outcomes", &["outcome", "requests", "share"], rows)
    }

    fn lag_table(&self) -> Table {
        let drained = self
            .drained_after_s
            .map_or("NOT DRAINED within 120 s".into(), |s| format!("{s:.2} s"));
        let rows = vec![
            vec![
                "peak lag during the test".into(),
                n(self.timeline.peak_lag() as f64),
            ],
            vec!["drained after the last request".into(), drained],
            vec![
                "lag now (end offset - committed)".into(),
                n(self.integrity.total_lag() as f64),
            ],
        ];
        table("5.1 Consumer lag", &["metric", "value"], rows)
    }

    fn partitions_table(&self) -> Table {
        let skew = vec![
            "max skew".into(),
            String::new(),
            format!("{:.1} pp from even", self.partition_skew_pct),
        ];
        let rows = self
            .partitions
            .iter()
            .map(|p| {
                let share = format!("{:.1}%", p.share_pct);
                vec![p.partition.to_string(), n(p.events as f64), share]
            })
            .chain(std::iter::once(skew))
            .collect();
        table(
            "5.3 Partitions (events of this run)",
            &["partition", "events", "share"],
            rows,
        )
    }

    fn integrity_table(&self) -> Table {
        let rows = self
            .integrity
            .checks
            .iter()
            .map(|c| {
                let s = match c.status {
                    Status::Pass => "PASS",
                    Status::Fail => "FAIL",
                    Status::Skipped => "skip",
                };
                vec![c.id.into(), c.name.into(), s.into(), c.detail.clone()]
            })
            .collect();
        table(
            "6 Integrity (I1-I6)",
            &["id", "invariant", "result", "detail"],
            rows,
        )
    }

    fn tiers_table(&self) -> Table {
        let head = [
            "coupon ids",
            "quantity each",
            "issued",
            "issue rate",
            "sold out",
            "sold out at",
        ];
        let rows = self
            .tiers
            .iter()
            .map(|t| {
                vec![
                    t.ids.clone(),
                    n(t.quantity_each as f64),
                    n(t.issued as f64),
                    format!("{:.2}%", t.issue_rate_pct),
                    format!("{}/{}", t.sold_out_coupons, t.coupons),
                    t.sold_out_at_s.map_or("-".into(), |s| format!("{s:.1} s")),
                ]
            })
            .collect();
        table("6.4 Issuance by tier", &head, rows)
    }

    fn summary_table(&self) -> Table {
        let head = [
            "coupons",
            "quantity",
            "issued",
            "users",
            "issue rate",
            "remaining",
            "result",
        ];
        let rate = 100.0 * self.issued as f64 / self.quantity.max(1) as f64;
        let row = vec![
            self.coupons.to_string(),
            n(self.quantity as f64),
            n(self.issued as f64),
            n(self.users as f64),
            format!("{rate:.2}%"),
            n(self.remaining as f64),
            if self.passed { "PASS" } else { "FAIL" }.into(),
        ];
        table("7 Summary", &head, vec![row])
    }

    /// A terminal table for people.
    pub fn render_text(&self) -> String {
        let mut s = format!(
            "Drop report: campaign {}, scenario {:?}\n",
            self.campaign, self.scenario
        );
        for t in self.tables() {
            let widths: Vec<usize> = (0..t.head.len())
                .map(|i| {
                    t.rows
                        .iter()
                        .map(|r| r[i].chars().count())
                        .chain([t.head[i].chars().count()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |cells: &[String]| {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            let _ = writeln!(s, "\n{}", t.title);
            let _ = writeln!(s, "{}", line(&t.head));
            let _ = writeln!(
                s,
                "{}",
                widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("  ")
            );
            for r in &t.rows {
                let _ = writeln!(s, "{}", line(r));
            }
        }
        s
    }

    pub fn render_markdown(&self) -> String {
        let mut s = format!(
            "# Drop report: campaign `{}`, scenario {:?}\n",
            self.campaign, self.scenario
        );
        for t in self.tables() {
            let _ = writeln!(s, "\n## {}\n", t.title);
            let _ = writeln!(s, "| {} |", t.head.join(" | "));
            let _ = writeln!(
                s,
                "|{}|",
                t.head.iter().map(|_| "---").collect::<Vec<_>>().join("|")
            );
            for r in &t.rows {
                let _ = writeln!(
                    s,
                    "| {} |",
                    r.iter()
                        .map(|c| c.replace('|', "\\|"))
                        .collect::<Vec<_>>()
                        .join(" | ")
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::n;

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(n(0.0), "0");
        assert_eq!(n(20274.0), "20,274");
        assert_eq!(n(1_000_000.0), "1,000,000");
        assert_eq!(n(-1234.0), "-1,234");
    }
}
