//! IPv6 router advertisements that end iPXE's wait for IPv6.
//!
//! iPXE configures IPv4 and IPv6 side by side and finishes only when both
//! are done; on a link without an IPv6 router it solicits for about 13 s
//! before giving up. The first router advertisement it sees ends that wait:
//! one with router lifetime 0 (not a default router), no prefixes and
//! neither "managed" nor "other configuration" set tells it there is
//! nothing to configure. Pure: bytes in, bytes out. The ICMPv6 checksum is
//! left zero because the kernel fills it in for raw ICMPv6 sockets.

/// ICMPv6 type of a router solicitation.
pub const ROUTER_SOLICITATION: u8 = 133;
/// ICMPv6 type of a router advertisement.
pub const ROUTER_ADVERTISEMENT: u8 = 134;

/// Whether an ICMPv6 message (starting at its ICMPv6 header, as a raw
/// ICMPv6 socket delivers it) is a well-formed router solicitation.
pub fn is_router_solicitation(message: &[u8]) -> bool {
    // RFC 4861 4.1: type 133, code 0, at least 8 octets.
    message.len() >= 8 && message[0] == ROUTER_SOLICITATION && message[1] == 0
}

/// A router advertisement offering nothing: hop limit 64, no flags, router
/// lifetime 0, reachable time and retransmission timer unspecified, no
/// options.
pub fn empty_router_advertisement() -> [u8; 16] {
    let mut ra = [0u8; 16];
    ra[0] = ROUTER_ADVERTISEMENT;
    ra[4] = 64;
    ra
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solicitations_are_recognized() {
        let rs = [133, 0, 0x12, 0x34, 0, 0, 0, 0];
        assert!(is_router_solicitation(&rs));
        assert!(!is_router_solicitation(&rs[..7]));
        assert!(!is_router_solicitation(&[133, 1, 0, 0, 0, 0, 0, 0]));
        assert!(!is_router_solicitation(&[135, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_router_solicitation(&[]));
    }

    #[test]
    fn the_advertisement_offers_nothing() {
        let ra = empty_router_advertisement();
        assert_eq!(ra[0], ROUTER_ADVERTISEMENT);
        assert_eq!(ra[5] & 0xc0, 0, "neither managed nor other-configuration");
        assert_eq!(u16::from_be_bytes([ra[6], ra[7]]), 0, "not a default router");
        assert_eq!(ra.len(), 16, "no options, so no prefixes");
    }
}
