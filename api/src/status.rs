//! The client's side of a 202: where one request stands, and the coupons a user holds, read
//! from the gate's records and the consumer's stored marks (no ledger round trip).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use coupon_core::campaign::{CouponId, UserId};
use coupon_core::gate::{RequestStage, RequestStatus};
use futures::future::try_join_all;
use serde::Serialize;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use crate::request::parse_coupon_id;

/// One request's stage, as `GET /api/coupons/{couponId}/requests/{requestId}` answers it.
#[derive(Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestView {
    pub request_id: Uuid,
    #[schema(value_type = i64, format = Int64, minimum = 1, maximum = 4_294_967_295_i64)]
    pub coupon_id: CouponId,
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_i64, format = Int64)]
    pub user_id: UserId,
    /// `pending`: reserved, its event not known to be stored yet (poll again after
    /// Retry-After); `issued`: the ledger holds it; `released`: not issued, its stock went back.
    #[schema(pattern = "^(pending|issued|released)$")]
    pub status: &'static str,
    /// When the gate reserved it (pending only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub reserved_at: Option<DateTime<Utc>>,
    /// When a consumer stored it, while that is still known (issued only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub stored_at: Option<DateTime<Utc>>,
    /// When settlement or the API gave its stock back (released only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub released_at: Option<DateTime<Utc>>,
}

impl RequestView {
    fn new(coupon_id: CouponId, request_id: Uuid, s: RequestStatus) -> Self {
        let at = |ms: Option<i64>| ms.and_then(DateTime::from_timestamp_millis);
        let (status, reserved_at, stored_at, released_at) = match s.stage {
            RequestStage::Pending { reserved_at_ms } => ("pending", at(reserved_at_ms), None, None),
            RequestStage::Issued { stored_at_ms } => ("issued", None, at(stored_at_ms), None),
            RequestStage::Released { at_ms } => ("released", None, None, at(Some(at_ms))),
        };
        Self {
            request_id,
            coupon_id,
            user_id: s.user,
            status,
            reserved_at,
            stored_at,
            released_at,
        }
    }
}

/// The coupons one user holds, as the gate sees them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserCoupons {
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_i64, format = Int64)]
    pub user_id: UserId,
    /// Every coupon of the campaign this user holds or is being issued, by coupon id.
    pub coupons: Vec<RequestView>,
}

#[utoipa::path(
    get,
    path = "/api/coupons/{couponId}/requests/{requestId}",
    summary = "Where one request stands (the Location of its 202 or 503)",
    description = "`pending` until a consumer stored its event (Retry-After says when to ask again), then `issued`; `released` when it was settled away (its publish failed or was lost and the stock went back). Never `issued` for a request the ledger does not hold. With `header` or `jwt` identity only the request's own user sees it.",
    params(
        ("couponId" = i64, Path, minimum = 1, maximum = 4_294_967_295_i64, description = "Coupon id"),
        ("requestId" = String, Path, format = Uuid, description = "The request id of the 202 or 503"),
        ("X-User-Id" = Option<String>, Header, description = "The user, with --identity header:X-User-Id (a gateway sets it)")
    ),
    responses(
        (status = 200, body = RequestView),
        (status = 400, description = "invalid_request: malformed id", body = crate::error::Refusal),
        (status = 401, description = "unauthenticated", body = crate::error::Refusal),
        (status = 404, description = "unknown_coupon, or unknown_request (also another user's request)", body = crate::error::Refusal),
        (status = 429, description = "rate_limited; see Retry-After", body = crate::error::Refusal),
        (status = 503, description = "unavailable", body = crate::error::Refusal)
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn request(
    State(state): State<AppState>,
    Path((coupon, request)): Path<(String, String)>,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Result<Response, ApiError> {
    admit(&state, peer, &headers)?;
    let coupon = parse_coupon_id(&coupon)?;
    let request_id =
        Uuid::try_parse(&request).map_err(|_| ApiError::invalid("requestId must be a UUID"))?;
    // The caller's identity first, so a stranger learns nothing of which ids exist.
    let caller = caller(&state, &headers)?;
    if state.known(coupon)?.is_none() {
        return Err(ApiError::UnknownCoupon(coupon.to_string()));
    }
    let issuer = &state.0.issuer;
    let status = issuer
        .gate
        .request_status(&issuer.campaign, coupon, request_id, caller)
        .await
        .map_err(|e| ApiError::unavailable(format!("gate unreachable: {e}")))?
        .ok_or_else(|| ApiError::UnknownRequest(request_id.to_string()))?;
    let pending = matches!(status.stage, RequestStage::Pending { .. });
    let mut response = Json(RequestView::new(coupon, request_id, status)).into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if pending {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/api/users/{userId}/coupons",
    summary = "The campaign's coupons a user holds (the gate's view)",
    description = "Read from the gate's holders, so it answers at once and eventually equals the ledger: a `pending` entry becomes `issued` once stored, or disappears if settlement releases it. With `header` or `jwt` identity a user sees only their own.",
    params(
        ("userId" = i64, Path, minimum = 1, maximum = 9_223_372_036_854_775_807_i64, description = "User id"),
        ("X-User-Id" = Option<String>, Header, description = "The user, with --identity header:X-User-Id (a gateway sets it)")
    ),
    responses(
        (status = 200, body = UserCoupons),
        (status = 400, description = "invalid_request: malformed id", body = crate::error::Refusal),
        (status = 401, description = "unauthenticated or identity_mismatch (another user's list)", body = crate::error::Refusal),
        (status = 429, description = "rate_limited; see Retry-After", body = crate::error::Refusal),
        (status = 503, description = "unavailable", body = crate::error::Refusal)
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn user_coupons(
    State(state): State<AppState>,
    Path(user): Path<String>,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Result<Response, ApiError> {
    admit(&state, peer, &headers)?;
    let user = user_in_path(&user)?;
    // Body identity trusts the client; header and jwt name the only user one may list.
    state.0.admission.identity.user(&headers, Some(user))?;
    let issuer = &state.0.issuer;
    let (gate, campaign) = (&issuer.gate, issuer.campaign.as_str());
    let unavailable =
        |e: coupon_core::Error| ApiError::unavailable(format!("gate unreachable: {e}"));
    let held = try_join_all(state.coupons()?.into_iter().map(|coupon| async move {
        let Some(id) = gate.holder(campaign, coupon, user).await? else {
            return Ok(None);
        };
        let status = gate
            .request_status(campaign, coupon, id, Some(user))
            .await?;
        Ok(status.map(|s| RequestView::new(coupon, id, s)))
    }))
    .await
    .map_err(unavailable)?;
    let mut response = Json(UserCoupons {
        user_id: user,
        coupons: held.into_iter().flatten().collect(),
    })
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The path's user id: digits, as the body's `userId` is read — where `42.0` is the integer 42
/// (a client that echoes the body's number may write it so); no sign, no other fraction.
fn user_in_path(raw: &str) -> Result<UserId, ApiError> {
    let digits = raw
        .split_once('.')
        .filter(|(_, fraction)| !fraction.is_empty() && fraction.bytes().all(|b| b == b'0'))
        .map_or(raw, |(whole, _)| whole);
    crate::identity::parse_user(digits)
        .filter(|_| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| ApiError::invalid("userId must be a positive integer"))
}

/// Polls count against the client address's rate limit, as issue requests do.
fn admit(
    state: &AppState,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    state.0.admission.check_client(peer, headers)
}

/// The authenticated user, when the identity mode names one (`header`, `jwt`); `None` with
/// `body` identity, where a GET carries no user to check.
fn caller(state: &AppState, headers: &HeaderMap) -> Result<Option<UserId>, ApiError> {
    match state.0.admission.identity {
        crate::identity::Identity::Body => Ok(None),
        ref identity => identity.user(headers, None).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_user_id_reads_as_the_body_reads_it() {
        for (raw, user) in [("7", 7), ("7.0", 7), ("2243587.00", 2_243_587)] {
            assert_eq!(user_in_path(raw).ok(), Some(user), "{raw}");
        }
        for raw in ["0", "+7", "-7", "7.5", "7.", ".0", "", "7e0", "0x7", " 7"] {
            assert!(user_in_path(raw).is_err(), "{raw:?}");
        }
    }
}
