//! What goes into full mode's machine and what comes out of it.

use std::net::Ipv4Addr;

use super::super::{LeaseEntry, Pool, Reservations};
use crate::client::Client;
use crate::proxy::{ProxyContext, Reply};
use crate::shares::Place;
use crate::wire::Request;

/// Full-mode settings.
#[derive(Clone, Debug, Default)]
pub struct FullConfig {
    /// Pools, one per subnet.
    pub pools: Vec<Pool>,
    /// Fixed addresses by MAC.
    pub reservations: Reservations,
    /// Fraction of the lease time within which a lease is ACKed again as
    /// it stands (see [`super::reusable_lease`]).
    pub lease_reuse: f64,
}

/// A request, numbered by the shell.
pub type RequestId = u64;

/// One store operation the machine asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpId(pub(super) u64);

/// A lease as written to the store: the allocator's view, plus the host
/// name the client gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Holder, state and end.
    pub lease: LeaseEntry,
    /// Option 12 of the request that wrote it.
    pub hostname: String,
}

/// Where this replica stands when a request arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// The acting leader of this term, by the election and by its clock.
    Leader {
        /// This replica's count of its leaderships.
        term: u64,
    },
    /// A live member in load-balancing mode (`dhcp.ha =
    /// "load-balancing"`), its writes fenced by its membership.
    Member {
        /// Its membership (the member record's creation revision): index
        /// entries are verified per membership.
        term: u64,
        /// Whether the shares give it this request's client.
        owner: bool,
        /// Its place among the live members, for its slice of the pool.
        place: Place,
    },
    /// Not leading (or, load-balancing, not a live member), the store
    /// reachable: stay silent.
    Standby,
    /// The store unreachable: answer known hosts from the watched copy.
    Offline,
}

/// The store could not be asked (or did not say whether it committed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("lease store unavailable")]
pub struct StoreUnavailable;

/// Something that happened.
#[derive(Clone, Debug)]
pub enum Event<'a> {
    /// A request to answer.
    Request {
        /// Its number (the shell's; unique among those in flight).
        id: RequestId,
        /// The request.
        request: &'a Request,
        /// What kind of client sent it.
        client: &'a Client,
        /// The boot answer's inputs, and the rules' verdict.
        boot: &'a ProxyContext,
        /// This replica's standing now.
        standing: Standing,
    },
    /// A [`Action::Write`] ended: committed at this revision, not
    /// committed (a compare failed), or unknown.
    Written {
        /// The operation.
        op: OpId,
        /// Its outcome.
        outcome: Result<Option<i64>, StoreUnavailable>,
    },
    /// A [`Action::Confirm`] ended: whether the lease and the leadership
    /// still stand.
    Confirmed {
        /// The operation.
        op: OpId,
        /// Its outcome.
        outcome: Result<bool, StoreUnavailable>,
    },
    /// A [`Action::Read`] ended: the lease (if any) and its revision (0:
    /// none).
    Read {
        /// The operation.
        op: OpId,
        /// Its outcome.
        outcome: Result<(Option<LeaseEntry>, i64), StoreUnavailable>,
    },
    /// The watch saw the lease of `ip` change (`None`: deleted).
    Watched {
        /// The address.
        ip: Ipv4Addr,
        /// The lease now.
        lease: Option<LeaseEntry>,
        /// Its revision.
        revision: i64,
    },
    /// A fresh copy of every lease (start, or the watch fell behind).
    Reloaded {
        /// Address, lease, revision.
        leases: Vec<(Ipv4Addr, LeaseEntry, i64)>,
    },
    /// Time passed, and nothing else happened. Every other event carries
    /// the time too; this one keeps an idle replica's clock with the rest
    /// (the fuzz cluster sends it to every replica when its clock moves:
    /// replicas must agree on the time within a few seconds).
    Time,
    /// The shell gave up on a request (its operations' outcomes will not
    /// come).
    Abandoned {
        /// The request.
        id: RequestId,
    },
}

/// Something to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send this reply; the request is done.
    Send {
        /// The request.
        id: RequestId,
        /// The reply.
        reply: Reply,
        /// ACKed as the lease stood, without a write.
        reused: bool,
    },
    /// Nothing to send; the request is done.
    Finish {
        /// The request.
        id: RequestId,
        /// Why.
        why: Quiet,
    },
    /// Write (or with `None` delete) the lease of `ip` if its revision is
    /// still `revision` (0: absent) and this replica still leads; report
    /// with [`Event::Written`].
    Write {
        /// The operation.
        op: OpId,
        /// The request it serves.
        id: RequestId,
        /// The address.
        ip: Ipv4Addr,
        /// The lease to write.
        record: Option<LeaseRecord>,
        /// The revision it must still have.
        revision: i64,
    },
    /// Check, with the same compares as a write and writing nothing, that
    /// the lease of `ip` is still at `revision` and this replica still
    /// leads; report with [`Event::Confirmed`].
    Confirm {
        /// The operation.
        op: OpId,
        /// The request it serves.
        id: RequestId,
        /// The address.
        ip: Ipv4Addr,
        /// The revision.
        revision: i64,
    },
    /// Read the lease of `ip`; report with [`Event::Read`].
    Read {
        /// The operation.
        op: OpId,
        /// The request it serves.
        id: RequestId,
        /// The address.
        ip: Ipv4Addr,
    },
}

/// Why a request got no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Quiet {
    /// The rules do not boot this host.
    NotBooted,
    /// No pool serves the request's subnet.
    NoPool,
    /// Another replica leads (or, load-balancing, this one is not a live
    /// member).
    Standby,
    /// Load-balancing: another member owns the client, and the client did
    /// not address this replica.
    NotOwner,
    /// Offline, and the copy holds no lease to give this host again.
    UnknownOffline,
    /// The client chose another server.
    OtherServer,
    /// A REQUEST or DECLINE naming no address.
    NoAddress,
    /// Every address in the pool is taken.
    PoolExhausted,
    /// The lease changed under every attempt (or leadership was lost).
    LostRace,
    /// The store could not be asked.
    StoreUnavailable,
    /// The lease the store confirmed had ended by the time it said so.
    TooLate,
    /// A RELEASE or DECLINE of an address the sender does not hold.
    NotHeld,
    /// A RELEASE was recorded.
    Released,
    /// A DECLINE was recorded.
    Declined,
}
