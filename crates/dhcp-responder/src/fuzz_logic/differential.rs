//! Differential check of the request parser against dhcproto: a datagram
//! [`Request::parse`] accepts, dhcproto must decode to the same header and
//! the same values for the options the responder reads — except where
//! dhcproto is known to read less (the test in `wire.rs` shows each case):
//! it keeps only the first architecture of option 93, keeps the last piece
//! of an option split with others (or padding) in between, and drops the
//! options after one it cannot decode. Datagrams carrying an option whose length trips a
//! debug assertion in dhcproto 0.15 (80, 81, 94, 152-155) are left out:
//! that is a panic in dhcproto, not a disagreement.

use dhcproto::v4::{Decodable, Decoder, DhcpOption, Encodable, Encoder, Message, OptionCode};

use crate::wire::{Request, code, parse_options};

/// Options the responder reads, compared value for value (not 82: it is
/// echoed as received, never read, and dhcproto drops its malformed
/// sub-options).
const READ: [u8; 11] = [
    code::HOSTNAME,
    code::VENDOR_SPECIFIC,
    code::REQUESTED_IP,
    code::SERVER_ID,
    code::MAX_MESSAGE_SIZE,
    code::VENDOR_CLASS,
    code::USER_CLASS,
    code::CLIENT_ARCH,
    code::CLIENT_NDI,
    code::CLIENT_UUID,
    code::IPXE_ENCAP,
];

/// Checks that both parsers read `data` alike; panics where they do not.
pub fn parsers_agree(data: &[u8]) {
    let Ok(ours) = Request::parse(data) else { return };
    let area = &data[240..];
    if trips_dhcproto(area) {
        return;
    }
    let theirs = Message::decode(&mut Decoder::new(data)).expect("a datagram we accept, dhcproto decodes");
    assert_eq!(theirs.xid(), ours.xid, "xid");
    assert_eq!(theirs.secs(), ours.secs, "secs");
    assert_eq!(theirs.flags().broadcast(), ours.broadcast, "broadcast flag");
    assert_eq!((theirs.ciaddr(), theirs.giaddr()), (ours.ciaddr, ours.giaddr), "ciaddr, giaddr");
    assert_eq!(&theirs.chaddr()[..6], &ours.mac[..], "chaddr");
    assert_eq!(theirs.hops(), ours.hops, "hops");
    for option in READ {
        let Some(theirs) = theirs.opts().get(OptionCode::from(option)) else {
            continue; // dhcproto stopped early, or neither has it
        };
        if split_apart(area, option) {
            continue;
        }
        let value = ours.option(option).unwrap_or_else(|| panic!("dhcproto has option {option}, we do not"));
        let value = if option == code::CLIENT_ARCH { &value[..2] } else { value };
        assert_eq!(encoded_value(theirs), value, "option {option}");
    }
}

/// The value dhcproto writes for an option (pieces concatenated).
fn encoded_value(option: &DhcpOption) -> Vec<u8> {
    let mut bytes = Vec::new();
    option.encode(&mut Encoder::new(&mut bytes)).expect("encodes");
    bytes.push(code::END);
    let options = parse_options(&bytes).expect("dhcproto writes well-formed options");
    options.into_values().next().unwrap_or_default()
}

/// The options of `area` as the walker meets them, padding included:
/// code and length.
fn walk(area: &[u8]) -> Vec<(u8, usize)> {
    let mut seen = Vec::new();
    let mut i = 0;
    while let Some(&option) = area.get(i) {
        match option {
            code::PAD => {
                seen.push((code::PAD, 0));
                i += 1;
            }
            code::END => break,
            _ => {
                let len = usize::from(area.get(i + 1).copied().unwrap_or(0));
                seen.push((option, len));
                i += 2 + len;
            }
        }
    }
    seen
}

/// Whether an option's length trips one of dhcproto's debug assertions.
fn trips_dhcproto(area: &[u8]) -> bool {
    walk(area).iter().any(|&(option, len)| match option {
        80 => len != 0,
        81 => len < 3,
        code::CLIENT_NDI => len != 3,
        152..=155 => len != 4,
        _ => false,
    })
}

/// Whether `option` comes in pieces with other options, or padding,
/// between them (dhcproto then keeps the last piece).
fn split_apart(area: &[u8], option: u8) -> bool {
    let codes: Vec<u8> = walk(area).into_iter().map(|(code, _)| code).collect();
    let runs = codes.windows(2).filter(|w| w[1] == option && w[0] != option).count()
        + usize::from(codes.first() == Some(&option));
    runs > 1
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz_logic::tests::seeds;

    #[test]
    fn seed_requests_read_alike() {
        for seed in seeds() {
            parsers_agree(&seed);
        }
        // Found by the fuzz target: option 43 in two pieces with padding
        // between them (dhcproto keeps the second piece).
        let mut padded = crate::wire::encode_request([2; 6], 9, None, &[(53, &[1])]);
        padded.pop();
        padded.extend([43, 2, 1, 2, 0, 0, 43, 1, 3, 255]);
        assert_eq!(Request::parse(&padded).unwrap().option(43), Some(&[1, 2, 3][..]));
        parsers_agree(&padded);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3_000, ..ProptestConfig::default() })]

        #[test]
        fn mutated_requests_read_alike(
            which in 0usize..8,
            flips in proptest::collection::vec((236usize..400, any::<u8>()), 1..6),
        ) {
            let mut bytes = seeds()[which].clone();
            for (at, value) in flips {
                if let Some(b) = bytes.get_mut(at) {
                    *b = value;
                }
            }
            parsers_agree(&bytes);
        }
    }
}
