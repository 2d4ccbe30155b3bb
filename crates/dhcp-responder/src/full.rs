//! Full DHCP: address pools, reservations and lease decisions, pure.
//! The shell reads the leases, asks here, and writes the result as a
//! compare-and-swap before any ACK leaves.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

/// How long an OFFER holds its address.
pub const OFFER_HOLD: Duration = Duration::from_secs(30);
/// How long a DECLINEd address stays out of use.
pub const DECLINE_HOLD: Duration = Duration::from_secs(600);

/// An address pool on one subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Subnet address.
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// First address handed out.
    pub start: Ipv4Addr,
    /// Last address handed out.
    pub end: Ipv4Addr,
    /// Default gateway (option 3).
    pub router: Option<Ipv4Addr>,
    /// DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Lease time granted.
    pub lease_time: Duration,
}

impl Pool {
    fn mask(&self) -> u32 {
        if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) }
    }

    /// Whether `ip` is on the pool's subnet.
    pub fn on_subnet(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// Whether `ip` is in the handed-out range.
    pub fn in_range(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.start)..=u32::from(self.end)).contains(&u32::from(ip))
    }

    /// Options describing the subnet (and the lease, unless INFORM).
    pub fn options(&self, with_lease: bool) -> Vec<(u8, Vec<u8>)> {
        let secs = with_lease.then(|| u32::try_from(self.lease_time.as_secs()).unwrap_or(u32::MAX));
        self.options_for(secs)
    }

    /// As [`Self::options`], for a lease with `lease_secs` left (`None`: no
    /// lease-time options, for INFORM).
    pub fn options_for(&self, lease_secs: Option<u32>) -> Vec<(u8, Vec<u8>)> {
        let mut out = vec![(1, self.mask().to_be_bytes().to_vec())];
        if let Some(router) = self.router {
            out.push((3, router.octets().to_vec()));
        }
        if !self.dns.is_empty() {
            out.push((6, self.dns.iter().flat_map(|d| d.octets()).collect()));
        }
        if let Some(secs) = lease_secs {
            out.push((51, secs.to_be_bytes().to_vec()));
            out.push((58, (secs / 2).to_be_bytes().to_vec()));
            out.push((59, (secs / 8 * 7).to_be_bytes().to_vec()));
        }
        out
    }
}

/// The pool for a request: the relay's subnet, else our own.
pub fn pick_pool(pools: &[Pool], giaddr: Ipv4Addr, server_ip: Ipv4Addr) -> Option<&Pool> {
    let on = if giaddr.is_unspecified() { server_ip } else { giaddr };
    pools.iter().find(|p| p.on_subnet(on))
}

/// What a lease record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Offered, waiting for REQUEST.
    Offered,
    /// Acknowledged.
    Bound,
    /// Declined by a client (in use elsewhere).
    Declined,
}

/// One lease as the allocator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseEntry {
    /// Holder.
    pub mac: String,
    /// State.
    pub state: LeaseState,
    /// End of validity.
    pub expires_unix_ms: i64,
}

impl LeaseEntry {
    fn live(&self, now_ms: i64) -> bool {
        self.expires_unix_ms > now_ms
    }
}

/// Whether `mac` may hold `ip` now: in range (or reserved for it), not
/// reserved for someone else, not held by another live lease.
pub fn may_hold(
    pool: &Pool,
    mac: &str,
    ip: Ipv4Addr,
    lease: Option<&LeaseEntry>,
    reservations: &HashMap<String, Ipv4Addr>,
    now_ms: i64,
) -> bool {
    let reserved_for_mac = reservations.get(mac) == Some(&ip);
    let reserved_for_other = reservations.iter().any(|(m, r)| *r == ip && m != mac);
    let taken = lease.is_some_and(|l| l.live(now_ms) && (l.mac != mac || l.state == LeaseState::Declined));
    pool.on_subnet(ip) && (pool.in_range(ip) || reserved_for_mac) && !reserved_for_other && !taken
}

/// What a DECLINE of `ip` from `mac` leaves in the store, if it counts.
/// Only the client that holds `ip` (bound, or offered to it) in the pool
/// it asks from may decline it: anyone could otherwise take a neighbour's
/// lease away, or write records for addresses outside every pool. The
/// address is then held out of use, from everyone, for [`DECLINE_HOLD`]
/// — and never for less than the lease it had (see [`held_until`]).
pub fn declined(
    pool: &Pool,
    mac: &str,
    ip: Ipv4Addr,
    lease: Option<&LeaseEntry>,
    reservations: &HashMap<String, Ipv4Addr>,
    now_ms: i64,
) -> Option<LeaseEntry> {
    let in_pool = pool.on_subnet(ip) && (pool.in_range(ip) || reservations.get(mac) == Some(&ip));
    let lease = lease.filter(|l| {
        l.mac == mac && l.live(now_ms) && matches!(l.state, LeaseState::Bound | LeaseState::Offered)
    })?;
    in_pool.then(|| LeaseEntry {
        mac: mac.to_owned(),
        state: LeaseState::Declined,
        expires_unix_ms: held_until(Some(lease), mac, now_ms.saturating_add(millis(DECLINE_HOLD)), now_ms),
    })
}

/// When a lease written for `mac` over `current` ends: `wanted`, or later
/// if `current` is `mac`'s own and still runs longer. A lease's end never
/// moves earlier while its client holds it, so no copy of the store, however
/// old, shows a lease ending later than the store's (offline answers rest
/// on that; see the shell's offline rule).
pub fn held_until(current: Option<&LeaseEntry>, mac: &str, wanted: i64, now_ms: i64) -> i64 {
    match current {
        Some(l) if l.mac == mac && l.live(now_ms) => wanted.max(l.expires_unix_ms),
        _ => wanted,
    }
}

/// A duration in milliseconds, saturating.
pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Most a `lease_reuse` fraction may be: a client renews at half its lease
/// (T1), and that renewal must be written, or its leases would shrink. A
/// reused lease's T1 comes at least half of what it had left later, less
/// up to 1.5 s of rounding to whole seconds: the 5 % margin covers that
/// for leases of 30 s or more.
pub const MAX_LEASE_REUSE: f64 = 0.45;

/// Seconds left on `mac`'s bound lease `lease` when it was granted or
/// renewed so recently — less than `reuse` × `lease_time` ago — that a
/// REQUEST for it can be acknowledged for the time it has left, without a
/// store write (Kea calls this its cache threshold). A network boot asks
/// for the same lease up to three times within a minute (PXE ROM, iPXE,
/// the OS); each would otherwise cost a write. `None`: write as usual.
pub fn reusable_lease(
    lease: Option<&LeaseEntry>,
    mac: &str,
    lease_time: Duration,
    reuse: f64,
    now_ms: i64,
) -> Option<u32> {
    let lease = lease.filter(|l| l.mac == mac && l.state == LeaseState::Bound)?;
    let full_ms = i64::try_from(lease_time.as_millis()).ok()?;
    let left_ms = lease.expires_unix_ms.saturating_sub(now_ms);
    let age_ms = full_ms.saturating_sub(left_ms);
    // A negative age: granted under a longer lease time than configured
    // now; writing gives it the current one.
    let recent = age_ms >= 0 && (age_ms as f64) < reuse.clamp(0.0, MAX_LEASE_REUSE) * full_ms as f64;
    (recent && left_ms >= 1000).then(|| u32::try_from(left_ms / 1000).unwrap_or(u32::MAX))
}

/// The leases a responder knows, indexed by address and by MAC, with a
/// cursor so that finding a free address does not rescan the pool.
///
/// The index is a hint: it may lag the store, or hold what a late watch
/// event brought back. An entry becomes more than a hint only when it is
/// *verified*: the leader itself committed it, or confirmed it with a
/// guarded transaction, during its current term (see
/// [`LeaseTable::verify`]).
#[derive(Clone, Debug, Default)]
pub struct LeaseTable {
    by_ip: BTreeMap<Ipv4Addr, (LeaseEntry, i64)>,
    by_mac: HashMap<String, Ipv4Addr>,
    /// Entries the store was seen to hold, by the term that saw them.
    verified: HashMap<Ipv4Addr, u64>,
    /// Writes per address: until they commit the store may hold either
    /// version, so nothing there is verified.
    writes: HashMap<Ipv4Addr, Writes>,
    cursor: u32,
}

/// The writes to one address: on their way, and ever begun.
#[derive(Clone, Copy, Debug, Default)]
struct Writes {
    in_flight: u32,
    begun: u64,
}

impl LeaseTable {
    /// Sets (or with `None` removes) the lease of `ip` as stored at
    /// `revision`; older news than what the table holds is ignored. The
    /// entry stays verified only if this is the same lease at the same
    /// revision (the watch echoing a write the leader made itself).
    pub fn apply(&mut self, ip: Ipv4Addr, lease: Option<LeaseEntry>, revision: i64) {
        match self.by_ip.get(&ip) {
            Some((_, known)) if *known > revision => return,
            Some((known_lease, known)) if *known == revision && Some(known_lease) == lease.as_ref() => return,
            _ => {}
        }
        self.verified.remove(&ip);
        if let Some((old, _)) = self.by_ip.remove(&ip)
            && self.by_mac.get(&old.mac) == Some(&ip)
        {
            self.by_mac.remove(&old.mac);
        }
        if let Some(lease) = lease {
            if lease.state != LeaseState::Declined {
                self.by_mac.insert(lease.mac.clone(), ip);
            }
            self.by_ip.insert(ip, (lease, revision));
        }
    }

    /// Replaces every lease with `leases` (a fresh copy of the store). Only
    /// the writes on their way are kept: they have yet to end.
    pub fn reload(&mut self, leases: impl IntoIterator<Item = (Ipv4Addr, LeaseEntry, i64)>) {
        let writes = std::mem::take(&mut self.writes);
        *self = Self { writes, ..Self::default() };
        for (ip, lease, revision) in leases {
            self.apply(ip, Some(lease), revision);
        }
    }

    /// Sets the lease of `ip` unconditionally (after reading the store).
    pub fn replace(&mut self, ip: Ipv4Addr, lease: Option<LeaseEntry>, revision: i64) {
        self.by_ip.remove(&ip);
        self.verified.remove(&ip);
        self.by_mac.retain(|_, held| *held != ip);
        self.apply(ip, lease, revision);
    }

    /// Records that the leader of `term` saw the store hold `lease` at
    /// `revision` for `ip` — by committing it, or by a guarded transaction
    /// that compared it. `ticket` is [`Self::writes_begun`] from before
    /// that transaction was queued (for a write, what [`Self::begin_write`]
    /// returned): if another write to `ip` began since, or one is still on
    /// its way, or the table no longer holds exactly that lease at that
    /// revision, nothing is recorded. While the term lasts, no one else
    /// can write the lease (every lease write is fenced by the leader's
    /// election key), so the entry stays true until this leader writes it
    /// again or the term ends.
    pub fn verify(&mut self, ip: Ipv4Addr, lease: &LeaseEntry, revision: i64, term: u64, ticket: u64) {
        let writes = self.writes.get(&ip).copied().unwrap_or_default();
        let unchanged = writes.in_flight == 0 && writes.begun == ticket;
        let holds = self.by_ip.get(&ip).is_some_and(|(known, at)| *at == revision && known == lease);
        if unchanged && holds {
            self.verified.insert(ip, term);
        }
    }

    /// How many writes to `ip` were ever begun: taken before a confirming
    /// transaction is queued, and handed to [`Self::verify`] after it.
    pub fn writes_begun(&self, ip: Ipv4Addr) -> u64 {
        self.writes.get(&ip).map_or(0, |w| w.begun)
    }

    /// A write to `ip` is on its way: the entry is not verified until a
    /// later [`Self::verify`] after every such write has ended. Returns
    /// the write's ticket for that.
    pub fn begin_write(&mut self, ip: Ipv4Addr) -> u64 {
        self.verified.remove(&ip);
        let writes = self.writes.entry(ip).or_default();
        writes.in_flight += 1;
        writes.begun += 1;
        writes.begun
    }

    /// A write begun with [`Self::begin_write`] committed or failed.
    pub fn end_write(&mut self, ip: Ipv4Addr) {
        if let Some(writes) = self.writes.get_mut(&ip) {
            writes.in_flight = writes.in_flight.saturating_sub(1);
        }
    }

    /// Whether the lease of `ip` is at `revision` and was verified in `term`.
    pub fn is_verified(&self, ip: Ipv4Addr, revision: i64, term: u64) -> bool {
        self.verified.get(&ip) == Some(&term)
            && self.by_ip.get(&ip).is_some_and(|(_, known)| *known == revision)
    }

    /// The unexpired bound lease `mac` holds: its address and expiry.
    pub fn bound_lease(&self, mac: &str, now_ms: i64) -> Option<(Ipv4Addr, i64)> {
        let ip = *self.by_mac.get(mac)?;
        let (lease, _) = self.by_ip.get(&ip)?;
        (lease.mac == mac && lease.state == LeaseState::Bound && lease.expires_unix_ms > now_ms)
            .then_some((ip, lease.expires_unix_ms))
    }

    /// The lease of `ip` and its store revision.
    pub fn get(&self, ip: Ipv4Addr) -> Option<&(LeaseEntry, i64)> {
        self.by_ip.get(&ip)
    }

    /// Number of leases known.
    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    /// Whether no lease is known.
    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    /// The address to offer `mac`: its reservation, else the address it
    /// already holds, else the next free one after the last handed out.
    pub fn offer(
        &mut self,
        pool: &Pool,
        mac: &str,
        reservations: &HashMap<String, Ipv4Addr>,
        now_ms: i64,
    ) -> Option<Ipv4Addr> {
        fn lease(table: &LeaseTable, ip: Ipv4Addr) -> Option<&LeaseEntry> {
            table.by_ip.get(&ip).map(|(l, _)| l)
        }
        if let Some(ip) = reservations.get(mac) {
            return may_hold(pool, mac, *ip, lease(self, *ip), reservations, now_ms).then_some(*ip);
        }
        if let Some(ip) = self.by_mac.get(mac).copied() {
            let held = lease(self, ip)
                .is_some_and(|l| l.mac == mac && l.live(now_ms) && l.state != LeaseState::Declined);
            if held && may_hold(pool, mac, ip, lease(self, ip), reservations, now_ms) {
                return Some(ip);
            }
        }
        let (start, end) = (u32::from(pool.start), u32::from(pool.end));
        if start > end {
            return None;
        }
        let size = u64::from(end - start) + 1;
        let first = if (start..=end).contains(&self.cursor) { self.cursor } else { start };
        for step in 0..size {
            let offset = (u64::from(first - start) + step) % size;
            let ip = Ipv4Addr::from(start + u32::try_from(offset).unwrap_or(0));
            if may_hold(pool, mac, ip, lease(self, ip), reservations, now_ms) {
                self.cursor = u32::from(ip).saturating_add(1);
                return Some(ip);
            }
        }
        None
    }
}

/// The address to offer `mac` given every lease (see [`LeaseTable::offer`]).
pub fn offer(
    pool: &Pool,
    mac: &str,
    leases: &BTreeMap<Ipv4Addr, LeaseEntry>,
    reservations: &HashMap<String, Ipv4Addr>,
    now_ms: i64,
) -> Option<Ipv4Addr> {
    let mut table = LeaseTable::default();
    for (ip, lease) in leases {
        table.apply(*ip, Some(lease.clone()), 1);
    }
    table.offer(pool, mac, reservations, now_ms)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pool() -> Pool {
        Pool {
            network: Ipv4Addr::new(198, 18, 40, 0),
            prefix: 24,
            start: Ipv4Addr::new(198, 18, 40, 100),
            end: Ipv4Addr::new(198, 18, 40, 103),
            router: Some(Ipv4Addr::new(198, 18, 40, 1)),
            dns: vec![Ipv4Addr::new(198, 18, 40, 1)],
            lease_time: Duration::from_secs(3600),
        }
    }

    fn lease(mac: &str, state: LeaseState, expires: i64) -> LeaseEntry {
        LeaseEntry { mac: mac.into(), state, expires_unix_ms: expires }
    }

    const NOW: i64 = 1_000_000;

    #[test]
    fn a_lease_renewed_moments_ago_is_reused_for_the_time_it_has_left() {
        let hour = Duration::from_secs(3600);
        let fresh = lease("aa", LeaseState::Bound, NOW + 3_590_000);
        assert_eq!(reusable_lease(Some(&fresh), "aa", hour, 0.25, NOW), Some(3590));
        // Not for another MAC, an offer, a declined address, or no lease.
        assert_eq!(reusable_lease(Some(&fresh), "bb", hour, 0.25, NOW), None);
        for state in [LeaseState::Offered, LeaseState::Declined] {
            assert_eq!(
                reusable_lease(Some(&lease("aa", state, NOW + 3_590_000)), "aa", hour, 0.25, NOW),
                None
            );
        }
        assert_eq!(reusable_lease(None, "aa", hour, 0.25, NOW), None);
        // Renewed 15 min ago or earlier: written again.
        let older = lease("aa", LeaseState::Bound, NOW + 2_700_000);
        assert_eq!(reusable_lease(Some(&older), "aa", hour, 0.25, NOW), None);
        assert_eq!(
            reusable_lease(Some(&lease("aa", LeaseState::Bound, NOW + 2_700_001)), "aa", hour, 0.25, NOW),
            Some(2700)
        );
        // Turned off, expired, or granted under a longer lease time.
        assert_eq!(reusable_lease(Some(&fresh), "aa", hour, 0.0, NOW), None);
        assert_eq!(
            reusable_lease(Some(&lease("aa", LeaseState::Bound, NOW - 1)), "aa", hour, 0.25, NOW),
            None
        );
        assert_eq!(
            reusable_lease(Some(&lease("aa", LeaseState::Bound, NOW + 7_000_000)), "aa", hour, 0.25, NOW),
            None
        );
        // A renewal at T1 (half the lease) is written, whatever the setting.
        let at_t1 = lease("aa", LeaseState::Bound, NOW + 1_800_000);
        assert_eq!(reusable_lease(Some(&at_t1), "aa", hour, 0.9, NOW), None);
    }

    #[test]
    fn verification_holds_for_one_term_and_one_revision() {
        let mut table = LeaseTable::default();
        let ip = Ipv4Addr::new(198, 18, 0, 100);
        let bound = lease("aa", LeaseState::Bound, 5_000);
        table.apply(ip, Some(bound.clone()), 7);
        assert!(!table.is_verified(ip, 7, 1), "a watched entry is only a hint");
        let ticket = table.writes_begun(ip);
        table.verify(ip, &bound, 6, 1, ticket);
        assert!(!table.is_verified(ip, 7, 1), "verified at another revision");
        table.verify(ip, &lease("bb", LeaseState::Bound, 5_000), 7, 1, ticket);
        assert!(!table.is_verified(ip, 7, 1), "verified another lease");
        table.verify(ip, &bound, 7, 1, ticket);
        assert!(table.is_verified(ip, 7, 1));
        assert!(!table.is_verified(ip, 7, 2), "another term");
        assert!(!table.is_verified(ip, 6, 1));
        // The watch echoing the same write keeps it; older news is ignored.
        table.apply(ip, Some(bound.clone()), 7);
        table.apply(ip, None, 5);
        assert!(table.is_verified(ip, 7, 1));
        // A provisional change at the same revision, a newer revision, a
        // write on its way, a re-read: each ends it.
        table.apply(ip, Some(lease("bb", LeaseState::Offered, 5_000)), 7);
        assert!(!table.is_verified(ip, 7, 1));
        for end in 0..3 {
            table.replace(ip, Some(bound.clone()), 7);
            let ticket = table.writes_begun(ip);
            table.verify(ip, &bound, 7, 1, ticket);
            assert!(table.is_verified(ip, 7, 1), "case {end}");
            match end {
                0 => table.apply(ip, Some(bound.clone()), 8),
                1 => {
                    table.begin_write(ip);
                    table.end_write(ip);
                }
                _ => table.replace(ip, Some(bound.clone()), 7),
            }
            assert!(!table.is_verified(ip, 7, 1) && !table.is_verified(ip, 8, 1), "case {end}");
        }
        // A confirmation verifies nothing while a write is on its way, nor
        // after one began since it was queued, even if the table shows the
        // confirmed revision again (a write that failed to report its
        // commit, a rebuild from a lagging copy).
        table.replace(ip, Some(bound.clone()), 7);
        let confirm = table.writes_begun(ip);
        let write = table.begin_write(ip);
        table.verify(ip, &bound, 7, 1, confirm);
        assert!(!table.is_verified(ip, 7, 1), "a write is on its way");
        table.end_write(ip);
        table.verify(ip, &bound, 7, 1, confirm);
        assert!(!table.is_verified(ip, 7, 1), "a write began after the confirmation was queued");
        // The write's own commit verifies what it wrote, if nothing else began.
        table.apply(ip, Some(bound.clone()), 9);
        table.verify(ip, &bound, 9, 1, write);
        assert!(table.is_verified(ip, 9, 1));
        let first = table.begin_write(ip);
        let _second = table.begin_write(ip);
        table.end_write(ip);
        table.end_write(ip);
        table.apply(ip, Some(bound.clone()), 10);
        table.verify(ip, &bound, 10, 1, first);
        assert!(!table.is_verified(ip, 10, 1), "another write began after it");
        // A rebuild keeps the count of writes and forgets what was verified.
        let ticket = table.writes_begun(ip);
        table.verify(ip, &bound, 10, 1, ticket);
        assert!(table.is_verified(ip, 10, 1));
        let begun = table.writes_begun(ip);
        table.reload([(ip, bound.clone(), 10)]);
        assert!(!table.is_verified(ip, 10, 1));
        assert_eq!(table.writes_begun(ip), begun);
        // A deleted lease that a late event brings back is not verified.
        table.apply(ip, None, 11);
        table.apply(ip, Some(bound), 10);
        assert!(!table.is_verified(ip, 10, 1));
    }

    #[test]
    fn bound_leases_are_found_by_mac_until_they_expire() {
        let mut table = LeaseTable::default();
        let ip = Ipv4Addr::new(198, 18, 0, 100);
        table.apply(ip, Some(lease("aa", LeaseState::Bound, 5_000)), 1);
        table.apply(Ipv4Addr::new(198, 18, 0, 101), Some(lease("bb", LeaseState::Offered, 5_000)), 2);
        assert_eq!(table.bound_lease("aa", 1_000), Some((ip, 5_000)));
        assert_eq!(table.bound_lease("aa", 5_000), None, "expired");
        assert_eq!(table.bound_lease("bb", 1_000), None, "only offered");
        assert_eq!(table.bound_lease("cc", 1_000), None);
    }

    #[test]
    fn offers_follow_reservation_then_holding_then_lowest_free() {
        let p = pool();
        let mut leases = BTreeMap::new();
        let mut reservations = HashMap::new();
        assert_eq!(offer(&p, "a", &leases, &reservations, NOW), Some(Ipv4Addr::new(198, 18, 40, 100)));
        leases.insert(Ipv4Addr::new(198, 18, 40, 100), lease("a", LeaseState::Bound, NOW + 10));
        assert_eq!(
            offer(&p, "a", &leases, &reservations, NOW),
            Some(Ipv4Addr::new(198, 18, 40, 100)),
            "keeps its address"
        );
        assert_eq!(offer(&p, "b", &leases, &reservations, NOW), Some(Ipv4Addr::new(198, 18, 40, 101)));
        // Expired leases free their address.
        assert_eq!(offer(&p, "b", &leases, &reservations, NOW + 20), Some(Ipv4Addr::new(198, 18, 40, 100)));
        // A reservation (even outside the range) wins, and is kept from others.
        reservations.insert("c".to_owned(), Ipv4Addr::new(198, 18, 40, 50));
        reservations.insert("d".to_owned(), Ipv4Addr::new(198, 18, 40, 101));
        assert_eq!(offer(&p, "c", &leases, &reservations, NOW), Some(Ipv4Addr::new(198, 18, 40, 50)));
        assert_eq!(offer(&p, "b", &leases, &reservations, NOW), Some(Ipv4Addr::new(198, 18, 40, 102)));
        // Declined addresses stay out of use for everyone.
        leases.insert(Ipv4Addr::new(198, 18, 40, 102), lease("b", LeaseState::Declined, NOW + 10));
        assert_eq!(offer(&p, "b", &leases, &reservations, NOW), Some(Ipv4Addr::new(198, 18, 40, 103)));
        // Full pool: nothing.
        leases.insert(Ipv4Addr::new(198, 18, 40, 103), lease("e", LeaseState::Offered, NOW + 10));
        assert_eq!(offer(&p, "f", &leases, &reservations, NOW), None);
    }

    #[test]
    fn pools_are_picked_by_relay_or_own_subnet() {
        let a = pool();
        let b = Pool { network: Ipv4Addr::new(198, 19, 0, 0), prefix: 16, ..pool() };
        let pools = [a.clone(), b.clone()];
        assert_eq!(pick_pool(&pools, Ipv4Addr::UNSPECIFIED, Ipv4Addr::new(198, 18, 40, 1)), Some(&a));
        assert_eq!(pick_pool(&pools, Ipv4Addr::new(198, 19, 3, 1), Ipv4Addr::new(198, 18, 40, 1)), Some(&b));
        assert_eq!(pick_pool(&pools, Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(198, 18, 40, 1)), None);
    }

    proptest! {
        /// However leases and reservations lie, an offer never names an
        /// address another MAC holds or that is reserved for another MAC.
        #[test]
        fn offers_never_collide(
            holders in proptest::collection::vec((0u8..4, 0u8..4, any::<bool>()), 0..8),
            reserved in proptest::collection::vec((0u8..6, 98u8..105), 0..3),
            who in 0u8..6,
        ) {
            let p = pool();
            let leases: BTreeMap<Ipv4Addr, LeaseEntry> = holders
                .into_iter()
                .map(|(ip, mac, live)| {
                    (Ipv4Addr::new(198, 18, 40, 100 + ip), lease(&format!("m{mac}"), LeaseState::Bound, if live { NOW + 5 } else { NOW - 5 }))
                })
                .collect();
            let reservations: HashMap<String, Ipv4Addr> =
                reserved.into_iter().map(|(mac, last)| (format!("m{mac}"), Ipv4Addr::new(198, 18, 40, last))).collect();
            let mac = format!("m{who}");
            if let Some(ip) = offer(&p, &mac, &leases, &reservations, NOW) {
                let other_holds = leases.get(&ip).is_some_and(|l| l.expires_unix_ms > NOW && l.mac != mac);
                prop_assert!(!other_holds, "{ip} is held by another MAC");
                prop_assert!(!reservations.iter().any(|(m, r)| *r == ip && *m != mac), "{ip} is reserved for another MAC");
                prop_assert!(p.on_subnet(ip));
            }
        }
    }
}
