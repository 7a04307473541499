//! The request stage: path, headers and body turned into a checked issue request. Nothing is
//! reserved for a request that fails here.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use coupon_core::campaign::{CouponId, UserId};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use uuid::Uuid;

use crate::error::ApiError;
use crate::identity::Identity;

/// Largest accepted body; `{"userId": 123}` needs a few dozen bytes.
pub const MAX_BODY_BYTES: usize = 1024;
const MAX_KEY_LEN: usize = 128;
/// Namespace of request ids derived from an `Idempotency-Key`.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_5a2e_8d4b_4c1e_9a7f_2b3c_4d5e_6f70);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    pub coupon: CouponId,
    pub user: UserId,
    pub idempotency_key: Option<String>,
}

impl IssueRequest {
    pub fn parse(
        coupon: &str,
        headers: &HeaderMap,
        body: Result<Bytes, BytesRejection>,
        identity: &Identity,
    ) -> Result<Self, ApiError> {
        let coupon = parse_coupon_id(coupon)?;
        let idempotency_key = match headers.get("idempotency-key") {
            None => None,
            Some(v) => {
                let key = v
                    .to_str()
                    .ok()
                    .filter(|k| {
                        !k.is_empty()
                            && k.len() <= MAX_KEY_LEN
                            && k.bytes().all(|b| b.is_ascii_graphic())
                    })
                    .ok_or_else(|| {
                        ApiError::invalid(format!(
                            "Idempotency-Key must be 1-{MAX_KEY_LEN} visible ASCII characters"
                        ))
                    })?;
                Some(key.to_string())
            }
        };
        let body = body.map_err(|rejection| ApiError::InvalidRequest {
            status: rejection.status(),
            message: format!("request body: {}", rejection.body_text()),
        })?;
        let body_user = parse_user_id(&body, matches!(identity, Identity::Body))?;
        let user = identity.user(headers, body_user)?;
        Ok(Self {
            coupon,
            user,
            idempotency_key,
        })
    }

    /// The request id: derived from the idempotency key so a retry maps to the same
    /// reservation and event, otherwise fresh and time-ordered.
    pub fn request_id(&self, campaign: &str) -> Uuid {
        match &self.idempotency_key {
            Some(key) => keyed_request_id(campaign, self.coupon, self.user, key),
            None => Uuid::now_v7(),
        }
    }
}

/// The request id the API gives a request carrying `Idempotency-Key: key`: a client that lost
/// the answer (connection reset, hang-up) knows which id the ledger would hold.
pub fn keyed_request_id(campaign: &str, coupon: CouponId, user: UserId, key: &str) -> Uuid {
    Uuid::new_v5(
        &IDEMPOTENCY_NAMESPACE,
        format!("{campaign}/{coupon}/{user}/{key}").as_bytes(),
    )
}

impl IssueRequest {}

pub fn parse_coupon_id(raw: &str) -> Result<CouponId, ApiError> {
    match raw.parse::<CouponId>() {
        Ok(id) if id > 0 && raw.bytes().all(|b| b.is_ascii_digit()) => Ok(id),
        _ => Err(ApiError::invalid(format!(
            "couponId must be a positive integer, got {:?}",
            truncate(raw)
        ))),
    }
}

/// The body's `userId`; `required` when the body is the identity (otherwise the body may be
/// empty or omit it, and a present one must still be well-formed).
fn parse_user_id(body: &[u8], required: bool) -> Result<Option<UserId>, ApiError> {
    if body.is_empty() {
        if !required {
            return Ok(None);
        }
        return Err(ApiError::invalid(
            "body must be JSON like {\"userId\": 42}; it is empty",
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("body is not valid JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(ApiError::invalid(
            "body must be a JSON object like {\"userId\": 42}",
        ));
    };
    // serde_json keeps a repeated key's last value; a gateway that keeps the first would see
    // another user than this API: refuse the body rather than pick one.
    if let Ok(Keys(keys)) = serde_json::from_slice::<Keys>(body)
        && let Some(repeated) = keys
            .iter()
            .enumerate()
            .find_map(|(i, k)| keys[..i].contains(k).then_some(k))
    {
        return Err(ApiError::invalid(format!(
            "the body repeats the field {:?}; send each field once",
            truncate(repeated)
        )));
    }
    if let Some(other) = object.keys().find(|k| *k != "userId") {
        return Err(ApiError::invalid(format!(
            "unknown body field {:?}; the body is {{\"userId\": 42}}",
            truncate(other)
        )));
    }
    let Some(user) = object.get("userId") else {
        if !required {
            return Ok(None);
        }
        return Err(ApiError::invalid(
            "body must be a JSON object with a \"userId\" field",
        ));
    };
    // 42.0 is the integer 42 in JSON; larger floats than 2^53 are not exact, so not ids.
    let exact_float = user
        .as_f64()
        .filter(|f| f.fract() == 0.0 && *f >= 1.0 && *f <= 9_007_199_254_740_992.0)
        .map(|f| f as u64);
    match user.as_u64().or(exact_float) {
        Some(id) if id > 0 && id <= i64::MAX as u64 => Ok(Some(id)),
        _ => Err(ApiError::invalid(format!(
            "userId must be a positive integer, got {}",
            truncate(&user.to_string())
        ))),
    }
}

/// A JSON object's keys in their order, repeats kept (a map would keep one of them).
struct Keys(Vec<String>);

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AllKeys;
        impl<'de> Visitor<'de> for AllKeys {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.push(key);
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(AllKeys)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(coupon: &str, body: &str) -> Result<IssueRequest, ApiError> {
        IssueRequest::parse(
            coupon,
            &HeaderMap::new(),
            Ok(Bytes::from(body.to_string())),
            &Identity::Body,
        )
    }

    #[test]
    fn accepts_well_formed_requests() {
        let r = parse("7", r#"{"userId": 42}"#).expect("valid");
        assert_eq!((r.coupon, r.user), (7, 42));
        let r = parse("7", r#"{"userId": 42.0}"#).expect("an integral number is an integer");
        assert_eq!(r.user, 42);
    }

    #[test]
    fn refuses_bad_ids_and_bodies_with_a_reason() {
        for (coupon, body, needle) in [
            ("x", r#"{"userId":1}"#, "couponId"),
            ("-1", r#"{"userId":1}"#, "couponId"),
            ("0", r#"{"userId":1}"#, "couponId"),
            ("+5", r#"{"userId":1}"#, "couponId"),
            ("1", "", "empty"),
            ("1", "{", "not valid JSON"),
            ("1", "[]", "userId"),
            ("1", r#"{"userId":-3}"#, "positive"),
            ("1", r#"{"userId":"3"}"#, "positive"),
            ("1", r#"{"userId":1.5}"#, "positive"),
            ("1", r#"{"userId":1, "admin":true}"#, "unknown body field"),
            ("1", r#"{"userId":0}"#, "positive"),
            (
                "1",
                r#"{"userId":7,"userId":99999}"#,
                "repeats the field \"userId\"",
            ),
            ("1", r#"{"userId":7,"userId":7}"#, "repeats"),
        ] {
            let err = parse(coupon, body).expect_err(body);
            assert_eq!(err.code(), "invalid_request");
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn idempotency_key_fixes_the_request_id() {
        let mut h = HeaderMap::new();
        h.insert("idempotency-key", "abc".parse().expect("header"));
        let a = IssueRequest::parse(
            "1",
            &h,
            Ok(Bytes::from_static(br#"{"userId":9}"#)),
            &Identity::Body,
        )
        .expect("ok");
        let b = IssueRequest::parse(
            "1",
            &h,
            Ok(Bytes::from_static(br#"{"userId":9}"#)),
            &Identity::Body,
        )
        .expect("ok");
        assert_eq!(a.request_id("c"), b.request_id("c"));
        let fresh = IssueRequest {
            idempotency_key: None,
            ..a.clone()
        };
        assert_ne!(fresh.request_id("c"), fresh.request_id("c"));
    }
}
