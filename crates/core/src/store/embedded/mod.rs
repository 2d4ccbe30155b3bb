//! The embedded backend: the whole key space in memory, every write made
//! durable in a redb file before it is acknowledged.
//!
//! For single-node installs (`bootfleet up`) and fast tests. It keeps etcd's
//! semantics: one revision counter, compare-and-swap transactions, prefix
//! watches replayed from an in-memory history (bounded in events and in bytes;
//! older revisions report [`StoreError::Compacted`], as etcd does after
//! compaction), and leases.
//!
//! Writes go through one writer thread that commits in groups: the writes
//! queued while the previous fsync ran are applied in order, each with its
//! own revision, and made durable by a single database transaction. Readers
//! never see a write before it is on disk (the state lock is held across the
//! commit); if the commit fails, the state is reloaded from the file and
//! every write of the group fails.

mod disk;
mod history;
mod state;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::Database;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use self::disk::{Dirty, db_err};
use self::state::State;
use super::{
    KeyValue, LeaseId, Range, Revision, StateStore, StoreError, StoreResult, TxnOp, TxnOpResult, TxnRequest,
    TxnResult, WatchStream,
};

/// How often leases are checked for expiry.
const EXPIRY_TICK: Duration = Duration::from_millis(50);
/// Most writes committed by one database transaction.
const MAX_GROUP: usize = 512;
/// Under load (the last commit held more than one write), how long the
/// writer waits for more writes before committing. A commit costs about
/// 0.6 ms here whatever it holds (page writes and the sync), so waiting a
/// little lets one commit carry many writes; alone, a write is committed
/// at once.
const LINGER: Duration = Duration::from_millis(1);

/// The in-process [`StateStore`] backend.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    /// `None` only while dropping.
    writes: Option<std_mpsc::Sender<WriteRequest>>,
    /// The writer thread, which alone owns the database file.
    writer: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Carries the latest committed revision to watch tasks.
    committed: watch::Sender<Revision>,
    /// Cancelled when the store is dropped: ends watches.
    closed: CancellationToken,
}

enum WriteOp {
    Txn(TxnRequest),
    Grant(Duration),
    Revoke(LeaseId),
}

enum WriteReply {
    Txn(TxnResult),
    Lease(LeaseId),
    Done,
}

struct WriteRequest {
    op: WriteOp,
    reply: oneshot::Sender<StoreResult<WriteReply>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path` and loads it.
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
        let state = State::from_loaded(disk::load(&db)?);
        let (committed, _) = watch::channel(state.revision);
        let shared =
            Arc::new(Shared { state: Mutex::new(state), committed, closed: CancellationToken::new() });
        let (writes, queue) = std_mpsc::channel();
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("bootfleet-store-writer".into())
            .spawn(move || write_groups(&db, &writer_shared, &queue))
            .map_err(|e| StoreError::Backend(format!("starting the store writer: {e}")))?;
        Ok(Self { shared, writes: Some(writes), writer: Some(writer) })
    }

    async fn write(&self, op: WriteOp) -> StoreResult<WriteReply> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .as_ref()
            .ok_or_else(|| StoreError::Backend("store closed".into()))?
            .send(WriteRequest { op, reply })
            .map_err(|_| StoreError::Backend("store writer stopped".into()))?;
        answer.await.map_err(|_| StoreError::Backend("store writer stopped".into()))?
    }

    async fn write_txn(&self, txn: TxnRequest) -> StoreResult<TxnResult> {
        match self.write(WriteOp::Txn(txn)).await? {
            WriteReply::Txn(result) => Ok(result),
            _ => Err(StoreError::Backend("unexpected writer reply".into())),
        }
    }
}

impl Drop for EmbeddedStore {
    /// Ends watches, then lets the writer finish its group and close the
    /// file, so the same file can be opened again right away.
    fn drop(&mut self) {
        self.shared.closed.cancel();
        drop(self.writes.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Memory is only changed under this lock and rolled back by reloading
        // when a commit fails, so a poisoned lock still guards consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn apply(state: &mut State, op: &WriteOp, dirty: &mut Dirty) -> StoreResult<WriteReply> {
    match op {
        WriteOp::Txn(txn) => state.txn(txn, dirty).map(WriteReply::Txn),
        WriteOp::Grant(ttl) => Ok(WriteReply::Lease(state.grant(*ttl, dirty))),
        WriteOp::Revoke(id) => state.revoke(*id, false, dirty).map(|()| WriteReply::Done),
    }
}

/// The writer thread: applies queued writes in order and commits each group
/// with one durable database transaction before answering any of them.
/// Between groups (at least every [`EXPIRY_TICK`]) it revokes expired leases.
fn write_groups(db: &Database, shared: &Shared, queue: &std_mpsc::Receiver<WriteRequest>) {
    let mut next_expiry_check = Instant::now() + EXPIRY_TICK;
    let mut busy = false;
    loop {
        let wait = next_expiry_check.saturating_duration_since(Instant::now());
        let mut group = Vec::new();
        match queue.recv_timeout(wait) {
            Ok(first) => group.push(first),
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let linger_until = Instant::now() + if busy { LINGER } else { Duration::ZERO };
        while !group.is_empty() && group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => {
                    let left = linger_until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match queue.recv_timeout(left) {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
            }
        }
        busy = group.len() > 1;
        let mut state = shared.lock();
        let mut dirty = Dirty::default();
        let mut results: Vec<StoreResult<WriteReply>> =
            group.iter().map(|w| apply(&mut state, &w.op, &mut dirty)).collect();
        if Instant::now() >= next_expiry_check {
            expire_leases(&mut state, &mut dirty);
            next_expiry_check = Instant::now() + EXPIRY_TICK;
        }
        if !dirty.is_empty() {
            let started = Instant::now();
            let persisted = disk::persist(db, &state, &dirty);
            crate::metrics::EMBEDDED_COMMIT_SECONDS.observe(started.elapsed().as_secs_f64());
            crate::metrics::EMBEDDED_COMMIT_WRITES.observe(group.len() as f64);
            if let Err(e) = persisted {
                tracing::error!(error = %e, writes = group.len(), "store commit failed; reloading from disk");
                reload(db, &mut state);
                results = group.iter().map(|_| Err(StoreError::Backend(e.to_string()))).collect();
            }
        }
        let revision = state.revision;
        drop(state);
        shared.committed.send_if_modified(|current| {
            let moved = *current != revision;
            *current = revision;
            moved
        });
        for (write, result) in group.into_iter().zip(results) {
            let _ = write.reply.send(result);
        }
    }
}

fn expire_leases(state: &mut State, dirty: &mut Dirty) {
    let now = Instant::now();
    let expired: Vec<LeaseId> =
        state.leases.iter().filter(|(_, l)| l.expires <= now).map(|(id, _)| *id).collect();
    for id in expired {
        match state.revoke(id, true, dirty) {
            Ok(()) => tracing::debug!(lease = format_args!("{id:x}"), "lease expired"),
            Err(e) => {
                tracing::warn!(lease = format_args!("{id:x}"), error = %e, "expiring lease failed")
            }
        }
    }
}

/// Rolls memory back to what the file holds, keeping lease deadlines.
fn reload(db: &Database, state: &mut State) {
    match disk::load(db) {
        Ok(loaded) => {
            let mut fresh = State::from_loaded(loaded);
            for (id, lease) in &mut fresh.leases {
                if let Some(old) = state.leases.get(id) {
                    lease.expires = old.expires;
                }
            }
            *state = fresh;
        }
        Err(e) => {
            tracing::error!(error = %e, "reloading the store failed; memory may be ahead of disk")
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
        Ok(Range { kvs, revision: state.revision })
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> StoreResult<Revision> {
        let op = TxnOp::Put { key: key.to_owned(), value, lease };
        Ok(self.write_txn(TxnRequest::new().and_then([op])).await?.revision)
    }

    async fn delete(&self, key: &str) -> StoreResult<bool> {
        let result = self.write_txn(TxnRequest::new().and_then([TxnOp::delete(key)])).await?;
        Ok(matches!(result.results.first(), Some(TxnOpResult::Delete(true))))
    }

    async fn txn(&self, txn: TxnRequest) -> StoreResult<TxnResult> {
        self.write_txn(txn).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> StoreResult<WatchStream> {
        let (stream, tx, stop) = WatchStream::channel(64);
        let shared = Arc::clone(&self.shared);
        let prefix = prefix.to_owned();
        let mut committed = shared.committed.subscribe();
        let mut next = if from > 0 { from } else { shared.lock().revision + 1 };
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
                    () = shared.closed.cancelled() => {
                        let _ = tx.send(Err(StoreError::Unavailable("store closed".into()))).await;
                        return;
                    }
                    _ = committed.changed() => {}
                }
            }
        });
        Ok(stream)
    }

    async fn lease_grant(&self, ttl: Duration) -> StoreResult<LeaseId> {
        if ttl.is_zero() {
            return Err(StoreError::InvalidArgument("lease TTL must be positive".into()));
        }
        match self.write(WriteOp::Grant(ttl)).await? {
            WriteReply::Lease(id) => Ok(id),
            _ => Err(StoreError::Backend("unexpected writer reply".into())),
        }
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> StoreResult<Duration> {
        let mut state = self.shared.lock();
        let entry = state.leases.get_mut(&lease).ok_or(StoreError::LeaseNotFound(lease))?;
        entry.expires = Instant::now() + entry.ttl;
        Ok(entry.ttl)
    }

    async fn lease_revoke(&self, lease: LeaseId) -> StoreResult<()> {
        self.write(WriteOp::Revoke(lease)).await.map(drop)
    }

    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        self.shared.lock().compact(revision)
    }

    fn backend_name(&self) -> &'static str {
        "embedded"
    }
}
