//! Boot reports: which stage of a host's boot reached which replica (the
//! DHCP responder's answer, the TFTP server's loaders, the streamer's
//! script and files, the OS's own reports), and whether the host came up
//! from the network or its cached disk. Kept under
//! `/bootfleet/v1/boots/<mac>` (apart from the host record, so the two
//! writers never contend), joined into `GetHost` answers. Every boot
//! service writes them through a [`Reporter`].
//!
//! Requests hand reports to a pending map and return; one task writes them,
//! coalescing everything pending for a host into one compare-and-swap, so a
//! boot storm costs one write per host per round rather than one per request.
//!
//! A status is kept only beside a host record: the write is fenced on the
//! record existing, so boot-script requests for made-up MACs (anyone can
//! send them) leave no status behind the host-record cap. A new host's
//! first report usually arrives before the recorder has written its
//! record; reports wait for it, up to [`HOST_RECORD_WAIT`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bootfleet_core::backoff::Backoff;
use bootfleet_core::store::{Compare, CompareOp, SharedStore, StoreError, TxnOp, TxnRequest};
use bootfleet_proto::v1::{BootReport, BootStatus};
use prost::Message;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{BOOTS_PREFIX, HOSTS_PREFIX, RulesState};

/// Reports kept per host.
pub const REPORTS_KEPT: usize = 20;
/// Hosts with unwritten reports kept (while the store is down, say).
const MAX_PENDING_HOSTS: usize = 100_000;
/// How long reports wait for their host's record before they are dropped:
/// far longer than the recorder takes to write one, short enough that
/// reports for hosts the cap refused do not linger.
pub const HOST_RECORD_WAIT: Duration = Duration::from_secs(120);
/// How often reports waiting for a record look again.
const RECORD_RECHECK: Duration = Duration::from_secs(1);

/// The MAC a stored DHCP lease (`/bootfleet/v1/leases/<ip>`) binds its
/// address to now: for services that see only a client's address (TFTP)
/// and report on its host's record. `None` for a lease not bound, expired
/// or undecodable.
pub fn lease_holder(lease: &[u8], now_unix_ms: i64) -> Option<String> {
    use bootfleet_proto::v1::{Lease, lease};
    let lease = Lease::decode(lease).ok()?;
    (lease.state() == lease::State::Bound && lease.expires_unix_ms > now_unix_ms).then_some(lease.mac)
}

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

/// Reports of one host not written yet.
#[derive(Debug)]
struct Pending {
    reports: Vec<BootReport>,
    /// When the oldest of them was queued.
    since: Instant,
    /// Without a snapshot of the host records, each look costs the store
    /// a transaction: a host without a record is looked at again only
    /// after this (doubling from a second).
    next_look: Instant,
}

/// The metrics a reporter keeps (each service registers its own names).
#[derive(Clone)]
pub struct ReportMetrics {
    /// Reports stored.
    pub written: prometheus::IntCounter,
    /// Reports dropped, by reason (`queue_full`, `no_host_record`).
    pub dropped: prometheus::IntCounterVec,
    /// Hosts with reports waiting.
    pub pending_hosts: prometheus::IntGauge,
}

/// Queues reports and writes them in the background.
#[derive(Clone)]
pub struct Reporter {
    pending: Arc<Mutex<HashMap<String, Pending>>>,
    wake: Arc<Notify>,
    metrics: ReportMetrics,
}

/// What one round of writes left: hosts whose write failed (retried after
/// a backoff) and hosts still without a record (looked at again shortly).
#[derive(Debug, Default)]
struct Round {
    failed: Vec<(String, Pending)>,
    waiting: Vec<(String, Pending)>,
}

impl Reporter {
    /// Starts the writer; `rules`, when the process follows the host
    /// records, tells which hosts have one without asking the store.
    pub fn start(
        store: SharedStore,
        rules: Option<Arc<RulesState>>,
        metrics: ReportMetrics,
        stop: CancellationToken,
    ) -> Self {
        let reporter = Self { pending: Arc::default(), wake: Arc::new(Notify::new()), metrics };
        tokio::spawn(reporter.clone().run(store, rules, stop));
        reporter
    }

    /// Queues a report; never waits. False (and counted) when too many
    /// hosts are pending.
    pub fn report(&self, mac: String, report: BootReport) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.len() >= MAX_PENDING_HOSTS && !pending.contains_key(&mac) {
            self.metrics.dropped.with_label_values(&["queue_full"]).inc();
            return false;
        }
        let host = pending.entry(mac).or_insert_with(|| Pending {
            reports: Vec::new(),
            since: Instant::now(),
            next_look: Instant::now(),
        });
        host.reports.push(report);
        let excess = host.reports.len().saturating_sub(REPORTS_KEPT);
        host.reports.drain(..excess);
        let hosts = pending.len();
        drop(pending);
        self.metrics.pending_hosts.set(i64::try_from(hosts).unwrap_or(i64::MAX));
        self.wake.notify_one();
        true
    }

    fn take_pending(&self) -> HashMap<String, Pending> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Returns unwritten reports to the queue, ahead of anything newer.
    fn put_back(&self, unwritten: impl IntoIterator<Item = (String, Pending)>) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for (mac, mut host) in unwritten {
            if let Some(newer) = pending.remove(&mac) {
                host.reports.extend(newer.reports);
                let excess = host.reports.len().saturating_sub(REPORTS_KEPT);
                host.reports.drain(..excess);
            }
            pending.insert(mac, host);
        }
        self.metrics.pending_hosts.set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
    }

    async fn run(self, store: SharedStore, rules: Option<Arc<RulesState>>, stop: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut waiting = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    // One last attempt so reports taken just before shutdown are kept.
                    let batch = self.take_pending();
                    let last = write_round(&store, rules.as_deref(), &self.metrics, batch, Instant::now());
                    let _ = tokio::time::timeout(Duration::from_secs(2), last).await;
                    return;
                }
                () = self.wake.notified() => {}
                () = tokio::time::sleep(RECORD_RECHECK), if waiting => {}
            }
            let batch = self.take_pending();
            let round = write_round(&store, rules.as_deref(), &self.metrics, batch, Instant::now()).await;
            waiting = !round.waiting.is_empty();
            let failed = !round.failed.is_empty();
            self.put_back(round.failed.into_iter().chain(round.waiting));
            if !failed {
                backoff.reset();
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
            self.wake.notify_one();
        }
    }
}

/// Writes the reports of each host that has a record; keeps those of
/// hosts without one until [`HOST_RECORD_WAIT`] has passed, then drops
/// them (counted).
async fn write_round(
    store: &SharedStore,
    rules: Option<&RulesState>,
    metrics: &ReportMetrics,
    batch: HashMap<String, Pending>,
    now: Instant,
) -> Round {
    let mut round = Round::default();
    for (mac, mut host) in batch {
        // The snapshot first: a flood of made-up MACs costs no store call.
        // Without one, a host found without a record waits longer between
        // looks.
        let written = match rules {
            Some(rules) if !rules.has_host(&mac) => Ok(false),
            None if now < host.next_look => Ok(false),
            _ => write_one(store, &mac, &host.reports).await,
        };
        match written {
            Ok(true) => metrics.written.inc_by(host.reports.len() as u64),
            Ok(false) if now.duration_since(host.since) < HOST_RECORD_WAIT => {
                if now >= host.next_look {
                    let waited = now.duration_since(host.since).max(RECORD_RECHECK);
                    host.next_look = now + waited;
                }
                round.waiting.push((mac, host));
            }
            Ok(false) => {
                metrics.dropped.with_label_values(&["no_host_record"]).inc_by(host.reports.len() as u64);
                tracing::debug!(mac = %mac, "boot reports dropped: the host got no record (rules.max_hosts?)");
            }
            Err(e) => {
                tracing::warn!(mac = %mac, error = %e, "boot report not written yet; will retry");
                round.failed.push((mac, host));
            }
        }
    }
    round
}

/// Adds `reports` to the host's status; false (nothing written) when the
/// host has no record.
async fn write_one(store: &SharedStore, mac: &str, reports: &[BootReport]) -> Result<bool, StoreError> {
    let key = format!("{BOOTS_PREFIX}{mac}");
    let record = format!("{HOSTS_PREFIX}{mac}");
    for _ in 0..5 {
        let current = store.get(&key).await?;
        let (mut status, revision) = match &current {
            Some(kv) => (BootStatus::decode(kv.value.as_slice()).unwrap_or_default(), kv.mod_revision),
            None => (BootStatus::default(), 0),
        };
        status.mac = mac.to_owned();
        apply(&mut status, reports);
        let txn = TxnRequest {
            compares: vec![
                Compare::mod_revision(&key, CompareOp::Equal, revision),
                Compare::create_revision(&record, CompareOp::Greater, 0),
            ],
            then: vec![TxnOp::put(&key, status.encode_to_vec())],
            otherwise: vec![],
        };
        if store.txn(txn).await?.succeeded {
            return Ok(true);
        }
        if store.get(&record).await?.is_none() {
            return Ok(false);
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

    /// Made-up MACs in boot-script requests must not grow the store: the
    /// status is written only beside a host record, even when the caller
    /// thought the host had one (a record swept meanwhile).
    #[tokio::test]
    async fn a_status_is_written_only_beside_a_host_record() {
        use bootfleet_core::store::embedded::EmbeddedStore;
        let store: SharedStore = Arc::new(EmbeddedStore::in_memory().unwrap());
        let mac = "52:54:00:00:00:01";
        let reports = [report("script", "", 1)];
        assert!(!write_one(&store, mac, &reports).await.unwrap());
        assert!(store.get(&format!("{BOOTS_PREFIX}{mac}")).await.unwrap().is_none());

        store.put(&format!("{HOSTS_PREFIX}{mac}"), b"record".to_vec(), None).await.unwrap();
        assert!(write_one(&store, mac, &reports).await.unwrap());
        let kv = store.get(&format!("{BOOTS_PREFIX}{mac}")).await.unwrap().expect("status written");
        assert_eq!(BootStatus::decode(kv.value.as_slice()).unwrap().reports.len(), 1);
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
