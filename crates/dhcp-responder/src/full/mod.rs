//! Full DHCP: address pools, reservations and lease decisions, pure.
//! The shell reads the leases, asks here, and writes the result as a
//! compare-and-swap before any ACK leaves. [`table`] indexes the leases
//! a responder knows and allocates from them.

use std::collections::{BTreeMap, HashMap};

use std::net::Ipv4Addr;
use std::time::Duration;

mod machine;
mod reply;
mod table;

use crate::wire::code;

pub use machine::{
    Action, Event, FullConfig, FullMachine, LeaseRecord, OpId, Quiet, RequestId, Standing, StoreUnavailable,
    addressed_here,
};
pub use table::LeaseTable;

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
        let mut out = vec![(code::SUBNET_MASK, self.mask().to_be_bytes().to_vec())];
        if let Some(router) = self.router {
            out.push((code::ROUTER, router.octets().to_vec()));
        }
        if !self.dns.is_empty() {
            out.push((code::DNS_SERVERS, self.dns.iter().flat_map(|d| d.octets()).collect()));
        }
        if let Some(secs) = lease_secs {
            out.push((code::LEASE_TIME, secs.to_be_bytes().to_vec()));
            out.push((code::RENEWAL_TIME, (secs / 2).to_be_bytes().to_vec()));
            out.push((code::REBINDING_TIME, (secs / 8 * 7).to_be_bytes().to_vec()));
        }
        out
    }
}

/// Fixed addresses by MAC, and who each reserved address is for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reservations {
    by_mac: HashMap<String, Ipv4Addr>,
    by_ip: HashMap<Ipv4Addr, String>,
}

impl Reservations {
    /// Reservations from (MAC, address) pairs. `Err` names an address
    /// reserved for two MACs (which one should have it is not said).
    pub fn new(pairs: impl IntoIterator<Item = (String, Ipv4Addr)>) -> Result<Self, Ipv4Addr> {
        let mut reservations = Self::default();
        for (mac, ip) in pairs {
            if reservations.by_ip.get(&ip).is_some_and(|holder| *holder != mac) {
                return Err(ip);
            }
            if let Some(old) = reservations.by_mac.insert(mac.clone(), ip) {
                reservations.by_ip.remove(&old);
            }
            reservations.by_ip.insert(ip, mac);
        }
        Ok(reservations)
    }

    /// The address reserved for `mac`.
    pub fn for_mac(&self, mac: &str) -> Option<Ipv4Addr> {
        self.by_mac.get(mac).copied()
    }

    /// The MAC `ip` is reserved for.
    pub fn holder(&self, ip: Ipv4Addr) -> Option<&str> {
        self.by_ip.get(&ip).map(String::as_str)
    }

    /// Number of reservations.
    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
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
    reservations: &Reservations,
    now_ms: i64,
) -> bool {
    let reserved_for_mac = reservations.for_mac(mac) == Some(ip);
    let reserved_for_other = reservations.holder(ip).is_some_and(|holder| holder != mac);
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
    reservations: &Reservations,
    now_ms: i64,
) -> Option<LeaseEntry> {
    let in_pool = pool.on_subnet(ip) && (pool.in_range(ip) || reservations.for_mac(mac) == Some(ip));
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

/// Added to a lease's end when it is written, so that the ACK sent once
/// the write committed can still promise the whole lease time: the ACK
/// says what is left of the stored lease when it leaves, in whole seconds.
pub const WRITE_ALLOWANCE: Duration = Duration::from_millis(999);

/// Where a lease of `lease_time` granted at `now_ms` ends in the store.
pub fn lease_end(now_ms: i64, lease_time: Duration) -> i64 {
    now_ms.saturating_add(millis(lease_time)).saturating_add(millis(WRITE_ALLOWANCE))
}

/// Longest lease handed out offline: the client comes back soon, when
/// the store may be there again.
pub const OFFLINE_LEASE: Duration = Duration::from_secs(300);

/// How far replicas' clocks may disagree: an offline answer ends this much
/// before the lease it rests on, by this replica's clock.
pub const CLOCK_MARGIN: Duration = Duration::from_secs(5);

/// Least lease worth handing out offline.
const OFFLINE_LEAST_SECS: u32 = 10;

/// Seconds of lease a replica without the store may give again, from a
/// bound lease its copy shows ending at `expires_unix_ms` (`None`: too
/// little left). Never past that end (less [`CLOCK_MARGIN`]), never more
/// than [`OFFLINE_LEASE`].
///
/// Why this cannot give one address to two clients, however stale the
/// copy: the leader never lets a lease it committed end earlier while its
/// client holds it ([`held_until`]: a renewal only lengthens it, a RELEASE
/// keeps the address held for that client until the released lease would
/// have ended, a DECLINE holds it from everyone at least that long), and
/// never gives the address to another client before the record ends. So
/// any bound lease a copy ever saw stays its client's until the end the
/// copy shows, and the offline answer ends before that.
pub fn offline_lease_secs(expires_unix_ms: i64, now_ms: i64) -> Option<u32> {
    let left_ms = expires_unix_ms.saturating_sub(now_ms).saturating_sub(millis(CLOCK_MARGIN));
    let secs =
        u32::try_from(left_ms / 1000).ok()?.min(u32::try_from(OFFLINE_LEASE.as_secs()).unwrap_or(u32::MAX));
    (secs >= OFFLINE_LEAST_SECS).then_some(secs)
}

/// What a RELEASE of `ip` from `mac` leaves in the store: `None` (delete
/// the record) when the lease has ended or was not `mac`'s; else an offer
/// held for `mac` until the released lease would have ended. The client
/// may have the address back; no one else gets it before then, so a
/// replica that missed the RELEASE (cut off from the store) and still
/// shows the lease bound can never hand it to its old client while
/// another holds it.
pub fn released(lease: Option<&LeaseEntry>, mac: &str, now_ms: i64) -> Option<LeaseEntry> {
    let lease = lease.filter(|l| l.mac == mac && l.live(now_ms))?;
    Some(LeaseEntry {
        mac: mac.to_owned(),
        state: LeaseState::Offered,
        expires_unix_ms: lease.expires_unix_ms,
    })
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
    // A negative age (beyond the write allowance every lease is written
    // with): granted under a longer lease time than configured now;
    // writing gives it the current one.
    let recent = age_ms >= -millis(WRITE_ALLOWANCE)
        && (age_ms as f64) < reuse.clamp(0.0, MAX_LEASE_REUSE) * full_ms as f64;
    (recent && left_ms >= 1000).then(|| u32::try_from(left_ms / 1000).unwrap_or(u32::MAX))
}

/// The address to offer `mac` given every lease (see [`LeaseTable::offer`]).
pub fn offer(
    pool: &Pool,
    mac: &str,
    leases: &BTreeMap<Ipv4Addr, LeaseEntry>,
    reservations: &Reservations,
    now_ms: i64,
) -> Option<Ipv4Addr> {
    let mut table = LeaseTable::new(std::slice::from_ref(pool));
    for (ip, lease) in leases {
        table.apply(*ip, Some(lease.clone()), 1);
    }
    table.offer(pool, mac, reservations, now_ms, None)
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
    fn offers_follow_reservation_then_holding_then_unrecorded_then_longest_ended() {
        let p = pool();
        let mut leases = BTreeMap::new();
        let mut reservations = Reservations::default();
        assert_eq!(offer(&p, "a", &leases, &reservations, NOW), Some(Ipv4Addr::new(198, 18, 40, 100)));
        leases.insert(Ipv4Addr::new(198, 18, 40, 100), lease("a", LeaseState::Bound, NOW + 10));
        assert_eq!(
            offer(&p, "a", &leases, &reservations, NOW),
            Some(Ipv4Addr::new(198, 18, 40, 100)),
            "keeps its address"
        );
        assert_eq!(offer(&p, "b", &leases, &reservations, NOW), Some(Ipv4Addr::new(198, 18, 40, 101)));
        // Addresses without a record come before one whose lease ended.
        assert_eq!(offer(&p, "b", &leases, &reservations, NOW + 20), Some(Ipv4Addr::new(198, 18, 40, 101)));
        // A reservation (even outside the range) wins, and is kept from others.
        reservations = Reservations::new([
            ("c".to_owned(), Ipv4Addr::new(198, 18, 40, 50)),
            ("d".to_owned(), Ipv4Addr::new(198, 18, 40, 101)),
        ])
        .unwrap();
        assert_eq!(offer(&p, "c", &leases, &reservations, NOW), Some(Ipv4Addr::new(198, 18, 40, 50)));
        assert_eq!(offer(&p, "b", &leases, &reservations, NOW), Some(Ipv4Addr::new(198, 18, 40, 102)));
        // Declined addresses stay out of use for everyone.
        leases.insert(Ipv4Addr::new(198, 18, 40, 102), lease("b", LeaseState::Declined, NOW + 10));
        assert_eq!(offer(&p, "b", &leases, &reservations, NOW), Some(Ipv4Addr::new(198, 18, 40, 103)));
        // Full pool: nothing.
        leases.insert(Ipv4Addr::new(198, 18, 40, 103), lease("e", LeaseState::Offered, NOW + 10));
        assert_eq!(offer(&p, "f", &leases, &reservations, NOW), None);
        // Once they end, the first to have ended frees its address (.101
        // stays reserved for d).
        assert_eq!(offer(&p, "f", &leases, &reservations, NOW + 20), Some(Ipv4Addr::new(198, 18, 40, 100)));
    }

    #[test]
    fn offline_leases_end_before_the_lease_they_rest_on() {
        let ends = NOW + 600_000;
        assert_eq!(offline_lease_secs(ends, NOW), Some(300), "at most five minutes");
        assert_eq!(offline_lease_secs(NOW + 60_000, NOW), Some(55), "never past the lease, less the margin");
        assert_eq!(offline_lease_secs(NOW + 15_000, NOW), Some(10));
        assert_eq!(offline_lease_secs(NOW + 14_999, NOW), None, "too little left");
        assert_eq!(offline_lease_secs(NOW - 1, NOW), None);
        assert_eq!(offline_lease_secs(i64::MIN, i64::MAX), None);
    }

    #[test]
    fn a_released_address_stays_its_clients_until_the_lease_would_have_ended() {
        let bound = lease("aa", LeaseState::Bound, NOW + 60_000);
        let held = released(Some(&bound), "aa", NOW).unwrap();
        assert_eq!((held.state, held.expires_unix_ms), (LeaseState::Offered, NOW + 60_000));
        assert!(!may_hold(
            &pool(),
            "bb",
            Ipv4Addr::new(198, 18, 40, 100),
            Some(&held),
            &Reservations::default(),
            NOW + 59_999
        ));
        assert!(may_hold(
            &pool(),
            "aa",
            Ipv4Addr::new(198, 18, 40, 100),
            Some(&held),
            &Reservations::default(),
            NOW
        ));
        assert_eq!(released(Some(&bound), "bb", NOW), None, "not the sender's");
        assert_eq!(released(Some(&bound), "aa", NOW + 60_000), None, "over already");
        assert_eq!(released(None, "aa", NOW), None);
        // Writes for the same client never end its lease earlier.
        assert_eq!(held_until(Some(&bound), "aa", NOW + 30_000, NOW), NOW + 60_000);
        assert_eq!(held_until(Some(&bound), "aa", NOW + 90_000, NOW), NOW + 90_000);
        assert_eq!(held_until(Some(&bound), "bb", NOW + 30_000, NOW), NOW + 30_000);
        assert_eq!(held_until(Some(&bound), "aa", NOW + 61_000, NOW + 60_000), NOW + 61_000, "ended");
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
            let mut seen = std::collections::HashSet::new();
            let reservations = Reservations::new(
                reserved
                    .into_iter()
                    .filter(|(_, last)| seen.insert(*last))
                    .map(|(mac, last)| (format!("m{mac}"), Ipv4Addr::new(198, 18, 40, last))),
            )
            .unwrap();
            let mac = format!("m{who}");
            if let Some(ip) = offer(&p, &mac, &leases, &reservations, NOW) {
                let other_holds = leases.get(&ip).is_some_and(|l| l.expires_unix_ms > NOW && l.mac != mac);
                prop_assert!(!other_holds, "{ip} is held by another MAC");
                prop_assert!(reservations.holder(ip).is_none_or(|m| m == mac), "{ip} is reserved for another MAC");
                prop_assert!(p.on_subnet(ip));
            }
        }
    }
}
