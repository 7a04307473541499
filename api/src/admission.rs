//! Admission, before the gate: who the user is ([`Identity`]), whether they or their address
//! asked too often (token buckets, answered 429 with `Retry-After`), and whether this process
//! has room (a bounded number of requests in flight; one that waits too long for room is shed
//! with 503 at once instead of queueing until latency collapses).
//!
//! The buckets are per process (`governor`): no Redis round trip on the issue path, and the gate
//! already holds the correctness limit (one coupon per user). With N API replicas a client gets
//! up to N times the rate; the gateway's own limit, or sticky routing, makes it exact.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName};
use coupon_core::campaign::UserId;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::identity::Identity;

/// The limits, from flags; 0 disables each.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Issue requests per second per user.
    pub per_user: u32,
    /// Issue requests per second per client address.
    pub per_client: u32,
    /// Bucket size: requests allowed at once after a quiet spell (at least the rate).
    pub burst: u32,
    /// Requests in flight in this process; more wait for room.
    pub max_in_flight: usize,
    /// How long a request waits for room before it is shed.
    pub queue_wait: Duration,
}

pub struct Admission {
    pub identity: Identity,
    per_user: Option<DefaultKeyedRateLimiter<UserId>>,
    per_client: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Where the client address comes from behind a proxy (the first address of the header);
    /// `None` uses the peer address.
    client_header: Option<HeaderName>,
    room: Option<Arc<Semaphore>>,
    queue_wait: Duration,
}

impl Default for Admission {
    fn default() -> Self {
        Self::new(Identity::Body, Limits::default(), None)
    }
}

impl Admission {
    pub fn new(identity: Identity, limits: Limits, client_header: Option<HeaderName>) -> Self {
        let quota = |rate: u32| {
            let rate = NonZeroU32::new(rate)?;
            let burst = NonZeroU32::new(limits.burst.max(rate.get())).unwrap_or(rate);
            Some(Quota::per_second(rate).allow_burst(burst))
        };
        Self {
            identity,
            per_user: quota(limits.per_user).map(RateLimiter::keyed),
            per_client: quota(limits.per_client).map(RateLimiter::keyed),
            client_header,
            room: (limits.max_in_flight > 0)
                .then(|| Arc::new(Semaphore::new(limits.max_in_flight))),
            queue_wait: limits.queue_wait,
        }
    }

    /// Room for one more request, or `overloaded` once it waited `queue_wait`.
    pub async fn room(&self) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        let Some(room) = &self.room else {
            return Ok(None);
        };
        if let Ok(permit) = room.clone().try_acquire_owned() {
            return Ok(Some(permit));
        }
        match tokio::time::timeout(self.queue_wait, room.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Some(permit)),
            _ => Err(ApiError::Overloaded),
        }
    }

    /// The client address's bucket.
    pub fn check_client(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(limiter) = &self.per_client else {
            return Ok(());
        };
        let from_header = self.client_header.as_ref().and_then(|h| {
            headers
                .get(h)?
                .to_str()
                .ok()?
                .split(',')
                .next()?
                .trim()
                .parse()
                .ok()
        });
        match from_header.or(peer) {
            Some(addr) => check(limiter, &addr),
            None => Ok(()),
        }
    }

    /// The user's bucket.
    pub fn check_user(&self, user: UserId) -> Result<(), ApiError> {
        match &self.per_user {
            Some(limiter) => check(limiter, &user),
            None => Ok(()),
        }
    }

    /// Forgets buckets that are full again, so memory follows the active users, not all users.
    pub fn forget_idle(&self) {
        if let Some(l) = &self.per_user {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.per_client {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
) -> Result<(), ApiError> {
    limiter.check_key(key).map_err(|not_until| {
        ApiError::RateLimited(not_until.wait_time_from(DefaultClock::default().now()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_user: u32, per_client: u32) -> Limits {
        Limits {
            per_user,
            per_client,
            burst: 2,
            ..Limits::default()
        }
    }

    #[test]
    fn buckets_refuse_with_a_retry_time_and_keys_are_separate() {
        let a = Admission::new(Identity::Body, limits(2, 0), None);
        assert!(a.check_user(1).is_ok());
        assert!(a.check_user(1).is_ok());
        let e = a.check_user(1).expect_err("refused");
        assert_eq!(e.code(), "rate_limited");
        assert!(matches!(e, ApiError::RateLimited(d) if d <= Duration::from_secs(1)));
        assert!(a.check_user(2).is_ok(), "another user has its own bucket");
        assert!(
            a.check_client(Some([10, 0, 0, 1].into()), &HeaderMap::new())
                .is_ok()
        );
    }

    #[test]
    fn the_forwarded_address_is_the_client_behind_a_proxy() {
        let a = Admission::new(
            Identity::Body,
            limits(0, 1),
            Some(HeaderName::from_static("x-forwarded-for")),
        );
        let proxy = Some(IpAddr::from([10, 0, 0, 9]));
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "203.0.113.7, 10.0.0.9".parse().expect("v"),
        );
        assert!(a.check_client(proxy, &h).is_ok());
        assert!(a.check_client(proxy, &h).is_ok(), "burst 2");
        assert_eq!(
            a.check_client(proxy, &h).expect_err("refused").code(),
            "rate_limited"
        );
        h.insert("x-forwarded-for", "203.0.113.8".parse().expect("v"));
        assert!(
            a.check_client(proxy, &h).is_ok(),
            "another client behind the same proxy"
        );
    }

    #[tokio::test]
    async fn a_full_process_sheds_after_the_queue_wait() {
        let a = Admission::new(
            Identity::Body,
            Limits {
                max_in_flight: 1,
                queue_wait: Duration::from_millis(20),
                ..Limits::default()
            },
            None,
        );
        let held = a.room().await.expect("room");
        assert!(held.is_some());
        let started = std::time::Instant::now();
        assert_eq!(a.room().await.expect_err("refused").code(), "overloaded");
        assert!(started.elapsed() < Duration::from_millis(500));
        drop(held);
        assert!(a.room().await.expect("room again").is_some());
        assert!(
            Admission::default()
                .room()
                .await
                .expect("unlimited")
                .is_none()
        );
    }
}
