//! The drop report's timeline and page: `recorder` collects per-second samples while a load
//! runs, `timeline` holds them (and goes into the JSON reports), `chart` draws them with
//! plotters, `page` lays out one self-contained HTML file.

pub mod chart;
pub mod page;
pub mod recorder;
pub mod run;
pub mod timeline;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("drawing a chart: {0}")]
    Chart(String),
}

impl Error {
    /// A stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Chart(_) => "chart",
        }
    }
}
