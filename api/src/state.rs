//! The router's shared state: the issue path, admission, the campaign's catalog as the gate
//! lists it, and the requests in flight that shutdown waits for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use coupon_core::broker::Publisher;
use coupon_core::campaign::CouponId;
use coupon_core::gate::Reserving;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::error::ApiError;
use crate::issue::Issuer;
use crate::metrics::Metrics;

/// Shared state of the router.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) issuer: Issuer,
    pub(crate) admission: Admission,
    /// Coupon id → quantity as provisioned; `None` until read (or when Redis lost it).
    pub(crate) catalog: RwLock<Option<HashMap<CouponId, i64>>>,
    /// Issue requests run here, detached from their connection, so shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
    /// Set on shutdown: `/readyz` answers 503 so no new traffic is routed here.
    pub(crate) draining: AtomicBool,
}

impl AppState {
    pub fn new(campaign: &str, gate: Arc<dyn Reserving>, publisher: Publisher) -> Self {
        Self::with_admission(campaign, gate, publisher, Admission::default())
    }

    /// With an identity check, rate limits and load shedding.
    pub fn with_admission(
        campaign: &str,
        gate: Arc<dyn Reserving>,
        publisher: Publisher,
        admission: Admission,
    ) -> Self {
        Self(Arc::new(Inner {
            admission,
            issuer: Issuer {
                campaign: campaign.to_string(),
                gate,
                publisher,
                metrics: Metrics::new(campaign),
            },
            catalog: RwLock::new(None),
            tasks: TaskTracker::new(),
            draining: AtomicBool::new(false),
        }))
    }

    /// Readiness goes false; requests are still served.
    pub fn start_draining(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
    }

    /// Waits (at most `within`) for every issue request to reach its end, even those whose
    /// client is gone; false when some were still running.
    pub async fn finish_requests(&self, within: Duration) -> bool {
        self.0.tasks.close();
        tokio::time::timeout(within, self.0.tasks.wait())
            .await
            .is_ok()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.issuer.metrics
    }

    /// Re-reads the campaign's coupon catalog from the gate.
    pub async fn refresh_catalog(&self) -> coupon_core::Result<bool> {
        let issuer = &self.0.issuer;
        let catalog = issuer.gate.catalog(&issuer.campaign).await?;
        let found = catalog.is_some();
        let map = catalog.map(|c| c.into_iter().collect());
        if let Ok(mut slot) = self.0.catalog.write() {
            *slot = map;
        }
        Ok(found)
    }

    /// Forgets idle rate-limit buckets now and then.
    pub fn spawn_bucket_cleanup(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                state.0.admission.forget_idle();
            }
        })
    }

    /// Keeps the catalog fresh so coupons added by provisioning become known without a restart.
    pub fn spawn_catalog_refresh(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = state.refresh_catalog().await {
                    tracing::warn!(error = %e, "catalog refresh failed");
                }
            }
        })
    }

    /// The campaign's coupon ids, as the catalog lists them.
    pub(crate) fn coupons(&self) -> Result<Vec<CouponId>, ApiError> {
        self.with_catalog(|map| {
            let mut ids: Vec<CouponId> = map.keys().copied().collect();
            ids.sort_unstable();
            ids
        })
    }

    pub(crate) fn known(&self, coupon: CouponId) -> Result<Option<i64>, ApiError> {
        self.with_catalog(|map| map.get(&coupon).copied())
    }

    pub(crate) fn with_catalog<T>(
        &self,
        f: impl FnOnce(&HashMap<CouponId, i64>) -> T,
    ) -> Result<T, ApiError> {
        let guard = self
            .0
            .catalog
            .read()
            .map_err(|_| ApiError::unavailable("catalog lock poisoned"))?;
        guard.as_ref().map(f).ok_or_else(|| {
            ApiError::unavailable(
                "the campaign's catalog is not in the gate; it is provisioning or being rebuilt",
            )
        })
    }
}
