//! The wait between retries of a failed call: 100 ms, doubling, at most 5 s.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    pub const MAX: Duration = Duration::from_secs(5);

    /// How long to wait before the next try; each call doubles the one after.
    pub fn wait(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_100_ms_up_to_5_s() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..8).map(|_| b.wait().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }
}
