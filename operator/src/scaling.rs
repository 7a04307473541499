//! The consumer autoscaler's plan, a pure function: exact lag in, replica count out.
//!
//! desired = ceil(total lag / target lag per replica), bounded by min, max and the partition
//! count. It avoids the known traps of KEDA's Kafka scaler: no tolerance band (the partition
//! count is reachable), a group with no committed offset counts its real unread records instead
//! of jumping to max, scale-up is immediate, scale-down waits out a stabilisation window.

use chrono::{DateTime, Duration, Utc};
use coupon_core::broker::PartitionLag;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub target_lag_per_replica: i64,
    pub scale_down_stabilization: Duration,
}

/// What the autoscaler sees now.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    pub now: DateTime<Utc>,
    pub lags: &'a [PartitionLag],
    pub current_replicas: i32,
    /// The issuance window has closed: no new events will come.
    pub window_ended: bool,
    /// Earlier recommendations, newest last (kept by the caller for the stabilisation window).
    pub history: &'a [(DateTime<Utc>, i32)],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalePlan {
    /// Replicas the consumer Deployment should have.
    pub desired: i32,
    /// This round's recommendation, to append to the history.
    pub recommendation: i32,
    pub total_lag: i64,
    pub reason: Reason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    ScaleUp,
    ScaleDown,
    /// Lower recommendation held back by the stabilisation window.
    Stabilizing,
    Steady,
    /// The drop is over and drained: back to the minimum at once.
    Drained,
}

pub fn decide(policy: &Policy, obs: &Observation<'_>) -> ScalePlan {
    // Exact lag; a partition without a committed offset counts what is really unread there.
    let total_lag: i64 = obs.lags.iter().map(|l| l.lag.max(0)).sum();
    let partitions = obs.lags.len() as i32;
    let min = policy.min_replicas.max(0);
    let ceiling = policy.max_replicas.min(partitions.max(1)).max(min);
    let target = policy.target_lag_per_replica.max(1);
    // Integer ceiling: no tolerance band, so the partition count is reachable.
    let needed = ((total_lag + target - 1) / target).min(i64::from(i32::MAX)) as i32;
    let recommendation = needed.clamp(min, ceiling);
    let plan = |desired, reason| ScalePlan {
        desired,
        recommendation,
        total_lag,
        reason,
    };
    if obs.window_ended && total_lag == 0 {
        return plan(
            min,
            if obs.current_replicas == min {
                Reason::Steady
            } else {
                Reason::Drained
            },
        );
    }
    if recommendation > obs.current_replicas {
        return plan(recommendation, Reason::ScaleUp);
    }
    if recommendation == obs.current_replicas {
        return plan(recommendation, Reason::Steady);
    }
    // Scale down only to the highest recommendation seen within the window (as the HPA does),
    // so a dip between two bursts does not flap the consumers.
    let since = obs.now - policy.scale_down_stabilization;
    let held = obs
        .history
        .iter()
        .filter(|(at, _)| *at > since)
        .map(|(_, r)| *r)
        .fold(recommendation, i32::max)
        .min(obs.current_replicas);
    if held < obs.current_replicas {
        plan(held, Reason::ScaleDown)
    } else {
        plan(obs.current_replicas, Reason::Stabilizing)
    }
}

/// The scaling phase's outcome.
pub struct Scale {
    pub current: i32,
    /// What the consumer Deployment gets (`current` while paused).
    pub desired: i32,
    pub max: i32,
    pub plan: ScalePlan,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lag(partition: i32, end: i64, committed: Option<i64>) -> PartitionLag {
        let start = 0;
        PartitionLag {
            partition,
            start,
            end,
            committed,
            lag: end - committed.unwrap_or(start),
        }
    }

    const POLICY: Policy = Policy {
        min_replicas: 1,
        max_replicas: 10,
        target_lag_per_replica: 1000,
        scale_down_stabilization: Duration::seconds(300),
    };

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + secs, 0).expect("valid time")
    }

    struct Case {
        name: &'static str,
        lags: Vec<PartitionLag>,
        current: i32,
        window_ended: bool,
        history: Vec<(DateTime<Utc>, i32)>,
        want: (i32, Reason),
    }

    #[test]
    fn table() {
        let three = |a, b, c| vec![lag(0, a, Some(0)), lag(1, b, Some(0)), lag(2, c, Some(0))];
        let cases = vec![
            Case {
                name: "no lag stays at min",
                lags: three(0, 0, 0),
                current: 1,
                window_ended: false,
                history: vec![],
                want: (1, Reason::Steady),
            },
            Case {
                name: "ceil of lag / target",
                lags: three(900, 900, 0),
                current: 1,
                window_ended: false,
                history: vec![],
                want: (2, Reason::ScaleUp),
            },
            // KEDA trap: a 10% tolerance kept 2.9 from ever becoming 3 = the partition count.
            Case {
                name: "reaches exactly the partition count",
                lags: three(1000, 1000, 901),
                current: 2,
                window_ended: false,
                history: vec![],
                want: (3, Reason::ScaleUp),
            },
            Case {
                name: "never more than partitions",
                lags: three(50_000, 50_000, 50_000),
                current: 1,
                window_ended: false,
                history: vec![],
                want: (3, Reason::ScaleUp),
            },
            // KEDA trap: no committed offset yet sent the group straight to max.
            Case {
                name: "no committed offset counts real unread records",
                lags: vec![lag(0, 10, None), lag(1, 0, None), lag(2, 5, None)],
                current: 1,
                window_ended: false,
                history: vec![],
                want: (1, Reason::Steady),
            },
            Case {
                name: "no committed offset with a real backlog",
                lags: vec![lag(0, 1500, None), lag(1, 0, None), lag(2, 0, None)],
                current: 1,
                window_ended: false,
                history: vec![],
                want: (2, Reason::ScaleUp),
            },
            Case {
                name: "scale up is immediate even right after a scale down",
                lags: three(3000, 0, 0),
                current: 1,
                window_ended: false,
                history: vec![(at(-1), 1)],
                want: (3, Reason::ScaleUp),
            },
            // KEDA trap: flapping. A dip inside the window holds the replicas.
            Case {
                name: "scale down waits for the window",
                lags: three(0, 0, 0),
                current: 3,
                window_ended: false,
                history: vec![(at(-60), 3)],
                want: (3, Reason::Stabilizing),
            },
            Case {
                name: "scale down after the window",
                lags: three(0, 0, 0),
                current: 3,
                window_ended: false,
                history: vec![(at(-301), 3), (at(-200), 1)],
                want: (1, Reason::ScaleDown),
            },
            Case {
                name: "scale down to the highest recent recommendation",
                lags: three(0, 0, 0),
                current: 3,
                window_ended: false,
                history: vec![(at(-400), 3), (at(-100), 2)],
                want: (2, Reason::ScaleDown),
            },
            Case {
                name: "window ended and drained goes to min at once",
                lags: three(0, 0, 0),
                current: 3,
                window_ended: true,
                history: vec![(at(-10), 3)],
                want: (1, Reason::Drained),
            },
            Case {
                name: "window ended with lag keeps draining",
                lags: three(2500, 0, 0),
                current: 3,
                window_ended: true,
                history: vec![(at(-10), 3)],
                want: (3, Reason::Steady),
            },
        ];
        for c in cases {
            let obs = Observation {
                now: at(0),
                lags: &c.lags,
                current_replicas: c.current,
                window_ended: c.window_ended,
                history: &c.history,
            };
            let d = decide(&POLICY, &obs);
            assert_eq!((d.desired, d.reason), c.want, "{}", c.name);
        }
    }

    #[test]
    fn bounds_min_and_max() {
        let lags = vec![lag(0, 100_000, Some(0)); 20];
        let p = Policy {
            min_replicas: 2,
            max_replicas: 5,
            ..POLICY
        };
        let obs = Observation {
            now: at(0),
            lags: &lags,
            current_replicas: 2,
            window_ended: false,
            history: &[],
        };
        assert_eq!(decide(&p, &obs).desired, 5, "max bounds");
        let idle = vec![lag(0, 0, Some(0)); 20];
        let obs = Observation { lags: &idle, ..obs };
        assert_eq!(decide(&p, &obs).desired, 2, "min bounds");
    }
}
