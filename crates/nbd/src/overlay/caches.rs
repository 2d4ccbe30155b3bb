//! The `server` write caches of every client on this replica: one sparse
//! overlay per client and per boot, in one directory, capped per client.
//!
//! A client's boot opens a new cache and discards the previous one (the
//! old file is deleted once the last session using it ends). A reconnect
//! within the same boot finds the current cache with
//! [`WriteCaches::current`]. What counts as a new boot is the caller's
//! call: the server knows connections, not boots.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::{CowExport, OverlayStore, SparseOverlay};
use crate::export::Export;
use crate::metrics::NbdMetrics;

/// Default cluster size: large enough that copying a base cluster around a
/// partial write is one read, small enough that a 4 KiB write does not
/// cost much more.
pub const DEFAULT_CLUSTER_SIZE: u64 = 64 * 1024;

/// Longest client key (a MAC, a host name); longer keys are refused.
const MAX_KEY_LEN: usize = 128;

/// Why a write cache could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteCacheError {
    /// Keys are 1 to 128 printable ASCII characters.
    #[error("invalid client key {0:?}")]
    InvalidKey(String),
    /// Every slot is taken by another client's cache.
    #[error("write caches for {max} clients already exist")]
    TooManyClients {
        /// The limit.
        max: usize,
    },
    /// The base export is writable: an overlay over it would not be a
    /// copy-on-write of a golden image.
    #[error("the base export is not read-only")]
    WritableBase,
    /// Creating the cache file failed.
    #[error("creating a write cache in {dir}")]
    Io {
        /// The cache directory.
        dir: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// A client's cache for its current boot.
pub type ClientCache = CowExport<SparseOverlay>;

/// Every client's write cache on this replica.
#[derive(Debug)]
pub struct WriteCaches {
    dir: PathBuf,
    cluster: u64,
    cap_bytes: u64,
    max_clients: usize,
    metrics: Arc<NbdMetrics>,
    clients: Mutex<HashMap<String, Arc<ClientCache>>>,
    /// Makes every cache file name unique, so a new boot never reuses the
    /// file a lingering session of the old boot still writes to.
    boots: AtomicU64,
}

impl WriteCaches {
    /// Caches in `dir` (created if missing), at most `cap_bytes` per client
    /// and `max_clients` clients. Cache files left by an earlier process
    /// are deleted: they belonged to boots whose sessions are gone.
    pub fn new(
        dir: &Path,
        cap_bytes: u64,
        max_clients: usize,
        metrics: Arc<NbdMetrics>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "overlay") {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            cluster: DEFAULT_CLUSTER_SIZE,
            cap_bytes,
            max_clients,
            metrics,
            clients: Mutex::default(),
            boots: AtomicU64::new(0),
        })
    }

    /// The same caches with clusters of `bytes` (a power of two, 4 KiB to 1 MiB).
    #[must_use]
    pub fn with_cluster_size(mut self, bytes: u64) -> Self {
        assert!(bytes.is_power_of_two() && (4096..=1 << 20).contains(&bytes), "cluster size {bytes}");
        self.cluster = bytes;
        self
    }

    /// Cluster size of new caches.
    pub fn cluster_size(&self) -> u64 {
        self.cluster
    }

    /// Starts a new boot of `client` over `base`: a fresh, empty cache;
    /// the previous boot's cache is discarded.
    pub fn boot(&self, client: &str, base: Arc<dyn Export>) -> Result<Arc<ClientCache>, WriteCacheError> {
        if client.is_empty() || client.len() > MAX_KEY_LEN || !client.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(WriteCacheError::InvalidKey(client.chars().take(MAX_KEY_LEN).collect()));
        }
        let info = base.info();
        if !info.read_only {
            return Err(WriteCacheError::WritableBase);
        }
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if !clients.contains_key(client) && clients.len() >= self.max_clients {
            return Err(WriteCacheError::TooManyClients { max: self.max_clients });
        }
        // Dropped outside the lock would be nicer, but the old store only
        // unlinks a file when it is its last user.
        clients.remove(client);
        let boot = self.boots.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{}.{boot}.overlay", hex(client)));
        let io = |source| WriteCacheError::Io { dir: self.dir.clone(), source };
        let store =
            SparseOverlay::create(&path, info.size, self.cluster, self.cap_bytes, Arc::clone(&self.metrics))
                .map_err(io)?;
        let cache = Arc::new(CowExport::new(base, store));
        clients.insert(client.to_owned(), Arc::clone(&cache));
        Ok(cache)
    }

    /// `client`'s cache for its current boot, if it has one.
    pub fn current(&self, client: &str) -> Option<Arc<ClientCache>> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner).get(client).cloned()
    }

    /// Discards `client`'s cache; whether it had one.
    pub fn discard(&self, client: &str) -> bool {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner).remove(client).is_some()
    }

    /// Bytes held per client, sorted by client.
    pub fn usage(&self) -> Vec<(String, u64)> {
        let clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        let mut usage: Vec<(String, u64)> =
            clients.iter().map(|(client, cache)| (client.clone(), cache.store().used_bytes())).collect();
        usage.sort();
        usage
    }
}

/// A file-name-safe spelling of any key.
fn hex(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}
