//! Counters for one NBD server: plain atomics the embedding service reads
//! through [`NbdMetrics::snapshot`] and exports however it exports metrics
//! (the image streamer turns them into Prometheus gauges and counters).

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, shared by the server, its sessions and write caches.
#[derive(Debug, Default)]
pub struct NbdMetrics {
    sessions_opened: AtomicU64,
    sessions_active: AtomicU64,
    connections_refused: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    request_errors: AtomicU64,
    overlay_bytes: AtomicU64,
}

/// The counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Sessions that reached the transmission phase, ever.
    pub sessions_opened: u64,
    /// Sessions in the transmission phase now.
    pub sessions_active: u64,
    /// Connections closed at once because the connection cap was reached.
    pub connections_refused: u64,
    /// Bytes read from exports and sent.
    pub bytes_read: u64,
    /// Bytes written to exports (write payloads; zeroes not counted).
    pub bytes_written: u64,
    /// Requests answered with an error.
    pub request_errors: u64,
    /// Bytes held by write caches (allocated clusters) now.
    pub overlay_bytes: u64,
}

impl NbdMetrics {
    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            sessions_opened: self.sessions_opened.load(Ordering::Relaxed),
            sessions_active: self.sessions_active.load(Ordering::Relaxed),
            connections_refused: self.connections_refused.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            request_errors: self.request_errors.load(Ordering::Relaxed),
            overlay_bytes: self.overlay_bytes.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn session_opened(&self) {
        self.sessions_opened.fetch_add(1, Ordering::Relaxed);
        self.sessions_active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn session_closed(&self) {
        self.sessions_active.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn read(&self, bytes: u64) {
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn written(&self, bytes: u64) {
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn request_failed(&self) {
        self.request_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn overlay_grew(&self, bytes: u64) {
        self.overlay_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn overlay_shrank(&self, bytes: u64) {
        self.overlay_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}
