//! `coupon-operator`: reconciles `CouponCampaign` resources.

pub mod scaling;
