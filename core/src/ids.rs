//! The ids every stage speaks of; the bottom of the house (imports nothing).

/// A coupon id as the API and the ledger know it.
pub type CouponId = u32;
/// A user id as clients send it (positive).
pub type UserId = u64;
