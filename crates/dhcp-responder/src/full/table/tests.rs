use std::net::Ipv4Addr;
use std::time::Duration;

use super::super::{LeaseEntry, LeaseState, Pool, Reservations};
use super::{LeaseTable, Runs};

fn lease(mac: &str, state: LeaseState, expires: i64) -> LeaseEntry {
    LeaseEntry { mac: mac.into(), state, expires_unix_ms: expires }
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

fn pool(start: Ipv4Addr, end: Ipv4Addr) -> Pool {
    Pool {
        network: Ipv4Addr::new(198, 18, 0, 0),
        prefix: 16,
        start,
        end,
        router: None,
        dns: Vec::new(),
        lease_time: Duration::from_secs(3600),
    }
}

const NOW: i64 = 1_000_000;

/// A pool of 4096 addresses, every one held by a live lease of its own
/// client, some of them ending sooner than others.
fn full_table() -> (Pool, LeaseTable) {
    let pool = pool(Ipv4Addr::new(198, 18, 16, 0), Ipv4Addr::new(198, 18, 31, 255));
    let mut table = LeaseTable::new(std::slice::from_ref(&pool));
    for (i, ip) in (u32::from(pool.start)..=u32::from(pool.end)).enumerate() {
        let expires = NOW + 1_000 + i64::try_from(i % 97).unwrap() * 1_000;
        table.apply(Ipv4Addr::from(ip), Some(lease(&format!("m{i}"), LeaseState::Bound, expires)), 1);
    }
    (pool, table)
}

#[test]
fn a_full_pool_is_found_full_in_a_few_probes_not_a_scan() {
    let (pool, mut table) = full_table();
    let none = Reservations::default();
    for newcomer in 0..10 {
        let before = table.probes();
        assert_eq!(table.offer(&pool, &format!("new{newcomer}"), &none, NOW, None), None);
        let probes = table.probes() - before;
        // A scan looks at all 4096; the index at most a couple.
        assert!(probes <= 2, "{probes} probes to find the pool full");
    }
    // Once leases end, the one that ended longest ago is offered, again
    // without a scan.
    let later = NOW + 3_500;
    let before = table.probes();
    let ip = table.offer(&pool, "new", &none, later, None).expect("expired leases free their address");
    assert!(table.probes() - before <= 2);
    let (ended, _) = table.get(ip).unwrap();
    assert!(ended.expires_unix_ms == NOW + 1_000, "not the longest ended: {ended:?}");
}

#[test]
fn a_hole_in_a_nearly_full_pool_is_found_without_a_scan() {
    let (pool, mut table) = full_table();
    let hole = Ipv4Addr::new(198, 18, 20, 7);
    table.apply(hole, None, 2);
    let before = table.probes();
    assert_eq!(table.offer(&pool, "new", &Reservations::default(), NOW, None), Some(hole));
    assert!(table.probes() - before <= 2);
    // Reserved for someone else: skipped (one probe more), never offered.
    table.apply(Ipv4Addr::new(198, 18, 20, 9), None, 3);
    table.apply(Ipv4Addr::new(198, 18, 20, 10), None, 3);
    table.apply(hole, Some(lease("new", LeaseState::Offered, NOW + 5_000)), 4);
    let reserved = Reservations::new([("other".to_owned(), Ipv4Addr::new(198, 18, 20, 9))]).unwrap();
    assert_eq!(table.offer(&pool, "third", &reserved, NOW, None), Some(Ipv4Addr::new(198, 18, 20, 10)));
}

#[test]
fn allocation_goes_round_the_pool_from_the_last_address_handed_out() {
    let pool = pool(Ipv4Addr::new(198, 18, 0, 10), Ipv4Addr::new(198, 18, 0, 13));
    let mut table = LeaseTable::new(std::slice::from_ref(&pool));
    let none = Reservations::default();
    let mut offered = Vec::new();
    for i in 0..4 {
        let mac = format!("m{i}");
        let ip = table.offer(&pool, &mac, &none, NOW, None).unwrap();
        table.apply(ip, Some(lease(&mac, LeaseState::Offered, NOW + 10)), 1);
        offered.push(ip.octets()[3]);
    }
    assert_eq!(offered, [10, 11, 12, 13]);
    // .11 released (no record): found even though the cursor is past it.
    table.apply(Ipv4Addr::new(198, 18, 0, 11), None, 2);
    assert_eq!(table.offer(&pool, "m9", &none, NOW, None), Some(Ipv4Addr::new(198, 18, 0, 11)));
    // A reload keeps the pools: expired records are found again.
    table.reload((10..=13).map(|last| {
        (Ipv4Addr::new(198, 18, 0, last), lease("x", LeaseState::Offered, NOW - i64::from(last)), 3)
    }));
    assert_eq!(
        table.offer(&pool, "m9", &none, NOW, None),
        Some(Ipv4Addr::new(198, 18, 0, 13)),
        "ended longest ago"
    );
}

#[test]
fn a_members_slice_comes_first_then_the_rest_of_the_pool() {
    let pool = pool(Ipv4Addr::new(198, 18, 0, 10), Ipv4Addr::new(198, 18, 0, 19));
    let mut table = LeaseTable::new(std::slice::from_ref(&pool));
    let none = Reservations::default();
    let slice = Some((u32::from(Ipv4Addr::new(198, 18, 0, 14)), u32::from(Ipv4Addr::new(198, 18, 0, 15))));
    let mut offered = Vec::new();
    for i in 0..4 {
        let mac = format!("m{i}");
        let ip = table.offer(&pool, &mac, &none, NOW, slice).unwrap();
        table.apply(ip, Some(lease(&mac, LeaseState::Offered, NOW + 10)), 1);
        offered.push(ip.octets()[3]);
    }
    assert_eq!(offered, [14, 15, 16, 17], "its own slice, then on round the pool");
    // Once its slice's leases end, their addresses come before free ones elsewhere.
    let ip = table.offer(&pool, "m9", &none, NOW + 20, slice).unwrap();
    assert!([14, 15].contains(&ip.octets()[3]), "{ip}");
    // A slice that is not the pool's is ignored.
    let outside = Some((1, 2));
    assert_eq!(table.offer(&pool, "m8", &none, NOW, outside), Some(Ipv4Addr::new(198, 18, 0, 18)));
}

#[test]
fn runs_merge_split_and_find_gaps() {
    let mut runs = Runs::default();
    for v in [5, 7, 6, 1, 2, 9] {
        runs.insert(v);
    }
    assert_eq!(runs.0.iter().map(|(s, e)| (*s, *e)).collect::<Vec<_>>(), [(1, 2), (5, 7), (9, 9)]);
    assert_eq!(runs.first_gap(5, 20), Some(8));
    assert_eq!(runs.first_gap(3, 20), Some(3));
    assert_eq!(runs.first_gap(9, 9), None);
    runs.remove(6);
    assert_eq!(runs.0.iter().map(|(s, e)| (*s, *e)).collect::<Vec<_>>(), [(1, 2), (5, 5), (7, 7), (9, 9)]);
    assert_eq!(runs.first_gap(5, 20), Some(6));
    runs.insert(u32::MAX);
    assert_eq!(runs.first_gap(u32::MAX, u32::MAX), None);
    runs.remove(1);
    runs.remove(2);
    assert_eq!(runs.first_gap(0, 10), Some(0));
    assert_eq!(runs.first_gap(1, 10), Some(1));
}
