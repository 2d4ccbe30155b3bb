//! Bounds on log lines that the network can cause.
//!
//! A warning per refused connection, per hostile fact or per forged
//! packet lets whoever is on the boot network write the log as fast as it
//! can send, filling disks and burying the lines an operator needs. Such a
//! call site logs at most a few lines per window; the first line after
//! the window says how many were left out (their metrics still count all).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lines one call site may log per window, by default.
pub const DEFAULT_BURST: u32 = 5;
/// The default window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// A per-call-site limit: usable in a `static`.
#[derive(Debug)]
pub struct LogLimit {
    window: Duration,
    burst: u32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// When the current window began; `None` before the first line.
    began: Option<Instant>,
    logged: u32,
    left_out: u64,
}

impl LogLimit {
    /// At most `burst` lines per `window`.
    pub const fn new(window: Duration, burst: u32) -> Self {
        Self { window, burst, state: Mutex::new(State { began: None, logged: 0, left_out: 0 }) }
    }

    /// The default limit: [`DEFAULT_BURST`] lines per [`DEFAULT_WINDOW`].
    pub const fn default_limit() -> Self {
        Self::new(DEFAULT_WINDOW, DEFAULT_BURST)
    }

    /// Whether to log now: `Some(n)` with the lines left out since the
    /// last one logged (to put in the line), `None` to stay quiet.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let expired = state.began.is_none_or(|began| now.saturating_duration_since(began) >= self.window);
        if expired {
            state.began = Some(now);
            state.logged = 0;
        }
        if state.logged < self.burst {
            state.logged += 1;
            Some(std::mem::take(&mut state.left_out))
        } else {
            state.left_out += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_the_count_of_what_was_left_out() {
        let limit = LogLimit::new(Duration::from_secs(10), 3);
        let start = Instant::now();
        let first: Vec<Option<u64>> = (0..100).map(|_| limit.admit_at(start)).collect();
        assert_eq!(&first[..4], &[Some(0), Some(0), Some(0), None]);
        assert_eq!(first.iter().flatten().count(), 3);
        assert_eq!(limit.admit_at(start + Duration::from_secs(9)), None);
        // The next window's first line carries the 98 left out.
        assert_eq!(limit.admit_at(start + Duration::from_secs(10)), Some(98));
        assert_eq!(limit.admit_at(start + Duration::from_secs(11)), Some(0));
    }
}
