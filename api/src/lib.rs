//! `coupon-api`: `POST /api/coupons/{couponId}/issue` answers 202 only after the broker
//! acknowledged the issuance event. The stages: [`request`] → gate → event ([`issue`]). This
//! file is the router and its handlers; [`state`] what they share, [`start`] the binary's
//! start-up and `serve`.

pub mod admission;
pub mod contract;
pub mod error;
pub mod identity;
pub mod issue;
pub mod metrics;
pub mod request;
pub mod start;
pub mod state;
pub mod status;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use coupon_core::campaign::CouponId;
use tokio::time::Instant;

use crate::error::{ApiError, status_location};
use crate::request::{IssueRequest, MAX_BODY_BYTES, parse_coupon_id};
pub use crate::start::{ApiConfig, StartError, run, serve};
pub use crate::state::AppState;

/// The whole HTTP surface; tests drive it with `oneshot`.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/api/coupons/{coupon_id}/issue", post(issue))
        .route("/api/coupons/{coupon_id}", get(coupon))
        .route(
            "/api/coupons/{coupon_id}/requests/{request_id}",
            get(status::request),
        )
        .route("/api/users/{user_id}/coupons", get(status::user_coupons))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .fallback(|| async {
            ApiError::InvalidRequest {
                status: StatusCode::NOT_FOUND,
                message: "no such route; POST /api/coupons/{couponId}/issue".into(),
            }
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Once the gate may reserve, the outcome must be decided and recorded even if the client
/// hangs up (a dropped connection drops this handler's future): the request runs to its end as
/// its own task, and the handler only waits for the answer.
#[utoipa::path(
    post,
    path = "/api/coupons/{couponId}/issue",
    summary = "Ask for one coupon",
    description = "Reserves the coupon for the user in the gate and answers 202 once the issuance event is durable in the broker; the ledger row follows. Refusals carry a stable `code`.",
    params(
        ("couponId" = i64, Path, minimum = 1, maximum = 4_294_967_295_i64, description = "Coupon id"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,128}$", min_length = 1, max_length = 128, description = "1-128 visible ASCII characters; a retry with the same key gets the same request id and answer"),
        ("X-User-Id" = Option<String>, Header, description = "The user, with --identity header:X-User-Id (a gateway sets it)")
    ),
    request_body(content = crate::contract::IssueBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Issued: the event is in the broker; Location names the request's status resource", body = crate::issue::Accepted,
            headers(("Location" = String, description = "/api/coupons/{couponId}/requests/{requestId}"))),
        (status = 400, description = "invalid_request: malformed id, body or header", body = crate::error::Refusal),
        (status = 401, description = "unauthenticated or identity_mismatch", body = crate::error::Refusal),
        (status = 403, description = "not_open or closed: outside the campaign window", body = crate::error::Refusal),
        (status = 404, description = "unknown_coupon", body = crate::error::Refusal),
        (status = 409, description = "sold_out or already_issued", body = crate::error::Refusal),
        (status = 413, description = "invalid_request: body over 1 KiB", body = crate::error::Refusal),
        (status = 415, description = "invalid_request: not JSON", body = crate::error::Refusal),
        (status = 429, description = "rate_limited; see Retry-After", body = crate::error::Refusal),
        (status = 503, description = "unavailable or overloaded; see Retry-After. With a requestId a reservation was made: its Location tells the outcome (settlement decides an unknown one)", body = crate::error::Refusal,
            headers(("Location" = Option<String>, description = "With a requestId: /api/coupons/{couponId}/requests/{requestId}")))
    ),
    security((), ("bearer" = []))
)]
async fn issue(
    State(state): State<AppState>,
    Path(coupon): Path<String>,
    headers: HeaderMap,
    // Only the peer address, not a copy of every request extension (absent under `oneshot`).
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    if let Err(e) = state.0.admission.check_client(peer, &headers) {
        return state.refused(e, Instant::now());
    }
    let mut waiting = ClientWaiting(Some(state.metrics().client_gone.clone()));
    let task = state.clone();
    let answer = state
        .0
        .tasks
        .spawn(async move { task.issue_to_end(&coupon, &headers, body).await })
        .await;
    waiting.0 = None;
    answer.unwrap_or_else(|e| {
        tracing::error!(error = %e, "issue task failed");
        ApiError::unavailable("internal error; retry shortly").into_response()
    })
}

/// Counts handlers dropped before their answer was ready (the client hung up).
struct ClientWaiting(Option<prometheus::IntCounter>);

impl Drop for ClientWaiting {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.inc();
        }
    }
}

/// Decrements the in-flight gauge on every path, a panic included.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn enter(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl AppState {
    async fn issue_to_end(
        &self,
        coupon: &str,
        headers: &HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Response {
        let m = self.metrics();
        let _in_flight = InFlight::enter(&m.in_flight);
        let started = Instant::now();
        let admission = &self.0.admission;
        let result = async {
            let _room = admission.room().await?;
            let req = IssueRequest::parse(coupon, headers, body, &admission.identity)?;
            admission.check_user(req.user)?;
            if self.known(req.coupon)?.is_none() {
                return Err(ApiError::UnknownCoupon(req.coupon.to_string()));
            }
            self.0.issuer.issue(&req).await
        }
        .await;
        let (outcome, response) = match result {
            Ok(accepted) => {
                let location = status_location(accepted.coupon_id, accepted.request_id);
                (
                    "accepted",
                    (
                        StatusCode::ACCEPTED,
                        [(header::LOCATION, location)],
                        Json(accepted),
                    )
                        .into_response(),
                )
            }
            Err(e) => (e.code(), e.into_response()),
        };
        self.count(outcome, started);
        response
    }

    /// A request refused before its task started (the client address's rate limit).
    fn refused(&self, e: ApiError, started: Instant) -> Response {
        self.count(e.code(), started);
        e.into_response()
    }

    fn count(&self, outcome: &str, started: Instant) {
        let m = self.metrics();
        m.requests.with_label_values(&[outcome]).inc();
        m.latency
            .with_label_values(&[outcome])
            .observe(started.elapsed().as_secs_f64());
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct CouponView {
    #[schema(value_type = i64, format = Int64, minimum = 1, maximum = 4_294_967_295_i64)]
    coupon_id: CouponId,
    quantity: i64,
    remaining: i64,
}

#[utoipa::path(
    get,
    path = "/api/coupons/{couponId}",
    summary = "A coupon's quantity and the gate's remaining stock",
    params(("couponId" = i64, Path, minimum = 1, maximum = 4_294_967_295_i64, description = "Coupon id")),
    responses(
        (status = 200, body = CouponView),
        (status = 400, description = "invalid_request", body = crate::error::Refusal),
        (status = 404, description = "unknown_coupon or no such route", body = crate::error::Refusal),
        (status = 503, description = "unavailable", body = crate::error::Refusal)
    )
)]
async fn coupon(
    State(state): State<AppState>,
    Path(coupon): Path<String>,
) -> Result<Json<CouponView>, ApiError> {
    let id = parse_coupon_id(&coupon)?;
    if state.known(id)?.is_none() {
        return Err(ApiError::UnknownCoupon(id.to_string()));
    }
    let issuer = &state.0.issuer;
    match issuer.gate.snapshot(&issuer.campaign, id).await {
        Ok(Some(s)) => Ok(Json(CouponView {
            coupon_id: id,
            quantity: s.quantity,
            remaining: s.remaining,
        })),
        Ok(None) => Err(ApiError::unavailable("the gate lost this coupon's state")),
        Err(e) => Err(ApiError::unavailable(format!("gate unreachable: {e}"))),
    }
}

#[utoipa::path(
    get,
    path = "/healthz",
    summary = "Liveness",
    responses((status = 200, body = String, content_type = "text/plain"))
)]
async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(
    get,
    path = "/readyz",
    summary = "Readiness: Redis, the broker and the campaign's catalog answer, and not draining",
    responses(
        (status = 200, body = String, content_type = "text/plain"),
        (status = 503, description = "unavailable", body = crate::error::Refusal)
    )
)]
async fn readyz(State(state): State<AppState>) -> Response {
    if state.0.draining.load(Ordering::SeqCst) {
        return ApiError::unavailable("shutting down").into_response();
    }
    let issuer = &state.0.issuer;
    let redis = issuer.gate.ping().await.map_err(|e| format!("redis: {e}"));
    let kafka = issuer
        .publisher
        .check()
        .await
        .map(|_| ())
        .map_err(|e| format!("kafka: {e}"));
    let catalog = state.known(0).map(|_| ()).map_err(|e| e.to_string());
    match redis.and(kafka).and(catalog) {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => ApiError::unavailable(e).into_response(),
    }
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    summary = "This contract",
    responses((status = 200, content_type = "application/json", body = Object))
)]
async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::contract::openapi_json(),
    )
        .into_response()
}

#[utoipa::path(
    get,
    path = "/metrics",
    summary = "Prometheus metrics",
    responses((status = 200, body = String, content_type = "text/plain"))
)]
async fn metrics(State(state): State<AppState>) -> Response {
    state
        .metrics()
        .producer_recreated
        .set(state.0.issuer.publisher.recreated() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics().render(),
    )
        .into_response()
}
