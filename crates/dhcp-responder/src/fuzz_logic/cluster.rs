//! Full mode's machine in a simulated cluster, driven by arbitrary bytes.
//!
//! Three replicas, each a [`FullMachine`], share one simulated store that
//! does what etcd does for them: compare-and-swap writes fenced by the
//! leader's election key, confirmations with the same compares, reads,
//! and a watch per replica. The bytes choose what happens next, in any
//! order: a client sends a request to a replica; one of a replica's store
//! operations runs (now, or late, after its leadership ended — the store's
//! fence refuses it), fails, or commits without its writer learning so;
//! a replica sees a watch event (any queued one, so out of order, or again)
//! or reloads from a copy of the store as it was at some past revision; the
//! leader is deposed or another elected; a replica is cut off from the
//! store (it then answers from its copy); the clock moves, far, or back.
//!
//! Elections keep one promise the real election keeps by its clock: a
//! replica is elected only when no replica still acts as leader.
//!
//! [`balanced_interleaving`] runs the same cluster in load-balancing mode
//! instead: no election; each replica joins the membership (the store
//! records its membership at a revision), and writes are fenced by it. A
//! membership lapses in the store while its replica may still believe in
//! it (its late writes are refused), and each replica sees the members
//! only when it looks again, so replicas disagree about who owns which
//! client for a while — two may answer one client, or none. Each replica
//! has its own server address; clients sometimes name another's.
//!
//! Every ACK is checked as it leaves: it stands on a bound lease for that
//! client that the store committed, ending no sooner than the ACK says;
//! and no address is ACKed to two clients for overlapping times (times as
//! the ACKing machine states them).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::client::detect;
use crate::full::{
    Action, Event, FullConfig, FullMachine, LeaseEntry, LeaseState, Pool, RequestId, Reservations, Standing,
    StoreUnavailable,
};
use crate::proxy::{Loaders, ProxyContext, Verdict};
use crate::shares::Shares;
use crate::wire::{Request, code, encode_request};

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const REPLICAS: usize = 3;
const CLIENTS: u8 = 4;
/// The pool's addresses: .10 to .12, fewer than the clients.
const FIRST: u8 = 10;
const SIZE: u8 = 3;
const START_MS: i64 = 1_800_000_000_000;

/// What the run saw, for tests that want to know the bytes did something.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// ACKs with an address.
    pub acks: usize,
    /// Of those, ACKs from a replica cut off from the store.
    pub offline_acks: usize,
    /// Writes the store committed.
    pub commits: usize,
    /// Writes the fence or a compare refused.
    pub refused: usize,
}

/// Runs the cluster (hot standby) as `data` says and checks every ACK;
/// panics on a violation. Returns what it saw.
pub fn interleaving(data: &[u8]) -> Seen {
    run(data, false)
}

/// As [`interleaving`], with the replicas in load-balancing mode and
/// memberships coming, lapsing and being noticed late.
pub fn balanced_interleaving(data: &[u8]) -> Seen {
    run(data, true)
}

fn run(data: &[u8], balanced: bool) -> Seen {
    let mut cluster = Cluster::new(balanced);
    let mut bytes = data.iter().copied();
    while let Some(step) = bytes.next() {
        let mut arg = || bytes.next().unwrap_or(0);
        cluster.step(step, &mut arg);
    }
    // Everything still on its way ends, in order.
    for replica in 0..REPLICAS {
        while !cluster.replicas[replica].ops.is_empty() {
            cluster.run_op(replica, 0, 0);
        }
    }
    cluster.seen
}

/// One lease record in the store, and the revision that wrote it.
#[derive(Clone, Debug)]
struct Stored {
    lease: Option<LeaseEntry>,
    revision: i64,
}

struct Replica {
    machine: FullMachine,
    /// Its leaderships so far; the current one while `acting`.
    term: u64,
    acting: bool,
    offline: bool,
    /// Store operations it asked for, not yet run.
    ops: Vec<Action>,
    /// Watch events not yet delivered.
    watch: VecDeque<(Ipv4Addr, Option<LeaseEntry>, i64)>,
    /// The client (MAC, number) of each request in flight.
    requests: HashMap<RequestId, (String, u8)>,
    /// Load-balancing: the membership it believes it holds (the store's
    /// revision that recorded it), and the members it last saw.
    member: Option<i64>,
    view: Vec<usize>,
}

struct Cluster {
    /// Load-balancing instead of hot standby.
    balanced: bool,
    /// Load-balancing: the live memberships in the store.
    members: BTreeMap<usize, i64>,
    replicas: Vec<Replica>,
    leases: BTreeMap<Ipv4Addr, Stored>,
    revision: i64,
    /// Who holds the election: replica and its term.
    leader: Option<(usize, u64)>,
    /// Every committed write, in order.
    log: Vec<(i64, Ipv4Addr, Option<LeaseEntry>)>,
    now_ms: i64,
    next_request: RequestId,
    /// ACKs so far: client, address, from, until.
    acks: Vec<(String, Ipv4Addr, i64, i64)>,
    /// The address each client last got (offered or ACKed).
    last_address: HashMap<u8, Ipv4Addr>,
    boot: ProxyContext,
    seen: Seen,
}

fn pool() -> Pool {
    Pool {
        network: Ipv4Addr::new(198, 18, 0, 0),
        prefix: 24,
        start: Ipv4Addr::new(198, 18, 0, FIRST),
        end: Ipv4Addr::new(198, 18, 0, FIRST + SIZE - 1),
        router: None,
        dns: Vec::new(),
        lease_time: Duration::from_secs(60),
    }
}

fn mac(client: u8) -> [u8; 6] {
    [0x52, 0x54, 0, 0, 0x77, client]
}

/// A replica's server address: one for all in hot standby (only the
/// leader answers), one each in load-balancing.
fn server_ip(balanced: bool, replica: usize) -> Ipv4Addr {
    let offset = if balanced { u8::try_from(replica).unwrap_or(0) } else { 0 };
    Ipv4Addr::new(198, 18, 0, SERVER.octets()[3] + offset)
}

fn member_id(replica: usize) -> String {
    format!("r{replica}")
}

impl Cluster {
    fn new(balanced: bool) -> Self {
        // The last client has the last address reserved.
        let reserved = (format_mac(mac(CLIENTS - 1)), Ipv4Addr::new(198, 18, 0, FIRST + SIZE - 1));
        let config = FullConfig {
            pools: vec![pool()],
            reservations: Reservations::new([reserved]).unwrap_or_default(),
            lease_reuse: 0.45,
        };
        let replicas = (0..REPLICAS)
            .map(|_| Replica {
                machine: FullMachine::new(config.clone()),
                term: 0,
                acting: false,
                offline: false,
                ops: Vec::new(),
                watch: VecDeque::new(),
                requests: HashMap::new(),
                member: None,
                view: Vec::new(),
            })
            .collect();
        let boot = ProxyContext {
            server_ip: SERVER,
            tftp_server: SERVER,
            loaders: Loaders { bios: None, efi_x64: None, efi_ia32: None, efi_arm64: None },
            http_base: "http://198.18.0.1:8080".into(),
            verdict: Verdict::Boot,
            boot_unknown: false,
        };
        Self {
            balanced,
            members: BTreeMap::new(),
            replicas,
            leases: BTreeMap::new(),
            revision: 0,
            leader: None,
            log: Vec::new(),
            now_ms: START_MS,
            next_request: 0,
            acks: Vec::new(),
            last_address: HashMap::new(),
            boot,
            seen: Seen::default(),
        }
    }

    fn step(&mut self, step: u8, arg: &mut impl FnMut() -> u8) {
        // One more than the replicas: the acting leader, if any, or the
        // client's owner by the store's memberships (clients mostly reach
        // it; relays and broadcasts reach every replica).
        let to = usize::from(arg()) % (REPLICAS + 1);
        let replica = match to {
            REPLICAS => self.replicas.iter().position(|r| r.acting).unwrap_or(0),
            replica => replica,
        };
        match step % 10 {
            0..=2 => {
                let (client, kind, which) = (arg(), arg(), arg());
                let replica = if to == REPLICAS && self.balanced { self.owner(client) } else { replica };
                self.request(replica, client, kind, which);
            }
            3 | 4 => {
                let (which, how) = (arg(), arg());
                self.run_op(replica, which, how);
            }
            5 => self.deliver(replica, arg(), arg()),
            6 => self.reload(replica, arg()),
            7 if self.balanced => self.membership(replica, arg()),
            7 => self.leadership(replica, arg()),
            8 => self.tick(arg(), arg()),
            _ => self.abandon(replica, arg()),
        }
    }

    /// A client's owner among the memberships the store holds.
    fn owner(&self, client: u8) -> usize {
        let shares = Shares::new(self.members.keys().map(|r| member_id(*r)));
        let owner = shares.owner(&mac(client % CLIENTS)).map(str::to_owned);
        (0..REPLICAS).find(|r| Some(member_id(*r)) == owner).unwrap_or(0)
    }

    fn standing(&self, replica: usize, client: &[u8; 6]) -> Standing {
        let r = &self.replicas[replica];
        if self.balanced {
            let shares = Shares::new(r.view.iter().map(|r| member_id(*r)));
            let id = member_id(replica);
            return match (r.offline, r.member, shares.place(&id)) {
                (true, _, _) => Standing::Offline,
                (false, Some(term), Some(place)) => Standing::Member {
                    term: u64::try_from(term).unwrap_or(0),
                    owner: shares.owns(&id, client),
                    place,
                },
                _ => Standing::Standby,
            };
        }
        if r.acting {
            Standing::Leader { term: r.term }
        } else if r.offline {
            Standing::Offline
        } else {
            Standing::Standby
        }
    }

    /// A client sends a request to a replica.
    fn request(&mut self, replica: usize, client: u8, kind: u8, which: u8) {
        let client = client % CLIENTS;
        // Mostly the address the client last got; sometimes any of the pool's.
        let ip = match which % (2 * SIZE) {
            n if n < SIZE => Ipv4Addr::new(198, 18, 0, FIRST + n),
            _ => self.last_address.get(&client).copied().unwrap_or(Ipv4Addr::new(198, 18, 0, FIRST)),
        };
        let octets = ip.octets();
        // Mostly the replica asked; sometimes another (load-balancing: a
        // client answered by one member asking again where another hears).
        let named = if (kind / 7) % 3 == 2 { (replica + 1) % REPLICAS } else { replica };
        let server = server_ip(self.balanced, named).octets();
        let (options, ciaddr): (Vec<(u8, &[u8])>, bool) = match kind % 7 {
            0 => (vec![(code::MESSAGE_TYPE, &[1])], false),
            1 => (
                vec![(code::MESSAGE_TYPE, &[3]), (code::REQUESTED_IP, &octets), (code::SERVER_ID, &server)],
                false,
            ),
            2 => (vec![(code::MESSAGE_TYPE, &[3]), (code::REQUESTED_IP, &octets)], false),
            3 => (vec![(code::MESSAGE_TYPE, &[3])], true),
            4 => (vec![(code::MESSAGE_TYPE, &[7]), (code::SERVER_ID, &server)], true),
            5 => (vec![(code::MESSAGE_TYPE, &[4]), (code::REQUESTED_IP, &octets)], false),
            _ => (vec![(code::MESSAGE_TYPE, &[8])], true),
        };
        let mut datagram = encode_request(mac(client), u32::from(kind), None, &options);
        if ciaddr {
            datagram[12..16].copy_from_slice(&octets);
        }
        let Ok(request) = Request::parse(&datagram) else { return };
        let client_kind = detect(&request);
        self.next_request += 1;
        let id = self.next_request;
        let standing = self.standing(replica, &request.mac);
        let boot = ProxyContext { server_ip: server_ip(self.balanced, replica), ..self.boot.clone() };
        let event = Event::Request { id, request: &request, client: &client_kind, boot: &boot, standing };
        let actions = self.replicas[replica].machine.handle(event, self.now_ms);
        self.replicas[replica].requests.insert(id, (request.mac_text(), client));
        self.after(replica, actions);
    }

    /// Carries out what a machine asked for.
    fn after(&mut self, replica: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { id, reply, .. } => {
                    let Some((mac, client)) = self.replicas[replica].requests.remove(&id) else { continue };
                    if !reply.yiaddr.is_unspecified() {
                        self.last_address.insert(client, reply.yiaddr);
                    }
                    let secs =
                        reply.options.iter().find(|(c, _)| *c == code::LEASE_TIME).map(|(_, v)| v.clone());
                    let is_ack = reply.options.iter().any(|(c, v)| *c == code::MESSAGE_TYPE && v == &[5]);
                    if let (true, false, Some(secs)) = (is_ack, reply.yiaddr.is_unspecified(), secs) {
                        let secs = u32::from_be_bytes([secs[0], secs[1], secs[2], secs[3]]);
                        self.check_ack(replica, &mac, reply.yiaddr, secs);
                    }
                }
                Action::Finish { id, .. } => {
                    self.replicas[replica].requests.remove(&id);
                }
                op => self.replicas[replica].ops.push(op),
            }
        }
    }

    fn check_ack(&mut self, replica: usize, mac: &str, ip: Ipv4Addr, secs: u32) {
        let from = self.replicas[replica].machine.now_ms();
        let until = from + i64::from(secs) * 1000;
        let stands = self.log.iter().any(|(_, logged, lease)| {
            *logged == ip
                && lease.as_ref().is_some_and(|l| {
                    l.mac == mac && l.state == LeaseState::Bound && l.expires_unix_ms >= until
                })
        });
        assert!(stands, "ACK of {ip} to {mac} until {until} stands on no committed lease: {:?}", self.log);
        for (other, other_ip, other_from, other_until) in &self.acks {
            let overlap = *other_ip == ip && other != mac && from < *other_until && *other_from < until;
            assert!(
                !overlap,
                "{ip} ACKed to {other} [{other_from}, {other_until}) and to {mac} [{from}, {until})"
            );
        }
        self.acks.push((mac.to_owned(), ip, from, until));
        self.seen.acks += 1;
        if self.replicas[replica].offline {
            self.seen.offline_acks += 1;
        }
    }

    /// Runs one of a replica's store operations. `how`: mostly as the
    /// store would; sometimes it fails, or commits a write without the
    /// writer learning so.
    fn run_op(&mut self, replica: usize, which: u8, how: u8) {
        let ops = &mut self.replicas[replica].ops;
        if ops.is_empty() {
            return;
        }
        let op = ops.remove(usize::from(which) % ops.len());
        let cut_off = self.replicas[replica].offline || how % 8 == 6;
        // The fence: the batch writer's guard is this replica's election
        // key while it acts, and the store holds it only for its holder;
        // or its membership, which the store holds only until it lapses.
        let r = &self.replicas[replica];
        let fenced = if self.balanced {
            r.member.is_some() && self.members.get(&replica) == r.member.as_ref()
        } else {
            r.acting && self.leader == Some((replica, r.term))
        };
        let revision_of = |leases: &BTreeMap<Ipv4Addr, Stored>, ip| leases.get(&ip).map_or(0, |s| s.revision);
        let event = match op {
            Action::Write { op, ip, record, revision, .. } => {
                let outcome = if cut_off {
                    Err(StoreUnavailable)
                } else if fenced && revision_of(&self.leases, ip) == revision {
                    let committed = self.commit(ip, record.map(|r| r.lease));
                    if how % 8 == 7 { Err(StoreUnavailable) } else { Ok(Some(committed)) }
                } else {
                    self.seen.refused += 1;
                    Ok(None)
                };
                Event::Written { op, outcome }
            }
            Action::Confirm { op, ip, revision, .. } => {
                let outcome = if cut_off {
                    Err(StoreUnavailable)
                } else {
                    Ok(fenced && revision_of(&self.leases, ip) == revision)
                };
                Event::Confirmed { op, outcome }
            }
            Action::Read { op, ip, .. } => {
                let outcome = if cut_off {
                    Err(StoreUnavailable)
                } else {
                    let stored = self.leases.get(&ip);
                    Ok((stored.and_then(|s| s.lease.clone()), stored.map_or(0, |s| s.revision)))
                };
                Event::Read { op, outcome }
            }
            _ => return,
        };
        self.feed(replica, event);
    }

    fn feed(&mut self, replica: usize, event: Event<'_>) {
        let actions = self.replicas[replica].machine.handle(event, self.now_ms);
        self.after(replica, actions);
    }

    fn commit(&mut self, ip: Ipv4Addr, lease: Option<LeaseEntry>) -> i64 {
        self.revision += 1;
        let revision = self.revision;
        self.log.push((revision, ip, lease.clone()));
        self.seen.commits += 1;
        if lease.is_some() {
            self.leases.insert(ip, Stored { lease: lease.clone(), revision });
        } else {
            self.leases.remove(&ip);
        }
        for replica in &mut self.replicas {
            replica.watch.push_back((ip, lease.clone(), revision));
        }
        revision
    }

    /// Delivers one queued watch event (any of them: out of order), and
    /// keeps it queued when `again` says so (delivered twice).
    fn deliver(&mut self, replica: usize, which: u8, again: u8) {
        let r = &mut self.replicas[replica];
        if r.offline || r.watch.is_empty() {
            return;
        }
        let index = usize::from(which) % r.watch.len();
        let (ip, lease, revision) = if again.is_multiple_of(4) {
            r.watch[index].clone()
        } else {
            r.watch.remove(index).unwrap_or_else(|| unreachable!())
        };
        self.feed(replica, Event::Watched { ip, lease, revision });
    }

    /// Reloads a replica from the store as it was at some revision up to now.
    fn reload(&mut self, replica: usize, age: u8) {
        if self.replicas[replica].offline {
            return;
        }
        let at = self.revision - i64::from(age % 8).min(self.revision);
        let mut state: BTreeMap<Ipv4Addr, (LeaseEntry, i64)> = BTreeMap::new();
        for (revision, ip, lease) in self.log.iter().take_while(|(r, _, _)| *r <= at) {
            match lease {
                Some(lease) => state.insert(*ip, (lease.clone(), *revision)),
                None => state.remove(ip),
            };
        }
        let leases = state.into_iter().map(|(ip, (lease, revision))| (ip, lease, revision)).collect();
        self.feed(replica, Event::Reloaded { leases });
    }

    /// Deposes the leader, elects `replica`, or cuts it off from (or back
    /// to) the store.
    fn leadership(&mut self, replica: usize, what: u8) {
        match what % 8 {
            0 => self.depose(),
            2..=7 => {
                let anyone_acting = self.replicas.iter().any(|r| r.acting);
                if !anyone_acting && !self.replicas[replica].offline {
                    let r = &mut self.replicas[replica];
                    r.term += 1;
                    r.acting = true;
                    self.leader = Some((replica, r.term));
                }
            }
            _ => {
                let r = &mut self.replicas[replica];
                r.offline = !r.offline;
                if r.offline && r.acting {
                    // Its election lease lapses: it stops acting first.
                    self.depose();
                }
            }
        }
    }

    /// Load-balancing: `replica`'s membership lapses in the store (it
    /// still believes in it until it looks), it joins (a new membership),
    /// or it looks at the members again; or it is cut off from the store,
    /// or back.
    fn membership(&mut self, replica: usize, what: u8) {
        let offline = self.replicas[replica].offline;
        match what % 8 {
            0 => {
                self.members.remove(&replica);
            }
            1 => {
                let r = &mut self.replicas[replica];
                r.offline = !r.offline;
            }
            2 | 3 if !offline && !self.members.contains_key(&replica) => {
                self.revision += 1;
                self.members.insert(replica, self.revision);
                self.replicas[replica].member = Some(self.revision);
            }
            _ if !offline => {
                let r = &mut self.replicas[replica];
                r.member = self.members.get(&replica).copied();
                r.view = self.members.keys().copied().collect();
            }
            _ => {}
        }
    }

    fn depose(&mut self) {
        for replica in &mut self.replicas {
            replica.acting = false;
        }
        self.leader = None;
    }

    /// The clock moves: a little, a lot, or back. Every replica is told,
    /// as a real one learns the time with every packet and watch event:
    /// each holds the latest time it saw, and one left idle before a jump
    /// back would otherwise lag the others by up to the jump — replicas
    /// must agree within a few seconds (`CLOCK_MARGIN`), and ACK times
    /// compared across replicas only mean something if they do.
    fn tick(&mut self, how: u8, amount: u8) {
        let amount = i64::from(amount);
        self.now_ms += match how % 8 {
            0..=5 => amount * 10,
            6 => amount * 1_000,
            _ => -amount * 1_000,
        };
        for replica in 0..self.replicas.len() {
            self.feed(replica, Event::Time);
        }
    }

    fn abandon(&mut self, replica: usize, which: u8) {
        let r = &mut self.replicas[replica];
        let Some(id) = r.requests.keys().copied().nth(usize::from(which) % r.requests.len().max(1)) else {
            return;
        };
        r.requests.remove(&id);
        r.ops.retain(|op| !matches!(op, Action::Write { id: i, .. } | Action::Confirm { id: i, .. } | Action::Read { id: i, .. } if *i == id));
        self.feed(replica, Event::Abandoned { id });
    }
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests;
