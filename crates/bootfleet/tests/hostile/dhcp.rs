//! A flood of PXE DISCOVERs from random MACs, broadcast on the boot
//! network from the client namespace, paced and bounded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::boot::boot_during;
use crate::lab::{CLIENT_IP, CLIENT_NS, Lab, in_netns, wait_for};

const DISCOVERS: usize = 5_000;
/// Sent in bursts of this many, one burst every 10 ms (5,000/s at most).
const BURST: usize = 50;
const FLOOD_WITHIN: Duration = Duration::from_secs(20);
/// Outcomes of a request the responder did not answer.
const UNANSWERED: [&str; 7] = [
    "malformed",
    "rate_limited",
    "untrusted_relay",
    "not_boot_client",
    "unanswered",
    "overloaded",
    "panicked",
];

/// 5,000 DISCOVERs from made-up MACs (locally administered, so no rule of
/// the lab boots them): none is answered, nothing is stored, and the real
/// boot's own DHCP exchanges still get through.
pub(crate) fn discover_flood(lab: &Lab) -> String {
    let unanswered = |lab: &Lab| {
        let metrics = lab.metrics();
        UNANSWERED
            .iter()
            .map(|o| metrics.get(&format!("bootfleet_dhcp_requests_total{{outcome=\"{o}\"}}")))
            .sum::<f64>()
    };
    let before = lab.metrics();
    let (unanswered_before, drops_before) = (unanswered(lab), lab.udp_receive_errors());
    let sent = boot_during(lab, |begun| in_netns(CLIENT_NS, || flood(begun)));
    // Every DISCOVER was seen: counted by the responder, or dropped by the
    // kernel because the responder's socket was full (which clients
    // survive by retrying).
    wait_for("the responder to take every DISCOVER", Duration::from_secs(60), || {
        let counted = unanswered(lab) - unanswered_before;
        let dropped = lab.udp_receive_errors() - drops_before;
        counted + dropped >= sent as f64
    });
    let after = lab.metrics();
    let delta = |series: &str| after.get(series) - before.get(series);
    let answered = delta("bootfleet_dhcp_requests_total{outcome=\"answered\"}");
    // The boots' own requests are the only ones answered: two exchanges
    // (DISCOVER, REQUEST) of two leases per boot, and udhcpc's retries.
    let boots = lab.boots_so_far();
    assert!(answered <= (boots * 4 * 6) as f64, "{answered} answers to {boots} boots");
    format!(
        "{sent} sent; unanswered {:.0}, of which overloaded {:.0}; kernel drops {:.0}",
        unanswered(lab) - unanswered_before,
        delta("bootfleet_dhcp_requests_total{outcome=\"overloaded\"}"),
        lab.udp_receive_errors() - drops_before
    )
}

/// Sends the DISCOVERs; returns how many went out.
fn flood(begun: &AtomicBool) -> usize {
    let socket = std::net::UdpSocket::bind((CLIENT_IP, 0)).unwrap();
    socket.set_broadcast(true).unwrap();
    let mut random = Xorshift(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let started = Instant::now();
    let mut sent = 0;
    while sent < DISCOVERS && started.elapsed() < FLOOD_WITHIN {
        for _ in 0..BURST.min(DISCOVERS - sent) {
            let bits = random.next();
            // Locally administered unicast: first octet 0x02 | …, never 52:54:00.
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&bits.to_be_bytes()[..6]);
            mac[0] = (mac[0] & 0xfc) | 0x02;
            let datagram = discover(mac, (bits >> 16) as u32);
            socket.send_to(&datagram, ("255.255.255.255", 67)).unwrap();
            sent += 1;
        }
        begun.store(true, Ordering::Release);
        std::thread::sleep(Duration::from_millis(10));
    }
    sent
}

/// A PXE ROM's DISCOVER (BIOS, UNDI), broadcast flag set.
fn discover(mac: [u8; 6], xid: u32) -> Vec<u8> {
    let mut d = vec![0u8; 236];
    d[..4].copy_from_slice(&[1, 1, 6, 0]);
    d[4..8].copy_from_slice(&xid.to_be_bytes());
    d[10] = 0x80;
    d[28..34].copy_from_slice(&mac);
    d.extend_from_slice(&[99, 130, 83, 99]);
    d.extend_from_slice(&[53, 1, 1]);
    let class = b"PXEClient:Arch:00000:UNDI:002001";
    d.extend_from_slice(&[60, class.len() as u8]);
    d.extend_from_slice(class);
    d.extend_from_slice(&[93, 2, 0, 0, 94, 3, 1, 2, 1]);
    d.extend_from_slice(&[97, 17, 0]);
    d.extend_from_slice(&[0x5a; 10]);
    d.extend_from_slice(&mac);
    d.push(255);
    d
}

/// A small deterministic generator: the MACs need only be distinct.
pub(crate) struct Xorshift(pub(crate) u64);

impl Xorshift {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
