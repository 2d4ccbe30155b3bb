//! A watched in-memory copy of one key prefix: the offline mode.
//!
//! [`SnapshotCache`] lists the prefix, then follows it with a watch from the
//! listed revision. When the store becomes unreachable the copy keeps serving
//! reads and the cache reports [`CacheStatus::Degraded`] (health, metric); it
//! reconnects with backoff and resumes the watch from the last revision it
//! applied, so no update made meanwhile is missed. If that revision was
//! compacted away it lists the prefix again and carries on.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::metrics;
use crate::store::{EventKind, KeyValue, Revision, SharedStore, StoreError, WatchEvent};

/// Where a snapshot stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Never loaded yet: nothing to serve.
    Loading,
    /// Following the store live.
    Live,
    /// Serving the last copy; the store is unreachable.
    Degraded,
}

#[derive(Default)]
struct Data {
    kvs: BTreeMap<String, KeyValue>,
    revision: Revision,
}

/// A live, read-only copy of a prefix. Cheap to clone.
#[derive(Clone)]
pub struct SnapshotCache {
    prefix: Arc<str>,
    data: Arc<RwLock<Data>>,
    status: watch::Receiver<CacheStatus>,
    applied: watch::Receiver<Revision>,
    events: broadcast::Sender<Arc<[WatchEvent]>>,
}

/// How many event batches a slow [`SnapshotCache::subscribe`] receiver may
/// fall behind before it sees `Lagged`.
const EVENT_BACKLOG: usize = 1024;

impl std::fmt::Debug for SnapshotCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotCache").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl SnapshotCache {
    /// Starts following `prefix`; the task stops when `stop` is cancelled.
    pub fn start(store: SharedStore, prefix: &str, stop: CancellationToken) -> Self {
        let (status_tx, status) = watch::channel(CacheStatus::Loading);
        let (applied_tx, applied) = watch::channel(0);
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let cache = Self { prefix: prefix.into(), data: Arc::default(), status, applied, events };
        let sync = Sync { cache: cache.clone(), store, status: status_tx, applied: applied_tx };
        tokio::spawn(sync.run(stop));
        cache
    }

    /// The prefix followed.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Current status.
    pub fn status(&self) -> CacheStatus {
        *self.status.borrow()
    }

    /// A receiver that changes with the status (for health reporting).
    pub fn status_updates(&self) -> watch::Receiver<CacheStatus> {
        self.status.clone()
    }

    /// A receiver that changes whenever new data was applied; holds the
    /// revision applied (for services that rebuild indexes on change).
    pub fn changes(&self) -> watch::Receiver<Revision> {
        self.applied.clone()
    }

    /// Every batch of changes applied from now on, as the watch delivered it.
    /// A re-list after compaction applies the difference without events, so
    /// consumers that must see everything compare with [`Self::list`] too.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<[WatchEvent]>> {
        self.events.subscribe()
    }

    /// Waits until the first full copy is loaded.
    pub async fn loaded(&self) {
        let mut status = self.status.clone();
        let _ = status.wait_for(|s| *s != CacheStatus::Loading).await;
    }

    /// Waits until the copy has applied at least `revision`.
    pub async fn caught_up(&self, revision: Revision) {
        let mut applied = self.applied.clone();
        let _ = applied.wait_for(|r| *r >= revision).await;
    }

    /// One key from the copy.
    pub fn get(&self, key: &str) -> Option<KeyValue> {
        self.read().kvs.get(key).cloned()
    }

    /// The revision of the last write to `key`, without copying its value.
    pub fn mod_revision(&self, key: &str) -> Option<Revision> {
        self.read().kvs.get(key).map(|kv| kv.mod_revision)
    }

    /// Every key under `prefix` (within the followed prefix), sorted.
    pub fn list(&self, prefix: &str) -> Vec<KeyValue> {
        self.read()
            .kvs
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect()
    }

    /// Up to `limit` keys under `prefix` that sort after `after`, in order:
    /// one page of a listing, copying only that page.
    pub fn list_after(&self, prefix: &str, after: &str, limit: usize) -> Vec<KeyValue> {
        use std::ops::Bound;
        let start = if after < prefix {
            Bound::Included(prefix.to_owned())
        } else {
            Bound::Excluded(after.to_owned())
        };
        self.read()
            .kvs
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(_, kv)| kv.clone())
            .collect()
    }

    /// Number of keys in the copy.
    pub fn len(&self) -> usize {
        self.read().kvs.len()
    }

    /// True when the copy holds no key.
    pub fn is_empty(&self) -> bool {
        self.read().kvs.is_empty()
    }

    /// The store revision the copy reflects.
    pub fn revision(&self) -> Revision {
        self.read().revision
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Data> {
        self.data.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Data> {
        self.data.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The task keeping a [`SnapshotCache`] in step with the store.
struct Sync {
    cache: SnapshotCache,
    store: SharedStore,
    status: watch::Sender<CacheStatus>,
    applied: watch::Sender<Revision>,
}

impl Sync {
    fn set_status(&self, status: CacheStatus) {
        let prefix = &*self.cache.prefix;
        metrics::SNAPSHOT_DEGRADED.with_label_values(&[prefix]).set(i64::from(status != CacheStatus::Live));
        let changed = self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
        if changed {
            match status {
                CacheStatus::Live => tracing::info!(prefix, "snapshot live"),
                CacheStatus::Degraded => {
                    tracing::warn!(prefix, "store unreachable; serving snapshot")
                }
                CacheStatus::Loading => {}
            }
        }
    }

    fn publish(&self, revision: Revision) {
        metrics::SNAPSHOT_REVISION.with_label_values(&[&*self.cache.prefix]).set(revision);
        self.applied.send_replace(revision);
    }

    async fn run(self, stop: CancellationToken) {
        let prefix = self.cache.prefix.clone();
        let mut backoff = Backoff::default();
        let mut must_list = true;
        loop {
            let result = tokio::select! {
                () = stop.cancelled() => return,
                r = self.sync_once(&mut must_list, &mut backoff) => r,
            };
            match result {
                Err(StoreError::Compacted { .. }) => {
                    metrics::SNAPSHOT_RESYNCS.with_label_values(&[&*prefix, "relist"]).inc();
                    tracing::info!(prefix = %prefix, "watch history compacted; listing again");
                    must_list = true;
                    continue;
                }
                Err(e) => {
                    if self.cache.status() != CacheStatus::Loading {
                        self.set_status(CacheStatus::Degraded);
                    }
                    tracing::debug!(prefix = %prefix, error = %e, "snapshot sync interrupted");
                }
                Ok(()) => {}
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// Lists if needed, then follows the watch until it fails.
    async fn sync_once(&self, must_list: &mut bool, backoff: &mut Backoff) -> Result<(), StoreError> {
        if *must_list {
            let range = self.store.range(&self.cache.prefix).await?;
            {
                let mut data = self.cache.write();
                data.kvs = range.kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
                data.revision = range.revision;
            }
            *must_list = false;
            self.publish(range.revision);
        } else {
            metrics::SNAPSHOT_RESYNCS.with_label_values(&[&*self.cache.prefix, "resume"]).inc();
        }
        let from = self.cache.revision() + 1;
        let mut events = self.store.watch(&self.cache.prefix, from).await?;
        self.set_status(CacheStatus::Live);
        backoff.reset();
        loop {
            let batch = match events.next().await {
                Some(batch) => batch?,
                None => return Err(StoreError::Unavailable("watch ended".into())),
            };
            let batch: Arc<[WatchEvent]> = batch.into();
            let revision = {
                let mut data = self.cache.write();
                for event in batch.iter().cloned() {
                    data.revision = data.revision.max(event.kv.mod_revision);
                    match event.kind {
                        EventKind::Put => {
                            data.kvs.insert(event.kv.key.clone(), event.kv);
                        }
                        EventKind::Delete => {
                            data.kvs.remove(&event.kv.key);
                        }
                    }
                }
                data.revision
            };
            self.publish(revision);
            // No receiver is fine: nobody asked for events.
            let _ = self.cache.events.send(batch);
        }
    }
}
