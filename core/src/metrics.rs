//! One process's Prometheus metrics: each metric made and registered in one call, the whole set
//! rendered as the text format `/metrics` serves. The API, the consumer and the operator each
//! hold one [`MetricRegistry`]; their `metrics.rs` only name and describe what they count.

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone, Default)]
pub struct MetricRegistry {
    registry: Registry,
    /// Labels every metric of this registry carries (a campaign's workloads: `campaign`).
    constant: Vec<(String, String)>,
}

impl MetricRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every metric made afterwards carries `name=value`.
    pub fn with_label(mut self, name: &str, value: &str) -> Self {
        self.constant.push((name.to_string(), value.to_string()));
        self
    }

    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::with_opts(self.opts(name, help)))
    }

    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(self.opts(name, help), labels))
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::with_opts(self.opts(name, help)))
    }

    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(self.opts(name, help), labels))
    }

    /// A gauge of fractional values (ages in seconds).
    pub fn float_gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.add(GaugeVec::new(self.opts(name, help), labels))
    }

    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        self.add(Histogram::with_opts(
            self.histogram_opts(name, help, buckets),
        ))
    }

    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
        labels: &[&str],
    ) -> HistogramVec {
        self.add(HistogramVec::new(
            self.histogram_opts(name, help, buckets),
            labels,
        ))
    }

    /// The Prometheus text format of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    fn opts(&self, name: &str, help: &str) -> Opts {
        let mut o = Opts::new(name, help);
        for (k, v) in &self.constant {
            o = o.const_label(k, v);
        }
        o
    }

    fn histogram_opts(&self, name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
        HistogramOpts {
            common_opts: self.opts(name, help),
            buckets: buckets.to_vec(),
        }
    }

    /// Metric names and help are the program's own constants: a bad or repeated one is a bug
    /// that fails at start, never a request's error.
    fn add<C: Collector + Clone + 'static>(&self, made: prometheus::Result<C>) -> C {
        let c = made.expect("a valid metric definition");
        self.registry
            .register(Box::new(c.clone()))
            .expect("each metric registered once");
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_the_constant_labels() {
        let m = MetricRegistry::new().with_label("campaign", "spring");
        let requests = m.counter_vec("x_requests_total", "Requests", &["outcome"]);
        requests.with_label_values(&["accepted"]).inc();
        m.histogram("x_seconds", "Latency", &[0.1, 1.0])
            .observe(0.5);
        let text = m.render();
        assert!(
            text.contains(r#"x_requests_total{campaign="spring",outcome="accepted"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"x_seconds_bucket{campaign="spring",le="1"} 1"#),
            "{text}"
        );
    }
}
