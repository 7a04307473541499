//! A real browser for the report pages: Debian's chromium, headless, in a network namespace of
//! its own (only a down loopback: no network at all), driven over the DevTools protocol on a
//! pipe (fd 3 in, fd 4 out; JSON messages ended by NUL). It opens a page, collects console and
//! log errors, measures what the page drew, and takes a full-page screenshot.

use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// What the browser saw on the page.
#[derive(Debug)]
pub struct Rendered {
    pub charts: Vec<ChartSeen>,
    /// The verdict banner's text, and whether it is on the first screen and visible.
    pub verdict: Option<(String, bool)>,
    /// Table rows marked failing.
    pub failing_rows: usize,
    /// Resources the page tried to load (none: it is self-contained).
    pub resources: usize,
    /// Console errors, uncaught exceptions and error log entries (CSP violations, failed loads).
    pub errors: Vec<String>,
    /// The screenshot's width and height in pixels, read back from the PNG written.
    pub screenshot: Option<(u32, u32)>,
}

#[derive(Debug, serde::Deserialize)]
pub struct ChartSeen {
    /// The chart's caption (its first text).
    pub title: String,
    /// Lines, areas and bars with a non-empty box.
    pub shapes: usize,
    pub width: f64,
    pub height: f64,
}

/// Where to write a screenshot, and how much of the page (from the top; `None`: all of it).
#[derive(Debug, Clone, Copy)]
pub struct Shot<'a> {
    pub path: &'a Path,
    pub max_height: Option<u32>,
}

/// Where a test keeps a page's screenshot: `SCREENSHOT_DIR/NAME.png` when set (to look at
/// them), else beside the page.
pub fn screenshot_path(page: &Path, name: &str) -> PathBuf {
    std::env::var_os("SCREENSHOT_DIR")
        .map_or_else(|| page.with_file_name(""), PathBuf::from)
        .join(format!("{name}.png"))
}

/// Width and height from a PNG's header; `None` if it is not a PNG.
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if png.len() < 24 || &png[..8] != SIGNATURE || &png[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&png[16..20]), be(&png[20..24])))
}

/// Debian's chromium (`CHROMIUM` overrides).
pub fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| "chromium".into(), PathBuf::from)
}

/// What the page drew, measured in the page (DevTools' evaluation is not bound by its CSP).
const MEASURE: &str = r#"JSON.stringify({
  charts: [...document.querySelectorAll('figure.chart svg')].map(svg => {
    const box = svg.getBoundingClientRect();
    const full = svg.width.baseVal.value;
    const shapes = [...svg.querySelectorAll('polyline,polygon,path,rect')].filter(e => {
      const b = e.getBBox();
      return (b.width > 0 || b.height > 0) && !(e.tagName === 'rect' && b.width >= full);
    }).length;
    const t = svg.querySelector('text');
    return { title: t ? t.textContent.trim() : '', shapes, width: box.width, height: box.height };
  }),
  verdict: (() => {
    const v = document.getElementById('verdict');
    if (!v) return null;
    const r = v.getBoundingClientRect(), s = getComputedStyle(v);
    const visible = r.width > 0 && r.height > 0 && r.bottom <= innerHeight && s.visibility !== 'hidden' && s.display !== 'none';
    return [v.innerText, visible];
  })(),
  failingRows: document.querySelectorAll('tr.fail').length,
  resources: performance.getEntriesByType('resource').length
})"#;

struct Devtools {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    next: u64,
    session: Option<String>,
    errors: Vec<String>,
    loaded: bool,
}

/// Opens `page` (1,100 px wide), measures it and, with `screenshot`, writes a PNG of the page.
pub async fn open(page: &Path, screenshot: Option<&Path>) -> anyhow::Result<Rendered> {
    let shot = screenshot.map(|path| Shot {
        path,
        max_height: None,
    });
    open_with(page, shot).await
}

pub async fn open_with(page: &Path, screenshot: Option<Shot<'_>>) -> anyhow::Result<Rendered> {
    let page = std::fs::canonicalize(page).with_context(|| format!("{}", page.display()))?;
    let profile = std::env::temp_dir().join(crate::unique("chromium-profile"));
    let result = tokio::time::timeout(Duration::from_secs(60), async {
        let mut dt = Devtools::start(&profile)?;
        let rendered = dt.visit(&page, screenshot).await;
        let _ = dt.call("Browser.close", json!({}), false).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), dt.child.wait()).await;
        let _ = dt.child.kill().await;
        rendered
    })
    .await
    .unwrap_or_else(|_| Err(anyhow::anyhow!("chromium did not finish within 60 s")));
    let _ = std::fs::remove_dir_all(&profile);
    result
}

impl Devtools {
    fn start(profile: &Path) -> anyhow::Result<Self> {
        // unshare gives chromium a network namespace with nothing in it; the shell hands it our
        // pipes as fds 3 and 4, which --remote-debugging-pipe speaks on.
        let mut child = Command::new("unshare")
            .args([
                "--net",
                "--",
                "sh",
                "-c",
                r#"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"#,
            ])
            .arg(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start unshare/{}", chromium().display()))?;
        let input = child.stdin.take().context("no stdin")?;
        let output = BufReader::new(child.stdout.take().context("no stdout")?);
        Ok(Self {
            child,
            input,
            output,
            next: 0,
            session: None,
            errors: Vec::new(),
            loaded: false,
        })
    }

    async fn visit(
        &mut self,
        page: &Path,
        screenshot: Option<Shot<'_>>,
    ) -> anyhow::Result<Rendered> {
        let target = self
            .call("Target.createTarget", json!({"url": "about:blank"}), false)
            .await?;
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
                false,
            )
            .await?;
        self.session = attached["sessionId"].as_str().map(String::from);
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            self.call(domain, json!({}), true).await?;
        }
        self.viewport(900).await?;
        let url = format!("file://{}", page.display());
        self.call("Page.navigate", json!({"url": url}), true)
            .await?;
        while !self.loaded {
            self.read().await?;
        }
        let measured = self
            .call(
                "Runtime.evaluate",
                json!({"expression": MEASURE, "returnByValue": true}),
                true,
            )
            .await?;
        let text = measured["result"]["value"]
            .as_str()
            .with_context(|| format!("the page could not be measured: {measured}"))?;
        let seen: Value = serde_json::from_str(text)?;
        let screenshot = match screenshot {
            Some(shot) => Some(self.screenshot(shot).await?),
            None => None,
        };
        Ok(Rendered {
            charts: serde_json::from_value(seen["charts"].clone())?,
            verdict: seen["verdict"]
                .as_array()
                .and_then(|v| Some((v.first()?.as_str()?.to_string(), v.get(1)?.as_bool()?))),
            failing_rows: seen["failingRows"].as_u64().unwrap_or(0) as usize,
            resources: seen["resources"].as_u64().unwrap_or(0) as usize,
            errors: std::mem::take(&mut self.errors),
            screenshot,
        })
    }

    async fn viewport(&mut self, height: u64) -> anyhow::Result<()> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1100, "height": height, "deviceScaleFactor": 1, "mobile": false}),
            true,
        )
        .await
        .map(drop)
    }

    async fn screenshot(&mut self, shot: Shot<'_>) -> anyhow::Result<(u32, u32)> {
        let metrics = self.call("Page.getLayoutMetrics", json!({}), true).await?;
        let mut height = metrics["cssContentSize"]["height"]
            .as_f64()
            .unwrap_or(900.0);
        if let Some(max) = shot.max_height {
            height = height.min(f64::from(max));
        }
        self.viewport(height.ceil() as u64).await?;
        let taken = self
            .call("Page.captureScreenshot", json!({"format": "png"}), true)
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(taken["data"].as_str().unwrap_or_default())
            .context("screenshot")?;
        let size = png_size(&png).context("the screenshot is not a PNG")?;
        std::fs::write(shot.path, png).with_context(|| format!("{}", shot.path.display()))?;
        Ok(size)
    }

    /// Sends a command (to the page's session with `on_page`) and waits for its answer,
    /// keeping the events that arrive meanwhile.
    async fn call(&mut self, method: &str, params: Value, on_page: bool) -> anyhow::Result<Value> {
        self.next += 1;
        let id = self.next;
        let mut message = json!({"id": id, "method": method, "params": params});
        if on_page {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        self.input
            .write_all(&bytes)
            .await
            .context("chromium's pipe")?;
        loop {
            let m = self.read().await?;
            if m["id"].as_u64() == Some(id) {
                return match m.get("error") {
                    Some(e) => Err(anyhow::anyhow!("{method}: {e}")),
                    None => Ok(m["result"].clone()),
                };
            }
        }
    }

    async fn read(&mut self) -> anyhow::Result<Value> {
        let mut buf = Vec::new();
        let n = self
            .output
            .read_until(0, &mut buf)
            .await
            .context("chromium's pipe")?;
        if n == 0 {
            anyhow::bail!("chromium closed its pipe (did it start? is this root, for unshare?)");
        }
        buf.pop();
        let m: Value = serde_json::from_slice(&buf)?;
        self.note(&m);
        Ok(m)
    }

    fn note(&mut self, m: &Value) {
        let p = &m["params"];
        match m["method"].as_str() {
            Some("Page.loadEventFired") => self.loaded = true,
            Some("Runtime.consoleAPICalled")
                if matches!(p["type"].as_str(), Some("error" | "assert")) =>
            {
                self.errors.push(format!("console: {}", p["args"]));
            }
            Some("Runtime.exceptionThrown") => {
                self.errors
                    .push(format!("exception: {}", p["exceptionDetails"]));
            }
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => {
                self.errors.push(format!("log: {}", p["entry"]["text"]));
            }
            _ => {}
        }
    }
}
