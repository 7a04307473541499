//! What a coupon shard's `holders` hash says of one user, in one type with one parser.
//!
//! The encoding, shared with the Lua scripts (`reserve.lua`, `shard.lua`, `release.lua`): the
//! request id (36 characters), then nothing (the user holds a unit of this shard), `?<nonce>`
//! (an attempt of that request is borrowing a unit from a sibling right now) or `><shard>` (the
//! unit came from that sibling shard).

use uuid::Uuid;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A unit of the user's home shard.
    Held(Uuid),
    /// An attempt is taking a unit from a sibling; nothing is held yet.
    Claim { request: Uuid, nonce: String },
    /// A unit lent by the sibling shard `from`.
    Lent { request: Uuid, from: u16 },
}

const CLAIM: char = '?';
const LENT: char = '>';

impl Holder {
    pub fn parse(value: &str) -> Result<Self> {
        let bad = || Error::GateProtocol(format!("a holder value {value:?}"));
        let (id, mark) = (value.get(..36).ok_or_else(bad)?, &value[36..]);
        let request = Uuid::parse_str(id).map_err(|_| bad())?;
        Ok(match mark.chars().next() {
            None => Self::Held(request),
            Some(CLAIM) => Self::Claim {
                request,
                nonce: mark[1..].to_string(),
            },
            Some(LENT) => Self::Lent {
                request,
                from: mark[1..].parse().map_err(|_| bad())?,
            },
            Some(_) => return Err(bad()),
        })
    }

    /// The request the value names, whatever its stage.
    pub fn request(&self) -> Uuid {
        match self {
            Self::Held(r) | Self::Claim { request: r, .. } | Self::Lent { request: r, .. } => *r,
        }
    }

    /// Whether the user holds a unit (a claim does not, yet).
    pub fn holds_unit(&self) -> bool {
        !matches!(self, Self::Claim { .. })
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Held(r) => write!(f, "{r}"),
            Self::Claim { request, nonce } => write!(f, "{request}{CLAIM}{nonce}"),
            Self::Lent { request, from } => write!(f, "{request}{LENT}{from}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_round_trips_and_garbage_is_refused() {
        let id = Uuid::now_v7();
        for h in [
            Holder::Held(id),
            Holder::Claim {
                request: id,
                nonce: "1f2e".into(),
            },
            Holder::Lent {
                request: id,
                from: 3,
            },
        ] {
            assert_eq!(Holder::parse(&h.to_string()).expect("parses"), h);
            assert_eq!(h.request(), id);
        }
        assert_eq!(
            format!(
                "{}",
                Holder::Lent {
                    request: id,
                    from: 12
                }
            ),
            format!("{id}>12")
        );
        for bad in [
            "",
            "short",
            &format!("{id}!x"),
            &format!("{id}>x"),
            &"x".repeat(36),
        ] {
            assert!(Holder::parse(bad).is_err(), "{bad:?}");
        }
    }
}
