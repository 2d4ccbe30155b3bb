//! Records decisions on host records without slowing Evaluate down.
//!
//! Evaluate hands `(mac, event)` to a bounded queue and returns. A single
//! task drains the queue, merges what arrived for the same host, and writes
//! up to [`CHUNK`] hosts per transaction, each guarded by a compare on the
//! host record's revision so that two replicas recording the same host never
//! overwrite each other (a lost race is retried one host at a time). While
//! the store is unreachable the pending events wait (bounded) and are
//! written when it returns.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bootfleet_core::backoff::Backoff;
use bootfleet_core::snapshot::SnapshotCache;
use bootfleet_core::store::{Compare, CompareOp, SharedStore, TxnOp, TxnRequest};
use bootfleet_proto::v1::{HostEvent, HostRecord};
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::writes::store_err;
use super::{HOSTS_PREFIX, decode};
use crate::error::RulesError;
use crate::service::metrics;

/// Hosts written per transaction (etcd allows 128 operations; each host
/// takes a compare and a put). Kept small so one chunk's encoding never
/// holds a worker thread long enough to delay Evaluate answers.
const CHUNK: usize = 16;
/// Queue length between Evaluate and the writer.
const QUEUE: usize = 65_536;
/// Hosts with unwritten events kept while the store is down.
const MAX_PENDING_HOSTS: usize = 100_000;

/// Sends decisions to the background writer.
#[derive(Clone)]
pub struct HostRecorder {
    tx: mpsc::Sender<(String, HostEvent)>,
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
    pub fn record(&self, mac: String, event: HostEvent) -> bool {
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
        let mut pending: BTreeMap<String, Vec<HostEvent>> = BTreeMap::new();
        for (mac, event) in events {
            pending.entry(mac).or_default().push(event);
        }
        let mut written = HashMap::new();
        self.write(&mut pending, &mut written).await
    }

    async fn run(self, mut rx: mpsc::Receiver<(String, HostEvent)>, stop: CancellationToken) {
        let mut pending: BTreeMap<String, Vec<HostEvent>> = BTreeMap::new();
        // Records this writer stored, newer than the snapshot may be yet.
        let mut written: HashMap<String, (i64, HostRecord)> = HashMap::new();
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
        written: &HashMap<String, (i64, HostRecord)>,
    ) -> Result<(i64, Option<HostRecord>), RulesError> {
        let snapshot = self.hosts.get(&format!("{HOSTS_PREFIX}{mac}"));
        let snapshot_rev = snapshot.as_ref().map_or(0, |kv| kv.mod_revision);
        match written.get(mac) {
            Some((rev, record)) if *rev >= snapshot_rev => Ok((*rev, Some(record.clone()))),
            _ => match snapshot {
                Some(kv) => Ok((kv.mod_revision, Some(decode(&kv)?))),
                None => Ok((0, None)),
            },
        }
    }

    fn merged(&self, mac: &str, record: Option<HostRecord>, events: &[HostEvent]) -> HostRecord {
        let mut record =
            record.unwrap_or_else(|| HostRecord { mac: mac.to_owned(), ..HostRecord::default() });
        for event in events {
            record.facts = event.facts.clone();
            record.last_decision = event.decision.clone();
            record.history.push(event.clone());
        }
        let excess = record.history.len().saturating_sub(self.history_limit);
        record.history.drain(..excess);
        record
    }

    /// Writes every pending host; removes from `pending` what was stored.
    async fn write(
        &self,
        pending: &mut BTreeMap<String, Vec<HostEvent>>,
        written: &mut HashMap<String, (i64, HostRecord)>,
    ) -> Result<(), RulesError> {
        let macs: Vec<String> = pending.keys().cloned().collect();
        for chunk in macs.chunks(CHUNK) {
            let mut txn = TxnRequest::new();
            let mut records = Vec::with_capacity(chunk.len());
            for mac in chunk {
                let (revision, current) = self.current(mac, written)?;
                let record = self.merged(mac, current, &pending[mac]);
                let key = format!("{HOSTS_PREFIX}{mac}");
                txn = txn
                    .when([Compare::mod_revision(key.clone(), CompareOp::Equal, revision)])
                    .and_then([TxnOp::put(key, record.encode_to_vec())]);
                records.push((mac.clone(), record));
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
            for mac in chunk {
                self.write_one(mac, pending, written).await?;
            }
        }
        Ok(())
    }

    async fn write_one(
        &self,
        mac: &str,
        pending: &mut BTreeMap<String, Vec<HostEvent>>,
        written: &mut HashMap<String, (i64, HostRecord)>,
    ) -> Result<(), RulesError> {
        let key = format!("{HOSTS_PREFIX}{mac}");
        for _ in 0..8 {
            let kv = self.store.get(&key).await.map_err(store_err)?;
            let (revision, current) = match &kv {
                Some(kv) => (kv.mod_revision, Some(decode::<HostRecord>(kv)?)),
                None => (0, None),
            };
            let record = self.merged(mac, current, &pending[mac]);
            let txn = TxnRequest::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, revision)])
                .and_then([TxnOp::put(key.clone(), record.encode_to_vec())]);
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
