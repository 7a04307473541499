//! The run's clock (notes, fault marks, the recorder's seconds) and the child processes it
//! SIGKILLs and starts again.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use coupon_report::recorder::Recorder;
use coupon_report::timeline::Mark;

use super::*;

/// The run's one clock: notes, marks and the recorder's seconds share its origin.
pub(super) struct Clock {
    pub(super) recorder: Arc<Recorder>,
    pub(super) notes: Arc<Mutex<Vec<(f64, String)>>>,
    pub(super) marks: Mutex<Vec<Mark>>,
    pub(super) verbose: bool,
}

impl Clock {
    pub(super) fn now_s(&self) -> f64 {
        self.recorder.elapsed().as_secs_f64()
    }

    pub(super) fn mark(&self, from_s: f64, until_s: f64, label: &str) {
        if let Ok(mut m) = self.marks.lock() {
            m.push(Mark {
                from_s,
                until_s,
                label: label.into(),
            });
        }
    }

    pub(super) fn note(&self, line: impl Into<String>) {
        let line = line.into();
        let at = self.now_s();
        if self.verbose {
            eprintln!("[chaos {at:>6.1} s] {line}");
        }
        if let Ok(mut t) = self.notes.lock() {
            t.push((at, line));
        }
    }
}

/// A child process that can be SIGKILLed and started again the same way.
pub(super) struct Process {
    pub(super) name: &'static str,
    pub(super) program: PathBuf,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    pub(super) log: PathBuf,
    pub(super) child: Option<Child>,
}

impl Process {
    pub(super) fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("{}", self.log.display()))?;
        let err = log.try_clone()?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} ({}); build it with `cargo build --workspace --bins`",
                    self.name,
                    self.program.display()
                )
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no shutdown code runs.
    pub(super) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}
