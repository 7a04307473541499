//! The issue path: gate → event → publish, and the compensation when the broker does not ack.

use std::sync::Arc;

use chrono::Utc;
use coupon_core::backoff::Backoff;
use coupon_core::broker::{PublishFailure, Publisher};
use coupon_core::campaign::CouponId;
use coupon_core::event::IssuanceEvent;
use coupon_core::gate::{Decision, Released, Reserving};
use serde::Serialize;
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::request::IssueRequest;

#[derive(Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub request_id: Uuid,
    /// Coupon ids are 1 to 2^32-1: more than a signed 32-bit integer holds.
    #[schema(value_type = i64, format = Int64, minimum = 1, maximum = 4_294_967_295_i64)]
    pub coupon_id: CouponId,
    pub user_id: u64,
}

pub struct Issuer {
    pub campaign: String,
    pub gate: Arc<dyn Reserving>,
    pub publisher: Publisher,
    pub metrics: Metrics,
}

impl Issuer {
    /// Reserves in the gate, publishes, and answers only once the outcome is known (or known
    /// to be unknown).
    pub async fn issue(&self, req: &IssueRequest) -> Result<Accepted, ApiError> {
        let request_id = req.request_id(&self.campaign);
        let (decision, reserved_at) = self
            .gate
            .reserve_stamped(&self.campaign, req.coupon, req.user, request_id)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "gate unreachable");
                self.undo_unanswered(req, request_id);
                ApiError::unavailable("the stock gate is unreachable; retry shortly")
            })?;
        // When this attempt made the reservation (`None`: a replay, which never releases it).
        let fresh_at = match decision {
            Decision::Reserved => reserved_at,
            // The same request again (same Idempotency-Key): publish the same event again;
            // the ledger is idempotent on its id.
            Decision::Replay => None,
            Decision::AlreadyIssued(request_id) => {
                return Err(ApiError::AlreadyIssued {
                    coupon: req.coupon,
                    request_id,
                });
            }
            Decision::SoldOut => return Err(ApiError::SoldOut(req.coupon)),
            Decision::NotOpen => return Err(ApiError::NotOpen),
            Decision::Closed => return Err(ApiError::Closed),
            Decision::InProgress => {
                return Err(ApiError::unavailable(
                    "another request of this user for this coupon is being decided; retry shortly",
                ));
            }
            Decision::Missing => {
                tracing::error!(coupon = req.coupon, "gate state missing for a known coupon");
                return Err(ApiError::unavailable(
                    "the stock gate lost this coupon's state; it is being rebuilt",
                ));
            }
        };
        let event =
            IssuanceEvent::new(request_id, &self.campaign, req.coupon, req.user, Utc::now());
        let started = Instant::now();
        let published = self.publisher.publish(&event).await;
        self.metrics
            .publish_latency
            .observe(started.elapsed().as_secs_f64());
        match published {
            Ok(_) => Ok(Accepted {
                request_id,
                coupon_id: req.coupon,
                user_id: req.user,
            }),
            Err(failure) => Err(self.compensate(&event, fresh_at, failure).await),
        }
    }

    /// The script may have run although its answer was lost. Nothing was published for this
    /// request id, so a reservation under it is released (idempotently) once Redis answers again.
    fn undo_unanswered(&self, req: &IssueRequest, request_id: Uuid) {
        if req.idempotency_key.is_some() {
            // The client's retry with the same key replays and publishes this very reservation.
            return;
        }
        let gate = self.gate.clone();
        let (campaign, coupon, user) = (self.campaign.clone(), req.coupon, req.user);
        tokio::spawn(async move {
            let mut backoff = Backoff::default();
            for _ in 0..12 {
                match gate.release(&campaign, coupon, user, request_id).await {
                    Ok(_) => return,
                    Err(_) => tokio::time::sleep(backoff.wait()).await,
                }
            }
            tracing::error!(%request_id, coupon, user, "could not undo an unanswered reservation");
        });
    }

    /// The broker did not acknowledge: undo a certain refusal of a fresh reservation at once,
    /// leave an unknown one to settlement.
    async fn compensate(
        &self,
        e: &IssuanceEvent,
        fresh_at: Option<i64>,
        failure: PublishFailure,
    ) -> ApiError {
        self.metrics
            .publish_failures
            .with_label_values(&[failure.label()])
            .inc();
        tracing::warn!(request_id = %e.request_id, %failure, "publish not acknowledged");
        // A replayed request may already be in the log from its first attempt: never release
        // it. Nor a fresh one that a replay (the client's retry beside this attempt) has
        // touched since: that replay may have published (the gate answers `Refreshed`).
        if let (Some(reserved_at), PublishFailure::Refused(_)) = (fresh_at, &failure) {
            match self
                .gate
                .release_refused(
                    &self.campaign,
                    e.coupon_id,
                    e.user_id,
                    e.request_id,
                    reserved_at,
                )
                .await
            {
                Ok(Released::Released) => {
                    return ApiError::Unavailable {
                        reason: format!(
                            "the broker refused the request ({failure}); nothing was reserved, retry shortly"
                        ),
                        request: Some((e.coupon_id, e.request_id)),
                    };
                }
                // Replayed since, or already settled (perhaps as issued): not ours to undo.
                Ok(outcome @ (Released::Refreshed | Released::Gone)) => {
                    tracing::info!(request_id = %e.request_id, ?outcome, "refused publish left to settlement");
                }
                Err(err) => {
                    tracing::error!(error = %err, "release failed; settlement will release it")
                }
            }
        }
        // Unknown: the reservation stays in the gate's unsettled set; settlement keeps it if
        // the event reached the ledger and releases it otherwise.
        ApiError::Unavailable {
            reason: "the broker did not confirm in time; retry with the same Idempotency-Key, or check the request id later".into(),
            request: Some((e.coupon_id, e.request_id)),
        }
    }
}
