//! `coupon-operator`: reconciles `CouponCampaign` resources.

pub mod children;
pub mod connections;
pub mod controller;
pub mod crd;
pub mod lease;
pub mod metrics;
pub mod scaling;
pub mod settlement;
pub mod status;
