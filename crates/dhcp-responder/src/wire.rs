//! DHCPv4 requests, parsed and validated from raw bytes (RFC 2131, 2132,
//! with RFC 3396 long-option concatenation).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// DHCP option codes this crate reads or writes (RFC 2132; RFC 4578 for
/// PXE; RFC 3046 relay information; iPXE's encapsulated options).
pub mod code {
    /// Padding.
    pub const PAD: u8 = 0;
    /// Subnet mask.
    pub const SUBNET_MASK: u8 = 1;
    /// Default gateways.
    pub const ROUTER: u8 = 3;
    /// DNS servers.
    pub const DNS_SERVERS: u8 = 6;
    /// The client's host name.
    pub const HOSTNAME: u8 = 12;
    /// Vendor-specific information (PXE sub-options).
    pub const VENDOR_SPECIFIC: u8 = 43;
    /// The address a client asks for.
    pub const REQUESTED_IP: u8 = 50;
    /// Lease time, seconds.
    pub const LEASE_TIME: u8 = 51;
    /// DHCP message type.
    pub const MESSAGE_TYPE: u8 = 53;
    /// Server identifier.
    pub const SERVER_ID: u8 = 54;
    /// Largest DHCP message the client accepts.
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    /// Renewal (T1) time, seconds.
    pub const RENEWAL_TIME: u8 = 58;
    /// Rebinding (T2) time, seconds.
    pub const REBINDING_TIME: u8 = 59;
    /// Vendor class identifier (`PXEClient`, `HTTPClient`).
    pub const VENDOR_CLASS: u8 = 60;
    /// Boot file name.
    pub const BOOTFILE_NAME: u8 = 67;
    /// User class (iPXE says `iPXE`).
    pub const USER_CLASS: u8 = 77;
    /// Relay agent information.
    pub const RELAY_AGENT_INFO: u8 = 82;
    /// Client system architectures.
    pub const CLIENT_ARCH: u8 = 93;
    /// Client network device interface.
    pub const CLIENT_NDI: u8 = 94;
    /// Client machine identifier (UUID).
    pub const CLIENT_UUID: u8 = 97;
    /// iPXE's encapsulated options.
    pub const IPXE_ENCAP: u8 = 175;
    /// End of options.
    pub const END: u8 = 255;
}

/// Size of the fixed BOOTP header before the magic cookie.
const HEADER: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];

/// Why a datagram is not a DHCP request we can answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Shorter than header + cookie.
    #[error("datagram too short ({0} bytes)")]
    TooShort(usize),
    /// `op` is not BOOTREQUEST.
    #[error("op {0} is not a request")]
    NotRequest(u8),
    /// Not Ethernet (htype 1, hlen 6).
    #[error("unsupported hardware type {htype} / length {hlen}")]
    Hardware {
        /// htype.
        htype: u8,
        /// hlen.
        hlen: u8,
    },
    /// The magic cookie is wrong (plain BOOTP or garbage).
    #[error("no DHCP magic cookie")]
    NoCookie,
    /// An option runs past the end of the packet.
    #[error("option {code} overruns the packet")]
    Overrun {
        /// The option code.
        code: u8,
    },
    /// No END option.
    #[error("options are not terminated")]
    Unterminated,
    /// Message type (53) missing or invalid.
    #[error("missing or invalid message type")]
    MessageType,
    /// A known option has a length or content it cannot have.
    #[error("option {code} is malformed")]
    BadOption {
        /// The option code.
        code: u8,
    },
}

/// DHCP message type (option 53).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    /// DHCPDISCOVER.
    Discover,
    /// DHCPREQUEST.
    Request,
    /// DHCPDECLINE.
    Decline,
    /// DHCPRELEASE.
    Release,
    /// DHCPINFORM.
    Inform,
}

/// A validated client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Message type.
    pub message_type: MessageType,
    /// Transaction id.
    pub xid: u32,
    /// Seconds since the client began.
    pub secs: u16,
    /// Broadcast flag.
    pub broadcast: bool,
    /// Client hardware address.
    pub mac: [u8; 6],
    /// Client address (renewals, INFORM).
    pub ciaddr: Ipv4Addr,
    /// Relay address.
    pub giaddr: Ipv4Addr,
    /// Relay hop count.
    pub hops: u8,
    /// Every option, long options concatenated, in code order.
    pub options: BTreeMap<u8, Vec<u8>>,
}

impl Request {
    /// Parses and validates one datagram.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() < HEADER + MAGIC.len() {
            return Err(WireError::TooShort(bytes.len()));
        }
        if bytes[0] != 1 {
            return Err(WireError::NotRequest(bytes[0]));
        }
        if bytes[1] != 1 || bytes[2] != 6 {
            return Err(WireError::Hardware { htype: bytes[1], hlen: bytes[2] });
        }
        if bytes[HEADER..HEADER + 4] != MAGIC {
            return Err(WireError::NoCookie);
        }
        let options = parse_options(&bytes[HEADER + 4..])?;
        let message_type = match options.get(&code::MESSAGE_TYPE).map(Vec::as_slice) {
            Some([1]) => MessageType::Discover,
            Some([3]) => MessageType::Request,
            Some([4]) => MessageType::Decline,
            Some([7]) => MessageType::Release,
            Some([8]) => MessageType::Inform,
            _ => return Err(WireError::MessageType),
        };
        let be16 = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]);
        let ip = |i: usize| Ipv4Addr::new(bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]);
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&bytes[28..34]);
        let request = Self {
            message_type,
            xid: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            secs: be16(8),
            broadcast: be16(10) & 0x8000 != 0,
            mac,
            ciaddr: ip(12),
            giaddr: ip(24),
            hops: bytes[3],
            options,
        };
        request.validate()?;
        Ok(request)
    }

    /// Checks the options whose shape we rely on.
    fn validate(&self) -> Result<(), WireError> {
        let bad = |code| Err(WireError::BadOption { code });
        for (&option, value) in &self.options {
            match option {
                code::REQUESTED_IP | code::SERVER_ID if value.len() != 4 => return bad(option),
                code::MAX_MESSAGE_SIZE if value.len() != 2 => return bad(option),
                code::CLIENT_ARCH if value.is_empty() || value.len() % 2 != 0 => return bad(option),
                code::CLIENT_NDI if value.len() != 3 => return bad(option),
                code::CLIENT_UUID if !(value.len() == 17 && value[0] == 0) => return bad(option),
                _ => {}
            }
        }
        Ok(())
    }

    /// Raw value of an option.
    pub fn option(&self, code: u8) -> Option<&[u8]> {
        self.options.get(&code).map(Vec::as_slice)
    }

    /// An option as text (lossy for non-UTF-8 bytes, trailing NULs removed).
    pub fn text(&self, code: u8) -> Option<String> {
        self.option(code).map(|v| String::from_utf8_lossy(v).trim_end_matches('\0').to_owned())
    }

    /// Requested IP address (option 50).
    pub fn requested_ip(&self) -> Option<Ipv4Addr> {
        self.option(code::REQUESTED_IP).map(|v| Ipv4Addr::new(v[0], v[1], v[2], v[3]))
    }

    /// Server identifier (option 54).
    pub fn server_id(&self) -> Option<Ipv4Addr> {
        self.option(code::SERVER_ID).map(|v| Ipv4Addr::new(v[0], v[1], v[2], v[3]))
    }

    /// Every architecture the client lists (option 93), in order.
    pub fn architectures(&self) -> Vec<u16> {
        self.option(code::CLIENT_ARCH)
            .map(|v| v.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect())
            .unwrap_or_default()
    }

    /// Client machine UUID (option 97), lowercase with dashes.
    pub fn uuid(&self) -> Option<String> {
        let v = self.option(code::CLIENT_UUID)?;
        let hex: String = v[1..].iter().map(|b| format!("{b:02x}")).collect();
        Some(format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]))
    }

    /// The MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_text(&self) -> String {
        // Once or more per request: one allocation, no formatting machinery.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(17);
        for (i, byte) in self.mac.iter().enumerate() {
            if i > 0 {
                text.push(':');
            }
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        text
    }
}

/// Encodes a client request (BOOTREQUEST, broadcast flag set), for tools
/// that play a client or relay and for tests. `giaddr` set means relayed
/// (hops 1). Not padded: callers that talk to old BOOTP relays pad to 300.
pub fn encode_request(mac: [u8; 6], xid: u32, giaddr: Option<Ipv4Addr>, options: &[(u8, &[u8])]) -> Vec<u8> {
    let mut b = vec![0u8; HEADER];
    b[0] = 1;
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&xid.to_be_bytes());
    b[10] = 0x80;
    if let Some(relay) = giaddr {
        b[3] = 1;
        b[24..28].copy_from_slice(&relay.octets());
    }
    b[28..34].copy_from_slice(&mac);
    b.extend_from_slice(&MAGIC);
    for (code, value) in options {
        for chunk in value.chunks(255) {
            b.push(*code);
            b.push(u8::try_from(chunk.len()).unwrap_or(255));
            b.extend_from_slice(chunk);
        }
    }
    b.push(code::END);
    b
}

/// Walks the option area: PAD skipped, END required, lengths checked,
/// repeated codes concatenated (RFC 3396).
pub fn parse_options(area: &[u8]) -> Result<BTreeMap<u8, Vec<u8>>, WireError> {
    let mut options: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    let mut i = 0;
    while i < area.len() {
        match area[i] {
            code::PAD => i += 1,
            code::END => return Ok(options),
            option => {
                let len = usize::from(*area.get(i + 1).ok_or(WireError::Overrun { code: option })?);
                let value = area.get(i + 2..i + 2 + len).ok_or(WireError::Overrun { code: option })?;
                options.entry(option).or_default().extend_from_slice(value);
                i += 2 + len;
            }
        }
    }
    Err(WireError::Unterminated)
}

/// Sub-options of an encapsulating option (43, 82, 175): code, length,
/// value, with the same checks.
pub fn sub_options(value: &[u8]) -> Result<BTreeMap<u8, Vec<u8>>, WireError> {
    let mut out: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            code::PAD => i += 1,
            code::END => break,
            option => {
                let len = usize::from(*value.get(i + 1).ok_or(WireError::Overrun { code: option })?);
                let v = value.get(i + 2..i + 2 + len).ok_or(WireError::Overrun { code: option })?;
                out.entry(option).or_default().extend_from_slice(v);
                i += 2 + len;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a request datagram with the given options (code, value).
    pub(crate) fn datagram(mac: [u8; 6], options: &[(u8, &[u8])]) -> Vec<u8> {
        encode_request(mac, 0x1234_5678, None, options)
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    #[test]
    fn a_pxe_discover_parses() {
        let uuid = [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
        let d = datagram(
            MAC,
            &[(53, &[1]), (93, &[0, 7, 0, 0]), (97, &uuid), (60, b"PXEClient:Arch:00007:UNDI:003016")],
        );
        let r = Request::parse(&d).unwrap();
        assert_eq!(r.message_type, MessageType::Discover);
        assert_eq!((r.xid, r.broadcast), (0x1234_5678, true));
        assert_eq!(r.mac_text(), "52:54:00:12:34:56");
        let other = Request { mac: [0xab, 0xcd, 0xef, 0x00, 0x09, 0xf0], ..r.clone() };
        assert_eq!(other.mac_text(), "ab:cd:ef:00:09:f0");
        assert_eq!(r.architectures(), [7, 0], "every architecture, not only the first");
        assert_eq!(r.uuid().unwrap(), "01020304-0506-0708-090a-0b0c0d0e0f10");
        assert!(r.text(60).unwrap().starts_with("PXEClient"));
    }

    #[test]
    fn long_options_are_concatenated() {
        let d = datagram(MAC, &[(53, &[1]), (77, b"iP"), (77, b"XE")]);
        assert_eq!(Request::parse(&d).unwrap().option(77), Some(&b"iPXE"[..]));
    }

    #[test]
    fn bad_datagrams_are_rejected_with_a_reason() {
        let good = datagram(MAC, &[(53, &[1])]);
        let mut reply = good.clone();
        reply[0] = 2;
        let mut token_ring = good.clone();
        token_ring[1] = 6;
        let mut no_cookie = good.clone();
        no_cookie[HEADER] = 0;
        let mut overrun = good.clone();
        overrun.truncate(overrun.len() - 1);
        overrun.extend_from_slice(&[12, 200, b'x']);
        let mut unterminated = good.clone();
        unterminated.pop();
        let cases: Vec<(Vec<u8>, WireError)> = vec![
            (good[..100].to_vec(), WireError::TooShort(100)),
            (reply, WireError::NotRequest(2)),
            (token_ring, WireError::Hardware { htype: 6, hlen: 6 }),
            (no_cookie, WireError::NoCookie),
            (overrun, WireError::Overrun { code: 12 }),
            (unterminated, WireError::Unterminated),
            (datagram(MAC, &[]), WireError::MessageType),
            (datagram(MAC, &[(53, &[9])]), WireError::MessageType),
            (datagram(MAC, &[(53, &[1]), (93, &[0])]), WireError::BadOption { code: 93 }),
            (datagram(MAC, &[(53, &[1]), (94, &[1, 2])]), WireError::BadOption { code: 94 }),
            (datagram(MAC, &[(53, &[1]), (97, &[1; 17])]), WireError::BadOption { code: 97 }),
            (datagram(MAC, &[(53, &[3]), (50, &[10, 0, 0])]), WireError::BadOption { code: 50 }),
        ];
        for (bytes, want) in cases {
            assert_eq!(Request::parse(&bytes), Err(want));
        }
        // An undecodable option does not hide the ones after it.
        let d = datagram(MAC, &[(53, &[1]), (250, &[0xff; 3]), (60, b"PXEClient")]);
        assert_eq!(Request::parse(&d).unwrap().text(60).as_deref(), Some("PXEClient"));
    }

    /// The dhcproto 0.15 behaviours this parser exists for (the README's
    /// reason for keeping it points here). Should dhcproto change, this
    /// test says so, and the reason needs rewriting.
    #[test]
    fn dhcproto_misreads_requests_that_this_parser_reads_right() {
        use dhcproto::v4::{Decodable, Decoder, DhcpOption, Message, OptionCode};
        let decode = |d: &[u8]| Message::decode(&mut Decoder::new(d)).expect("dhcproto says Ok");
        let has = |m: &Message, option: u8| m.opts().get(OptionCode::from(option)).is_some();
        // One malformed option (a subnet mask of 3 bytes, a requested
        // address of 3) and dhcproto drops every option after it, and still
        // says Ok: the PXE vendor class is gone, a PXE ROM looks like a
        // plain DHCP client. Here the vendor class stays (an option we do
        // not read is carried as it is), or the datagram is refused (one we
        // rely on is malformed).
        let mask = datagram(MAC, &[(53, &[1]), (1, &[255, 255, 0]), (60, b"PXEClient")]);
        let requested = datagram(MAC, &[(53, &[1]), (50, &[198, 18, 0]), (60, b"PXEClient")]);
        for d in [&mask, &requested] {
            assert!(!has(&decode(d), 60), "a malformed option no longer hides what follows");
        }
        assert_eq!(Request::parse(&mask).unwrap().text(60).as_deref(), Some("PXEClient"));
        assert_eq!(Request::parse(&requested), Err(WireError::BadOption { code: 50 }));
        // Option 93 lists every architecture the firmware boots; dhcproto
        // keeps the first.
        let d = datagram(MAC, &[(53, &[1]), (93, &[0, 7, 0, 0])]);
        let Some(DhcpOption::ClientSystemArchitecture(first)) =
            decode(&d).opts().get(OptionCode::ClientSystemArchitecture).cloned()
        else {
            panic!("no architecture")
        };
        assert_eq!(u16::from(first), 7);
        assert_eq!(Request::parse(&d).unwrap().architectures(), [7, 0]);
        // A long option in pieces with another, or padding, between them
        // (RFC 3396 concatenates them): dhcproto keeps the last piece.
        let mut padded = datagram(MAC, &[(53, &[1])]);
        padded.pop();
        padded.extend([77, 2, b'i', b'P', 0, 77, 2, b'X', b'E', 255]);
        let apart = datagram(MAC, &[(53, &[1]), (77, b"iP"), (60, b"PXEClient"), (77, b"XE")]);
        for d in [&apart, &padded] {
            let user_class = decode(d).opts().get(OptionCode::UserClass).cloned();
            assert_eq!(user_class, Some(DhcpOption::UserClass(b"XE".to_vec())));
            assert_eq!(Request::parse(d).unwrap().option(77), Some(&b"iPXE"[..]));
        }
        // A malformed option 94 (2 bytes, not 3) trips a debug assertion in
        // dhcproto's decoder: a panic in debug builds.
        let d = datagram(MAC, &[(53, &[1]), (94, &[1, 2]), (60, b"PXEClient")]);
        #[cfg(debug_assertions)]
        assert!(std::panic::catch_unwind(|| decode(&d)).is_err(), "no longer panics");
        assert_eq!(Request::parse(&d), Err(WireError::BadOption { code: 94 }));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panicking(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = Request::parse(&bytes);
            let _ = sub_options(&bytes);
        }

        #[test]
        fn any_options_after_a_valid_header_are_safe(area in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let mut d = datagram(MAC, &[(53, &[1])]);
            d.pop();
            d.extend_from_slice(&area);
            if let Ok(r) = Request::parse(&d) {
                let _ = (r.architectures(), r.uuid(), r.requested_ip(), r.server_id());
            }
        }
    }
}
