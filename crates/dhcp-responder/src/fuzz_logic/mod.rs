//! Fuzz entry points, shared by `fuzz/` (cargo-fuzz) and the tests, which
//! replay seed inputs and random ones on stable Rust: [`decide_path`] for
//! one datagram through the proxy decision, [`cluster::interleaving`] for
//! full mode's machine in a simulated cluster, and
//! [`differential::parsers_agree`] for the request parser against
//! dhcproto's.

pub mod cluster;
pub mod differential;

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::client::detect;
use crate::full::{Pool, pick_pool};
use crate::proxy::{Loaders, ProxyContext, Verdict, boot_parts, decide, encode};
use crate::wire::{Request, code, parse_options};

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// Interprets `data` as one datagram and runs everything a responder does
/// with it, for every verdict and policy: parse, detect the client, decide,
/// encode, pick a pool. Checks the invariants: no panic, and every reply
/// is a well-formed BOOTREPLY to this request carrying its message type.
pub fn decide_path(data: &[u8]) {
    let Ok(request) = Request::parse(data) else { return };
    let client = detect(&request);
    let _ = (request.mac_text(), request.uuid(), request.requested_ip(), request.server_id());
    let _ = client.arch.map(|a| a.name());
    let loaders = Loaders {
        bios: Some("undionly.kpxe".into()),
        efi_x64: Some("ipxe.efi".into()),
        efi_ia32: None,
        efi_arm64: Some("snponly-arm64.efi".into()),
    };
    for verdict in [Verdict::Boot, Verdict::Ignore, Verdict::Unknown] {
        for boot_unknown in [false, true] {
            let ctx = ProxyContext {
                server_ip: SERVER,
                tftp_server: SERVER,
                loaders: loaders.clone(),
                http_base: "http://198.18.0.1:8080".into(),
                verdict,
                boot_unknown,
            };
            let _ = boot_parts(&request, &client, &ctx);
            if let Ok(reply) = decide(&request, &ctx) {
                assert!(verdict == Verdict::Boot || boot_unknown, "answered a host the rules did not boot");
                check_reply(&encode(&request, &reply, SERVER), &request, reply.kind.code());
            }
        }
    }
    let pool = Pool {
        network: Ipv4Addr::new(198, 18, 0, 0),
        prefix: 24,
        start: Ipv4Addr::new(198, 18, 0, 10),
        end: Ipv4Addr::new(198, 18, 0, 200),
        router: None,
        dns: Vec::new(),
        lease_time: Duration::from_secs(3600),
    };
    let pools = [pool];
    if let Some(pool) = pick_pool(&pools, request.giaddr, SERVER) {
        let _ = pool.options(true);
    }
}

fn check_reply(bytes: &[u8], request: &Request, kind: u8) {
    assert!(bytes.len() >= 300, "reply shorter than BOOTP's minimum");
    assert_eq!(bytes[0], 2, "not a BOOTREPLY");
    assert_eq!(bytes[4..8], request.xid.to_be_bytes(), "transaction id not echoed");
    assert_eq!(bytes[28..34], request.mac, "client hardware address not echoed");
    assert_eq!(bytes[236..240], [99, 130, 83, 99], "magic cookie");
    let options = parse_options(&bytes[240..]).expect("reply options well formed");
    assert_eq!(options.get(&code::MESSAGE_TYPE).map(Vec::as_slice), Some(&[kind][..]), "message type");
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::wire::encode_request;

    /// Requests as real clients send them: PXE BIOS and UEFI, UEFI HTTP
    /// boot, iPXE, relayed, renewing, with odd but valid options.
    pub(crate) fn seeds() -> Vec<Vec<u8>> {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let relay = Some(Ipv4Addr::new(198, 18, 9, 1));
        let uuid = [0u8; 17];
        vec![
            encode_request(
                mac,
                1,
                None,
                &[(53, &[1]), (60, b"PXEClient:Arch:00000:UNDI:002001"), (93, &[0, 0])],
            ),
            encode_request(
                mac,
                2,
                None,
                &[(53, &[1]), (60, b"PXEClient:Arch:00007:UNDI:003016"), (93, &[0, 7]), (97, &uuid)],
            ),
            encode_request(
                mac,
                3,
                None,
                &[(53, &[1]), (60, b"HTTPClient:Arch:00016:UNDI:003001"), (93, &[0, 16])],
            ),
            encode_request(
                mac,
                4,
                None,
                &[
                    (53, &[3]),
                    (77, b"iPXE"),
                    (175, &[177, 5, 1, 0x80, 0x86, 0x10, 0x0e]),
                    (60, b"PXEClient:Arch:00000"),
                ],
            ),
            encode_request(
                mac,
                5,
                relay,
                &[(53, &[1]), (60, b"PXEClient"), (82, &[1, 4, 0, 0, 0, 1]), (93, &[0, 11, 0, 7])],
            ),
            encode_request(mac, 6, None, &[(53, &[3]), (50, &[198, 18, 0, 20]), (54, &[198, 18, 0, 1])]),
            encode_request(mac, 7, None, &[(53, &[8])]),
            encode_request(mac, 8, relay, &[(53, &[1]), (94, &[1, 2, 1]), (43, &[6, 1, 8, 255])]),
        ]
    }

    #[test]
    fn crafted_boot_requests_pass_the_decide_path() {
        for seed in seeds() {
            assert!(Request::parse(&seed).is_ok(), "seed must parse: {seed:?}");
            decide_path(&seed);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        #[test]
        fn mutated_requests_never_break_the_decide_path(
            which in 0usize..8,
            flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..8),
            cut in 0usize..400,
        ) {
            let mut bytes = seeds()[which].clone();
            for (at, value) in flips {
                if let Some(b) = bytes.get_mut(at) {
                    *b = value;
                }
            }
            bytes.truncate(cut.max(236));
            decide_path(&bytes);
        }

        #[test]
        fn any_bytes_never_break_the_decide_path(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            decide_path(&bytes);
        }
    }
}
