//! `coupon-core`: the domain every binary shares. The data flows one way:
//! request → [`gate`] → [`event`] → batch → [`ledger`].

pub mod backoff;
pub mod broker;
pub mod campaign;
pub mod config;
pub mod connections;
pub mod error;
pub mod event;
pub mod gate;
pub mod ids;
pub mod ledger;
pub mod metrics;
pub mod provision;
pub mod settlement;
pub mod verify;

pub use error::{Error, Result};
