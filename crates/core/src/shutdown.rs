//! Graceful shutdown: SIGTERM or SIGINT cancels one token every task selects
//! on; tracked tasks then get a grace period to finish before the process
//! exits anyway, logging what was cut short.
//!
//! Order a service follows: mark health NOT_SERVING, stop accepting, resign
//! elections and deregister, drain in-flight work ([`Shutdown::drain`]), exit.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The shutdown signal and the set of tasks to drain.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A shutdown that nothing has triggered yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The token cancelled when shutdown starts.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Whether shutdown has started.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Starts shutdown (also what the signal handler does).
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Spawns a task that [`Self::drain`] waits for.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Triggers shutdown on the first SIGTERM or SIGINT.
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let token = self.token.clone();
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                () = token.cancelled() => return,
            };
            tracing::info!(signal = name, "shutting down");
            token.cancel();
        });
        Ok(())
    }

    /// Waits for every tracked task, at most `grace`. Returns whether all
    /// finished in time.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_ok() {
            tracing::info!("all tasks finished");
            true
        } else {
            tracing::warn!(
                unfinished = self.tracker.len(),
                grace = ?grace,
                "grace period over; abandoning unfinished tasks"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tasks_up_to_the_grace_period() {
        let shutdown = Shutdown::new();
        let token = shutdown.token();
        shutdown.spawn(async move {
            token.cancelled().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        shutdown.trigger();
        assert!(shutdown.drain(Duration::from_secs(5)).await);

        let stuck = Shutdown::new();
        stuck.spawn(std::future::pending::<()>());
        stuck.trigger();
        assert!(!stuck.drain(Duration::from_secs(5)).await);
    }
}
