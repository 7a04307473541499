//! Which campaigns the settlement timer settles (each as its last reconcile saw it), and the
//! last round's report of each.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use coupon_core::settlement::SettleReport;
use k8s_openapi::api::core::v1::ObjectReference;

use crate::crd::Phase;
use crate::secrets::ConnectionUrls;

/// A campaign the timer settles, as its last reconcile saw it.
#[derive(Clone)]
pub struct Entry {
    pub campaign: String,
    pub topic: String,
    pub urls: ConnectionUrls,
    pub phase: Phase,
    pub reference: ObjectReference,
}

/// Campaigns to settle, by `namespace/name`, and the last round's report of each.
#[derive(Default)]
pub struct Registry {
    entries: Mutex<BTreeMap<String, Entry>>,
    reports: Mutex<BTreeMap<String, SettleReport>>,
}

impl Registry {
    pub fn register(&self, key: String, entry: Entry) {
        lock(&self.entries).insert(key, entry);
    }

    pub fn forget(&self, key: &str) {
        lock(&self.entries).remove(key);
        lock(&self.reports).remove(key);
    }

    /// The last settlement round of a campaign, if one ran.
    pub fn last_report(&self, key: &str) -> Option<SettleReport> {
        lock(&self.reports).get(key).cloned()
    }

    /// Keeps a round's report (the next reconcile reads it).
    pub fn record(&self, key: &str, report: SettleReport) {
        lock(&self.reports).insert(key.to_string(), report);
    }

    pub(crate) fn snapshot(&self) -> Vec<(String, Entry)> {
        lock(&self.entries)
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
