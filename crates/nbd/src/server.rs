//! The tokio shell around [`Session`](crate::session::Session): the
//! listener, one task per connection, request I/O on the blocking pool,
//! limits, and a graceful stop.
//!
//! Memory: a connection buffers at most [`Limits::max_in_flight_bytes`]
//! plus one maximum payload of request data (the session stops reading
//! beyond that), and every read or write buffer is taken from a
//! server-wide byte budget first, so the total stays under
//! [`NbdConfig::memory_budget`] however many clients pipeline at once.
//! Beyond that each connection holds about 50 KiB of fixed buffers, so
//! [`NbdConfig::max_connections`] bounds the rest. A
//! reply the client does not take within [`NbdConfig::reply_timeout`] ends
//! the connection, so a client that stops reading cannot hold its share
//! of the budget for ever.

mod connection;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::export::Exports;
use crate::metrics::NbdMetrics;
use crate::session::Limits;

/// The IANA port for NBD.
pub const DEFAULT_PORT: u16 = 10809;

/// Server settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdConfig {
    /// Per-connection protocol limits.
    pub limits: Limits,
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
    /// Bytes of request and reply buffers across all connections.
    pub memory_budget: u64,
    /// Time a client has to do its part of the handshake (export lookups,
    /// the server's part, do not count).
    pub handshake_timeout: Duration,
    /// Time a reply may take to be written before the connection is dropped.
    pub reply_timeout: Duration,
}

impl Default for NbdConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_connections: 1024,
            memory_budget: 512 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(60),
        }
    }
}

/// Shared state of one server.
pub struct NbdServer {
    config: NbdConfig,
    exports: Arc<dyn Exports>,
    metrics: Arc<NbdMetrics>,
    connections: Arc<Semaphore>,
    /// Bytes of buffers, one permit per byte.
    budget: Arc<Semaphore>,
}

impl std::fmt::Debug for NbdServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdServer").field("config", &self.config).finish_non_exhaustive()
    }
}

impl NbdServer {
    /// A server for `exports`, counting into `metrics`.
    pub fn new(config: NbdConfig, exports: Arc<dyn Exports>, metrics: Arc<NbdMetrics>) -> Arc<Self> {
        // One request's buffer must always fit, or it would wait for ever.
        let one_request = u64::from(config.limits.max_payload) + 64;
        let budget = config.memory_budget.max(one_request).min(Semaphore::MAX_PERMITS as u64);
        Arc::new(Self {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            budget: Arc::new(Semaphore::new(budget as usize)),
            config,
            exports,
            metrics,
        })
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Arc<NbdMetrics> {
        &self.metrics
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.config.max_connections - self.connections.available_permits()
    }
}

/// Serves connections arriving on `listener` until `stop`. Connections
/// run on `tracker`: on `stop` each stops reading requests, finishes and
/// answers those in flight, and closes (the caller drains `tracker`).
///
/// CANCEL-SAFETY: stops between accepts.
pub async fn serve(
    listener: TcpListener,
    server: Arc<NbdServer>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, usually: back off rather than spin.
                    tracing::warn!(cause = %e, "accepting an NBD connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&server.connections).try_acquire_owned() else {
            server.metrics.connection_refused();
            tracing::warn!(%peer, max = server.config.max_connections, "NBD connection cap reached; closing");
            continue;
        };
        let connection = connection::run(stream, peer, Arc::clone(&server), stop.clone(), tracker.clone());
        tracker.spawn(async move {
            connection.await;
            drop(permit);
        });
    }
    tracing::debug!(address = ?listener.local_addr().ok(), "NBD listener stopped");
}
