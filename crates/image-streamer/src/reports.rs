//! Boot reports: which stage of a host's boot reached which replica, and
//! whether the host came up from the network or its cached disk. Kept under
//! `/bootfleet/v1/boots/<mac>` (apart from the rules engine's host record,
//! so the two writers never contend), joined into `GetHost` answers.
//!
//! Requests hand reports to a pending map and return; one task writes them,
//! coalescing everything pending for a host into one compare-and-swap, so a
//! boot storm costs one write per host per round rather than one per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bootfleet_core::backoff::Backoff;
use bootfleet_core::store::{Compare, CompareOp, SharedStore, StoreError, TxnOp, TxnRequest};
use bootfleet_proto::v1::{BootReport, BootStatus};
use prost::Message;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::catalog::BOOTS_PREFIX;
use crate::metrics;

/// Reports kept per host.
pub const REPORTS_KEPT: usize = 20;
/// Hosts with unwritten reports kept (while the store is down, say).
const MAX_PENDING_HOSTS: usize = 100_000;

/// Applies reports to a status (pure).
pub fn apply(status: &mut BootStatus, reports: &[BootReport]) {
    for report in reports {
        if report.stage == "booted" {
            match report.source.as_str() {
                "disk" => status.not_booted_stateless = true,
                "network" => {
                    status.not_booted_stateless = false;
                    status.last_network_boot_unix_ms = report.at_unix_ms;
                }
                _ => {}
            }
        }
        status.reports.push(report.clone());
    }
    let excess = status.reports.len().saturating_sub(REPORTS_KEPT);
    status.reports.drain(..excess);
}

/// Queues reports and writes them in the background.
#[derive(Clone)]
pub struct Reporter {
    pending: Arc<Mutex<HashMap<String, Vec<BootReport>>>>,
    wake: Arc<Notify>,
}

impl Reporter {
    /// Starts the writer.
    pub fn start(store: SharedStore, stop: CancellationToken) -> Self {
        let reporter = Self { pending: Arc::default(), wake: Arc::new(Notify::new()) };
        tokio::spawn(reporter.clone().run(store, stop));
        reporter
    }

    /// Queues a report; never waits. False (and counted) when too many
    /// hosts are pending.
    pub fn report(&self, mac: String, report: BootReport) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.len() >= MAX_PENDING_HOSTS && !pending.contains_key(&mac) {
            metrics::REPORTS_DROPPED.inc();
            return false;
        }
        let reports = pending.entry(mac).or_default();
        reports.push(report);
        let excess = reports.len().saturating_sub(REPORTS_KEPT);
        reports.drain(..excess);
        drop(pending);
        self.wake.notify_one();
        true
    }

    fn take_pending(&self) -> HashMap<String, Vec<BootReport>> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Returns unwritten reports to the queue, ahead of anything newer.
    fn put_back(&self, failed: Vec<(String, Vec<BootReport>)>) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for (mac, mut reports) in failed {
            let newer = pending.remove(&mac).unwrap_or_default();
            reports.extend(newer);
            pending.insert(mac, reports);
        }
    }

    async fn run(self, store: SharedStore, stop: CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    // One last attempt so reports taken just before shutdown are kept.
                    let batch = self.take_pending();
                    let _ = tokio::time::timeout(Duration::from_secs(2), write_all(&store, batch)).await;
                    return;
                }
                () = self.wake.notified() => {}
            }
            let batch = self.take_pending();
            let failed = write_all(&store, batch).await;
            if failed.is_empty() {
                backoff.reset();
                continue;
            }
            self.put_back(failed);
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
            self.wake.notify_one();
        }
    }
}

/// Writes each host's reports; returns those that could not be written.
async fn write_all(
    store: &SharedStore,
    batch: HashMap<String, Vec<BootReport>>,
) -> Vec<(String, Vec<BootReport>)> {
    let mut failed = Vec::new();
    for (mac, reports) in batch {
        match write_one(store, &mac, &reports).await {
            Ok(()) => metrics::REPORTS_WRITTEN.inc_by(reports.len() as u64),
            Err(e) => {
                tracing::warn!(mac = %mac, error = %e, "boot report not written yet; will retry");
                failed.push((mac, reports));
            }
        }
    }
    failed
}

async fn write_one(store: &SharedStore, mac: &str, reports: &[BootReport]) -> Result<(), StoreError> {
    let key = format!("{BOOTS_PREFIX}{mac}");
    for _ in 0..5 {
        let current = store.get(&key).await?;
        let (mut status, revision) = match &current {
            Some(kv) => (BootStatus::decode(kv.value.as_slice()).unwrap_or_default(), kv.mod_revision),
            None => (BootStatus::default(), 0),
        };
        status.mac = mac.to_owned();
        apply(&mut status, reports);
        let txn = TxnRequest {
            compares: vec![Compare::mod_revision(&key, CompareOp::Equal, revision)],
            then: vec![TxnOp::put(&key, status.encode_to_vec())],
            otherwise: vec![],
        };
        if store.txn(txn).await?.succeeded {
            return Ok(());
        }
    }
    Err(StoreError::Unavailable(format!("{key}: too many concurrent writers")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(stage: &str, source: &str, at: i64) -> BootReport {
        BootReport { at_unix_ms: at, stage: stage.into(), source: source.into(), ..Default::default() }
    }

    #[test]
    fn disk_boot_flags_the_host_and_network_boot_clears_it() {
        let mut status = BootStatus::default();
        apply(&mut status, &[report("script", "", 1), report("booted", "network", 2)]);
        assert!(!status.not_booted_stateless);
        assert_eq!(status.last_network_boot_unix_ms, 2);
        apply(&mut status, &[report("booted", "disk", 3)]);
        assert!(status.not_booted_stateless);
        apply(&mut status, &[report("script", "", 4), report("loaded", "", 5)]);
        assert!(status.not_booted_stateless, "only a finished network boot clears the flag");
        apply(&mut status, &[report("booted", "network", 6)]);
        assert!(!status.not_booted_stateless);
        let many: Vec<_> = (0..50).map(|i| report("script", "", i)).collect();
        apply(&mut status, &many);
        assert_eq!(status.reports.len(), REPORTS_KEPT);
        assert_eq!(status.reports.last().unwrap().at_unix_ms, 49);
    }
}
