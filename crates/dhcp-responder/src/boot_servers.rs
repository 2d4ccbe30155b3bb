//! Which boot server a client is sent to, when the live replicas come from
//! the store's membership records (TFTP servers for PXE firmware, image
//! streamers for iPXE's script URL): the least loaded, ties broken by the
//! client's MAC, so load spreads across equal replicas while one client
//! keeps getting the same server on its retries. Pure: candidates in,
//! choice out.

/// A live replica: where to reach it, and its load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate<T> {
    /// Its address (an IP for TFTP, a base URL for a streamer).
    pub address: T,
    /// Work in progress (transfers, streams).
    pub load: u64,
}

/// The replica for the client with `mac`; `None` when there is none.
pub fn pick<T: Ord + Clone>(candidates: &[Candidate<T>], mac: u64) -> Option<T> {
    let least = candidates.iter().map(|c| c.load).min()?;
    let mut tied: Vec<&T> = candidates.iter().filter(|c| c.load == least).map(|c| &c.address).collect();
    tied.sort_unstable();
    tied.dedup();
    let spread = usize::try_from(mac % tied.len() as u64).unwrap_or(0);
    tied.get(spread).map(|a| (*a).clone())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn c(last: u8, load: u64) -> Candidate<Ipv4Addr> {
        Candidate { address: Ipv4Addr::new(198, 18, 0, last), load }
    }

    #[test]
    fn least_loaded_wins_and_ties_spread_by_mac() {
        assert_eq!(pick::<Ipv4Addr>(&[], 1), None);
        assert_eq!(pick(&[c(1, 5), c(2, 1), c(3, 9)], 7), Some(Ipv4Addr::new(198, 18, 0, 2)));
        let equal = [c(2, 0), c(1, 0)];
        let chosen: Vec<_> = (0..4).map(|mac| pick(&equal, mac).unwrap()).collect();
        assert_eq!(chosen[0], chosen[2], "the same client keeps its server");
        assert_ne!(chosen[0], chosen[1], "clients spread over equal servers");
        // Order of the records does not matter.
        assert_eq!(pick(&[c(1, 0), c(2, 0)], 3), pick(&[c(2, 0), c(1, 0)], 3));
    }
}
