//! Records decisions on host records without slowing Evaluate down.
//!
//! Evaluate encodes its event, hands `(mac, event)` to a bounded queue and
//! returns. A single task drains the queue, merges what arrived for the same
//! host, and writes up to [`CHUNK`] hosts ([`CHUNK_BYTES`]) per transaction,
//! each guarded by a compare on the host record's revision so that two
//! replicas recording the same host never overwrite each other (a lost race
//! is retried one host at a time). While
//! the store is unreachable the pending events wait (bounded) and are
//! written when it returns.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bootfleet_core::backoff::Backoff;
use bootfleet_core::snapshot::SnapshotCache;
use bootfleet_core::store::{Compare, CompareOp, KeyValue, SharedStore, TxnOp, TxnRequest};
use bootfleet_proto::v1::HostEvent;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::HOSTS_PREFIX;
use super::host_wire::{EncodedEvent, EncodedRecord};
use super::writes::store_err;
use crate::error::RulesError;
use crate::service::metrics;

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
/// Queue length between Evaluate and the writer.
const QUEUE: usize = 65_536;
/// Hosts with unwritten events kept while the store is down.
const MAX_PENDING_HOSTS: usize = 100_000;

/// Sends decisions to the background writer.
#[derive(Clone)]
pub struct HostRecorder {
    tx: mpsc::Sender<(String, EncodedEvent)>,
    store: SharedStore,
    hosts: SnapshotCache,
    history_limit: usize,
}

impl std::fmt::Debug for HostRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostRecorder").field("history_limit", &self.history_limit).finish_non_exhaustive()
    }
}

impl HostRecorder {
    /// Starts the writer task.
    pub fn start(
        store: SharedStore,
        hosts: SnapshotCache,
        history_limit: usize,
        stop: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let recorder = Self { tx, store, hosts, history_limit: history_limit.max(1) };
        tokio::spawn(recorder.clone().run(rx, stop));
        recorder
    }

    /// Queues an event; never waits. Returns false (and counts it) if the
    /// queue is full.
    pub fn record(&self, mac: String, event: EncodedEvent) -> bool {
        match self.tx.try_send((mac, event)) {
            Ok(()) => true,
            Err(_) => {
                metrics::HOST_EVENTS_DROPPED.inc();
                false
            }
        }
    }

    /// Writes events now (Repair), returning when they are stored.
    pub async fn write_now(&self, events: Vec<(String, HostEvent)>) -> Result<(), RulesError> {
        let mut pending: BTreeMap<String, Vec<EncodedEvent>> = BTreeMap::new();
        for (mac, event) in events {
            pending.entry(mac).or_default().push(EncodedEvent::new(&event));
        }
        let mut written = HashMap::new();
        self.write(&mut pending, &mut written).await
    }

    async fn run(self, mut rx: mpsc::Receiver<(String, EncodedEvent)>, stop: CancellationToken) {
        let mut pending: BTreeMap<String, Vec<EncodedEvent>> = BTreeMap::new();
        // Records this writer stored, newer than the snapshot may be yet.
        let mut written: HashMap<String, (i64, EncodedRecord)> = HashMap::new();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            if pending.is_empty() {
                tokio::select! {
                    () = stop.cancelled() => return,
                    item = rx.recv() => match item {
                        Some((mac, event)) => pending.entry(mac).or_default().push(event),
                        None => return,
                    },
                }
            }
            while let Ok((mac, event)) = rx.try_recv() {
                if pending.len() >= MAX_PENDING_HOSTS && !pending.contains_key(&mac) {
                    metrics::HOST_EVENTS_DROPPED.inc();
                    continue;
                }
                pending.entry(mac).or_default().push(event);
            }
            match self.write(&mut pending, &mut written).await {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    tracing::warn!(error = %e, hosts = pending.len(), "recording decisions failed; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
            if written.len() > MAX_PENDING_HOSTS {
                written.clear();
            }
        }
    }

    /// The newest record we know of, from our own writes or the snapshot.
    fn current(
        &self,
        mac: &str,
        written: &HashMap<String, (i64, EncodedRecord)>,
    ) -> Result<(i64, EncodedRecord), RulesError> {
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

    /// Gives up on a host whose newest event cannot be stored.
    fn drop_oversized(mac: &str, pending: &mut BTreeMap<String, Vec<EncodedEvent>>) {
        let events = pending.remove(mac).map_or(0, |e| e.len());
        metrics::HOST_EVENTS_DROPPED.inc_by(events as u64);
        tracing::warn!(
            mac,
            events,
            max = MAX_RECORD_BYTES,
            "host record too large to store; decisions not recorded"
        );
    }

    /// Writes every pending host; removes from `pending` what was stored.
    async fn write(
        &self,
        pending: &mut BTreeMap<String, Vec<EncodedEvent>>,
        written: &mut HashMap<String, (i64, EncodedRecord)>,
    ) -> Result<(), RulesError> {
        let macs: Vec<String> = pending.keys().cloned().collect();
        let mut next = 0;
        while next < macs.len() {
            let mut txn = TxnRequest::new();
            let mut records = Vec::new();
            let mut bytes = 0;
            while next < macs.len() && records.len() < CHUNK && bytes < CHUNK_BYTES {
                let mac = &macs[next];
                next += 1;
                let (revision, current) = self.current(mac, written)?;
                let Some(record) = self.merged(current, &pending[mac]) else {
                    Self::drop_oversized(mac, pending);
                    continue;
                };
                let key = format!("{HOSTS_PREFIX}{mac}");
                let value = record.encode();
                bytes += key.len() + value.len();
                txn = txn
                    .when([Compare::mod_revision(key.clone(), CompareOp::Equal, revision)])
                    .and_then([TxnOp::put(key, value)]);
                records.push((mac.clone(), record));
            }
            if records.is_empty() {
                continue;
            }
            let result = self.store.txn(txn).await.map_err(store_err)?;
            if result.succeeded {
                for (mac, record) in records {
                    pending.remove(&mac);
                    written.insert(mac, (result.revision, record));
                }
                metrics::HOST_RECORD_WRITES.inc();
                // Let request handlers run between chunks.
                tokio::task::yield_now().await;
                continue;
            }
            // Someone else wrote one of them: one host at a time, fresh reads.
            for (mac, _) in records {
                self.write_one(&mac, pending, written).await?;
            }
        }
        Ok(())
    }

    async fn write_one(
        &self,
        mac: &str,
        pending: &mut BTreeMap<String, Vec<EncodedEvent>>,
        written: &mut HashMap<String, (i64, EncodedRecord)>,
    ) -> Result<(), RulesError> {
        let key = format!("{HOSTS_PREFIX}{mac}");
        for _ in 0..8 {
            let kv = self.store.get(&key).await.map_err(store_err)?;
            let (revision, current) = Self::stored(mac, kv.as_ref())?;
            let Some(record) = self.merged(current, &pending[mac]) else {
                Self::drop_oversized(mac, pending);
                return Ok(());
            };
            let txn = TxnRequest::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, revision)])
                .and_then([TxnOp::put(key.clone(), record.encode())]);
            let result = self.store.txn(txn).await.map_err(store_err)?;
            if result.succeeded {
                pending.remove(mac);
                written.insert(mac.to_owned(), (result.revision, record));
                metrics::HOST_RECORD_WRITES.inc();
                return Ok(());
            }
        }
        Err(RulesError::Conflict(format!("host record {mac} kept changing; will retry")))
    }
}
