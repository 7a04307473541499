//! `coupon-core`: the domain every binary shares. The data flows one way:
//! request → [`gate`] → [`event`] → batch → [`ledger`].

pub mod campaign;
pub mod error;
pub mod event;
pub mod gate;
pub mod ledger;

pub use error::{Error, Result};
