//! Who answers which client in load-balancing mode (`dhcp.ha =
//! "load-balancing"`), pure.
//!
//! Every live replica (a member record under
//! `/bootfleet/v1/members/dhcp-responder/`) owns a share of the clients:
//! the member whose score for the client is highest, by rendezvous
//! (highest-random-weight) hashing of the member id with the client's
//! hardware address. This is RFC 3074's idea (a hash of the client splits
//! the clients between servers without their talking to each other)
//! carried from two servers to any number. Rendezvous hashing is chosen
//! because membership changes move the fewest clients: when a member
//! leaves, only its clients move (each to the member that scored second
//! for it), and when it comes back exactly those move back.
//!
//! Choices worth knowing:
//! - The client is its hardware address, not option 61 as in RFC 3074:
//!   leases are kept by MAC, and a network boot's three DHCP clients (PXE
//!   ROM, iPXE, the OS) share the MAC but may each send another client
//!   identifier; with the MAC one replica answers all three.
//! - The hash is spelled out here (FNV-1a, then a 64-bit finalizer) rather
//!   than taken from `std`, whose hasher may change between Rust releases:
//!   replicas built by different compilers must still agree on every
//!   client's owner.
//! - Each member also has a slice of every pool (the range cut into as many
//!   runs of consecutive addresses as there are members, in the order of
//!   member ids): it allocates from its own slice first, so replicas
//!   allocating at once rarely race for one address. The slice is only a
//!   preference; the compare-and-swap on every lease write is what keeps
//!   one address from two clients.

/// The live members as one replica sees them, in id order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shares {
    members: Vec<String>,
}

/// One member's place among the live members: what it needs to find its
/// slice of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// Its position among the members in id order.
    pub index: u32,
    /// How many members there are.
    pub of: u32,
}

impl Shares {
    /// The shares among these member ids (repeats ignored).
    pub fn new<S: Into<String>>(members: impl IntoIterator<Item = S>) -> Self {
        let mut members: Vec<String> = members.into_iter().map(Into::into).collect();
        members.sort();
        members.dedup();
        Self { members }
    }

    /// The member ids, in order.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// Whether `member` is live.
    pub fn contains(&self, member: &str) -> bool {
        self.members.binary_search_by(|m| m.as_str().cmp(member)).is_ok()
    }

    /// The member that answers `client` (`None`: no member is live).
    pub fn owner(&self, client: &[u8; 6]) -> Option<&str> {
        self.members.iter().max_by_key(|member| (score(member, client), member.as_str())).map(String::as_str)
    }

    /// Whether `member` answers `client`.
    pub fn owns(&self, member: &str, client: &[u8; 6]) -> bool {
        self.owner(client) == Some(member)
    }

    /// `member`'s place among the live members (`None`: not live).
    pub fn place(&self, member: &str) -> Option<Place> {
        let index = self.members.binary_search_by(|m| m.as_str().cmp(member)).ok()?;
        Some(Place {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            of: u32::try_from(self.members.len()).unwrap_or(u32::MAX),
        })
    }
}

impl Place {
    /// This member's slice of the addresses `start..=end` (as numbers):
    /// the range cut into `of` runs as equal as can be, the first runs one
    /// longer when it does not divide. Empty (`None`) when there are more
    /// members than addresses and this one gets none.
    pub fn slice(self, start: u32, end: u32) -> Option<(u32, u32)> {
        if start > end || self.of == 0 || self.index >= self.of {
            return None;
        }
        let size = u64::from(end - start) + 1;
        let (of, index) = (u64::from(self.of), u64::from(self.index));
        let (base, extra) = (size / of, size % of);
        let first = index * base + index.min(extra);
        let len = base + u64::from(index < extra);
        if len == 0 {
            return None;
        }
        let low = u64::from(start) + first;
        let high = low + len - 1;
        Some((u32::try_from(low).ok()?, u32::try_from(high).ok()?))
    }
}

/// `member`'s score for `client`: FNV-1a over the member id, a separator
/// and the hardware address, then MurmurHash3's 64-bit finalizer (FNV
/// alone leaves the high bits of similar inputs alike, and the highest
/// score decides).
fn score(member: &str, client: &[u8; 6]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in member.as_bytes().iter().chain([0u8].iter()).chain(client.iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn client(n: u32) -> [u8; 6] {
        let b = n.to_be_bytes();
        [0x52, 0x54, b[0], b[1], b[2], b[3]]
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("replica-{i}")).collect()
    }

    #[test]
    fn the_hash_is_fixed_across_builds() {
        // Replicas built by different compilers must agree: these values
        // are the function's, written down once.
        assert_eq!(score("dhcp-1", &[0x52, 0x54, 0, 0, 0, 1]), 7_184_252_912_801_834_571);
        let shares = Shares::new(["dhcp-1", "dhcp-2", "dhcp-3"]);
        let owners: Vec<&str> = (0..6).map(|n| shares.owner(&client(n)).unwrap()).collect();
        assert_eq!(owners, FIXED_OWNERS);
    }

    /// The owners of clients 0..6 among dhcp-1..3, as first computed.
    const FIXED_OWNERS: [&str; 6] = ["dhcp-2", "dhcp-3", "dhcp-2", "dhcp-1", "dhcp-3", "dhcp-2"];

    #[test]
    fn no_member_owns_nothing_and_order_does_not_matter() {
        assert_eq!(Shares::new(Vec::<String>::new()).owner(&client(1)), None);
        let a = Shares::new(["b", "a", "c", "a"]);
        let b = Shares::new(["c", "b", "a"]);
        assert_eq!(a, b);
        assert_eq!(a.members(), ["a", "b", "c"]);
        assert!(a.contains("b") && !a.contains("d"));
        assert_eq!(a.place("c"), Some(Place { index: 2, of: 3 }));
        assert_eq!(a.place("d"), None);
    }

    #[test]
    fn shares_are_about_even() {
        let shares = Shares::new(ids(3));
        let mut counts = std::collections::HashMap::new();
        for n in 0..30_000 {
            *counts.entry(shares.owner(&client(n)).unwrap().to_owned()).or_insert(0u32) += 1;
        }
        for (member, count) in counts {
            assert!((9_000..11_000).contains(&count), "{member} owns {count} of 30,000");
        }
    }

    #[test]
    fn slices_cover_the_range_once_in_order() {
        let of = 3;
        let slices: Vec<_> = (0..of).map(|index| Place { index, of }.slice(100, 109).unwrap()).collect();
        assert_eq!(slices, [(100, 103), (104, 106), (107, 109)]);
        assert_eq!(Place { index: 0, of: 1 }.slice(5, 5), Some((5, 5)));
        assert_eq!(Place { index: 3, of: 4 }.slice(5, 7), None, "more members than addresses");
        assert_eq!(Place { index: 0, of: 2 }.slice(0, u32::MAX), Some((0, u32::MAX / 2)));
        assert_eq!(Place { index: 1, of: 2 }.slice(0, u32::MAX), Some((u32::MAX / 2 + 1, u32::MAX)));
        assert_eq!(Place { index: 0, of: 2 }.slice(9, 8), None);
    }

    proptest! {
        /// Every client has exactly one owner, a live member, whoever asks.
        #[test]
        fn every_client_has_one_live_owner(members in 1usize..8, n in any::<u32>()) {
            let shares = Shares::new(ids(members));
            let owner = shares.owner(&client(n)).unwrap();
            prop_assert!(shares.contains(owner));
            let owning = shares.members().iter().filter(|m| shares.owns(m, &client(n))).count();
            prop_assert_eq!(owning, 1);
        }

        /// A member leaving moves only its own clients; coming back, it
        /// gets exactly those back and nothing else moves.
        #[test]
        fn only_the_leaving_members_clients_move_and_they_move_back(
            members in 2usize..8,
            leaving in any::<prop::sample::Index>(),
            clients in proptest::collection::vec(any::<u32>(), 1..200),
        ) {
            let all = ids(members);
            let gone = leaving.get(&all).clone();
            let before = Shares::new(all.clone());
            let during = Shares::new(all.iter().filter(|m| **m != gone).cloned());
            let after = Shares::new(all.iter().rev().cloned());
            for n in clients {
                let c = client(n);
                let (was, now, back) = (before.owner(&c).unwrap(), during.owner(&c).unwrap(), after.owner(&c).unwrap());
                if was == gone {
                    prop_assert_ne!(now, gone.as_str());
                } else {
                    prop_assert_eq!(now, was, "a client of a member that stayed moved");
                }
                prop_assert_eq!(back, was, "not back with its owner");
            }
        }

        /// Slices of any range among any members cover it exactly once.
        #[test]
        fn slices_partition_the_range(start in any::<u32>(), len in 0u32..5_000, of in 1u32..10) {
            let end = start.saturating_add(len);
            let mut next = u64::from(start);
            for index in 0..of {
                if let Some((low, high)) = (Place { index, of }).slice(start, end) {
                    prop_assert_eq!(u64::from(low), next);
                    prop_assert!(low <= high);
                    next = u64::from(high) + 1;
                }
            }
            prop_assert_eq!(next, u64::from(end) + 1);
        }
    }
}
