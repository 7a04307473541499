//! `coupon-operator`: reconciles `CouponCampaign` resources.

pub mod children;
pub mod crd;
pub mod scaling;
