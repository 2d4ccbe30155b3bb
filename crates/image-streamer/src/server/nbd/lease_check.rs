//! Whether a connection may open `host/<mac>`: a host's write cache holds
//! that machine's disk writes, so only that machine may open it.
//!
//! The trust model: where Bootfleet's DHCP runs in full mode it knows
//! which address holds which MAC (the leases in the store, written by the
//! DHCP leader), and then the export opens only from the address holding
//! that MAC's bound, unexpired lease. Where leases are unknown — proxyDHCP,
//! or another DHCP server — the streamer cannot tell a host from another
//! machine on the boot network that names its MAC, and opens the export
//! to any address: keep NBD on the boot network, as TFTP is (PVS trusts
//! its streaming network the same way).
//!
//! Pure: the leases come in, a verdict goes out.

use std::net::IpAddr;

use bootfleet_proto::v1::{Lease, lease};

/// Checks `mac` opening its export from `source` against the current
/// `leases`; the error says why it is refused.
pub(crate) fn check<'a>(
    leases: impl IntoIterator<Item = &'a Lease>,
    mac: &str,
    source: IpAddr,
    now_unix_ms: i64,
) -> Result<(), String> {
    let source = match source {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let source = source.to_string();
    let mut mac_elsewhere = None;
    for lease in leases {
        let current = lease.state() == lease::State::Bound && lease.expires_unix_ms > now_unix_ms;
        if !current {
            continue;
        }
        if lease.ip == source {
            return if lease.mac == mac {
                Ok(())
            } else {
                Err(format!("{source} holds the lease of {}, not of {mac}", lease.mac))
            };
        }
        if lease.mac == mac {
            mac_elsewhere = Some(lease.ip.clone());
        }
    }
    match mac_elsewhere {
        Some(ip) => Err(format!("the lease of {mac} is held at {ip}, not at {source}")),
        // No lease names this address or this MAC: leases are not known
        // for this host.
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: &str = "52:54:00:00:00:01";
    const NOW: i64 = 1_000_000;

    fn lease(ip: &str, mac: &str, state: lease::State, expires: i64) -> Lease {
        Lease {
            ip: ip.into(),
            mac: mac.into(),
            state: state.into(),
            expires_unix_ms: expires,
            ..Default::default()
        }
    }

    fn at(ip: &str) -> IpAddr {
        ip.parse().unwrap()
    }

    #[test]
    fn the_address_holding_the_macs_lease_opens_it_and_no_other() {
        let leases = [
            lease("198.18.0.10", MAC, lease::State::Bound, NOW + 1),
            lease("198.18.0.11", "52:54:00:00:00:02", lease::State::Bound, NOW + 1),
        ];
        assert_eq!(check(&leases, MAC, at("198.18.0.10"), NOW), Ok(()));
        assert_eq!(check(&leases, MAC, at("::ffff:198.18.0.10"), NOW), Ok(()));
        let err = check(&leases, MAC, at("198.18.0.11"), NOW).unwrap_err();
        assert!(err.contains("holds the lease of 52:54:00:00:00:02"), "{err}");
        let err = check(&leases, MAC, at("198.18.0.12"), NOW).unwrap_err();
        assert!(err.contains("held at 198.18.0.10"), "{err}");
    }

    #[test]
    fn only_bound_unexpired_leases_count() {
        for stale in [
            lease("198.18.0.10", MAC, lease::State::Bound, NOW),
            lease("198.18.0.10", MAC, lease::State::Offered, NOW + 1),
            lease("198.18.0.10", MAC, lease::State::Declined, NOW + 1),
        ] {
            // Not a current lease: nothing known of this host.
            assert_eq!(check([&stale], MAC, at("198.18.0.12"), NOW), Ok(()));
        }
        // An address whose lease expired is no longer that MAC's.
        let expired = lease("198.18.0.10", "52:54:00:00:00:02", lease::State::Bound, NOW - 1);
        assert_eq!(check([&expired], MAC, at("198.18.0.10"), NOW), Ok(()));
    }

    #[test]
    fn without_leases_any_address_opens_it() {
        assert_eq!(check([], MAC, at("198.18.0.12"), NOW), Ok(()));
    }
}
