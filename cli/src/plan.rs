//! `couponctl plan`: how many API pods, Redis shards, partitions and consumers a drop of N
//! requests/s needs, from the CPU each process spent per request in `couponctl bench`.
//!
//! The model is deliberately plain: every stage scales out by adding the thing that holds its
//! CPU (API pods, Redis masters, consumers with their partitions), so each needs
//! `rate × CPU per request ÷ (cores per unit × target utilisation)` units. Redis runs scripts on
//! one thread, so a master is one core; one coupon can use several masters only with `shards`.

use serde::{Deserialize, Serialize};

/// CPU microseconds per request, per process (what `couponctl bench` measures from /proc).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Costs {
    /// coupon-api, per answered request.
    pub api_us: f64,
    /// Redis (all masters), per answered request.
    pub redis_us: f64,
    /// The Kafka-protocol broker, per issued event (produce and consume).
    pub broker_us: f64,
    /// coupon-consumer, per issued event.
    pub consumer_us: f64,
    /// The database, per issued event.
    pub database_us: f64,
    /// Events one consumer drains per second (it waits on the database more than it burns
    /// CPU, so its CPU alone would promise too much). Absent from older reports: the reference.
    #[serde(default = "reference_drain")]
    pub drain_per_consumer: f64,
}

fn reference_drain() -> f64 {
    Costs::REFERENCE.drain_per_consumer
}

impl Costs {
    /// Measured on the development machine (2 cores, release build, Redis 7.0, Apache Kafka
    /// 4.4 on one KRaft node, PostgreSQL 15) with `couponctl bench --connections 100`; see
    /// docs/capacity.md. Use your own:
    /// `couponctl bench --json > bench.json && couponctl plan --from bench.json`.
    pub const REFERENCE: Costs = Costs {
        api_us: 62.0,
        redis_us: 34.0,
        broker_us: 34.0,
        consumer_us: 5.0,
        database_us: 28.0,
        drain_per_consumer: 28_000.0,
    };
}

/// What the plan assumes besides the measured costs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Assumptions {
    /// Share of requests that get a coupon (and so become events); 1.0 is the worst case for
    /// the write path. A drop of 10,000 coupons hit by 1M users has 0.01 overall, but the first
    /// seconds run near 1.0 — plan for the first seconds.
    pub issued_share: f64,
    /// Busy share of a core to plan for, leaving room for bursts and a lost pod.
    pub utilisation: f64,
    /// Cores of one API pod (its CPU limit).
    pub api_pod_cores: f64,
    /// Cores of one consumer pod.
    pub consumer_pod_cores: f64,
}

impl Default for Assumptions {
    fn default() -> Self {
        Self {
            issued_share: 1.0,
            utilisation: 0.6,
            api_pod_cores: 2.0,
            consumer_pod_cores: 1.0,
        }
    }
}

/// How much of each stage a rate needs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub rate: f64,
    pub events_per_sec: f64,
    pub api_pods: u64,
    /// Redis Cluster masters; also the `shards` one coupon needs if it alone takes the rate.
    pub redis_masters: u64,
    pub partitions: u64,
    pub consumers: u64,
    pub broker_cores: f64,
    pub database_cores: f64,
}

fn cores(per_sec: f64, us: f64) -> f64 {
    per_sec * us / 1e6
}

fn units(cores_needed: f64, cores_per_unit: f64, utilisation: f64) -> u64 {
    ((cores_needed / (cores_per_unit * utilisation)) - 1e-9)
        .ceil()
        .max(1.0) as u64
}

/// The formula: each stage's busy cores at this rate, divided by what one unit offers.
pub fn plan(rate: f64, c: &Costs, a: &Assumptions) -> Plan {
    let events = rate * a.issued_share;
    let consumers = units(
        cores(events, c.consumer_us),
        a.consumer_pod_cores,
        a.utilisation,
    )
    .max(units(events, c.drain_per_consumer, a.utilisation));
    Plan {
        rate,
        events_per_sec: events,
        api_pods: units(cores(rate, c.api_us), a.api_pod_cores, a.utilisation),
        redis_masters: units(cores(rate, c.redis_us), 1.0, a.utilisation),
        // One consumer per partition at most; three at least, so the group can grow.
        partitions: consumers.max(3),
        consumers,
        broker_cores: cores(events, c.broker_us) / a.utilisation,
        database_cores: cores(events, c.database_us) / a.utilisation,
    }
}

/// The table `couponctl plan` prints.
pub fn render(plans: &[Plan], c: &Costs, a: &Assumptions, source: &str) -> String {
    let mut s = format!(
        "CPU per request ({source}): api {:.0} µs, redis {:.0} µs; per issued event: broker {:.0} µs, consumer {:.0} µs, database {:.0} µs; one consumer drains {:.0} events/s\n\
         assumptions: {:.0}% of requests issued, cores {:.0}% busy, API pod {} cores, consumer pod {} cores\n\n",
        c.api_us,
        c.redis_us,
        c.broker_us,
        c.consumer_us,
        c.database_us,
        c.drain_per_consumer,
        a.issued_share * 100.0,
        a.utilisation * 100.0,
        a.api_pod_cores,
        a.consumer_pod_cores,
    );
    s.push_str(&format!(
        "{:>12} {:>10} {:>14} {:>11} {:>10} {:>13} {:>15}\n",
        "requests/s",
        "API pods",
        "Redis masters",
        "partitions",
        "consumers",
        "broker cores",
        "database cores"
    ));
    for p in plans {
        s.push_str(&format!(
            "{:>12} {:>10} {:>14} {:>11} {:>10} {:>13.1} {:>15.1}\n",
            p.rate,
            p.api_pods,
            p.redis_masters,
            p.partitions,
            p.consumers,
            p.broker_cores,
            p.database_cores
        ));
    }
    s.push_str(
        "\nRedis masters: one coupon that alone takes the rate needs `shards` of at least this many.\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const COSTS: Costs = Costs {
        api_us: 100.0,
        redis_us: 20.0,
        broker_us: 50.0,
        consumer_us: 40.0,
        database_us: 60.0,
        drain_per_consumer: 1e9,
    };

    #[test]
    fn every_stage_scales_with_the_rate() {
        let a = Assumptions::default();
        // 100k/s × 100 µs = 10 cores of API; 2-core pods at 60 % → 8.33 → 9 pods.
        let p = plan(100_000.0, &COSTS, &a);
        assert_eq!(p.api_pods, 9);
        // 2 cores of Redis at 60 % → 3.33 → 4 masters.
        assert_eq!(p.redis_masters, 4);
        // 4 cores of consumers, 1-core pods at 60 % → 6.67 → 7.
        assert_eq!((p.consumers, p.partitions), (7, 7));
        assert!((p.broker_cores - 5.0 / 0.6).abs() < 1e-9);
        assert!((p.database_cores - 10.0).abs() < 1e-9);
    }

    #[test]
    fn small_drops_still_get_one_of_each_and_three_partitions() {
        let p = plan(10.0, &COSTS, &Assumptions::default());
        assert_eq!(
            (p.api_pods, p.redis_masters, p.consumers, p.partitions),
            (1, 1, 1, 3)
        );
    }

    #[test]
    fn consumers_are_bounded_by_their_drain_rate_too() {
        let c = Costs {
            consumer_us: 1.0,
            drain_per_consumer: 10_000.0,
            ..COSTS
        };
        // 100k events/s over 10k per consumer at 60 % → 16.7 → 17, although 0.1 core of CPU.
        let p = plan(100_000.0, &c, &Assumptions::default());
        assert_eq!((p.consumers, p.partitions), (17, 17));
    }

    #[test]
    fn refused_requests_cost_no_events() {
        let a = Assumptions {
            issued_share: 0.1,
            ..Assumptions::default()
        };
        let p = plan(100_000.0, &COSTS, &a);
        assert_eq!(p.events_per_sec, 10_000.0);
        assert_eq!(p.api_pods, 9, "every request still reaches the API");
        assert_eq!(p.consumers, 1);
    }
}
