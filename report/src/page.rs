//! One self-contained HTML page: inline CSS and SVG, no script, and a Content-Security-Policy
//! that forbids every fetch, so the page opens the same offline, from a mail attachment or a
//! CI artifact. Blocks are generic; each report (drop, bench, chaos) chooses its own.

use std::fmt::Write as _;

use coupon_core::verify::{Check, Status};

pub struct Page {
    pub title: String,
    /// The run's header: campaign, scenario, backends, machine, when.
    pub facts: Vec<(String, String)>,
    pub verdict: Verdict,
    pub sections: Vec<Section>,
}

pub struct Verdict {
    pub passed: bool,
    pub headline: String,
    /// What went wrong, one line each (empty when passed).
    pub problems: Vec<String>,
}

pub struct Section {
    pub title: String,
    pub blocks: Vec<Block>,
}

pub enum Block {
    /// An inline SVG chart (from `chart`), with a sentence saying how to read it.
    Chart {
        svg: String,
        caption: String,
    },
    Table {
        title: String,
        head: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    /// The invariants, failing rows marked.
    Invariants(Vec<Check>),
    Text(String),
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1080px;padding:24px;color:#1b1b1b;background:#fafafa}
h1{font-size:1.6em;margin:0 0 12px}h2{margin:28px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0 0 16px}
dl.facts dt{color:#555}dl.facts dd{margin:0;font-weight:500}
#verdict{padding:14px 18px;border-radius:8px;font-size:1.25em;font-weight:600;margin:12px 0 8px}
#verdict.pass{background:#e8f5e9;color:#1b5e20;border:2px solid #2e7d32}
#verdict.fail{background:#ffebee;color:#b71c1c;border:3px solid #c62828}
#verdict ul{font-size:.8em;font-weight:500;margin:8px 0 0}
figure{margin:0 0 18px;background:#fff;border:1px solid #e0e0e0;border-radius:6px;padding:8px}
figure svg{display:block;max-width:100%;height:auto}
figcaption{color:#555;font-size:.9em;margin:4px 6px}
table{border-collapse:collapse;background:#fff;margin:0 0 16px;font-size:.93em}
th,td{border:1px solid #ddd;padding:5px 10px;text-align:left;vertical-align:top}
th{background:#f0f0f0}caption{text-align:left;font-weight:600;padding:4px 0}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.fail td{background:#ffebee;color:#b71c1c;font-weight:600}
td.status-pass{color:#1b5e20;font-weight:600}td.status-skip{color:#777}
p.note{color:#444}
";

impl Page {
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(64 * 1024);
        let _ = write!(
            s,
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
             <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
             <title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
            escape(&self.title),
            escape(&self.title)
        );
        s.push_str("<dl class=\"facts\">");
        for (k, v) in &self.facts {
            let _ = write!(s, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(v));
        }
        s.push_str("</dl>\n");
        self.verdict.render(&mut s);
        for section in &self.sections {
            let _ = writeln!(s, "<section><h2>{}</h2>", escape(&section.title));
            for block in &section.blocks {
                block.render(&mut s);
            }
            s.push_str("</section>\n");
        }
        s.push_str("</body></html>\n");
        s
    }
}

impl Verdict {
    fn render(&self, s: &mut String) {
        let class = if self.passed { "pass" } else { "fail" };
        let mark = if self.passed { "PASS" } else { "FAIL" };
        let _ = write!(
            s,
            "<div id=\"verdict\" class=\"{class}\" role=\"status\">{mark}: {}",
            escape(&self.headline)
        );
        if !self.problems.is_empty() {
            s.push_str("<ul>");
            for p in &self.problems {
                let _ = write!(s, "<li>{}</li>", escape(p));
            }
            s.push_str("</ul>");
        }
        s.push_str("</div>\n");
    }
}

impl Block {
    fn render(&self, s: &mut String) {
        match self {
            Block::Chart { svg, caption } => {
                // plotters writes a complete <svg> element; it is trusted output, not user text.
                let _ = writeln!(
                    s,
                    "<figure class=\"chart\">{svg}<figcaption>{}</figcaption></figure>",
                    escape(caption)
                );
            }
            Block::Table { title, head, rows } => table(s, title, head, rows, |_| ""),
            Block::Invariants(checks) => {
                let head = ["id", "invariant", "result", "detail"].map(String::from);
                let rows: Vec<Vec<String>> = checks
                    .iter()
                    .map(|c| {
                        let status = match c.status {
                            Status::Pass => "PASS",
                            Status::Fail => "FAIL",
                            Status::Skipped => "skipped",
                        };
                        vec![c.id.into(), c.name.into(), status.into(), c.detail.clone()]
                    })
                    .collect();
                table(s, "The invariants", &head, &rows, |row| {
                    match row[2].as_str() {
                        "FAIL" => "fail",
                        _ => "",
                    }
                });
            }
            Block::Text(text) => {
                let _ = writeln!(s, "<p class=\"note\">{}</p>", escape(text));
            }
        }
    }
}

fn table(
    s: &mut String,
    title: &str,
    head: &[String],
    rows: &[Vec<String>],
    class: impl Fn(&[String]) -> &'static str,
) {
    let _ = write!(s, "<table><caption>{}</caption><thead><tr>", escape(title));
    for h in head {
        let _ = write!(s, "<th>{}</th>", escape(h));
    }
    s.push_str("</tr></thead><tbody>\n");
    for row in rows {
        let _ = write!(s, "<tr class=\"{}\">", class(row));
        for cell in row {
            let numeric = is_number(cell);
            let status = match cell.as_str() {
                "PASS" => " class=\"status-pass\"",
                "skipped" => " class=\"status-skip\"",
                _ if numeric => " class=\"num\"",
                _ => "",
            };
            let _ = write!(s, "<td{status}>{}</td>", escape(cell));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</tbody></table>\n");
}

/// A figure, perhaps with a short unit ("1,061", "33.43 req/s", "9.95%"): right-aligned.
fn is_number(cell: &str) -> bool {
    let mut words = cell.split_whitespace();
    let first = words.next().unwrap_or("");
    let digits = first.trim_end_matches(['%', 'x']).replace(',', "");
    digits.parse::<f64>().is_ok() && words.count() <= 1
}

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(passed: bool, checks: Vec<Check>) -> Page {
        Page {
            title: "Drop report <seed>".into(),
            facts: vec![("campaign".into(), "seed & co".into())],
            verdict: Verdict {
                passed,
                headline: "every invariant held".into(),
                problems: if passed {
                    vec![]
                } else {
                    vec!["I4 failed".into()]
                },
            },
            sections: vec![Section {
                title: "Integrity".into(),
                blocks: vec![Block::Invariants(checks)],
            }],
        }
    }

    fn check(id: &'static str, status: Status) -> Check {
        Check {
            id,
            name: "every 202 stored",
            status,
            detail: "3 missing".into(),
        }
    }

    #[test]
    fn text_is_escaped_and_nothing_is_fetched() {
        let html = page(true, vec![check("I1", Status::Pass)]).render();
        assert!(html.contains("Drop report &lt;seed&gt;"));
        assert!(html.contains("seed &amp; co"));
        assert!(html.contains("default-src 'none'"));
        for fetch in ["<script", "<link", "src=", "@import", "url("] {
            assert!(!html.contains(fetch), "the page fetches with {fetch}");
        }
    }

    #[test]
    fn a_failing_invariant_marks_its_row_and_the_verdict() {
        let html = page(
            false,
            vec![check("I1", Status::Pass), check("I4", Status::Fail)],
        )
        .render();
        assert!(html.contains("<div id=\"verdict\" class=\"fail\""));
        assert!(html.contains("<tr class=\"fail\"><td>I4</td>"));
        assert!(html.contains("<li>I4 failed</li>"));
    }
}
