//! The page's charts, drawn by plotters' SVG backend into strings the page inlines. Every
//! timeline shares one x axis (seconds since the load started, through the drain) and shows
//! the run's marks (faults) as shaded spans, so the charts line up under each other.

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::Error;
use crate::timeline::{Class, Timeline};

const WIDTH: u32 = 1040;
const HEIGHT: u32 = 300;
const FONT: &str = "sans-serif";

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Which percentile a latency line draws.
type Pick = fn(&crate::timeline::Percentiles) -> f64;

/// A vertical line with a label: a tier sold out, the last request answered.
#[derive(Debug, Clone)]
pub struct Moment {
    pub at_s: f64,
    pub label: String,
}

pub fn class_colour(class: Class) -> RGBColor {
    match class {
        Class::Accepted => RGBColor(46, 125, 50),
        Class::SoldOut => RGBColor(239, 108, 0),
        Class::AlreadyIssued => RGBColor(21, 101, 192),
        Class::Refused => RGBColor(117, 117, 117),
        Class::Ambiguous => RGBColor(142, 36, 170),
        Class::Error => RGBColor(198, 40, 40),
    }
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Axis numbers: whole numbers without a fraction, small ones with one digit.
fn tick(v: &f64) -> String {
    if v.abs() >= 10.0 || v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn drawn<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, Error> {
    r.map_err(|e| Error::Chart(e.to_string()))
}

/// Answers per second, stacked by kind.
pub fn requests(t: &Timeline, moments: &[Moment]) -> Result<String, Error> {
    let classes: Vec<Class> = Class::ALL
        .into_iter()
        .filter(|c| t.seconds.iter().any(|s| s.count(*c) > 0))
        .collect();
    // Long runs are drawn in bins of a few seconds (at most ~300 bars): a seed run's users
    // think in step (2 s), and a bar per second of ten minutes draws a comb, not a shape. An
    // even bin averages that rhythm out; an odd one would alias it into a coarser comb.
    let bin = match t.seconds.len().div_ceil(MAX_BARS) {
        0 | 1 => 1,
        n => n + n % 2,
    };
    let total = |s: &crate::timeline::Second| s.total() as f64;
    let peak = steps(t, bin, total)
        .iter()
        .map(|(_, v)| *v)
        .fold(0.0, f64::max);
    let title = match bin {
        1 => "Answers per second, by outcome".to_string(),
        n => format!("Answers per second, by outcome ({n} s averages)"),
    };
    timeline_chart(&title, "answers / s", t, peak, moments, |chart| {
        // Each kind's area reaches the sum of itself and the kinds below it; drawn top first.
        for (i, class) in classes.iter().enumerate().rev() {
            let below = &classes[..=i];
            let points = steps(t, bin, |s| {
                below.iter().map(|c| s.count(*c)).sum::<u64>() as f64
            });
            let colour = class_colour(*class);
            drawn(chart.draw_series(AreaSeries::new(points, 0.0, colour.mix(0.85))))?
                .label(class.label())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.filled())
                });
        }
        Ok(())
    })
}

/// Latency percentiles of each second's answers.
pub fn latency(t: &Timeline, moments: &[Moment]) -> Result<String, Error> {
    let peak = t
        .seconds
        .iter()
        .filter_map(|s| s.latency_ms.map(|p| p.p99))
        .fold(0.0, f64::max);
    timeline_chart(
        "Latency of the answers in each second",
        "ms",
        t,
        peak,
        moments,
        |chart| {
            let lines: [(&str, Pick, RGBColor); 3] = [
                ("p50", |p| p.p50, PALETTE[0]),
                ("p95", |p| p.p95, PALETTE[1]),
                ("p99", |p| p.p99, PALETTE[3]),
            ];
            for (name, pick, colour) in lines {
                let points = t
                    .seconds
                    .iter()
                    .filter_map(|s| s.latency_ms.as_ref().map(|p| (s.t as f64 + 0.5, pick(p))));
                drawn(chart.draw_series(LineSeries::new(points, colour.stroke_width(2))))?
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 14, y)], colour.stroke_width(2))
                    });
            }
            Ok(())
        },
    )
}

/// Virtual users (the seed's load pattern) or connections.
pub fn users(t: &Timeline, moments: &[Moment]) -> Result<String, Error> {
    let peak = t.seconds.iter().map(|s| s.vus).max().unwrap_or(0) as f64;
    timeline_chart(
        "Virtual users / connections",
        "active",
        t,
        peak,
        moments,
        |chart| {
            let points = steps(t, 1, |s| s.vus as f64);
            let colour = PALETTE[0];
            drawn(chart.draw_series(
                AreaSeries::new(points, 0.0, colour.mix(0.3)).border_style(colour.stroke_width(2)),
            ))?
            .label("active")
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.mix(0.3).filled())
            });
            Ok(())
        },
    )
}

/// Consumer lag per partition, through the drain after the load.
pub fn lag(t: &Timeline, moments: &[Moment]) -> Result<String, Error> {
    let partitions = t.lag.iter().map(|s| s.partitions.len()).max().unwrap_or(0);
    let peak = t
        .lag
        .iter()
        .flat_map(|s| s.partitions.iter())
        .copied()
        .max()
        .unwrap_or(0) as f64;
    timeline_chart(
        "Consumer lag per partition",
        "events not yet in the ledger",
        t,
        peak,
        moments,
        |chart| {
            for p in 0..partitions {
                let colour = PALETTE[p % PALETTE.len()];
                let points = t
                    .lag
                    .iter()
                    .filter_map(|s| s.partitions.get(p).map(|lag| (s.at_s, *lag as f64)));
                drawn(chart.draw_series(LineSeries::new(points, colour.stroke_width(2))))?
                    .label(format!("partition {p}"))
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 14, y)], colour.stroke_width(2))
                    });
            }
            Ok(())
        },
    )
}

/// One bar per category and series, horizontal (long category names read well).
pub struct Bars<'a> {
    pub title: &'a str,
    pub value_desc: &'a str,
    pub categories: Vec<String>,
    /// (name, values by category)
    pub series: Vec<(String, Vec<f64>)>,
    /// A vertical reference line, e.g. 1.0 for ratios.
    pub reference: Option<f64>,
}

pub fn bars(b: &Bars<'_>) -> Result<String, Error> {
    let n = b.categories.len().max(1);
    let peak = b
        .series
        .iter()
        .flat_map(|(_, v)| v.iter())
        .copied()
        .chain(b.reference)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let height = (90 + 34 * n * b.series.len().max(1)).clamp(160, 900) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        drawn(root.fill(&WHITE))?;
        let longest = b
            .categories
            .iter()
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(4);
        let mut chart = drawn(
            ChartBuilder::on(&root)
                .caption(b.title, (FONT, 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size((longest as u32 * 7 + 16).clamp(60, 380))
                .build_cartesian_2d(0.0..peak * 1.12, -0.5..n as f64 - 0.5),
        )?;
        let names = b.categories.clone();
        drawn(
            chart
                .configure_mesh()
                .disable_y_mesh()
                .y_labels(n)
                .y_label_formatter(&|y: &f64| {
                    let i = y.round();
                    if (y - i).abs() < 1e-6 && i >= 0.0 && i < n as f64 {
                        names.get(n - 1 - i as usize).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .x_desc(b.value_desc)
                .x_label_formatter(&tick)
                .label_style((FONT, 13))
                .draw(),
        )?;
        let k = b.series.len().max(1) as f64;
        let band = 0.8 / k;
        for (j, (name, values)) in b.series.iter().enumerate() {
            let colour = PALETTE[j % PALETTE.len()];
            // The first category on top.
            let top = |i: usize| (n - 1 - i) as f64 + 0.4 - band * j as f64;
            let rects = values.iter().enumerate().map(|(i, v)| {
                Rectangle::new([(0.0, top(i)), (*v, top(i) - band * 0.9)], colour.filled())
            });
            drawn(chart.draw_series(rects))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.filled())
                });
        }
        if let Some(r) = b.reference {
            drawn(chart.draw_series(LineSeries::new(
                [(r, -0.5), (r, n as f64 - 0.5)],
                BLACK.stroke_width(1),
            )))?;
        }
        if b.series.len() > 1 {
            legend(&mut chart)?;
        }
        drawn(root.present())?;
    }
    Ok(svg)
}

fn timeline_chart(
    title: &str,
    y_desc: &str,
    t: &Timeline,
    peak: f64,
    moments: &[Moment],
    draw: impl FnOnce(&mut Chart<'_, '_>) -> Result<(), Error>,
) -> Result<String, Error> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        drawn(root.fill(&WHITE))?;
        let top = peak.max(1.0) * 1.15;
        let mut chart = drawn(
            ChartBuilder::on(&root)
                .caption(title, (FONT, 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(0.0..t.span_s(), 0.0..top),
        )?;
        drawn(
            chart
                .configure_mesh()
                .x_desc("seconds since the load started")
                .y_desc(y_desc)
                .x_label_formatter(&tick)
                .y_label_formatter(&tick)
                .label_style((FONT, 13))
                .light_line_style(BLACK.mix(0.04))
                .draw(),
        )?;
        spans(&mut chart, t, top)?;
        draw(&mut chart)?;
        lines(&mut chart, moments, top)?;
        legend(&mut chart)?;
        drawn(root.present())?;
    }
    Ok(svg)
}

/// The marks (faults) as shaded spans with their labels, under the data.
fn spans(chart: &mut Chart<'_, '_>, t: &Timeline, top: f64) -> Result<(), Error> {
    let min_width = t.span_s() * 0.004;
    let shade = RGBColor(211, 47, 47);
    for (i, m) in t.marks.iter().enumerate() {
        let until = m.until_s.max(m.from_s + min_width);
        drawn(chart.draw_series(std::iter::once(Rectangle::new(
            [(m.from_s, 0.0), (until, top)],
            shade.mix(0.16).filled(),
        ))))?;
        // Labels step down so neighbouring faults do not overwrite each other.
        let y = top * (0.97 - 0.07 * (i % 4) as f64);
        drawn(chart.draw_series(std::iter::once(Text::new(
            m.label.clone(),
            (m.from_s, y),
            (FONT, 12).into_font().color(&shade),
        ))))?;
    }
    Ok(())
}

fn lines(chart: &mut Chart<'_, '_>, moments: &[Moment], top: f64) -> Result<(), Error> {
    let right = chart.x_range().end * 0.8;
    for (i, m) in moments.iter().enumerate() {
        drawn(chart.draw_series(LineSeries::new(
            [(m.at_s, 0.0), (m.at_s, top)],
            BLACK.mix(0.55).stroke_width(1),
        )))?;
        let y = top * (0.62 - 0.07 * (i % 5) as f64);
        let anchor = if m.at_s > right {
            HPos::Right
        } else {
            HPos::Left
        };
        let style = (FONT, 12)
            .into_font()
            .color(&BLACK.mix(0.75))
            .pos(Pos::new(anchor, VPos::Top));
        drawn(chart.draw_series(std::iter::once(Text::new(
            format!(" {} ", m.label),
            (m.at_s, y),
            style,
        ))))?;
    }
    Ok(())
}

fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>) -> Result<(), Error> {
    drawn(
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw(),
    )
}

/// A per-second value as steps: flat across its second.
/// Bars of a timeline chart, at most; longer runs are binned.
const MAX_BARS: usize = 300;

/// A per-second value as steps, flat across each bin of `bin` seconds (their mean).
fn steps(
    t: &Timeline,
    bin: usize,
    value: impl Fn(&crate::timeline::Second) -> f64,
) -> Vec<(f64, f64)> {
    t.seconds
        .chunks(bin)
        .flat_map(|chunk| {
            let from = chunk.first().map_or(0.0, |s| s.t as f64);
            let v = chunk.iter().map(&value).sum::<f64>() / chunk.len() as f64;
            [(from, v), (from + chunk.len() as f64, v)]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::{Mark, Second};

    fn run(seconds: u32) -> Timeline {
        Timeline {
            seconds: (0..seconds)
                .map(|t| Second {
                    t,
                    // Users thinking in step: 60 answers, then 10.
                    outcomes: [("accepted".to_string(), if t % 2 == 0 { 60 } else { 10 })].into(),
                    latency_ms: None,
                    vus: 100,
                })
                .collect(),
            marks: vec![Mark {
                from_s: 5.0,
                until_s: 7.0,
                label: "kill-api".into(),
            }],
            load_end_s: seconds as f64,
            ..Timeline::default()
        }
    }

    #[test]
    fn long_runs_are_binned_to_their_mean() {
        let t = run(600);
        let points = steps(&t, 2, |s| s.total() as f64);
        assert_eq!(points.len(), 600, "300 bins, two corners each");
        assert!(points.iter().all(|(_, v)| (*v - 35.0).abs() < 1e-9));
        let svg = requests(&t, &[]).expect("drawn");
        assert!(svg.contains("(2 s averages)"));
        // 602 s would take 3 s bins: the even 4 s keep a 2 s rhythm out of the picture.
        assert!(
            requests(&run(602), &[])
                .expect("drawn")
                .contains("(4 s averages)")
        );
    }

    #[test]
    fn a_short_run_draws_every_second_and_its_marks() {
        let svg = requests(&run(60), &[]).expect("drawn");
        assert!(svg.starts_with("<svg") && svg.contains("<polygon"));
        assert!(!svg.contains("averages"));
        assert!(svg.contains("kill-api"), "the fault is marked");
    }
}
