//! Full-DHCP requests against the leases in the store. Every lease write is
//! a compare-and-swap on the lease key's revision and on this replica's
//! election key, and nothing is ACKed before its write committed — or, for
//! a lease got or renewed moments ago and acknowledged as it stands, before
//! a transaction with the same two compares confirmed it. Only the
//! acting leader answers (hot standby): a standby stays silent but watches
//! the leases, and takes over when the leader's lease lapses. A deposed
//! leader's writes fail, so two replicas that both believe they lead still
//! cannot hand out one address twice. While the store is unreachable
//! nothing new is allocated: a host whose bound lease is in the watched
//! copy gets that same address again, for no longer than the lease has
//! left (offline mode: a known host still boots), and nothing is written.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bootfleet_core::election::{Election, Leadership};
use bootfleet_core::snapshot::{CacheStatus, SnapshotCache};
use bootfleet_core::store::{Compare, KeyValue, SharedStore, StoreResult, TxnOp};
use bootfleet_proto::v1 as pb;
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::lease_writer::{WriteJob, write_batches};
use crate::client::{Client, Loader};
use crate::full::{
    LeaseEntry, LeaseState, LeaseTable, OFFER_HOLD, Pool, Reservations, declined, held_until, may_hold,
    millis, offline_lease_secs, pick_pool, released, reusable_lease,
};
use crate::proxy::{ProxyContext, Reply, ReplyType, Verdict, boot_parts};
use crate::wire::{MessageType, Request};

pub(super) const PREFIX: &str = "/bootfleet/v1/leases/";

/// REQUESTs acknowledged from a lease got or renewed moments ago.
static LEASES_REUSED: std::sync::LazyLock<prometheus::IntCounter> = std::sync::LazyLock::new(|| {
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

pub(super) fn key(ip: Ipv4Addr) -> String {
    format!("{PREFIX}{ip}")
}

fn entry(kv: &KeyValue) -> Option<(Ipv4Addr, LeaseEntry)> {
    let lease = pb::Lease::decode(kv.value.as_slice()).ok()?;
    let state = match lease.state() {
        pb::lease::State::Offered => LeaseState::Offered,
        pb::lease::State::Bound => LeaseState::Bound,
        pb::lease::State::Declined => LeaseState::Declined,
    };
    Some((
        lease.ip.parse().ok()?,
        LeaseEntry { mac: lease.mac, state, expires_unix_ms: lease.expires_unix_ms },
    ))
}

/// Proof of leadership while it lasts: the compare that fences writes and
/// the flag that turns false when the lease could no longer be renewed.
pub(super) struct LeaderToken {
    pub(super) guard: Compare,
    pub(super) acting: watch::Receiver<bool>,
    /// When acting ends unless the election lease is renewed first.
    pub(super) deadline: watch::Receiver<tokio::time::Instant>,
    /// Counts this replica's leaderships: index entries verified in one
    /// are not trusted in the next.
    pub(super) term: u64,
}

impl LeaderToken {
    /// This leadership's term, if it still acts by the clock as well as by
    /// the flag (whose update may wait for a busy runtime).
    fn acting_term(&self) -> Option<u64> {
        let by_clock = tokio::time::Instant::now() < *self.deadline.borrow();
        (*self.acting.borrow() && by_clock).then_some(self.term)
    }
}

/// The leases, as the store and a watched copy hold them, and the
/// election that decides which replica may write them.
pub(super) struct Leases {
    store: SharedStore,
    member_id: String,
    leader: watch::Receiver<Option<Arc<LeaderToken>>>,
    writes: mpsc::Sender<WriteJob>,
    /// Every lease, indexed; kept current from the watched copy and from
    /// this replica's own writes.
    index: Arc<std::sync::Mutex<LeaseTable>>,
    /// The watched copy (its status tells whether the store is reachable).
    cache: SnapshotCache,
}

/// Keeps the lease index in step with the snapshot's change events,
/// rebuilding it from the full copy at start and whenever events were
/// missed.
async fn maintain_index(cache: SnapshotCache, index: Arc<std::sync::Mutex<LeaseTable>>) {
    let mut events = cache.subscribe();
    cache.loaded().await;
    let rebuild = |index: &std::sync::Mutex<LeaseTable>| {
        let leases: Vec<_> = cache
            .list(PREFIX)
            .iter()
            .filter_map(|kv| entry(kv).map(|(ip, e)| (ip, e, kv.mod_revision)))
            .collect();
        index.lock().unwrap_or_else(std::sync::PoisonError::into_inner).reload(leases);
    };
    rebuild(&index);
    loop {
        match events.recv().await {
            Ok(batch) => {
                let mut table = index.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                for event in batch.iter() {
                    let Some(ip) =
                        event.kv.key.strip_prefix(PREFIX).and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                    else {
                        continue;
                    };
                    let lease = match event.kind {
                        bootfleet_core::store::EventKind::Put => entry(&event.kv).map(|(_, l)| l),
                        bootfleet_core::store::EventKind::Delete => None,
                    };
                    table.apply(ip, lease, event.kv.mod_revision);
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => rebuild(&index),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

impl Leases {
    pub(super) fn start(
        store: SharedStore,
        member_id: String,
        ttl: Duration,
        pools: &[Pool],
        stop: CancellationToken,
    ) -> Self {
        let cache = SnapshotCache::start(store.clone(), PREFIX, stop.clone());
        let (tx, leader) = watch::channel(None);
        let election = Election::new(store.clone(), "dhcp-responder");
        let id = member_id.clone();
        tokio::spawn(async move {
            let mut term = 0;
            while !stop.is_cancelled() {
                match Leadership::acquire(&election, id.clone().into_bytes(), ttl, &stop).await {
                    Ok(Some(mut leadership)) => {
                        tracing::info!("acting DHCP leader");
                        term += 1;
                        let token = LeaderToken {
                            guard: leadership.guard(),
                            acting: leadership.acting_updates(),
                            deadline: leadership.deadline_updates(),
                            term,
                        };
                        tx.send_replace(Some(Arc::new(token)));
                        tokio::select! {
                            () = leadership.lost() => tracing::warn!("DHCP leadership lost; standing by"),
                            () = stop.cancelled() => {
                                tx.send_replace(None);
                                let _ = leadership.resign().await;
                                return;
                            }
                        }
                        tx.send_replace(None);
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "DHCP election unavailable; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        let (writes, queue) = mpsc::channel(1024);
        tokio::spawn(write_batches(store.clone(), leader.clone(), queue));
        let index = Arc::new(std::sync::Mutex::new(LeaseTable::new(pools)));
        tokio::spawn(maintain_index(cache.clone(), Arc::clone(&index)));
        Self { store, member_id, leader, writes, index, cache }
    }

    /// Whether this replica acts as the DHCP leader now.
    #[cfg(test)]
    pub(super) fn acts_as_leader(&self) -> bool {
        self.acting_guard().is_some()
    }

    /// Whether the watched copy is all this replica has (the store is
    /// unreachable).
    #[cfg(test)]
    pub(super) fn offline(&self) -> bool {
        self.cache.status() == CacheStatus::Degraded
    }

    /// The fencing compare, while this replica is the acting leader.
    fn acting_guard(&self) -> Option<Compare> {
        let token = self.leader.borrow().clone()?;
        let acting = *token.acting.borrow();
        acting.then(|| token.guard.clone())
    }

    /// The lease of `ip` as the store holds it, and its revision (0: none).
    async fn read(&self, ip: Ipv4Addr) -> StoreResult<(Option<LeaseEntry>, i64)> {
        let kv = self.store.get(&key(ip)).await?;
        Ok((kv.as_ref().and_then(entry).map(|(_, e)| e), kv.as_ref().map_or(0, |kv| kv.mod_revision)))
    }

    /// Writes (or with `None` deletes) the lease of `ip` if its revision is
    /// still `revision` (0: absent). Returns the lease's new revision if it
    /// committed; the index then holds the write at once, not when the
    /// watch delivers it, so a request that follows right away (a REQUEST
    /// after its OFFER, one after a RELEASE) compares against it.
    async fn write(
        &self,
        ip: Ipv4Addr,
        lease: Option<(String, LeaseState, i64, String)>,
        revision: i64,
    ) -> StoreResult<Option<i64>> {
        // Only the acting leader queues writes; the batch writer checks the
        // guard again, atomically, inside the transaction.
        if self.acting_guard().is_none() {
            return Ok(None);
        }
        let entry = lease.as_ref().map(|(mac, state, expires, _)| LeaseEntry {
            mac: mac.clone(),
            state: *state,
            expires_unix_ms: *expires,
        });
        let op = match lease {
            Some((mac, state, expires, hostname)) => {
                let state = match state {
                    LeaseState::Offered => pb::lease::State::Offered,
                    LeaseState::Bound => pb::lease::State::Bound,
                    LeaseState::Declined => pb::lease::State::Declined,
                };
                let record = pb::Lease {
                    ip: ip.to_string(),
                    mac,
                    state: state.into(),
                    expires_unix_ms: expires,
                    hostname,
                    member_id: self.member_id.clone(),
                };
                TxnOp::put(key(ip), record.encode_to_vec())
            }
            None => TxnOp::delete(key(ip)),
        };
        let term = self.acting_term();
        let writing = WriteInFlight::begin(self, ip);
        let written = self.queue(ip, Some(op), revision).await;
        // Ended, applied and verified under one lock: nothing may see the
        // write ended but not yet applied.
        let (mut table, ticket) = writing.end();
        if let Ok(Some(written)) = written {
            table.apply(ip, entry.clone(), written);
            if let (Some(term), Some(entry)) = (term, &entry) {
                table.verify(ip, entry, written, term, ticket);
            }
        }
        written
    }

    /// This replica's leadership term while it acts as leader by flag and
    /// by clock.
    fn acting_term(&self) -> Option<u64> {
        self.leader.borrow().as_ref()?.acting_term()
    }

    /// Whether the index entry of `ip` at `revision` is known to be what
    /// the store holds without asking it: this leader committed or
    /// confirmed it in the term that is still acting, and no write to it
    /// is on its way (see [`LeaseTable::verify`]).
    fn verified(&self, ip: Ipv4Addr, revision: i64) -> bool {
        self.acting_term().is_some_and(|term| self.table().is_verified(ip, revision, term))
    }

    /// The lease index.
    fn table(&self) -> std::sync::MutexGuard<'_, LeaseTable> {
        self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the lease of `ip` is still at `revision` and this replica
    /// still leads, confirmed by a transaction batched with the writes. It
    /// writes nothing: a batch of confirmations alone waits for no disk and
    /// no raft entry (a batch with writes in it commits them first).
    async fn confirm(&self, ip: Ipv4Addr, lease: &LeaseEntry, revision: i64) -> StoreResult<bool> {
        let Some(term) = self.acting_term() else {
            return Ok(false);
        };
        let ticket = self.table().writes_begun(ip);
        let confirmed = self.queue(ip, None, revision).await?.is_some();
        if confirmed {
            self.table().verify(ip, lease, revision, term, ticket);
        }
        Ok(confirmed)
    }

    async fn queue(&self, ip: Ipv4Addr, op: Option<TxnOp>, revision: i64) -> StoreResult<Option<i64>> {
        let (done, result) = oneshot::channel();
        if self.writes.send(WriteJob { ip, op, revision, done }).await.is_err() {
            return Ok(None);
        }
        result.await.unwrap_or(Ok(None))
    }
}

/// A lease write on its way, marked in the index until it ends however it
/// ends (committed, failed, or its request dropped).
struct WriteInFlight<'a> {
    leases: &'a Leases,
    ip: Ipv4Addr,
    ticket: u64,
    ended: bool,
}

impl<'a> WriteInFlight<'a> {
    fn begin(leases: &'a Leases, ip: Ipv4Addr) -> Self {
        let ticket = leases.table().begin_write(ip);
        Self { leases, ip, ticket, ended: false }
    }

    /// Ends the write; returns the locked index, to apply its outcome
    /// before anyone else looks, and its ticket for [`LeaseTable::verify`].
    fn end(mut self) -> (std::sync::MutexGuard<'a, LeaseTable>, u64) {
        let mut table = self.leases.table();
        table.end_write(self.ip);
        self.ended = true;
        (table, self.ticket)
    }
}

impl Drop for WriteInFlight<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.leases.table().end_write(self.ip);
        }
    }
}

fn reply(kind: ReplyType, yiaddr: Ipv4Addr, request: &Request, ctx: &ProxyContext) -> Reply {
    let mut options = vec![(53, vec![kind.code()]), (54, ctx.server_ip.octets().to_vec())];
    if let Some(relay) = request.option(82) {
        options.push((82, relay.to_vec()));
    }
    Reply { kind, yiaddr, file: String::new(), next_server: Ipv4Addr::UNSPECIFIED, options }
}

/// Adds the pool and boot parts to an OFFER/ACK.
fn complete(
    mut r: Reply,
    request: &Request,
    client: &Client,
    ctx: &ProxyContext,
    pool: &Pool,
    lease_secs: Option<u32>,
) -> Reply {
    r.options.extend(pool.options_for(lease_secs));
    if client.loader != Loader::None {
        if let Ok(boot) = boot_parts(request, client, ctx) {
            r.file = boot.file;
            r.next_server = boot.next_server;
            r.options.extend(boot.options);
        }
        if client.loader == Loader::Ipxe {
            // iPXE: this answer is complete; do not wait for a proxyDHCP.
            r.options.push((175, vec![176, 1, 1]));
        }
    }
    r
}

fn pool_lease_secs(pool: &Pool) -> Option<u32> {
    Some(u32::try_from(pool.lease_time.as_secs()).unwrap_or(u32::MAX))
}

fn lease_secs(expires_unix_ms: i64, now_ms: i64) -> Option<u32> {
    Some(u32::try_from(expires_unix_ms.saturating_sub(now_ms) / 1000).unwrap_or(u32::MAX))
}

/// Offline mode: the store is unreachable, so this replica cannot lead or
/// write. A host whose bound lease is in the watched copy gets that same
/// address again, for no longer than [`offline_lease_secs`] allows; nothing
/// new is allocated. Any replica may answer so, however stale its copy:
/// see [`offline_lease_secs`] for why that never gives one address to two
/// clients.
fn answer_offline(
    request: &Request,
    client: &Client,
    ctx: &ProxyContext,
    pool: &Pool,
    leases: &Leases,
) -> Option<Reply> {
    if leases.cache.status() != CacheStatus::Degraded {
        return None; // the store is fine: a standby stays silent
    }
    let mac = request.mac_text();
    let now = now_ms();
    let (ip, expires) = leases.table().bound_lease(&mac, now)?;
    if !pool.on_subnet(ip) {
        return None; // the host moved: its old address is no good here
    }
    let left = offline_lease_secs(expires, now)?;
    let kind = match request.message_type {
        MessageType::Discover => ReplyType::Offer,
        MessageType::Request => {
            let asked =
                request.requested_ip().or((!request.ciaddr.is_unspecified()).then_some(request.ciaddr));
            if asked != Some(ip) || request.server_id().is_some_and(|id| id != ctx.server_ip) {
                return None;
            }
            ReplyType::Ack
        }
        _ => return None,
    };
    tracing::info!(%mac, %ip, seconds_left = left, "store unreachable: answering from the watched lease (offline)");
    let r = reply(kind, ip, request, ctx);
    Some(complete(r, request, client, ctx, pool, Some(left)))
}

/// Answers one full-DHCP request (`None`: stay silent).
pub(super) async fn answer(
    request: &Request,
    client: &Client,
    ctx: &ProxyContext,
    pools: &[Pool],
    reservations: &Reservations,
    lease_reuse: f64,
    leases: &Leases,
) -> Option<Reply> {
    match ctx.verdict {
        Verdict::Boot => {}
        Verdict::Unknown if ctx.boot_unknown => {}
        // Bootfleet never answers machines it was not told about.
        Verdict::Unknown | Verdict::Ignore => return None,
    }
    let pool = pick_pool(pools, request.giaddr, ctx.server_ip)?;
    // A standby stays silent: the leader answers (offline, the watched
    // leases answer for known hosts).
    if leases.acting_guard().is_none() {
        return answer_offline(request, client, ctx, pool, leases);
    }
    let mac = request.mac_text();
    let hostname = request.text(12).unwrap_or_default();
    let now = now_ms();
    let result: StoreResult<Option<Reply>> = async {
        match request.message_type {
            MessageType::Discover => {
                let offer_ends = now.saturating_add(millis(OFFER_HOLD));
                for attempt in 0..3 {
                    let chosen = {
                        let mut table = leases.table();
                        table.offer(pool, &mac, reservations, now).map(|ip| {
                            let current = table.get(ip).cloned();
                            let bound = current.as_ref().is_some_and(|(e, _)| {
                                e.mac == mac && e.state == LeaseState::Bound && e.expires_unix_ms > now
                            });
                            let expires = held_until(current.as_ref().map(|(e, _)| e), &mac, offer_ends, now);
                            let revision = current.map_or(0, |(_, r)| r);
                            if !bound {
                                // Provisional, so concurrent offers pick other addresses.
                                let offered = LeaseEntry { mac: mac.clone(), state: LeaseState::Offered, expires_unix_ms: expires };
                                table.apply(ip, Some(offered), revision);
                            }
                            (ip, revision, bound, expires)
                        })
                    };
                    let Some((ip, revision, bound, expires)) = chosen else {
                        tracing::warn!(%mac, "pool exhausted");
                        return Ok(None);
                    };
                    let held = bound || {
                        let offered = Some((mac.clone(), LeaseState::Offered, expires, hostname.clone()));
                        leases.write(ip, offered, revision).await?.is_some()
                    };
                    if held {
                        let r = reply(ReplyType::Offer, ip, request, ctx);
                        return Ok(Some(complete(r, request, client, ctx, pool, pool_lease_secs(pool))));
                    }
                    tracing::debug!(%mac, %ip, attempt, "offer raced another write; reading that lease again");
                    let (fresh, revision) = leases.read(ip).await?;
                    leases.table().replace(ip, fresh, revision);
                }
                Ok(None)
            }
            MessageType::Request => {
                if request.server_id().is_some_and(|id| id != ctx.server_ip) {
                    return Ok(None); // the client chose another server
                }
                let Some(ip) = request.requested_ip().or((!request.ciaddr.is_unspecified()).then_some(request.ciaddr)) else {
                    return Ok(None);
                };
                let lease_ends = now.saturating_add(millis(pool.lease_time));
                // First from the index (no store read); the write compares
                // the revision, so a stale index costs one failed write and
                // then a read of the store, never a wrong ACK.
                let indexed = leases.table().get(ip).cloned();
                let (mut current, mut revision) = indexed.map_or((None, 0), |(e, r)| (Some(e), r));
                // Got or renewed moments ago (the OS asking again after
                // iPXE did): stored already, so acknowledged as it stands —
                // once it is known that the store still holds it at the
                // indexed revision and that this replica still leads. The
                // index may lag the store, or hold what a late watch event
                // brought back, so that takes a guarded transaction, unless
                // this leader itself wrote or confirmed the lease in its
                // current term: then no one else can have changed it.
                let reusable = reusable_lease(current.as_ref(), &mac, pool.lease_time, lease_reuse, now)
                    .filter(|_| may_hold(pool, &mac, ip, current.as_ref(), reservations, now));
                if let (Some(secs), Some(indexed)) = (reusable, current.as_ref()) {
                    if leases.verified(ip, revision) || leases.confirm(ip, indexed, revision).await? {
                        LEASES_REUSED.inc();
                        let r = reply(ReplyType::Ack, ip, request, ctx);
                        return Ok(Some(complete(r, request, client, ctx, pool, Some(secs))));
                    }
                    // Not as indexed: written as usual, from a fresh read.
                    (current, revision) = leases.read(ip).await?;
                }
                let mut written = None;
                let mut expires = lease_ends;
                for attempt in 0..2 {
                    if attempt > 0 {
                        (current, revision) = leases.read(ip).await?;
                    }
                    if !may_hold(pool, &mac, ip, current.as_ref(), reservations, now) {
                        if attempt == 0 {
                            // The index may hold an offer that never
                            // committed: refuse only on what the store says.
                            continue;
                        }
                        tracing::info!(%mac, %ip, "request refused (NAK)");
                        return Ok(Some(reply(ReplyType::Nak, Ipv4Addr::UNSPECIFIED, request, ctx)));
                    }
                    // Stored before it is acknowledged; never ending sooner
                    // than the lease it renews.
                    expires = held_until(current.as_ref(), &mac, lease_ends, now);
                    let bound = Some((mac.clone(), LeaseState::Bound, expires, hostname.clone()));
                    written = leases.write(ip, bound, revision).await?;
                    if written.is_some() {
                        break;
                    }
                }
                if written.is_none() {
                    return Ok(None);
                }
                let r = reply(ReplyType::Ack, ip, request, ctx);
                Ok(Some(complete(r, request, client, ctx, pool, lease_secs(expires, now))))
            }
            MessageType::Release => {
                let ip = request.ciaddr;
                let (current, revision) = leases.read(ip).await?;
                if current.as_ref().is_none_or(|l| l.mac != mac) {
                    return Ok(None); // not the sender's to release
                }
                // Held for the client until its lease would have ended
                // (see `released`), or deleted if it has ended.
                let record = released(current.as_ref(), &mac, now)
                    .map(|held| (mac.clone(), held.state, held.expires_unix_ms, hostname.clone()));
                if leases.write(ip, record, revision).await?.is_some() {
                    tracing::info!(%mac, %ip, "released");
                }
                Ok(None)
            }
            MessageType::Decline => {
                let Some(ip) = request.requested_ip() else { return Ok(None) };
                let (current, revision) = leases.read(ip).await?;
                let Some(entry) = declined(pool, &mac, ip, current.as_ref(), reservations, now) else {
                    tracing::info!(%mac, %ip, "DECLINE ignored: not an address this client holds in its pool");
                    return Ok(None);
                };
                let record = Some((mac.clone(), LeaseState::Declined, entry.expires_unix_ms, String::new()));
                if leases.write(ip, record, revision).await?.is_some() {
                    tracing::warn!(%mac, %ip, "address declined (in use elsewhere?)");
                }
                Ok(None)
            }
            MessageType::Inform => {
                let r = reply(ReplyType::Ack, Ipv4Addr::UNSPECIFIED, request, ctx);
                Ok(Some(complete(r, request, client, ctx, pool, None)))
            }
        }
    }
    .await;
    match result {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(%mac, error = %e, "lease store unavailable; not answering");
            None
        }
    }
}
