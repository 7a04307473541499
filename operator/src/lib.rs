//! `coupon-operator`: reconciles `CouponCampaign` resources.

//!
//! The house, from the bottom: `error` and `crd`; `connections` (the Secrets' backends and their
//! clients) and `settle_registry`; `books`, `scaling` and `metrics`; `context`, shared by every
//! reconcile; the phases' helpers `children` and `status`; `settle_timer`; `controller` on top.

pub mod books;
pub mod children;
pub mod context;
pub mod controller;
pub mod crd;
pub mod error;
pub mod lease;
pub mod metrics;
pub mod scaling;
pub mod secrets;
pub mod settle_registry;
pub mod settle_timer;
pub mod status;
