//! Where and when a run happened: the header of every report and page.

use serde::Serialize;

/// Where and when a run happened, for the page's and the JSON's header.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunInfo {
    /// When the load started (UTC, RFC 3339).
    pub started_at: String,
    /// Host name, cores, kernel.
    pub machine: String,
    /// Which backend each role ran on (URLs without credentials); filled by the command.
    pub backends: Vec<(String, String)>,
}

impl RunInfo {
    pub fn now() -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "?".into())
        };
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        Self {
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            machine: format!(
                "{}, {cores} cores, Linux {}",
                read("/proc/sys/kernel/hostname"),
                read("/proc/sys/kernel/osrelease")
            ),
            backends: Vec::new(),
        }
    }
}
