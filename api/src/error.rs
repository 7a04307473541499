//! The one error type of the API: every refusal is JSON `{"code", "message"}` with a stable code.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use coupon_core::campaign::CouponId;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("coupon {0} is sold out")]
    SoldOut(CouponId),
    #[error("user already holds coupon {coupon} (request {request_id})")]
    AlreadyIssued { coupon: CouponId, request_id: Uuid },
    #[error("issuance has not opened yet")]
    NotOpen,
    #[error("issuance has closed")]
    Closed,
    #[error("coupon {0} does not exist in this campaign")]
    UnknownCoupon(String),
    #[error("{message}")]
    InvalidRequest { status: StatusCode, message: String },
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    #[error("the body's userId is not the authenticated user")]
    IdentityMismatch,
    #[error("too many requests; retry in {}s", retry_after_secs(.0))]
    RateLimited(std::time::Duration),
    #[error("the API is overloaded; retry shortly")]
    Overloaded,
    #[error("{reason}")]
    Unavailable {
        reason: String,
        /// Set when a reservation was made: its status resource tells the outcome.
        request: Option<(CouponId, Uuid)>,
    },
    #[error("no request {0} is known for this coupon")]
    UnknownRequest(String),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<Uuid>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn unauthenticated(reason: impl Into<String>) -> Self {
        Self::Unauthenticated(reason.into())
    }

    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable {
            reason: reason.into(),
            request: None,
        }
    }

    /// Every [`code`](Self::code), so metrics can start each series at zero.
    pub const CODES: [&'static str; 12] = [
        "sold_out",
        "already_issued",
        "not_open",
        "closed",
        "unknown_coupon",
        "invalid_request",
        "unauthenticated",
        "identity_mismatch",
        "rate_limited",
        "overloaded",
        "unavailable",
        "unknown_request",
    ];

    /// The stable code clients and metrics see.
    pub fn code(&self) -> &'static str {
        match self {
            Self::SoldOut(_) => "sold_out",
            Self::AlreadyIssued { .. } => "already_issued",
            Self::NotOpen => "not_open",
            Self::Closed => "closed",
            Self::UnknownCoupon(_) => "unknown_coupon",
            Self::InvalidRequest { .. } => "invalid_request",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::IdentityMismatch => "identity_mismatch",
            Self::RateLimited(_) => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::Unavailable { .. } => "unavailable",
            Self::UnknownRequest(_) => "unknown_request",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::SoldOut(_) | Self::AlreadyIssued { .. } => StatusCode::CONFLICT,
            Self::NotOpen | Self::Closed => StatusCode::FORBIDDEN,
            Self::UnknownCoupon(_) | Self::UnknownRequest(_) => StatusCode::NOT_FOUND,
            Self::InvalidRequest { status, .. } => *status,
            Self::Unauthenticated(_) | Self::IdentityMismatch => StatusCode::UNAUTHORIZED,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded | Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (request_id, location) = match &self {
            Self::AlreadyIssued { request_id, .. } => (Some(*request_id), None),
            Self::Unavailable {
                request: Some((coupon, id)),
                ..
            } => (Some(*id), Some(status_location(*coupon, *id))),
            _ => (None, None),
        };
        let body = Body {
            code: self.code(),
            message: self.to_string(),
            request_id,
        };
        let mut response = (self.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(location) = location.and_then(|l| HeaderValue::try_from(l).ok()) {
            headers.insert(header::LOCATION, location);
        }
        match &self {
            Self::Unavailable { .. } | Self::Overloaded => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::RateLimited(wait) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs(wait)),
                );
            }
            Self::Unauthenticated(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// Every refusal: a stable `code`, a human message and, after a reservation (`503
/// unavailable`: its `Location` tells the outcome) or when already decided (`409
/// already_issued`), the request id.
#[derive(ToSchema)]
#[allow(dead_code)] // the shape of ApiError's JSON
pub struct Refusal {
    #[schema(schema_with = refusal_code)]
    pub code: String,
    pub message: String,
    #[serde(rename = "requestId")]
    pub request_id: Option<uuid::Uuid>,
}

fn refusal_code() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(ApiError::CODES.to_vec()))
        .description(Some("Stable refusal code"))
        .into()
}

/// Where the client asks what became of a request (the `Location` of its 202 or 503).
pub fn status_location(coupon: CouponId, request_id: Uuid) -> String {
    format!("/api/coupons/{coupon}/requests/{request_id}")
}

/// Whole seconds to wait, at least 1 (Retry-After has no fractions).
fn retry_after_secs(wait: &std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0 || wait.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_list_every_refusal() {
        let all = [
            ApiError::SoldOut(1),
            ApiError::AlreadyIssued {
                coupon: 1,
                request_id: Uuid::nil(),
            },
            ApiError::NotOpen,
            ApiError::Closed,
            ApiError::UnknownCoupon(String::new()),
            ApiError::invalid(""),
            ApiError::unauthenticated(""),
            ApiError::IdentityMismatch,
            ApiError::RateLimited(std::time::Duration::from_millis(1500)),
            ApiError::Overloaded,
            ApiError::unavailable(""),
            ApiError::UnknownRequest(String::new()),
        ];
        let codes: Vec<_> = all.iter().map(ApiError::code).collect();
        assert_eq!(codes, ApiError::CODES);
    }
}
