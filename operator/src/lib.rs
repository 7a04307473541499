//! `coupon-operator`: reconciles `CouponCampaign` resources.

pub mod crd;
pub mod scaling;
