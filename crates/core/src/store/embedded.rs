//! The embedded backend: the whole key space in memory, every commit written
//! through to a redb file before it is acknowledged.
//!
//! For single-node installs (`bootfleet up`) and fast tests. It keeps etcd's
//! semantics: one revision counter, compare-and-swap transactions, prefix
//! watches replayed from an in-memory history (bounded; older revisions report
//! [`StoreError::Compacted`], as etcd does after compaction), and leases. After
//! a restart every persisted lease gets its full TTL again — what etcd does
//! when a new leader takes over — so no registration or lease record is lost
//! because the process restarted.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    EventKind, KeyValue, LeaseId, Range, Revision, StateStore, StoreError, StoreResult, TxnOp,
    TxnOpResult, TxnRequest, TxnResult, WatchEvent, WatchStream, check_key,
};

const KV_TABLE: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("kv");
const META_TABLE: TableDefinition<'_, &str, i64> = TableDefinition::new("meta");
const LEASE_TABLE: TableDefinition<'_, i64, i64> = TableDefinition::new("leases");
const META_REVISION: &str = "revision";
const META_NEXT_LEASE: &str = "next_lease";

/// How many events the watch history keeps before older ones count as compacted.
const HISTORY_LIMIT: usize = 100_000;
/// How often leases are checked for expiry.
const EXPIRY_TICK: Duration = Duration::from_millis(50);

/// The in-process [`StateStore`] backend.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    stop: CancellationToken,
}

struct Shared {
    state: Mutex<State>,
    /// Carries the latest committed revision to watch tasks.
    committed: watch::Sender<Revision>,
}

struct Lease {
    ttl: Duration,
    expires: Instant,
    keys: BTreeSet<String>,
}

struct State {
    db: Database,
    kvs: BTreeMap<String, KeyValue>,
    revision: Revision,
    /// Every event with a revision >= `history_floor` is in `history`.
    history_floor: Revision,
    history: VecDeque<(Revision, WatchEvent)>,
    leases: HashMap<LeaseId, Lease>,
    next_lease: LeaseId,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("embedded database: {e}"))
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path` and loads it. Must be
    /// called inside a tokio runtime: it starts the lease-expiry task.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let db = Database::create(path)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        Self::from_database(db)
    }

    /// A store that lives only in memory (tests, `--store memory`).
    pub fn in_memory() -> StoreResult<Self> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(db_err)?;
        Self::from_database(db)
    }

    fn from_database(db: Database) -> StoreResult<Self> {
        let state = State::load(db)?;
        let (committed, _) = watch::channel(state.revision);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            committed,
        });
        let stop = CancellationToken::new();
        tokio::spawn(expire_leases(Arc::downgrade(&shared), stop.clone()));
        Ok(Self { shared, stop })
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied commit
        // (memory is updated only after the database commit succeeded), so a
        // poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs a writing closure on a blocking thread (commits fsync), then wakes
    /// watchers if the revision moved.
    async fn write<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut State) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let shared = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut state = shared.lock();
            let result = f(&mut state);
            let revision = state.revision;
            drop(state);
            shared.committed.send_if_modified(|current| {
                let moved = *current != revision;
                *current = revision;
                moved
            });
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }
}

/// A change staged by a write, applied to memory only after it is on disk.
struct Staged {
    kvs: BTreeMap<String, Option<KeyValue>>,
}

impl State {
    fn load(db: Database) -> StoreResult<Self> {
        {
            // Create the tables on first use so reads never fail on a new file.
            let tx = db.begin_write().map_err(db_err)?;
            tx.open_table(KV_TABLE).map_err(db_err)?;
            tx.open_table(META_TABLE).map_err(db_err)?;
            tx.open_table(LEASE_TABLE).map_err(db_err)?;
            tx.commit().map_err(db_err)?;
        }
        let tx = db.begin_read().map_err(db_err)?;
        let meta = tx.open_table(META_TABLE).map_err(db_err)?;
        let revision = meta
            .get(META_REVISION)
            .map_err(db_err)?
            .map_or(1, |v| v.value());
        let next_lease = meta
            .get(META_NEXT_LEASE)
            .map_err(db_err)?
            .map_or(1, |v| v.value());
        let now = Instant::now();
        let mut leases = HashMap::new();
        for entry in tx
            .open_table(LEASE_TABLE)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (id, ttl_ms) = entry.map_err(db_err)?;
            let ttl = Duration::from_millis(u64::try_from(ttl_ms.value()).unwrap_or(0));
            leases.insert(
                id.value(),
                Lease {
                    ttl,
                    expires: now + ttl,
                    keys: BTreeSet::new(),
                },
            );
        }
        let mut kvs = BTreeMap::new();
        for entry in tx
            .open_table(KV_TABLE)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (key, record) = entry.map_err(db_err)?;
            let kv = decode_record(key.value(), record.value())?;
            if let Some(lease) = leases.get_mut(&kv.lease) {
                lease.keys.insert(kv.key.clone());
            }
            kvs.insert(kv.key.clone(), kv);
        }
        drop(tx);
        Ok(Self {
            db,
            kvs,
            revision,
            history_floor: revision + 1,
            history: VecDeque::new(),
            leases,
            next_lease,
        })
    }

    fn current<'a>(&'a self, staged: &'a Staged, key: &str) -> Option<&'a KeyValue> {
        match staged.kvs.get(key) {
            Some(change) => change.as_ref(),
            None => self.kvs.get(key),
        }
    }

    /// Runs `ops` against the current state plus what earlier ops staged.
    fn stage(&self, ops: &[TxnOp], staged: &mut Staged) -> StoreResult<Vec<TxnOpResult>> {
        let revision = self.revision + 1;
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                TxnOp::Get { key } => {
                    results.push(TxnOpResult::Get(self.current(staged, key).cloned()));
                }
                TxnOp::Put { key, value, lease } => {
                    check_key(key)?;
                    let lease = lease.unwrap_or(0);
                    if lease != 0 && !self.leases.contains_key(&lease) {
                        return Err(StoreError::LeaseNotFound(lease));
                    }
                    let previous = self.current(staged, key);
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: previous.map_or(revision, |p| p.create_revision),
                        mod_revision: revision,
                        version: previous.map_or(1, |p| p.version + 1),
                        lease,
                    };
                    staged.kvs.insert(key.clone(), Some(kv));
                    results.push(TxnOpResult::Put);
                }
                TxnOp::Delete { key } => {
                    let existed = self.current(staged, key).is_some();
                    if existed {
                        staged.kvs.insert(key.clone(), None);
                    }
                    results.push(TxnOpResult::Delete(existed));
                }
            }
        }
        Ok(results)
    }

    /// Writes staged changes to disk, then to memory and the watch history.
    fn commit(
        &mut self,
        staged: Staged,
        leases: &[(LeaseId, Option<Duration>)],
    ) -> StoreResult<()> {
        let writes = !staged.kvs.is_empty();
        let revision = if writes {
            self.revision + 1
        } else {
            self.revision
        };
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut kv_table = tx.open_table(KV_TABLE).map_err(db_err)?;
            for (key, change) in &staged.kvs {
                match change {
                    Some(kv) => {
                        kv_table
                            .insert(key.as_str(), encode_record(kv).as_slice())
                            .map_err(db_err)?;
                    }
                    None => {
                        kv_table.remove(key.as_str()).map_err(db_err)?;
                    }
                }
            }
            let mut lease_table = tx.open_table(LEASE_TABLE).map_err(db_err)?;
            for (id, ttl) in leases {
                match ttl {
                    Some(ttl) => {
                        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
                        lease_table.insert(*id, ms).map_err(db_err)?;
                    }
                    None => {
                        lease_table.remove(*id).map_err(db_err)?;
                    }
                }
            }
            let mut meta = tx.open_table(META_TABLE).map_err(db_err)?;
            meta.insert(META_REVISION, revision).map_err(db_err)?;
            meta.insert(META_NEXT_LEASE, self.next_lease)
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;

        self.revision = revision;
        for (key, change) in staged.kvs {
            let previous = match &change {
                Some(kv) => self.kvs.insert(key.clone(), kv.clone()),
                None => self.kvs.remove(&key),
            };
            if let Some(lease) = previous
                .as_ref()
                .and_then(|p| self.leases.get_mut(&p.lease))
            {
                lease.keys.remove(&key);
            }
            let event = match change {
                Some(kv) => {
                    if let Some(lease) = self.leases.get_mut(&kv.lease) {
                        lease.keys.insert(key.clone());
                    }
                    WatchEvent {
                        kind: EventKind::Put,
                        kv,
                    }
                }
                None => WatchEvent {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key,
                        value: Vec::new(),
                        create_revision: 0,
                        mod_revision: revision,
                        version: 0,
                        lease: 0,
                    },
                },
            };
            self.history.push_back((revision, event));
        }
        while self.history.len() > HISTORY_LIMIT {
            if let Some((dropped, _)) = self.history.pop_front() {
                self.history_floor = self.history_floor.max(dropped + 1);
            }
        }
        Ok(())
    }

    fn txn(&mut self, txn: &TxnRequest) -> StoreResult<TxnResult> {
        let succeeded = txn.compares.iter().all(|c| c.holds(self.kvs.get(&c.key)));
        let ops = if succeeded { &txn.then } else { &txn.otherwise };
        let mut written = BTreeSet::new();
        for op in ops.iter().filter(|op| !matches!(op, TxnOp::Get { .. })) {
            if !written.insert(op.key()) {
                return Err(StoreError::InvalidArgument(format!(
                    "key {:?} written twice in one transaction",
                    op.key()
                )));
            }
        }
        let mut staged = Staged {
            kvs: BTreeMap::new(),
        };
        let results = self.stage(ops, &mut staged)?;
        self.commit(staged, &[])?;
        Ok(TxnResult {
            succeeded,
            revision: self.revision,
            results,
        })
    }

    fn revoke(&mut self, id: LeaseId) -> StoreResult<()> {
        let lease = self.leases.get(&id).ok_or(StoreError::LeaseNotFound(id))?;
        let staged = Staged {
            kvs: lease.keys.iter().map(|k| (k.clone(), None)).collect(),
        };
        self.commit(staged, &[(id, None)])?;
        self.leases.remove(&id);
        Ok(())
    }

    /// Events with revision >= `from` under `prefix`, grouped per revision.
    fn events_since(&self, prefix: &str, from: Revision) -> StoreResult<Vec<Vec<WatchEvent>>> {
        if from < self.history_floor && from <= self.revision {
            return Err(StoreError::Compacted {
                requested: from,
                compact_revision: self.history_floor,
            });
        }
        let start = self.history.partition_point(|(rev, _)| *rev < from);
        let mut batches: Vec<Vec<WatchEvent>> = Vec::new();
        let mut batch_revision = 0;
        for (rev, event) in self.history.range(start..) {
            if !event.kv.key.starts_with(prefix) {
                continue;
            }
            if *rev != batch_revision || batches.is_empty() {
                batches.push(Vec::new());
                batch_revision = *rev;
            }
            if let Some(batch) = batches.last_mut() {
                batch.push(event.clone());
            }
        }
        Ok(batches)
    }
}

fn encode_record(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + kv.value.len());
    for field in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
        out.extend_from_slice(&field.to_le_bytes());
    }
    out.extend_from_slice(&kv.value);
    out
}

fn decode_record(key: &str, record: &[u8]) -> StoreResult<KeyValue> {
    let field = |i: usize| -> StoreResult<i64> {
        let bytes = record
            .get(i * 8..i * 8 + 8)
            .ok_or_else(|| db_err(format!("record for {key:?} is truncated")))?;
        let mut buf = [0u8; 8];
        buf.copy_from_slice(bytes);
        Ok(i64::from_le_bytes(buf))
    };
    Ok(KeyValue {
        key: key.to_owned(),
        create_revision: field(0)?,
        mod_revision: field(1)?,
        version: field(2)?,
        lease: field(3)?,
        value: record[32..].to_vec(),
    })
}

async fn expire_leases(shared: Weak<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let expired: Vec<LeaseId> = {
            let state = shared.lock();
            state
                .leases
                .iter()
                .filter(|(_, l)| l.expires <= now)
                .map(|(id, _)| *id)
                .collect()
        };
        for id in expired {
            let result = shared
                .write(move |state| {
                    // Renewed between the scan and now: keep it.
                    if state
                        .leases
                        .get(&id)
                        .is_some_and(|l| l.expires > Instant::now())
                    {
                        return Ok(());
                    }
                    state.revoke(id)
                })
                .await;
            match result {
                Ok(()) | Err(StoreError::LeaseNotFound(_)) => {
                    tracing::debug!(lease = format_args!("{id:x}"), "lease expired");
                }
                Err(e) => {
                    tracing::warn!(lease = format_args!("{id:x}"), error = %e, "expiring lease failed")
                }
            }
        }
    }
}

#[async_trait]
impl StateStore for EmbeddedStore {
    async fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        Ok(self.shared.lock().kvs.get(key).cloned())
    }

    async fn range(&self, prefix: &str) -> StoreResult<Range> {
        let state = self.shared.lock();
        let kvs = state
            .kvs
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect();
        Ok(Range {
            kvs,
            revision: state.revision,
        })
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> StoreResult<Revision> {
        let op = TxnOp::Put {
            key: key.to_owned(),
            value,
            lease,
        };
        let result = self
            .shared
            .write(move |s| s.txn(&TxnRequest::new().and_then([op])))
            .await?;
        Ok(result.revision)
    }

    async fn delete(&self, key: &str) -> StoreResult<bool> {
        let op = TxnOp::delete(key);
        let result = self
            .shared
            .write(move |s| s.txn(&TxnRequest::new().and_then([op])))
            .await?;
        Ok(matches!(
            result.results.first(),
            Some(TxnOpResult::Delete(true))
        ))
    }

    async fn txn(&self, txn: TxnRequest) -> StoreResult<TxnResult> {
        self.shared.write(move |s| s.txn(&txn)).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> StoreResult<WatchStream> {
        let (stream, tx, stop) = WatchStream::channel(64);
        let shared = Arc::clone(&self.shared);
        let prefix = prefix.to_owned();
        let mut committed = shared.committed.subscribe();
        let mut next = if from > 0 {
            from
        } else {
            shared.lock().revision + 1
        };
        tokio::spawn(async move {
            loop {
                let found = {
                    let state = shared.lock();
                    let found = state.events_since(&prefix, next);
                    next = state.revision + 1;
                    found
                };
                let batches = match found {
                    Ok(batches) => batches,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                for batch in batches {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        sent = tx.send(Ok(batch)) => if sent.is_err() { return },
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = committed.changed() => if changed.is_err() {
                        let _ = tx.send(Err(StoreError::Unavailable("store closed".into()))).await;
                        return;
                    },
                }
            }
        });
        Ok(stream)
    }

    async fn lease_grant(&self, ttl: Duration) -> StoreResult<LeaseId> {
        if ttl.is_zero() {
            return Err(StoreError::InvalidArgument(
                "lease TTL must be positive".into(),
            ));
        }
        self.shared
            .write(move |state| {
                let id = state.next_lease;
                state.next_lease += 1;
                state.commit(
                    Staged {
                        kvs: BTreeMap::new(),
                    },
                    &[(id, Some(ttl))],
                )?;
                let lease = Lease {
                    ttl,
                    expires: Instant::now() + ttl,
                    keys: BTreeSet::new(),
                };
                state.leases.insert(id, lease);
                Ok(id)
            })
            .await
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> StoreResult<Duration> {
        let mut state = self.shared.lock();
        let entry = state
            .leases
            .get_mut(&lease)
            .ok_or(StoreError::LeaseNotFound(lease))?;
        entry.expires = Instant::now() + entry.ttl;
        Ok(entry.ttl)
    }

    async fn lease_revoke(&self, lease: LeaseId) -> StoreResult<()> {
        self.shared.write(move |state| state.revoke(lease)).await
    }

    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        let mut state = self.shared.lock();
        if revision > state.revision {
            return Err(StoreError::InvalidArgument(format!(
                "cannot compact to future revision {revision} (current {})",
                state.revision
            )));
        }
        while state
            .history
            .front()
            .is_some_and(|(rev, _)| *rev < revision)
        {
            state.history.pop_front();
        }
        state.history_floor = state.history_floor.max(revision);
        Ok(())
    }

    fn backend_name(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let kv = KeyValue {
            key: "/k".into(),
            value: b"value".to_vec(),
            create_revision: 2,
            mod_revision: 9,
            version: 4,
            lease: 0x7f,
        };
        assert_eq!(decode_record("/k", &encode_record(&kv)).unwrap(), kv);
        assert!(decode_record("/k", &[0; 31]).is_err());
    }
}
