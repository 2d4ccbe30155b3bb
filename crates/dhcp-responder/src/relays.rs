//! Which relay agents are believed (`dhcp.trusted_relays`).
//!
//! A relayed request names the client's subnet in `giaddr`, and the pool
//! is picked by it. Nothing in the packet proves that a relay wrote it: a
//! client on the responder's own link can set `giaddr` itself and so take
//! an address (and boot answers) from any other subnet's pool, or have
//! replies sent to any address on port 67. So a request with `giaddr` set
//! is answered only when the datagram came from a configured relay
//! address or subnet; with none configured, relayed requests are dropped.
//! The check is on the datagram's source address, not on `giaddr`: a relay
//! sends from its own address towards the server, which is usually not
//! the address it writes into `giaddr` (that one is on the client's side).

use std::net::{IpAddr, Ipv4Addr};

/// An IPv4 subnet: a network address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    /// Network address (no host bits set).
    pub network: Ipv4Addr,
    /// Prefix length, 0 to 32.
    pub prefix: u8,
}

/// Why a subnet could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubnetError {
    /// Not `a.b.c.d` or `a.b.c.d/len` with `len` up to 32.
    #[error("{0:?} is not an IPv4 address or a subnet like 198.18.9.0/24")]
    Syntax(String),
    /// Bits set past the prefix.
    #[error("{0:?} has host bits set")]
    HostBits(String),
}

impl Subnet {
    /// Reads `a.b.c.d` (one address, /32) or `a.b.c.d/len`.
    pub fn parse(text: &str) -> Result<Self, SubnetError> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, len)) => (address, len.parse::<u8>().ok().filter(|l| *l <= 32)),
            None => (text, Some(32)),
        };
        let (Ok(network), Some(prefix)) = (address.parse::<Ipv4Addr>(), prefix) else {
            return Err(SubnetError::Syntax(text.to_owned()));
        };
        let subnet = Self { network, prefix };
        if u32::from(network) & !subnet.mask() != 0 {
            return Err(SubnetError::HostBits(text.to_owned()));
        }
        Ok(subnet)
    }

    /// The netmask as a number.
    pub fn mask(self) -> u32 {
        if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) }
    }

    /// Whether `ip` is in the subnet.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }
}

/// The relay agents whose `giaddr` is believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedRelays {
    subnets: Vec<Subnet>,
}

impl TrustedRelays {
    /// Relays at these addresses or in these subnets.
    pub fn new(subnets: Vec<Subnet>) -> Self {
        Self { subnets }
    }

    /// Whether a request with relay address `giaddr`, received from
    /// `source`, may be answered: always when it was not relayed
    /// (`giaddr` 0.0.0.0), else only from a trusted relay.
    pub fn admits(&self, giaddr: Ipv4Addr, source: IpAddr) -> bool {
        if giaddr.is_unspecified() {
            return true;
        }
        match source {
            IpAddr::V4(source) => self.subnets.iter().any(|s| s.contains(source)),
            IpAddr::V6(_) => false,
        }
    }

    /// Whether no relay is trusted (every relayed request is dropped).
    pub fn is_empty(&self) -> bool {
        self.subnets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_as_addresses_or_prefixes() {
        let one = Subnet::parse("198.18.9.1").unwrap();
        assert_eq!((one.network, one.prefix), (Ipv4Addr::new(198, 18, 9, 1), 32));
        let net = Subnet::parse("198.18.9.0/24").unwrap();
        assert!(net.contains(Ipv4Addr::new(198, 18, 9, 200)));
        assert!(!net.contains(Ipv4Addr::new(198, 18, 10, 1)));
        assert!(Subnet::parse("0.0.0.0/0").unwrap().contains(Ipv4Addr::new(1, 2, 3, 4)));
        for bad in ["", "198.18.9", "198.18.9.0/33", "198.18.9.0/x", "relay"] {
            assert_eq!(Subnet::parse(bad), Err(SubnetError::Syntax(bad.into())), "{bad}");
        }
        assert_eq!(Subnet::parse("198.18.9.1/24"), Err(SubnetError::HostBits("198.18.9.1/24".into())));
    }

    #[test]
    fn relayed_requests_are_admitted_only_from_trusted_sources() {
        let relay = Ipv4Addr::new(198, 18, 9, 1);
        let trusted = TrustedRelays::new(vec![
            Subnet::parse("198.18.0.2").unwrap(),
            Subnet::parse("198.19.0.0/16").unwrap(),
        ]);
        let from = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
        // Not relayed: always.
        assert!(trusted.admits(Ipv4Addr::UNSPECIFIED, from(0, 0, 0, 0)));
        assert!(TrustedRelays::default().admits(Ipv4Addr::UNSPECIFIED, from(198, 18, 0, 7)));
        // Relayed: by the datagram's source, not by what giaddr says.
        assert!(trusted.admits(relay, from(198, 18, 0, 2)));
        assert!(trusted.admits(relay, from(198, 19, 4, 4)));
        assert!(!trusted.admits(relay, from(198, 18, 0, 3)), "a local client writing a giaddr");
        assert!(!trusted.admits(relay, from(0, 0, 0, 0)));
        assert!(!trusted.admits(relay, IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)));
        assert!(!TrustedRelays::default().admits(relay, from(198, 18, 0, 2)), "none trusted by default");
    }
}
