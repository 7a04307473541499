//! `page-shot PAGE.html [SHOT.png [MAX_HEIGHT]]`: opens a report page in headless chromium with no network,
//! prints what it drew (charts, verdict, errors) and writes a full-page screenshot. The docs'
//! screenshots come from here; the suite's browser tests use the same code.

use std::path::PathBuf;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let Some(page) = args.next() else {
        eprintln!("usage: page-shot PAGE.html [SHOT.png [MAX_HEIGHT]]");
        return ExitCode::from(2);
    };
    let path = args.next();
    let max_height = args.next().and_then(|h| h.to_str()?.parse().ok());
    let shot = path
        .as_deref()
        .map(|path| coupon_e2e::browser::Shot { path, max_height });
    match coupon_e2e::browser::open_with(&page, shot).await {
        Ok(r) => {
            for c in &r.charts {
                println!(
                    "chart {:?}: {} shapes, {:.0}x{:.0} px",
                    c.title, c.shapes, c.width, c.height
                );
            }
            println!("verdict: {:?}", r.verdict);
            println!(
                "failing rows: {}, resources fetched: {}",
                r.failing_rows, r.resources
            );
            for e in &r.errors {
                println!("error: {e}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("page-shot: {e}");
            ExitCode::FAILURE
        }
    }
}
