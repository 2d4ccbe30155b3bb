//! Records decisions on host records without slowing Evaluate down.
//!
//! Evaluate encodes its event and queues it in [`PendingEvents`] (bounded,
//! coalesced per host) and returns. A single task copies up to [`CHUNK`]
//! hosts ([`CHUNK_BYTES`]) out of the queue and writes them in one
//! transaction, each guarded by a compare on the host record's revision so
//! that two replicas recording the same host never overwrite each other (a
//! lost race is retried one host at a time). While the store is unreachable
//! the queue keeps the newest events of each host, within its bounds, and
//! they are written when the store returns. A host without a record gets
//! one only while the cap on records ([`HostCap`]) allows.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bootfleet_core::backoff::Backoff;
use bootfleet_core::snapshot::SnapshotCache;
use bootfleet_core::store::{Compare, CompareOp, KeyValue, SharedStore, TxnOp, TxnRequest};
use bootfleet_proto::v1::{HostEvent, Recording};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::HOSTS_PREFIX;
use super::host_wire::{EncodedEvent, EncodedRecord};
use super::limits::HostCap;
use super::pending::{HostBatch, PendingEvents, QueueLimits, QueueStats};
use super::writes::store_err;
use crate::error::RulesError;
use crate::metrics;

/// Hosts written per transaction at most (etcd allows 128 compares and 128
/// operations; each host takes one of each). Building a chunk only joins
/// encoded pieces, so even a full one holds a worker thread briefly.
const CHUNK: usize = 64;
/// Bytes per transaction at most (a chunk is closed once it reaches this,
/// so it stays under CHUNK_BYTES + MAX_RECORD_BYTES), well under etcd's
/// 1.5 MiB request limit.
const CHUNK_BYTES: usize = 512 * 1024;
/// Largest host record written: older history entries are dropped to fit.
/// (Facts are at most 16 KiB, so only a record with very large profiles in
/// its decisions comes near.)
const MAX_RECORD_BYTES: usize = 256 * 1024;

/// Records this writer stored, newer than the snapshot may be yet.
type Written = HashMap<String, (i64, EncodedRecord)>;

/// What the writer did with one host of a batch.
enum Done {
    Written,
    /// A new host past the cap.
    Refused,
    /// Even its newest entry alone is larger than a record may be.
    TooLarge,
    /// Its stored record cannot be read; not overwritten.
    Unreadable,
}

/// Counts of one recorder (the metrics add up every recorder of the
/// process).
#[derive(Debug, Default)]
struct Counters {
    dropped: AtomicU64,
    coalesced: AtomicU64,
    refused: AtomicU64,
}

/// What one recorder has lost or merged so far, and holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// What the queue holds.
    pub queued: QueueStats,
    /// Events lost to the queue's bounds.
    pub dropped: u64,
    /// Events superseded in the queue by newer ones of the same host.
    pub coalesced: u64,
    /// Events of new hosts not recorded because of the cap.
    pub refused: u64,
}

/// Queues decisions for the background writer.
#[derive(Clone)]
pub struct HostRecorder {
    queue: Arc<Mutex<PendingEvents>>,
    wake: Arc<Notify>,
    store: SharedStore,
    hosts: SnapshotCache,
    cap: Arc<HostCap>,
    history_limit: usize,
    max_remembered: usize,
    counters: Arc<Counters>,
    /// Records this recorder created that the snapshot may not show yet:
    /// (commit revision, how many), so the cap counts them too.
    created: Arc<Mutex<VecDeque<(i64, usize)>>>,
}

impl std::fmt::Debug for HostRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostRecorder").field("history_limit", &self.history_limit).finish_non_exhaustive()
    }
}

impl HostRecorder {
    /// Starts the writer task.
    pub(crate) fn start(
        store: SharedStore,
        hosts: SnapshotCache,
        history_limit: usize,
        (cap, limits): (Arc<HostCap>, QueueLimits),
        stop: CancellationToken,
    ) -> Self {
        let history_limit = history_limit.max(1);
        let recorder = Self {
            queue: Arc::new(Mutex::new(PendingEvents::new(history_limit, limits))),
            wake: Arc::new(Notify::new()),
            store,
            hosts,
            cap,
            history_limit,
            max_remembered: limits.max_hosts,
            counters: Arc::default(),
            created: Arc::default(),
        };
        tokio::spawn(recorder.clone().run(stop));
        recorder
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, PendingEvents> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an event; never waits. `Dropped` (counted) when the queue's
    /// bounds refuse it.
    pub fn record(&self, mac: &str, event: EncodedEvent) -> Recording {
        let (pushed, bytes) = {
            let mut queue = self.queue();
            let pushed = queue.push(mac, event);
            (pushed, queue.stats().bytes)
        };
        metrics::HOST_EVENTS_PENDING_BYTES.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        if pushed.coalesced > 0 {
            metrics::HOST_EVENTS_COALESCED.inc_by(pushed.coalesced as u64);
            self.counters.coalesced.fetch_add(pushed.coalesced as u64, Ordering::Relaxed);
        }
        if pushed.dropped > 0 {
            metrics::HOST_EVENTS_DROPPED.inc_by(pushed.dropped as u64);
            self.counters.dropped.fetch_add(pushed.dropped as u64, Ordering::Relaxed);
        }
        if pushed.queued {
            self.wake.notify_one();
            Recording::Queued
        } else {
            Recording::Dropped
        }
    }

    /// Host records that exist as far as this replica knows: the snapshot's,
    /// and those this recorder created that it does not show yet.
    fn records_now(&self) -> usize {
        // The snapshot changes its keys and its revision together: a size
        // read between two equal revisions is the size at that revision.
        let (seen, len) = loop {
            let before = self.hosts.revision();
            let len = self.hosts.len();
            if self.hosts.revision() == before {
                break (before, len);
            }
        };
        let mut created = self.created.lock().unwrap_or_else(PoisonError::into_inner);
        while created.front().is_some_and(|(revision, _)| *revision <= seen) {
            created.pop_front();
        }
        len + created.iter().map(|(_, n)| n).sum::<usize>()
    }

    fn note_created(&self, revision: i64, count: usize) {
        if count > 0 {
            self.created.lock().unwrap_or_else(PoisonError::into_inner).push_back((revision, count));
        }
    }

    /// What this recorder holds and has lost so far.
    pub fn stats(&self) -> RecorderStats {
        RecorderStats {
            queued: self.queue().stats(),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            coalesced: self.counters.coalesced.load(Ordering::Relaxed),
            refused: self.counters.refused.load(Ordering::Relaxed),
        }
    }

    /// Writes events now (Repair), returning when they are stored.
    pub async fn write_now(&self, events: Vec<(String, HostEvent)>) -> Result<(), RulesError> {
        let mut by_host: BTreeMap<String, Vec<EncodedEvent>> = BTreeMap::new();
        for (mac, event) in events {
            by_host.entry(mac).or_default().push(EncodedEvent::new(&event));
        }
        let mut left: Vec<HostBatch> =
            by_host.into_iter().map(|(mac, events)| HostBatch { mac, events, up_to: 0 }).collect();
        let mut written = HashMap::new();
        while !left.is_empty() {
            let mut done = Vec::new();
            let result = self.write_batch(&left, &mut written, &mut done).await;
            let finished: HashSet<usize> = done.into_iter().map(|(i, _)| i).collect();
            left =
                left.into_iter().enumerate().filter(|(i, _)| !finished.contains(i)).map(|(_, h)| h).collect();
            result?;
        }
        Ok(())
    }

    async fn run(self, stop: CancellationToken) {
        let mut written = Written::new();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let batch = self.queue().batch(CHUNK);
            if batch.is_empty() {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = self.wake.notified() => continue,
                }
            }
            let mut done = Vec::new();
            let result = self.write_batch(&batch, &mut written, &mut done).await;
            self.finish(&batch, done);
            match result {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    let hosts = self.queue().stats().hosts;
                    tracing::warn!(error = %e, hosts, "recording decisions failed; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
            if written.len() > self.max_remembered {
                written.clear();
            }
        }
    }

    /// Takes what the writer finished with out of the queue.
    fn finish(&self, batch: &[HostBatch], done: Vec<(usize, Done)>) {
        let mut queue = self.queue();
        for (i, outcome) in done {
            let host = &batch[i];
            let removed = queue.remove(&host.mac, host.up_to) as u64;
            match outcome {
                Done::Written => {}
                Done::Refused => {
                    metrics::HOST_RECORDS_REFUSED.inc_by(removed);
                    self.counters.refused.fetch_add(removed, Ordering::Relaxed);
                }
                Done::TooLarge => {
                    metrics::HOST_EVENTS_DROPPED.inc_by(removed);
                    self.counters.dropped.fetch_add(removed, Ordering::Relaxed);
                    tracing::warn!(
                        mac = %host.mac,
                        events = removed,
                        max = MAX_RECORD_BYTES,
                        "host record too large to store; decisions not recorded"
                    );
                }
                Done::Unreadable => {
                    metrics::HOST_EVENTS_DROPPED.inc_by(removed);
                    self.counters.dropped.fetch_add(removed, Ordering::Relaxed);
                }
            }
        }
        metrics::HOST_EVENTS_PENDING_BYTES.set(i64::try_from(queue.stats().bytes).unwrap_or(i64::MAX));
    }

    /// The newest record we know of, from our own writes or the snapshot.
    fn current(&self, mac: &str, written: &Written) -> Result<(i64, EncodedRecord), RulesError> {
        let key = format!("{HOSTS_PREFIX}{mac}");
        let snapshot_rev = self.hosts.mod_revision(&key).unwrap_or(0);
        match written.get(mac) {
            Some((rev, record)) if *rev >= snapshot_rev => Ok((*rev, record.clone())),
            _ => Ok(Self::stored(mac, self.hosts.get(&key).as_ref())?),
        }
    }

    /// A stored record (or none yet) and its revision.
    fn stored(mac: &str, kv: Option<&KeyValue>) -> Result<(i64, EncodedRecord), RulesError> {
        match kv {
            Some(kv) => {
                let record = EncodedRecord::from_stored(&kv.value)
                    .map_err(|e| RulesError::Internal(format!("{}: {e}", kv.key)))?;
                Ok((kv.mod_revision, record))
            }
            None => Ok((0, EncodedRecord::empty(mac))),
        }
    }

    /// The record with `events` added, trimmed to fit [`MAX_RECORD_BYTES`];
    /// `None` if even its newest entry alone is too big.
    fn merged(&self, mut record: EncodedRecord, events: &[EncodedEvent]) -> Option<EncodedRecord> {
        for event in events {
            record.push(event, self.history_limit);
        }
        record.fit(MAX_RECORD_BYTES).then_some(record)
    }

    /// Writes hosts from the start of `batch` (as many as one transaction
    /// takes), noting in `done` each host finished with, also when an error
    /// ends the call midway.
    async fn write_batch(
        &self,
        batch: &[HostBatch],
        written: &mut Written,
        done: &mut Vec<(usize, Done)>,
    ) -> Result<(), RulesError> {
        let mut txn = TxnRequest::new();
        let mut records = Vec::new();
        let mut bytes = 0;
        let mut new_hosts = 0;
        for (i, host) in batch.iter().enumerate() {
            if records.len() >= CHUNK || bytes >= CHUNK_BYTES {
                break;
            }
            let (revision, current) = match self.current(&host.mac, written) {
                Ok(current) => current,
                Err(e) => {
                    tracing::error!(mac = %host.mac, error = %e, "stored host record unreadable; decisions not recorded");
                    done.push((i, Done::Unreadable));
                    continue;
                }
            };
            if revision == 0 {
                if !self.cap.admits_new(self.records_now() + new_hosts) {
                    done.push((i, Done::Refused));
                    continue;
                }
                new_hosts += 1;
            }
            let Some(record) = self.merged(current, &host.events) else {
                done.push((i, Done::TooLarge));
                continue;
            };
            let key = format!("{HOSTS_PREFIX}{}", host.mac);
            let value = record.encode();
            bytes += key.len() + value.len();
            txn = txn
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, revision)])
                .and_then([TxnOp::put(key, value)]);
            records.push((i, record));
        }
        if records.is_empty() {
            return Ok(());
        }
        let result = self.store.txn(txn).await.map_err(store_err)?;
        if result.succeeded {
            self.note_created(result.revision, new_hosts);
            for (i, record) in records {
                written.insert(batch[i].mac.clone(), (result.revision, record));
                done.push((i, Done::Written));
            }
            metrics::HOST_RECORD_WRITES.inc();
            // Let request handlers run between chunks.
            tokio::task::yield_now().await;
            return Ok(());
        }
        // Someone else wrote one of them: one host at a time, fresh reads.
        for (i, _) in records {
            let outcome = self.write_one(&batch[i], written).await?;
            done.push((i, outcome));
        }
        Ok(())
    }

    async fn write_one(&self, host: &HostBatch, written: &mut Written) -> Result<Done, RulesError> {
        let key = format!("{HOSTS_PREFIX}{}", host.mac);
        for _ in 0..8 {
            let kv = self.store.get(&key).await.map_err(store_err)?;
            let (revision, current) = Self::stored(&host.mac, kv.as_ref())?;
            if revision == 0 && !self.cap.admits_new(self.records_now()) {
                return Ok(Done::Refused);
            }
            let Some(record) = self.merged(current, &host.events) else { return Ok(Done::TooLarge) };
            let txn = TxnRequest::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, revision)])
                .and_then([TxnOp::put(key.clone(), record.encode())]);
            let result = self.store.txn(txn).await.map_err(store_err)?;
            if result.succeeded {
                self.note_created(result.revision, usize::from(revision == 0));
                written.insert(host.mac.clone(), (result.revision, record));
                metrics::HOST_RECORD_WRITES.inc();
                return Ok(Done::Written);
            }
        }
        Err(RulesError::Conflict(format!("host record {} kept changing; will retry", host.mac)))
    }
}
