//! What the gate's scripts answer, decoded once from Redis values: reserve.lua's decision at
//! the user's home shard and ensure.lua's outcome. The Lua side writes each answer as an array
//! whose first element names it; an answer this version does not know is a parse error (the
//! scripts and the code are deployed together, so it means a mixed deployment or a bug).

use redis::{FromRedisValue, ParsingError, Value};
use uuid::Uuid;

/// reserve.lua at the user's home shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HomeReply {
    /// Stock taken; the reservation's time on the gate's clock.
    Reserved {
        at_ms: i64,
    },
    Replay,
    AlreadyIssued(Uuid),
    /// Another attempt of this user is claiming a sibling's unit.
    Pending,
    SoldOut,
    NotOpen,
    Closed,
    Missing,
    /// The home is dry: claim the slot and take a unit from a sibling; `epoch` is the dry hint's.
    Borrow {
        epoch: String,
    },
    /// The caller assumed another shard count: the coupon's live one.
    Shards(u16),
}

/// ensure.lua on one shard's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EnsureReply {
    Created,
    /// The quantity grew by this much (0: unchanged).
    Grown(i64),
    /// The spec asks for less than the live quantity.
    Shrink(i64),
    /// The shard belongs to a layout with this shard count.
    Reshard(u16),
}

fn parts(v: Value) -> Result<Vec<String>, ParsingError> {
    Vec::<String>::from_redis_value(v)
}

fn field<T: std::str::FromStr>(parts: &[String], i: usize) -> Result<T, ParsingError> {
    parts
        .get(i)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("gate reply {parts:?}: element {i} does not parse").into())
}

impl FromRedisValue for HomeReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let p = parts(v)?;
        Ok(match p.first().map(String::as_str).unwrap_or("") {
            "reserved" => Self::Reserved {
                at_ms: field(&p, 1)?,
            },
            "replay" => Self::Replay,
            "already_issued" => Self::AlreadyIssued(field(&p, 1)?),
            "pending" => Self::Pending,
            "sold_out" => Self::SoldOut,
            "not_open" => Self::NotOpen,
            "closed" => Self::Closed,
            "missing" => Self::Missing,
            "borrow" => Self::Borrow {
                epoch: field(&p, 1)?,
            },
            "shards" => Self::Shards(field(&p, 1)?),
            _ => return Err(format!("reserve script answered {p:?}").into()),
        })
    }
}

impl FromRedisValue for EnsureReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let p = parts(v)?;
        Ok(match p.first().map(String::as_str).unwrap_or("") {
            "created" => Self::Created,
            "ok" => Self::Grown(field(&p, 1)?),
            "shrink" => Self::Shrink(field(&p, 1)?),
            "reshard" => Self::Reshard(field(&p, 1)?),
            _ => return Err(format!("ensure script answered {p:?}").into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array(items: &[&str]) -> Value {
        Value::Array(
            items
                .iter()
                .map(|s| Value::BulkString(s.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn every_answer_of_reserve_lua_decodes() {
        let id = Uuid::from_u128(7);
        let cases = [
            (
                array(&["reserved", "1700"]),
                HomeReply::Reserved { at_ms: 1700 },
            ),
            (array(&["replay", &id.to_string()]), HomeReply::Replay),
            (
                array(&["already_issued", &id.to_string()]),
                HomeReply::AlreadyIssued(id),
            ),
            (array(&["pending", &id.to_string()]), HomeReply::Pending),
            (array(&["sold_out"]), HomeReply::SoldOut),
            (array(&["not_open"]), HomeReply::NotOpen),
            (array(&["closed"]), HomeReply::Closed),
            (array(&["missing"]), HomeReply::Missing),
            (
                array(&["borrow", "12"]),
                HomeReply::Borrow { epoch: "12".into() },
            ),
            (array(&["shards", "4"]), HomeReply::Shards(4)),
        ];
        for (value, want) in cases {
            assert_eq!(HomeReply::from_redis_value(value).expect("decodes"), want);
        }
    }

    #[test]
    fn answers_it_does_not_know_are_errors() {
        for bad in [
            array(&["reserved", "soon"]),
            array(&["already_issued", "not-a-uuid"]),
            array(&["shards"]),
            array(&["granted"]),
            array(&[]),
            Value::Int(1),
        ] {
            assert!(HomeReply::from_redis_value(bad.clone()).is_err(), "{bad:?}");
            assert!(EnsureReply::from_redis_value(bad).is_err());
        }
        assert_eq!(
            EnsureReply::from_redis_value(array(&["reshard", "2"])).expect("decodes"),
            EnsureReply::Reshard(2)
        );
        assert_eq!(
            EnsureReply::from_redis_value(array(&["ok", "0"])).expect("decodes"),
            EnsureReply::Grown(0)
        );
    }
}
