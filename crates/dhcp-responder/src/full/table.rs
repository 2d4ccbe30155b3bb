//! The leases a responder knows, indexed for allocation.
//!
//! Finding a free address never walks the pool: addresses that have a
//! record are kept as runs of consecutive addresses, so the first address
//! without one after the cursor is a lookup; records are also ordered by
//! expiry per pool, so when every address has a record the one that
//! expired longest ago is a lookup too. A full pool costs a handful of
//! probes under the index lock, whatever its size (see
//! [`LeaseTable::probes`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use super::{LeaseEntry, LeaseState, Pool, Reservations, may_hold};

/// The leases a responder knows, indexed by address, by MAC and by expiry,
/// with a cursor so that allocation goes round the pool.
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
    /// Addresses that have a record, as runs.
    recorded: Runs,
    /// Per pool (by its range), its records by expiry.
    expiring: Vec<PoolExpiry>,
    /// Entries the store was seen to hold, by the term that saw them.
    verified: HashMap<Ipv4Addr, u64>,
    /// Writes per address: until they commit the store may hold either
    /// version, so nothing there is verified.
    writes: HashMap<Ipv4Addr, Writes>,
    cursor: u32,
    /// Addresses looked at while allocating, ever.
    probes: u64,
}

/// One pool's range and its records ordered by when they end.
#[derive(Clone, Debug)]
struct PoolExpiry {
    start: u32,
    end: u32,
    by_expiry: BTreeSet<(i64, u32)>,
}

/// The writes to one address: on their way, and ever begun.
#[derive(Clone, Copy, Debug, Default)]
struct Writes {
    in_flight: u32,
    begun: u64,
}

impl LeaseTable {
    /// An empty table allocating from `pools` (an address outside them can
    /// still be recorded, and held by reservation, but is never allocated).
    pub fn new(pools: &[Pool]) -> Self {
        let expiring = pools
            .iter()
            .map(|p| PoolExpiry {
                start: u32::from(p.start),
                end: u32::from(p.end),
                by_expiry: BTreeSet::new(),
            })
            .collect();
        Self { expiring, ..Self::default() }
    }

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
        self.remove_entry(ip);
        if let Some(lease) = lease {
            self.insert_entry(ip, lease, revision);
        }
    }

    fn remove_entry(&mut self, ip: Ipv4Addr) {
        let Some((old, _)) = self.by_ip.remove(&ip) else { return };
        if self.by_mac.get(&old.mac) == Some(&ip) {
            self.by_mac.remove(&old.mac);
        }
        self.recorded.remove(u32::from(ip));
        if let Some(pool) = self.pool_of(ip) {
            pool.by_expiry.remove(&(old.expires_unix_ms, u32::from(ip)));
        }
    }

    fn insert_entry(&mut self, ip: Ipv4Addr, lease: LeaseEntry, revision: i64) {
        if lease.state != LeaseState::Declined {
            self.by_mac.insert(lease.mac.clone(), ip);
        }
        self.recorded.insert(u32::from(ip));
        let expires = lease.expires_unix_ms;
        if let Some(pool) = self.pool_of(ip) {
            pool.by_expiry.insert((expires, u32::from(ip)));
        }
        self.by_ip.insert(ip, (lease, revision));
    }

    fn pool_of(&mut self, ip: Ipv4Addr) -> Option<&mut PoolExpiry> {
        let ip = u32::from(ip);
        self.expiring.iter_mut().find(|p| (p.start..=p.end).contains(&ip))
    }

    /// Replaces every lease with `leases` (a fresh copy of the store). Only
    /// the writes on their way are kept: they have yet to end.
    pub fn reload(&mut self, leases: impl IntoIterator<Item = (Ipv4Addr, LeaseEntry, i64)>) {
        let writes = std::mem::take(&mut self.writes);
        let mut expiring = std::mem::take(&mut self.expiring);
        for pool in &mut expiring {
            pool.by_expiry.clear();
        }
        let (cursor, probes) = (self.cursor, self.probes);
        *self = Self { writes, expiring, cursor, probes, ..Self::default() };
        for (ip, lease, revision) in leases {
            self.apply(ip, Some(lease), revision);
        }
    }

    /// Sets the lease of `ip` unconditionally (after reading the store).
    pub fn replace(&mut self, ip: Ipv4Addr, lease: Option<LeaseEntry>, revision: i64) {
        self.remove_entry(ip);
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

    /// Addresses looked at while allocating, since the table was made.
    pub fn probes(&self) -> u64 {
        self.probes
    }

    /// The address to offer `mac`: its reservation, else the address it
    /// already holds, else the next address without a record after the
    /// last one handed out, else the one whose record ended longest ago.
    /// With `slice` (load-balancing: this member's run of the pool, as
    /// numbers), addresses in it come first, then the rest of the pool.
    pub fn offer(
        &mut self,
        pool: &Pool,
        mac: &str,
        reservations: &Reservations,
        now_ms: i64,
        slice: Option<(u32, u32)>,
    ) -> Option<Ipv4Addr> {
        let lease = |table: &Self, ip: Ipv4Addr| table.by_ip.get(&ip).map(|(l, _)| l.clone());
        if let Some(ip) = reservations.for_mac(mac) {
            self.probes += 1;
            return may_hold(pool, mac, ip, lease(self, ip).as_ref(), reservations, now_ms).then_some(ip);
        }
        if let Some(ip) = self.by_mac.get(mac).copied() {
            self.probes += 1;
            let current = lease(self, ip);
            let held = current
                .as_ref()
                .is_some_and(|l| l.mac == mac && l.live(now_ms) && l.state != LeaseState::Declined);
            if held && may_hold(pool, mac, ip, current.as_ref(), reservations, now_ms) {
                return Some(ip);
            }
        }
        let (start, end) = (u32::from(pool.start), u32::from(pool.end));
        if start > end {
            return None;
        }
        if let Some((low, high)) = slice.filter(|(low, high)| start <= *low && low <= high && *high <= end) {
            let first = if (low..=high).contains(&self.cursor) { self.cursor } else { low };
            let mine = self
                .unrecorded(first, high, mac, reservations)
                .or_else(|| self.unrecorded(low, first.checked_sub(1)?, mac, reservations))
                .or_else(|| self.longest_ended(pool, mac, reservations, now_ms, Some((low, high))));
            if let Some(chosen) = mine {
                self.cursor = u32::from(chosen).saturating_add(1);
                return Some(chosen);
            }
        }
        let first = if (start..=end).contains(&self.cursor) { self.cursor } else { start };
        let never_recorded = self
            .unrecorded(first, end, mac, reservations)
            .or_else(|| self.unrecorded(start, first.checked_sub(1)?, mac, reservations));
        let chosen = never_recorded.or_else(|| self.longest_ended(pool, mac, reservations, now_ms, None))?;
        self.cursor = u32::from(chosen).saturating_add(1);
        Some(chosen)
    }

    /// The first address in `low..=high` without a record and not reserved
    /// for another MAC.
    fn unrecorded(
        &mut self,
        mut low: u32,
        high: u32,
        mac: &str,
        reservations: &Reservations,
    ) -> Option<Ipv4Addr> {
        while low <= high {
            let candidate = self.recorded.first_gap(low, high)?;
            self.probes += 1;
            let ip = Ipv4Addr::from(candidate);
            if reservations.holder(ip).is_none_or(|holder| holder == mac) {
                return Some(ip);
            }
            low = candidate.checked_add(1)?;
        }
        None
    }

    /// The address in `pool` (with `within`, in that run of it) whose
    /// record ended longest ago and that `mac` may hold now. Within a run,
    /// at most [`ENDED_PROBES`] ended records are looked at: the rest of
    /// the pool is the fallback.
    fn longest_ended(
        &mut self,
        pool: &Pool,
        mac: &str,
        reservations: &Reservations,
        now_ms: i64,
        within: Option<(u32, u32)>,
    ) -> Option<Ipv4Addr> {
        let (start, end) = (u32::from(pool.start), u32::from(pool.end));
        let index = self.expiring.iter().position(|p| p.start == start && p.end == end)?;
        let mut probes = 0;
        let mut chosen = None;
        for (expires, ip) in &self.expiring[index].by_expiry {
            if *expires > now_ms || (within.is_some() && probes >= ENDED_PROBES) {
                break;
            }
            if within.is_some_and(|(low, high)| !(low..=high).contains(ip)) {
                probes += 1;
                continue;
            }
            probes += 1;
            let ip = Ipv4Addr::from(*ip);
            let lease = self.by_ip.get(&ip).map(|(l, _)| l);
            if may_hold(pool, mac, ip, lease, reservations, now_ms) {
                chosen = Some(ip);
                break;
            }
        }
        self.probes += probes;
        chosen
    }
}

/// Ended records looked at for one in this member's slice before the
/// rest of the pool is tried (load-balancing).
const ENDED_PROBES: u64 = 32;

/// Sets of `u32` kept as maximal runs of consecutive values (start → end,
/// inclusive): membership, insertion, removal and "the first value not in
/// the set from here" each cost one or two map lookups.
#[derive(Clone, Debug, Default)]
struct Runs(BTreeMap<u32, u32>);

impl Runs {
    fn run_containing(&self, value: u32) -> Option<(u32, u32)> {
        let (start, end) = self.0.range(..=value).next_back()?;
        (value <= *end).then_some((*start, *end))
    }

    fn insert(&mut self, value: u32) {
        if self.run_containing(value).is_some() {
            return;
        }
        let before = value.checked_sub(1).and_then(|v| self.run_containing(v));
        let after = value.checked_add(1).and_then(|v| self.0.get(&v).map(|end| (v, *end)));
        let start = before.map_or(value, |(start, _)| start);
        let end = after.map_or(value, |(after_start, end)| {
            self.0.remove(&after_start);
            end
        });
        self.0.insert(start, end);
    }

    fn remove(&mut self, value: u32) {
        let Some((start, end)) = self.run_containing(value) else { return };
        self.0.remove(&start);
        if start < value {
            self.0.insert(start, value - 1);
        }
        if value < end {
            self.0.insert(value + 1, end);
        }
    }

    /// The first value in `low..=high` not in the set. Runs are maximal, so
    /// the value after the run holding `low` is not in the set.
    fn first_gap(&self, low: u32, high: u32) -> Option<u32> {
        let candidate = match self.run_containing(low) {
            Some((_, end)) => end.checked_add(1)?,
            None => low,
        };
        (candidate <= high).then_some(candidate)
    }
}

#[cfg(test)]
mod tests;
