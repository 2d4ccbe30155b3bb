//! The shell around full mode's machine ([`crate::full::FullMachine`]): it
//! runs the store, the election and the batch writer, and carries events
//! in and actions out. Every decision is the machine's.
//!
//! Every lease write is a compare-and-swap on the lease key's revision and
//! on this replica's election key, and nothing is ACKed before its write
//! committed — or, for a lease got or renewed moments ago and ACKed as it
//! stands, before a transaction with the same two compares confirmed it.
//! Hot standby (the default): only the acting leader answers; a standby
//! stays silent but watches the leases, and takes over when the leader's
//! lease lapses. A deposed leader's writes fail, so two replicas that both
//! believe they lead still cannot hand out one address twice.
//! Load-balancing: every live member answers the clients the shares give
//! it (and what clients address to it), each write fenced by its own
//! membership instead (see [`super::fencing`]); every write is still a
//! compare-and-swap on the lease's revision, so members racing for one
//! address cannot both have it. While the store is
//! unreachable nothing new is allocated or written: a host whose bound
//! lease is in the watched copy gets that same address again (offline mode;
//! see `full::offline_lease_secs` for why that is safe).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bootfleet_core::snapshot::{CacheStatus, SnapshotCache};
use bootfleet_core::store::{EventKind, SharedStore, StoreResult, TxnOp};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::config::Ha;
use super::fencing::{Fence, Members};
use super::leadership::campaign;
use super::lease_records::{PREFIX, address, decode, key, put};
use super::lease_writer::{WriteJob, write_batches};
use crate::client::Client;
use crate::full::{
    Action, Event, FullConfig, FullMachine, Quiet, RequestId, Standing, StoreUnavailable, addressed_here,
};
use crate::proxy::{ProxyContext, Reply};
use crate::wire::Request;

/// REQUESTs acknowledged from a lease got or renewed moments ago.
static LEASES_REUSED: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::register_int_counter!(
        "bootfleet_dhcp_leases_reused_total",
        "REQUESTs acknowledged for the time left on a lease got or renewed moments ago, without a store write"
    )
    .expect("metric registers once")
});

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The leases: the machine deciding on them, the store and a watched copy
/// holding them, and the election deciding which replica may write them.
pub(super) struct Leases {
    store: SharedStore,
    member_id: String,
    fence: Fence,
    writes: mpsc::Sender<WriteJob>,
    machine: Arc<Mutex<FullMachine>>,
    /// The watched copy (its status tells whether the store is reachable).
    cache: SnapshotCache,
    next_request: AtomicU64,
}

/// Keeps the machine's lease index in step with the snapshot's change
/// events, reloading it from the full copy at start and whenever events
/// were missed.
async fn follow_leases(cache: SnapshotCache, machine: Arc<Mutex<FullMachine>>) {
    let mut events = cache.subscribe();
    cache.loaded().await;
    let reload = || {
        let leases = cache
            .list(PREFIX)
            .iter()
            .filter_map(|kv| decode(kv).map(|(ip, lease)| (ip, lease, kv.mod_revision)))
            .collect();
        lock(&machine).handle(Event::Reloaded { leases }, now_ms());
    };
    reload();
    loop {
        match events.recv().await {
            Ok(batch) => {
                let mut machine = lock(&machine);
                for event in batch.iter() {
                    let Some(ip) = address(&event.kv.key) else { continue };
                    let lease = match event.kind {
                        EventKind::Put => decode(&event.kv).map(|(_, lease)| lease),
                        EventKind::Delete => None,
                    };
                    machine.handle(Event::Watched { ip, lease, revision: event.kv.mod_revision }, now_ms());
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => reload(),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn lock(machine: &Mutex<FullMachine>) -> MutexGuard<'_, FullMachine> {
    machine.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Leases {
    pub(super) fn start(
        store: SharedStore,
        member_id: String,
        ttl: Duration,
        (config, ha): (FullConfig, Ha),
        stop: CancellationToken,
    ) -> Self {
        let cache = SnapshotCache::start(store.clone(), PREFIX, stop.clone());
        let fence = match ha {
            Ha::HotStandby => Fence::Leader(campaign(store.clone(), member_id.clone(), ttl, stop)),
            // The membership itself is the process's registration (see `run`).
            Ha::LoadBalancing => Fence::Member(Members::start(store.clone(), &member_id, stop)),
        };
        let (writes, queue) = mpsc::channel(1024);
        tokio::spawn(write_batches(store.clone(), fence.clone(), queue));
        let machine = Arc::new(Mutex::new(FullMachine::new(config)));
        tokio::spawn(follow_leases(cache.clone(), Arc::clone(&machine)));
        Self { store, member_id, fence, writes, machine, cache, next_request: AtomicU64::new(0) }
    }

    /// Whether this replica may write leases now (acts as the DHCP leader,
    /// or is a live member).
    #[cfg(test)]
    pub(super) fn acts_as_leader(&self) -> bool {
        self.fence.guard().is_some()
    }

    /// The live members this replica sees (load-balancing; empty in hot
    /// standby).
    #[cfg(test)]
    pub(super) fn members_seen(&self) -> Vec<String> {
        match &self.fence {
            Fence::Member(members) => members.shares().members().to_vec(),
            Fence::Leader(_) => Vec::new(),
        }
    }

    /// Whether the watched copy is all this replica has (the store is
    /// unreachable).
    #[cfg(test)]
    pub(super) fn offline(&self) -> bool {
        self.cache.status() == CacheStatus::Degraded
    }

    /// Where this replica stands now, for `client`.
    fn standing(&self, client: &[u8; 6]) -> Standing {
        let offline = self.cache.status() == CacheStatus::Degraded;
        match &self.fence {
            Fence::Leader(_) => match self.fence.guard() {
                Some((term, _)) => Standing::Leader { term },
                None if offline => Standing::Offline,
                None => Standing::Standby,
            },
            // A member cut off from the store cannot write: it answers
            // known hosts from its copy like any replica offline.
            Fence::Member(_) if offline => Standing::Offline,
            Fence::Member(members) => match members.standing(client) {
                Some((term, owner, place)) => Standing::Member { term, owner, place },
                None => Standing::Standby,
            },
        }
    }

    /// Whether another member answers this request (load-balancing): it
    /// owns the client, and the client did not address this replica. Such
    /// requests are dropped before the rules engine is asked, so each
    /// replica pays for its own share only.
    pub(super) fn others(&self, request: &Request, server_ip: std::net::Ipv4Addr) -> bool {
        matches!(self.standing(&request.mac), Standing::Member { owner: false, .. })
            && !addressed_here(request, server_ip)
    }

    /// Answers one full-DHCP request (`None`: stay silent): runs the
    /// store operations the machine asks for until it answers or finishes.
    pub(super) async fn answer(
        &self,
        request: &Request,
        client: &Client,
        boot: &ProxyContext,
    ) -> Option<Reply> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let standing = self.standing(&request.mac);
        let event = Event::Request { id, request, client, boot, standing };
        let mut action = lock(&self.machine).handle(event, now_ms()).pop();
        let mut abandon = Abandon { machine: &self.machine, id, done: false };
        loop {
            let event = match action? {
                Action::Send { reply, reused, .. } => {
                    abandon.done = true;
                    if reused {
                        LEASES_REUSED.inc();
                    }
                    if standing == Standing::Offline {
                        tracing::info!(mac = %request.mac_text(), ip = %reply.yiaddr, "store unreachable: answered from the watched lease (offline)");
                    }
                    return Some(reply);
                }
                Action::Finish { why, .. } => {
                    abandon.done = true;
                    log_quiet(request, why, standing);
                    return None;
                }
                Action::Write { op, ip, record, revision, .. } => {
                    let outcome =
                        self.queue(ip, Some(put(ip, record.as_ref(), &self.member_id)), revision).await;
                    Event::Written { op, outcome: available(outcome) }
                }
                Action::Confirm { op, ip, revision, .. } => {
                    let outcome = self.queue(ip, None, revision).await.map(|confirmed| confirmed.is_some());
                    Event::Confirmed { op, outcome: available(outcome) }
                }
                Action::Read { op, ip, .. } => {
                    let outcome = self.store.get(&key(ip)).await.map(|kv| {
                        let lease = kv.as_ref().and_then(decode).map(|(_, lease)| lease);
                        (lease, kv.map_or(0, |kv| kv.mod_revision))
                    });
                    Event::Read { op, outcome: available(outcome) }
                }
            };
            action = lock(&self.machine).handle(event, now_ms()).pop();
        }
    }

    /// Queues a write (or with `None` a confirmation) for the batch writer.
    async fn queue(
        &self,
        ip: std::net::Ipv4Addr,
        op: Option<TxnOp>,
        revision: i64,
    ) -> StoreResult<Option<i64>> {
        let (done, result) = oneshot::channel();
        if self.writes.send(WriteJob { ip, op, revision, done }).await.is_err() {
            return Ok(None);
        }
        result.await.unwrap_or(Ok(None))
    }
}

/// A store outcome for the machine; the error is logged here, where its
/// details are known.
fn available<T>(outcome: StoreResult<T>) -> Result<T, StoreUnavailable> {
    outcome.map_err(|e| {
        tracing::warn!(error = %e, "lease store unavailable; not answering");
        StoreUnavailable
    })
}

/// Tells the machine a request was given up (its task dropped) unless it
/// finished, so the writes it had on their way do not stay open.
struct Abandon<'a> {
    machine: &'a Mutex<FullMachine>,
    id: RequestId,
    done: bool,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if !self.done {
            lock(self.machine).handle(Event::Abandoned { id: self.id }, now_ms());
        }
    }
}

fn log_quiet(request: &Request, why: Quiet, standing: Standing) {
    let mac = request.mac_text();
    match why {
        Quiet::PoolExhausted => tracing::warn!(%mac, "pool exhausted"),
        Quiet::Declined => {
            tracing::warn!(%mac, ip = ?request.requested_ip(), "address declined (in use elsewhere?)")
        }
        Quiet::Released => tracing::info!(%mac, ip = %request.ciaddr, "released"),
        Quiet::NotHeld => {
            tracing::info!(%mac, "RELEASE or DECLINE ignored: not an address this client holds")
        }
        Quiet::UnknownOffline => {
            tracing::info!(%mac, "store unreachable: no lease of this host to answer from")
        }
        Quiet::LostRace => tracing::debug!(%mac, "the lease changed under every attempt"),
        _ => tracing::debug!(%mac, ?why, ?standing, "not answering"),
    }
}
