//! Full mode as a state machine: events in, actions out, no I/O.
//!
//! The shell feeds it each request (with the rules' verdict and where this
//! replica stands: leader of some term, standby, or cut off from the
//! store), the outcome of every store operation it asked for, the lease
//! changes the watch brings, and the time. It answers with what to do:
//! send this reply, finish silently (and why), write this lease (a
//! compare-and-swap on the lease's revision, fenced by the leader's
//! election key), confirm that a lease still stands (the same compares,
//! nothing written), or read one lease from the store. A request has at
//! most one operation outstanding; its next step comes with that
//! operation's outcome.
//!
//! What the machine guarantees whatever order events come in (checked by
//! `fuzz_logic::cluster`): an ACK stands on a lease that was committed, or
//! confirmed, bound to that client for at least as long as the ACK says;
//! and with the leader's fencing and [`super::offline_lease_secs`], no
//! address is ACKed to two clients for overlapping times.
//!
//! Time only moves forward here: a clock that jumps back is held at the
//! latest time seen, so a lease never seems to last longer than it did.

use std::collections::HashMap;
use std::net::Ipv4Addr;

mod events;

pub use events::{
    Action, Event, FullConfig, LeaseRecord, OpId, Quiet, RequestId, Standing, StoreUnavailable,
};

use super::reply::{complete, reply};
use super::{
    LeaseEntry, LeaseState, LeaseTable, OFFER_HOLD, Pool, declined, held_until, lease_end, may_hold, millis,
    offline_lease_secs, pick_pool, released, reusable_lease,
};
use crate::client::Client;
use crate::proxy::{ProxyContext, Reply, ReplyType, Verdict};
use crate::shares::Place;
use crate::wire::{MessageType, Request, code};

/// A request waiting for a store operation.
#[derive(Debug)]
struct Pending {
    request: Request,
    client: Client,
    boot: ProxyContext,
    pool: usize,
    mac: String,
    term: u64,
    /// Load-balancing: this member's place, for its slice of the pool.
    /// `None`: hot standby, where the leader's term is the only writer.
    place: Option<Place>,
}

/// A store operation on its way, and what to do with its outcome.
#[derive(Debug)]
struct Op {
    id: RequestId,
    ip: Ipv4Addr,
    kind: OpKind,
    then: Then,
}

#[derive(Debug)]
enum OpKind {
    /// `ticket` from [`LeaseTable::begin_write`].
    Write {
        entry: Option<LeaseEntry>,
        ticket: u64,
    },
    /// `ticket` from [`LeaseTable::writes_begun`].
    Confirm {
        entry: LeaseEntry,
        revision: i64,
        ticket: u64,
    },
    Read,
}

/// The step a request takes with an operation's outcome.
#[derive(Clone, Copy, Debug)]
enum Then {
    /// An offer's write: OFFER, or read again and retry.
    Offered { attempt: u8 },
    /// The read after an offer's write failed: retry the offer.
    OfferRetry { attempt: u8 },
    /// A reused lease's confirmation: ACK it for the time it has left
    /// when the confirmation comes back (not when it was sent), or bind
    /// afresh.
    Reused { expires: i64 },
    /// A read before binding.
    Bind { attempt: u8 },
    /// A binding write: ACK for the lease until `expires`.
    Bound { attempt: u8, expires: i64 },
    /// The read of a lease being released.
    Release,
    /// The read of a lease being declined.
    Decline,
    /// The write recording a RELEASE or DECLINE.
    Recorded { why: Quiet },
}

/// Attempts at an offer before giving up (each after a write lost a race).
const OFFER_ATTEMPTS: u8 = 3;

/// Full mode's decisions for one replica.
#[derive(Debug)]
pub struct FullMachine {
    config: FullConfig,
    table: LeaseTable,
    /// The latest time seen (Unix ms).
    now_ms: i64,
    pending: HashMap<RequestId, Pending>,
    ops: HashMap<OpId, Op>,
    next_op: u64,
}

impl FullMachine {
    /// A machine knowing no lease yet.
    pub fn new(config: FullConfig) -> Self {
        let table = LeaseTable::new(&config.pools);
        Self { config, table, now_ms: i64::MIN, pending: HashMap::new(), ops: HashMap::new(), next_op: 0 }
    }

    /// The leases as this replica knows them.
    pub fn table(&self) -> &LeaseTable {
        &self.table
    }

    /// The machine's time: the latest it was given.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// Requests waiting for a store operation.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Handles one event at `now_ms` (Unix ms; held at the latest seen).
    pub fn handle(&mut self, event: Event<'_>, now_ms: i64) -> Vec<Action> {
        self.now_ms = self.now_ms.max(now_ms);
        match event {
            Event::Request { id, request, client, boot, standing } => {
                vec![self.on_request(id, request, client, boot, standing)]
            }
            Event::Written { op, outcome } => self.on_written(op, outcome).into_iter().collect(),
            Event::Confirmed { op, outcome } => self.on_confirmed(op, outcome).into_iter().collect(),
            Event::Read { op, outcome } => self.on_read(op, outcome).into_iter().collect(),
            Event::Watched { ip, lease, revision } => {
                self.table.apply(ip, lease, revision);
                Vec::new()
            }
            Event::Reloaded { leases } => {
                self.table.reload(leases);
                Vec::new()
            }
            Event::Time => Vec::new(),
            Event::Abandoned { id } => {
                self.pending.remove(&id);
                let mine: Vec<OpId> =
                    self.ops.iter().filter(|(_, op)| op.id == id).map(|(k, _)| *k).collect();
                for key in mine {
                    if let Some(Op { ip, kind: OpKind::Write { .. }, .. }) = self.ops.remove(&key) {
                        self.table.end_write(ip);
                    }
                }
                Vec::new()
            }
        }
    }

    fn on_request(
        &mut self,
        id: RequestId,
        request: &Request,
        client: &Client,
        boot: &ProxyContext,
        standing: Standing,
    ) -> Action {
        let finish = |why| Action::Finish { id, why };
        match boot.verdict {
            Verdict::Boot => {}
            Verdict::Unknown if boot.boot_unknown => {}
            // Bootfleet never answers machines it was not told about.
            Verdict::Unknown | Verdict::Ignore => return finish(Quiet::NotBooted),
        }
        let Some(pool) = pick_pool(&self.config.pools, request.giaddr, boot.server_ip)
            .and_then(|p| self.config.pools.iter().position(|q| q == p))
        else {
            return finish(Quiet::NoPool);
        };
        let (term, place) = match standing {
            Standing::Leader { term } => (term, None),
            Standing::Member { term, owner, place } => {
                if !owner && !addressed_here(request, boot.server_ip) {
                    return finish(Quiet::NotOwner);
                }
                (term, Some(place))
            }
            Standing::Standby => return finish(Quiet::Standby),
            Standing::Offline => {
                return match self.offline_answer(request, client, boot, pool) {
                    Some(reply) => Action::Send { id, reply, reused: false },
                    None => finish(Quiet::UnknownOffline),
                };
            }
        };
        let mac = request.mac_text();
        let pending = |mac| Pending {
            request: request.clone(),
            client: client.clone(),
            boot: boot.clone(),
            pool,
            mac,
            term,
            place,
        };
        match request.message_type {
            MessageType::Discover => self.offer(id, pending(mac), 0),
            MessageType::Request => {
                if request.server_id().is_some_and(|server| server != boot.server_ip) {
                    return finish(Quiet::OtherServer);
                }
                let Some(ip) = asked_address(request) else { return finish(Quiet::NoAddress) };
                self.request(id, pending(mac), ip)
            }
            MessageType::Release => self.read(id, pending(mac), request.ciaddr, Then::Release),
            MessageType::Decline => match request.requested_ip() {
                Some(ip) => self.read(id, pending(mac), ip, Then::Decline),
                None => finish(Quiet::NoAddress),
            },
            MessageType::Inform => {
                let pool = &self.config.pools[pool];
                let reply = complete(
                    reply(ReplyType::Ack, Ipv4Addr::UNSPECIFIED, request, boot),
                    request,
                    client,
                    boot,
                    pool,
                    None,
                );
                Action::Send { id, reply, reused: false }
            }
        }
    }

    /// Offline: the same address again for a host whose bound lease is in
    /// the copy, for no longer than [`offline_lease_secs`] allows.
    fn offline_answer(
        &self,
        request: &Request,
        client: &Client,
        boot: &ProxyContext,
        pool: usize,
    ) -> Option<Reply> {
        let pool = &self.config.pools[pool];
        let (ip, expires) = self.table.bound_lease(&request.mac_text(), self.now_ms)?;
        if !pool.on_subnet(ip) {
            return None; // the host moved: its old address is no good here
        }
        let secs = offline_lease_secs(expires, self.now_ms)?;
        let kind = match request.message_type {
            MessageType::Discover => ReplyType::Offer,
            MessageType::Request => {
                let other_server = request.server_id().is_some_and(|server| server != boot.server_ip);
                if asked_address(request) != Some(ip) || other_server {
                    return None;
                }
                ReplyType::Ack
            }
            _ => return None,
        };
        Some(complete(reply(kind, ip, request, boot), request, client, boot, pool, Some(secs)))
    }

    /// DISCOVER: the address [`LeaseTable::offer`] picks, held for the
    /// client by a write before it is offered (unless the client holds it
    /// bound already).
    fn offer(&mut self, id: RequestId, pending: Pending, attempt: u8) -> Action {
        let pool = &self.config.pools[pending.pool];
        let now = self.now_ms;
        let slice = pending.place.and_then(|place| place.slice(u32::from(pool.start), u32::from(pool.end)));
        let Some(ip) = self.table.offer(pool, &pending.mac, &self.config.reservations, now, slice) else {
            return Action::Finish { id, why: Quiet::PoolExhausted };
        };
        let current = self.table.get(ip).cloned();
        let current_lease = current.as_ref().map(|(l, _)| l);
        let bound = current_lease
            .is_some_and(|l| l.mac == pending.mac && l.state == LeaseState::Bound && l.expires_unix_ms > now);
        if bound {
            let reply = reply(ReplyType::Offer, ip, &pending.request, &pending.boot);
            let reply = complete(
                reply,
                &pending.request,
                &pending.client,
                &pending.boot,
                pool,
                Some(pool_secs(pool)),
            );
            return Action::Send { id, reply, reused: false };
        }
        let expires = held_until(current_lease, &pending.mac, now.saturating_add(millis(OFFER_HOLD)), now);
        let revision = current.as_ref().map_or(0, |(_, r)| *r);
        let offered =
            LeaseEntry { mac: pending.mac.clone(), state: LeaseState::Offered, expires_unix_ms: expires };
        // Provisional, so concurrent offers pick other addresses.
        self.table.apply(ip, Some(offered.clone()), revision);
        self.write(id, pending, ip, Some(offered), revision, Then::Offered { attempt })
    }

    /// REQUEST for `ip`: ACKed as the lease stands if it was got or renewed
    /// moments ago and is known to stand, else written bound first.
    fn request(&mut self, id: RequestId, pending: Pending, ip: Ipv4Addr) -> Action {
        let pool = &self.config.pools[pending.pool];
        let now = self.now_ms;
        // First from the index (no store read); a write compares the
        // revision, so a stale index costs one failed write and a read,
        // never a wrong ACK.
        let (current, revision) = match self.table.get(ip) {
            Some((lease, revision)) => (Some(lease.clone()), *revision),
            None => (None, 0),
        };
        // Got or renewed moments ago (the OS asking after iPXE did):
        // stored already, so ACKed as it stands — once it is known that the
        // store still holds it at that revision and that this replica
        // still leads. The index may lag the store, or hold what a late
        // watch event brought back, so that takes a confirmation, unless
        // this leader wrote or confirmed it in its current term.
        let reusable =
            reusable_lease(current.as_ref(), &pending.mac, pool.lease_time, self.config.lease_reuse, now)
                .filter(|_| {
                    may_hold(pool, &pending.mac, ip, current.as_ref(), &self.config.reservations, now)
                });
        if let (Some(secs), Some(lease)) = (reusable, current.clone()) {
            let expires = lease.expires_unix_ms;
            // Load-balancing: other members may write this lease too, but
            // only as its client's lease allows (a renewal lengthens it; a
            // RELEASE or DECLINE keeps the address from everyone else until
            // it would have ended; another client gets it only after it
            // ended), so an ACK within what this member committed stays
            // true whatever they did since — as an offline answer does.
            if self.table.is_verified(ip, revision, pending.term) {
                return Action::Send { id, reply: self.ack(&pending, ip, secs), reused: true };
            }
            let ticket = self.table.writes_begun(ip);
            let kind = OpKind::Confirm { entry: lease, revision, ticket };
            let op = self.op(id, ip, kind, Then::Reused { expires });
            self.pending.insert(id, pending);
            return Action::Confirm { op, id, ip, revision };
        }
        self.bind(id, pending, ip, 0, current, revision)
    }

    /// Writes `ip` bound to the client, if it may hold it; on the first
    /// attempt a refusal may come from an offer in the index that never
    /// committed, so the store is read before a NAK.
    fn bind(
        &mut self,
        id: RequestId,
        pending: Pending,
        ip: Ipv4Addr,
        attempt: u8,
        current: Option<LeaseEntry>,
        revision: i64,
    ) -> Action {
        let pool = &self.config.pools[pending.pool];
        let now = self.now_ms;
        if !may_hold(pool, &pending.mac, ip, current.as_ref(), &self.config.reservations, now) {
            if attempt == 0 {
                return self.read(id, pending, ip, Then::Bind { attempt: 1 });
            }
            let reply = reply(ReplyType::Nak, Ipv4Addr::UNSPECIFIED, &pending.request, &pending.boot);
            return Action::Send { id, reply, reused: false };
        }
        // Never ending sooner than the lease it renews.
        let expires = held_until(current.as_ref(), &pending.mac, lease_end(now, pool.lease_time), now);
        let bound =
            LeaseEntry { mac: pending.mac.clone(), state: LeaseState::Bound, expires_unix_ms: expires };
        self.write(id, pending, ip, Some(bound), revision, Then::Bound { attempt, expires })
    }

    fn ack(&self, pending: &Pending, ip: Ipv4Addr, secs: u32) -> Reply {
        let pool = &self.config.pools[pending.pool];
        let reply = reply(ReplyType::Ack, ip, &pending.request, &pending.boot);
        complete(reply, &pending.request, &pending.client, &pending.boot, pool, Some(secs))
    }

    fn op(&mut self, id: RequestId, ip: Ipv4Addr, kind: OpKind, then: Then) -> OpId {
        self.next_op += 1;
        let op = OpId(self.next_op);
        self.ops.insert(op, Op { id, ip, kind, then });
        op
    }

    fn write(
        &mut self,
        id: RequestId,
        pending: Pending,
        ip: Ipv4Addr,
        entry: Option<LeaseEntry>,
        revision: i64,
        then: Then,
    ) -> Action {
        let ticket = self.table.begin_write(ip);
        let hostname = pending.request.text(code::HOSTNAME).unwrap_or_default();
        let record = entry.clone().map(|lease| LeaseRecord { lease, hostname });
        let op = self.op(id, ip, OpKind::Write { entry, ticket }, then);
        self.pending.insert(id, pending);
        Action::Write { op, id, ip, record, revision }
    }

    fn read(&mut self, id: RequestId, pending: Pending, ip: Ipv4Addr, then: Then) -> Action {
        let op = self.op(id, ip, OpKind::Read, then);
        self.pending.insert(id, pending);
        Action::Read { op, id, ip }
    }

    /// The operation and its request, taken out (`None`: abandoned).
    fn take(&mut self, op: OpId) -> Option<(Op, Pending)> {
        let op = self.ops.remove(&op)?;
        let pending = self.pending.remove(&op.id)?;
        Some((op, pending))
    }

    fn on_written(&mut self, op: OpId, outcome: Result<Option<i64>, StoreUnavailable>) -> Option<Action> {
        let (op, pending) = self.take(op)?;
        let (id, ip, then) = (op.id, op.ip, op.then);
        let OpKind::Write { entry, ticket } = op.kind else {
            return Some(Action::Finish { id, why: Quiet::StoreUnavailable });
        };
        // Ended, applied and verified in one step: nothing may see the
        // write ended but not yet applied.
        self.table.end_write(ip);
        if let Ok(Some(revision)) = outcome {
            self.table.apply(ip, entry.clone(), revision);
            if let Some(entry) = &entry {
                self.table.verify(ip, entry, revision, pending.term, ticket);
            }
        }
        let Ok(committed) = outcome else {
            return Some(Action::Finish { id, why: Quiet::StoreUnavailable });
        };
        let committed = committed.is_some();
        Some(match then {
            Then::Offered { .. } if committed => {
                let pool = &self.config.pools[pending.pool];
                let reply = reply(ReplyType::Offer, ip, &pending.request, &pending.boot);
                let reply = complete(
                    reply,
                    &pending.request,
                    &pending.client,
                    &pending.boot,
                    pool,
                    Some(pool_secs(pool)),
                );
                Action::Send { id, reply, reused: false }
            }
            Then::Offered { attempt } => self.read(id, pending, ip, Then::OfferRetry { attempt }),
            Then::Bound { expires, .. } if committed => {
                // The lease as written, less the time the write took: a
                // write slower than the lease leaves nothing to ACK.
                match u32::try_from(expires.saturating_sub(self.now_ms) / 1000) {
                    Ok(secs) if secs > 0 => {
                        Action::Send { id, reply: self.ack(&pending, ip, secs), reused: false }
                    }
                    _ => Action::Finish { id, why: Quiet::TooLate },
                }
            }
            Then::Bound { attempt: 0, .. } => self.read(id, pending, ip, Then::Bind { attempt: 1 }),
            Then::Recorded { why } if committed => Action::Finish { id, why },
            _ => Action::Finish { id, why: Quiet::LostRace },
        })
    }

    fn on_confirmed(&mut self, op: OpId, outcome: Result<bool, StoreUnavailable>) -> Option<Action> {
        let (op, pending) = self.take(op)?;
        let (id, ip) = (op.id, op.ip);
        let (OpKind::Confirm { entry, revision, ticket }, Then::Reused { expires }, Ok(confirmed)) =
            (op.kind, op.then, outcome)
        else {
            return Some(Action::Finish { id, why: Quiet::StoreUnavailable });
        };
        let secs = u32::try_from(expires.saturating_sub(self.now_ms) / 1000).unwrap_or(0);
        if confirmed {
            self.table.verify(ip, &entry, revision, pending.term, ticket);
        }
        if confirmed && secs > 0 {
            return Some(Action::Send { id, reply: self.ack(&pending, ip, secs), reused: true });
        }
        if confirmed {
            return Some(Action::Finish { id, why: Quiet::TooLate });
        }
        // Not as indexed: bound afresh, from a read of the store.
        Some(self.read(id, pending, ip, Then::Bind { attempt: 0 }))
    }

    fn on_read(
        &mut self,
        op: OpId,
        outcome: Result<(Option<LeaseEntry>, i64), StoreUnavailable>,
    ) -> Option<Action> {
        let (op, pending) = self.take(op)?;
        let Ok((current, revision)) = outcome else {
            return Some(Action::Finish { id: op.id, why: Quiet::StoreUnavailable });
        };
        let (id, ip) = (op.id, op.ip);
        let now = self.now_ms;
        Some(match op.then {
            Then::OfferRetry { attempt } => {
                self.table.replace(ip, current, revision);
                if attempt + 1 >= OFFER_ATTEMPTS {
                    return Some(Action::Finish { id, why: Quiet::LostRace });
                }
                self.offer(id, pending, attempt + 1)
            }
            Then::Bind { attempt } => self.bind(id, pending, ip, attempt, current, revision),
            Then::Release => {
                if current.as_ref().is_none_or(|l| l.mac != pending.mac) {
                    return Some(Action::Finish { id, why: Quiet::NotHeld });
                }
                // Held for the client until its lease would have ended
                // (see `released`), or deleted if it has ended.
                let held = released(current.as_ref(), &pending.mac, now);
                self.write(id, pending, ip, held, revision, Then::Recorded { why: Quiet::Released })
            }
            Then::Decline => {
                let pool = &self.config.pools[pending.pool];
                let reservations = &self.config.reservations;
                match declined(pool, &pending.mac, ip, current.as_ref(), reservations, now) {
                    Some(entry) => self.write(
                        id,
                        pending,
                        ip,
                        Some(entry),
                        revision,
                        Then::Recorded { why: Quiet::Declined },
                    ),
                    None => Action::Finish { id, why: Quiet::NotHeld },
                }
            }
            _ => Action::Finish { id, why: Quiet::StoreUnavailable },
        })
    }
}

/// Whether the client addressed this replica itself, so that it answers
/// even when another member owns the client (load-balancing): a message
/// naming it as the server (a REQUEST after its OFFER, a RELEASE), or an
/// unrelayed one from a client with an address and naming no server — a
/// RENEWING REQUEST (unicast to the server of the client's last ACK,
/// which only that replica receives), a REBINDING one (broadcast: every
/// replica on the link answers it, each renewal a compare-and-swap on the
/// same lease), an INFORM. Without this, a client whose owner changed
/// while it held a lease would not be renewed until it rebinds.
pub fn addressed_here(request: &Request, server_ip: Ipv4Addr) -> bool {
    match request.server_id() {
        Some(server) => server == server_ip,
        None => {
            request.giaddr.is_unspecified()
                && !request.ciaddr.is_unspecified()
                && matches!(
                    request.message_type,
                    MessageType::Request | MessageType::Release | MessageType::Inform
                )
        }
    }
}

/// The address a REQUEST asks for: option 50, else `ciaddr` (renewing).
fn asked_address(request: &Request) -> Option<Ipv4Addr> {
    request.requested_ip().or((!request.ciaddr.is_unspecified()).then_some(request.ciaddr))
}

fn pool_secs(pool: &Pool) -> u32 {
    u32::try_from(pool.lease_time.as_secs()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
