//! The shared state every Bootfleet service reads and writes.
//!
//! [`StateStore`] is the one interface; [`etcd::EtcdStore`] (a real etcd
//! cluster) and [`embedded::EmbeddedStore`] (in-process, persisted with redb)
//! implement it with the same semantics: a single revision counter bumped by
//! every write, compare-and-swap transactions, prefix watches that resume from
//! a revision, and leases whose expiry deletes the keys attached to them.
//! Elections and membership are built on these primitives in
//! [`crate::election`] and [`crate::membership`], so both backends share one
//! implementation of them.

pub mod embedded;
pub mod etcd;
mod types;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use types::{
    Compare, CompareOp, CompareTarget, EventKind, KeyValue, LeaseId, Range, Revision, TxnOp, TxnOpResult,
    TxnRequest, TxnResult, WatchEvent,
};
pub use watch::WatchStream;

/// Root of Bootfleet's key space; every key starts with it.
pub const KEY_ROOT: &str = "/bootfleet/v1/";

/// Errors from a [`StateStore`]. Callers branch on [`StoreError::is_unavailable`]
/// (retry / serve from the snapshot) and on [`StoreError::Compacted`] (re-list).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// A watch asked for history that compaction removed.
    #[error("revision {requested} was compacted (oldest available: {compact_revision})")]
    Compacted {
        /// The first revision the caller asked for.
        requested: Revision,
        /// The oldest revision still available.
        compact_revision: Revision,
    },
    /// The lease does not exist (never granted, revoked, or expired).
    #[error("lease {0:x} not found")]
    LeaseNotFound(LeaseId),
    /// The request itself is wrong (bad key, bad TTL…).
    #[error("invalid store request: {0}")]
    InvalidArgument(String),
    /// Any other backend failure (database error, unexpected response).
    #[error("state store error: {0}")]
    Backend(String),
}

impl StoreError {
    /// True when retrying later may succeed (connection or quorum problems).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// A versioned key-value store with transactions, watches and leases.
///
/// Keys are UTF-8 paths under [`KEY_ROOT`]; values are opaque bytes (encoded
/// protobuf messages from `bootfleet-proto`). All methods are cancel-safe in
/// the sense that dropping the future never leaves a half-applied write: a
/// write either committed or did not.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> StoreResult<Option<KeyValue>>;

    /// Reads every key starting with `prefix`, sorted by key, with the store
    /// revision the read was served at (watch from `revision + 1` to follow).
    async fn range(&self, prefix: &str) -> StoreResult<Range>;

    /// Writes one key, optionally attached to a lease; returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> StoreResult<Revision>;

    /// Deletes one key; returns whether it existed.
    async fn delete(&self, key: &str) -> StoreResult<bool>;

    /// Runs `then` if every compare holds, else `otherwise`, atomically.
    async fn txn(&self, txn: TxnRequest) -> StoreResult<TxnResult>;

    /// Streams changes to keys under `prefix` from revision `from` (inclusive;
    /// `0` means "from the next change"). The stream yields
    /// [`StoreError::Compacted`] if `from` is no longer available and an
    /// [`StoreError::Unavailable`] error when the connection drops; either ends
    /// it. The stream is established when this returns `Ok`.
    async fn watch(&self, prefix: &str, from: Revision) -> StoreResult<WatchStream>;

    /// Grants a lease; keys attached to it are deleted when it expires.
    async fn lease_grant(&self, ttl: Duration) -> StoreResult<LeaseId>;

    /// Renews a lease once; returns the TTL the server granted again.
    async fn lease_keep_alive(&self, lease: LeaseId) -> StoreResult<Duration>;

    /// Revokes a lease now, deleting its keys.
    async fn lease_revoke(&self, lease: LeaseId) -> StoreResult<()>;

    /// Discards history before `revision`; watches from older revisions then
    /// fail with [`StoreError::Compacted`].
    async fn compact(&self, revision: Revision) -> StoreResult<()>;

    /// A short name for logs and metrics: `"etcd"` or `"embedded"`.
    fn backend_name(&self) -> &'static str;
}

/// A shared handle to a store, as services hold it.
pub type SharedStore = Arc<dyn StateStore>;

/// Checks a key before it goes to a backend: UTF-8 is given by `&str`; the key
/// must be non-empty and free of NUL (etcd accepts it, tools do not).
pub(crate) fn check_key(key: &str) -> StoreResult<()> {
    if key.is_empty() {
        return Err(StoreError::InvalidArgument("empty key".into()));
    }
    if key.contains('\0') {
        return Err(StoreError::InvalidArgument(format!("key {key:?} contains NUL")));
    }
    Ok(())
}

/// Opens the configured backend: creates the data directory for `embedded`,
/// connects for `etcd` (plaintext; see [`open_secured`]).
pub async fn open(config: &crate::config::StoreConfig) -> StoreResult<SharedStore> {
    open_secured(config, &crate::config::EtcdSecurity::default()).await
}

/// As [`open`], connecting to etcd with `security`'s TLS and credentials.
pub async fn open_secured(
    config: &crate::config::StoreConfig,
    security: &crate::config::EtcdSecurity,
) -> StoreResult<SharedStore> {
    use crate::config::StoreBackend;
    let store: SharedStore = match &config.backend {
        StoreBackend::Embedded { path } => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Backend(format!("creating data directory {}: {e}", dir.display()))
                })?;
            }
            Arc::new(embedded::EmbeddedStore::open(path)?)
        }
        StoreBackend::Memory => Arc::new(embedded::EmbeddedStore::in_memory()?),
        StoreBackend::Etcd { endpoints } => {
            let mut options = etcd::EtcdOptions::new(endpoints.clone());
            options.request_timeout = config.request_timeout;
            options.tls = security.tls.as_ref().map(|tls| {
                let mut client = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem));
                if let Some((cert, key)) = &tls.identity {
                    client = client.identity(tonic::transport::Identity::from_pem(cert, key));
                }
                client
            });
            options.credentials =
                security.credentials.as_ref().map(|c| (c.username.clone(), c.password.clone()));
            Arc::new(etcd::EtcdStore::connect(options).await?)
        }
    };
    Ok(store)
}
