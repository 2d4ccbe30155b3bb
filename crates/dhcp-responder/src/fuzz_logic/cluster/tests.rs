use proptest::prelude::*;

use super::{Seen, balanced_interleaving, interleaving};

/// One step of a script, as [`super::Cluster::step`] reads it.
#[derive(Clone, Copy)]
enum Step {
    /// Replica, client, kind (0 DISCOVER, 1 REQUEST selecting, 2 REQUEST
    /// init-reboot, 3 REQUEST renewing, 4 RELEASE, 5 DECLINE, 6 INFORM),
    /// address (0-2 the pool's, 3 the client's last).
    Ask(u8, u8, u8, u8),
    /// Runs a replica's first store operation as the store would.
    Run(u8),
    /// Runs it, and the write commits but the writer hears nothing.
    RunLost(u8),
    /// Delivers a replica's watch event number n.
    Deliver(u8, u8),
    /// Delivers it and keeps it queued (it comes again).
    Repeat(u8, u8),
    /// Reloads a replica from the store as it was n revisions ago.
    Reload(u8, u8),
    Depose,
    Elect(u8),
    /// Cuts a replica off from the store, or back.
    Cut(u8),
    /// Seconds forward (negative: back).
    Clock(i16),
    /// Load-balancing: a replica joins the membership.
    Join(u8),
    /// Load-balancing: a replica's membership lapses in the store.
    Lapse(u8),
    /// Load-balancing: a replica looks at the members again.
    Look(u8),
}

/// In [`Step::Ask`], the replica that owns the client (load-balancing).
const OWNER: u8 = 3;

fn script(steps: &[Step]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for step in steps {
        match *step {
            Step::Ask(r, client, kind, which) => bytes.extend([0, r, client, kind, which]),
            Step::Run(r) => bytes.extend([3, r, 0, 0]),
            Step::RunLost(r) => bytes.extend([3, r, 0, 7]),
            Step::Deliver(r, n) => bytes.extend([5, r, n, 1]),
            Step::Repeat(r, n) => bytes.extend([5, r, n, 0]),
            Step::Reload(r, n) => bytes.extend([6, r, n]),
            Step::Depose => bytes.extend([7, 0, 0]),
            Step::Elect(r) => bytes.extend([7, r, 2]),
            Step::Cut(r) => bytes.extend([7, r, 1]),
            Step::Clock(secs) if secs >= 0 => bytes.extend([8, 0, 6, u8::try_from(secs).unwrap()]),
            Step::Clock(secs) => bytes.extend([8, 0, 7, u8::try_from(-secs).unwrap()]),
            Step::Join(r) => bytes.extend([7, r, 2]),
            Step::Lapse(r) => bytes.extend([7, r, 0]),
            Step::Look(r) => bytes.extend([7, r, 4]),
        }
    }
    bytes
}

/// A client leased by replica 0, which is then cut off from the store;
/// replica 1 leads, the client releases, another client takes an
/// address, and the first, rebooting, asks replica 0 (offline) again.
fn partition() -> Vec<u8> {
    use Step::*;
    let mut steps = vec![Elect(0), Ask(0, 0, 0, 3), Run(0), Ask(0, 0, 1, 3), Run(0)];
    steps.extend((0..4).map(|_| Deliver(1, 0)));
    steps.extend([Cut(0), Elect(1), Ask(1, 0, 4, 3), Run(1), Run(1)]);
    steps.extend([Ask(1, 1, 0, 3), Run(1), Ask(1, 1, 1, 3), Run(1), Run(1)]);
    steps.extend([Ask(1, 2, 0, 3), Run(1), Run(1), Run(1), Run(1), Ask(1, 2, 1, 3), Run(1), Run(1)]);
    steps.extend([Ask(0, 0, 2, 3), Ask(0, 0, 0, 3), Clock(30), Ask(0, 0, 2, 3)]);
    script(&steps)
}

/// A leader's writes left on their way while it is deposed and another
/// is elected: they run late, and the new leader's own go through.
fn late_writes() -> Vec<u8> {
    use Step::*;
    let steps = [
        Elect(0),
        Ask(0, 0, 0, 3),
        Ask(0, 1, 0, 3),
        Depose,
        Elect(1),
        Ask(1, 2, 0, 3),
        Run(0),
        Run(0),
        Run(0),
        Run(1),
        Ask(1, 2, 1, 3),
        Run(1),
        Run(0),
        Run(0),
        Run(0),
        Ask(1, 0, 0, 3),
        Run(1),
        Ask(1, 0, 1, 3),
        Run(1),
        Run(1),
    ];
    script(&steps)
}

/// Watch events out of order and twice, a reload from an old copy, a
/// write that committed without its writer hearing, clock jumps both
/// ways, renewals and reuse in between.
fn disorder() -> Vec<u8> {
    use Step::*;
    let steps = [
        Elect(2),
        Ask(2, 0, 0, 0),
        Run(2),
        Ask(2, 0, 1, 3),
        RunLost(2),
        Ask(2, 0, 1, 3),
        Run(2),
        Run(2),
        Run(2),
        Ask(2, 0, 2, 3),
        Run(2),
        Repeat(0, 2),
        Deliver(0, 0),
        Deliver(0, 1),
        Repeat(0, 0),
        Reload(2, 3),
        Ask(2, 0, 3, 3),
        Run(2),
        Clock(-20),
        Ask(2, 1, 0, 3),
        Run(2),
        Ask(2, 1, 1, 3),
        Run(2),
        Clock(70),
        Ask(2, 3, 0, 3),
        Run(2),
        Ask(2, 3, 1, 3),
        Run(2),
        Depose,
        Cut(0),
        Ask(0, 0, 2, 3),
        Ask(0, 1, 2, 3),
        Elect(1),
        Ask(1, 2, 0, 0),
        Run(1),
        Run(1),
        Ask(1, 2, 1, 3),
        Run(1),
        Run(1),
        Ask(1, 1, 5, 3),
        Run(1),
        Run(1),
    ];
    script(&steps)
}

/// The wall clock steps back while a replica is idle: client 0's lease
/// from replica 1 ends, client 1 gets the address, the clock goes back a
/// minute, and replica 0 (which last heard the time before all that)
/// leads and renews client 1. Replicas must agree on the time: had replica
/// 0 kept its old time, its ACK would seem to start inside client 0's.
fn clock_step_back() -> Vec<u8> {
    use Step::*;
    let steps = [
        Elect(1),
        Ask(1, 0, 0, 0),
        Run(1),
        Ask(1, 0, 1, 0),
        Run(1),
        Deliver(0, 0),
        Clock(70),
        Ask(1, 1, 2, 0),
        Run(1),
        Clock(-60),
        Depose,
        Elect(0),
        Deliver(0, 0),
        Deliver(0, 0),
        Deliver(0, 0),
        Ask(0, 1, 2, 0),
        Run(0),
    ];
    script(&steps)
}

fn seeds() -> Vec<Vec<u8>> {
    vec![partition(), late_writes(), disorder(), clock_step_back()]
}

/// Load-balancing: three members lease to clients they own; r0's
/// membership lapses while it still believes in it (its writes are
/// refused), the others see it gone and answer its clients, keeping their
/// addresses; it joins again and the shares move back.
fn balanced_takeover() -> Vec<u8> {
    use Step::*;
    let mut steps = vec![Join(0), Join(1), Join(2), Look(0), Look(1), Look(2)];
    for client in 0..3 {
        steps.extend([Ask(OWNER, client, 0, 3), Run(0), Run(1), Run(2)]);
        steps.extend([Ask(OWNER, client, 1, 3), Run(0), Run(1), Run(2)]);
    }
    steps.extend([Lapse(0), Look(1), Look(2)]);
    for client in 0..3 {
        // Renewals broadcast (rebinding) reach everyone; r0 still tries.
        steps.extend([Ask(0, client, 3, 3), Ask(1, client, 3, 3), Ask(2, client, 3, 3)]);
        steps.extend([Run(0), Run(1), Run(2), Run(1), Run(2)]);
        steps.extend([Ask(OWNER, client, 2, 3), Run(1), Run(2), Run(1), Run(2)]);
    }
    steps.extend([Join(0), Look(0), Look(1), Look(2), Clock(20)]);
    for client in 0..4 {
        steps.extend([Ask(OWNER, client, 0, 3), Run(0), Run(1), Run(2)]);
        steps.extend([Ask(OWNER, client, 1, 3), Run(0), Run(1), Run(2), Run(0), Run(1), Run(2)]);
    }
    script(&steps)
}

/// Load-balancing with views that disagree: r0 saw only itself, r1 sees
/// both; both believe they own some clients and race for the few
/// addresses; the clock runs past leases and back.
fn balanced_race() -> Vec<u8> {
    use Step::*;
    let mut steps = vec![Join(0), Look(0), Join(1), Look(1)];
    for client in 0..4 {
        steps.extend([Ask(0, client, 0, 3), Ask(1, client, 0, 3), Run(1), Run(0)]);
        steps.extend([Ask(0, client, 1, 3), Ask(1, client, 1, 3), Run(0), Run(1), Run(0), Run(1)]);
    }
    steps.extend([Clock(61), Clock(-30)]);
    for client in (0..4).rev() {
        steps.extend([Ask(1, client, 2, 0), Ask(0, client, 2, 1), Run(1), Run(0), Run(1), Run(0)]);
    }
    script(&steps)
}

fn balanced_seeds() -> Vec<Vec<u8>> {
    vec![balanced_takeover(), balanced_race()]
}

#[test]
fn balanced_seeds_keep_every_ack_on_a_committed_lease_and_apart() {
    let seen: Vec<Seen> = balanced_seeds().iter().map(|seed| balanced_interleaving(seed)).collect();
    assert!(seen[0].acks >= 8 && seen[0].refused >= 1, "takeover: {:?}", seen[0]);
    assert!(seen[1].acks >= 4 && seen[1].refused >= 1, "race: {:?}", seen[1]);
}

#[test]
fn seed_interleavings_keep_every_ack_on_a_committed_lease_and_apart() {
    let seen: Vec<Seen> = seeds().iter().map(|seed| interleaving(seed)).collect();
    // The seeds reach what they are about (or they check nothing).
    assert!(seen[0].offline_acks >= 1, "partition: no offline ACK {:?}", seen[0]);
    assert!(seen[0].acks >= 3, "partition: {:?}", seen[0]);
    assert!(seen[1].refused >= 1 && seen[1].acks >= 2, "late writes: {:?}", seen[1]);
    assert!(seen[2].acks >= 3, "disorder: {:?}", seen[2]);
    assert!(seen[3].acks >= 3, "clock step back: {:?}", seen[3]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn any_interleaving_keeps_every_ack_on_a_committed_lease_and_apart(
        bytes in proptest::collection::vec(any::<u8>(), 0..800),
    ) {
        interleaving(&bytes);
    }

    #[test]
    fn mutated_seeds_keep_every_ack_on_a_committed_lease_and_apart(
        which in 0usize..4,
        flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..12),
        tail in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut bytes = seeds()[which].clone();
        for (at, value) in flips {
            if let Some(b) = bytes.get_mut(at) {
                *b = value;
            }
        }
        bytes.extend(tail);
        interleaving(&bytes);
    }

    #[test]
    fn any_balanced_interleaving_keeps_every_ack_on_a_committed_lease_and_apart(
        bytes in proptest::collection::vec(any::<u8>(), 0..800),
    ) {
        balanced_interleaving(&bytes);
    }

    #[test]
    fn mutated_balanced_seeds_keep_every_ack_on_a_committed_lease_and_apart(
        which in 0usize..2,
        flips in proptest::collection::vec((0usize..600, any::<u8>()), 1..12),
        tail in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut bytes = balanced_seeds()[which].clone();
        for (at, value) in flips {
            if let Some(b) = bytes.get_mut(at) {
                *b = value;
            }
        }
        bytes.extend(tail);
        balanced_interleaving(&bytes);
    }
}
