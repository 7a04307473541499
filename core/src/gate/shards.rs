//! Where a coupon's gate lives: its keys, per shard, and each user's home shard.
//!
//! A coupon with `shards: K` keeps K independent stock counters, each under its own hash tag
//! so a Redis Cluster spreads them over its masters. Shard 0 uses the keys an unsharded coupon
//! always had, so `shards: 1` is exactly the old layout.

use crate::ids::{CouponId, UserId};

/// Most shards one coupon may have (each is one Redis slot).
pub const MAX_SHARDS: u16 = 64;

/// The hash tag of one shard: every key of a shard shares it, so every script touches one slot.
fn tag(campaign: &str, coupon: CouponId, shard: u16) -> String {
    if shard == 0 {
        format!("{{{campaign}:{coupon}}}")
    } else {
        format!("{{{campaign}:{coupon}/{shard}}}")
    }
}

/// One shard's keys: stock hash, holders (users homed here), unsettled reservations, the
/// requests made here (request id → user, or `user@ms` once released) and, on shard 0 only,
/// the consumer's marks of stored requests (request id → ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardKeys {
    pub coupon: String,
    pub holders: String,
    pub unsettled: String,
    pub requests: String,
    pub stored: String,
}

impl ShardKeys {
    pub fn new(campaign: &str, coupon: CouponId, shard: u16) -> Self {
        let tag = tag(campaign, coupon, shard);
        Self {
            coupon: format!("coupon:{tag}"),
            holders: format!("coupon:{tag}:holders"),
            unsettled: format!("coupon:{tag}:unsettled"),
            requests: format!("coupon:{tag}:requests"),
            stored: format!("coupon:{tag}:stored"),
        }
    }

    pub fn all(&self) -> [&str; 5] {
        [
            &self.coupon,
            &self.holders,
            &self.unsettled,
            &self.requests,
            &self.stored,
        ]
    }
}

/// The shard that holds a user's duplicate mark. A fixed mix of the id (SplitMix64's
/// finaliser), so every process and version agrees, and sequential ids spread evenly.
pub fn home_shard(user: UserId, shards: u16) -> u16 {
    if shards <= 1 {
        return 0;
    }
    let mut z = user.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % u64::from(shards)) as u16
}

/// Shard `shard`'s part of `quantity`: an even split, the remainder to the first shards.
/// Never shrinks when the quantity grows, so growing adds to every shard.
pub fn share(quantity: i64, shards: u16, shard: u16) -> i64 {
    let k = i64::from(shards.max(1));
    quantity / k + i64::from(i64::from(shard) < quantity % k)
}

/// Each shard's stock when a gate is rebuilt with `holders` already issued: each holder's unit
/// is counted at its home shard, and a home that issued more than its share (it borrowed)
/// takes the excess from the shards that still have some.
pub fn rebuilt_stock(quantity: i64, shards: u16, homes: impl Iterator<Item = u16>) -> Vec<i64> {
    let mut stock: Vec<i64> = (0..shards).map(|s| share(quantity, shards, s)).collect();
    for home in homes {
        stock[usize::from(home)] -= 1;
    }
    let mut excess: i64 = stock.iter().filter(|s| **s < 0).map(|s| -s).sum();
    for s in stock.iter_mut() {
        *s = (*s).max(0);
    }
    for s in stock.iter_mut() {
        let take = excess.min(*s);
        *s -= take;
        excess -= take;
    }
    stock
}

/// The order an attempt homed at `home` tries its siblings in: a rotation picked by the
/// request id, so dry homes spread their borrowing instead of draining one neighbour.
pub fn siblings(home: u16, shards: u16, request_seed: u128) -> impl Iterator<Item = u16> {
    let others = shards.saturating_sub(1).max(1);
    let offset = (request_seed % u128::from(others)) as u16;
    (0..shards.saturating_sub(1)).map(move |i| (home + 1 + (offset + i) % others) % shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_zero_keeps_the_unsharded_keys() {
        let k = ShardKeys::new("drop", 7, 0);
        assert_eq!(k.coupon, "coupon:{drop:7}");
        assert_eq!(k.holders, "coupon:{drop:7}:holders");
        assert_eq!(
            ShardKeys::new("drop", 7, 3).unsettled,
            "coupon:{drop:7/3}:unsettled"
        );
    }

    #[test]
    fn shares_sum_to_the_quantity_and_only_grow() {
        for k in 1..=9u16 {
            for q in 0..50i64 {
                let parts: Vec<i64> = (0..k).map(|s| share(q, k, s)).collect();
                assert_eq!(parts.iter().sum::<i64>(), q);
                for s in 0..k {
                    assert!(share(q + 1, k, s) >= share(q, k, s));
                }
            }
        }
    }

    #[test]
    fn homes_spread_evenly_and_are_stable() {
        let mut counts = [0u32; 4];
        for user in 1..=40_000u64 {
            counts[usize::from(home_shard(user, 4))] += 1;
        }
        assert!(
            counts.iter().all(|c| (9_500..10_500).contains(c)),
            "{counts:?}"
        );
        assert_eq!(home_shard(12345, 1), 0);
        // Pinned: a change here would move every user's duplicate mark.
        assert_eq!(
            (1..=8u64).map(|u| home_shard(u, 4)).collect::<Vec<_>>(),
            [1, 2, 1, 2, 2, 0, 3, 2]
        );
    }

    #[test]
    fn siblings_visit_every_other_shard_once() {
        for k in 2..=6u16 {
            for home in 0..k {
                for seed in 0..10u128 {
                    let mut seen: Vec<u16> = siblings(home, k, seed).collect();
                    seen.sort_unstable();
                    let want: Vec<u16> = (0..k).filter(|s| *s != home).collect();
                    assert_eq!(seen, want);
                }
            }
        }
        assert_eq!(siblings(0, 1, 5).count(), 0);
    }

    #[test]
    fn rebuilt_stock_counts_every_holder_once() {
        // 10 over 3 shards = 4, 3, 3; six holders homed at shard 0 (two borrowed).
        let stock = rebuilt_stock(10, 3, [0u16; 6].into_iter());
        assert_eq!(stock.iter().sum::<i64>(), 4);
        assert!(stock.iter().all(|s| *s >= 0));
        assert_eq!(stock[0], 0);
    }
}
