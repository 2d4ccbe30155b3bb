//! TFTP from the boot network: netascii requests that are never
//! acknowledged, from many source addresses (forged requests aimed at a
//! victim, or broken clients), and a hundred clients behind one address
//! (a NAT), each a raw client built from the server's own wire format.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bootfleet_tftp_server::wire::{ErrorCode, Mode, Packet, Request};
use tokio::net::UdpSocket;

use crate::boot::boot_during;
use crate::lab::{BIG_TEXT, CLIENT_NS, LOADER, Lab, in_netns, runtime, wait_for};

/// Source addresses of the unacknowledged requests, and requests from each.
const SOURCES: u8 = 100;
const REQUESTS_PER_SOURCE: usize = 10;
/// `tftp.max_unacknowledged_per_client` and `tftp.unacknowledged_retries`
/// (defaults): the most first packets one source address can draw.
const UNACKNOWLEDGED_PER_SOURCE: usize = 4;
const UNACKNOWLEDGED_SENDS: usize = 1 + 2;
const CLIENTS_BEHIND_NAT: usize = 100;
/// The address the hundred clients share.
const NAT_ADDRESS: &str = "198.18.80.3";

fn server() -> SocketAddr {
    SocketAddr::from(([198, 18, 80, 1], 69))
}

/// The address of unacknowledged-request source `i` (198.18.80.151 on).
fn source(i: u8) -> String {
    format!("198.18.80.{}", 151 + u16::from(i))
}

/// Netascii requests for an 8 MiB text from 100 addresses, 10 from each,
/// half with options (an OACK first), none ever acknowledged. Each address
/// draws at most 4 transfers × 3 first packets and no error; memory stays
/// flat (no transfer copies or converts the file whole).
pub(crate) fn unacknowledged(lab: &Lab) -> String {
    for i in 0..SOURCES {
        lab.add_client_address(&source(i));
    }
    let requests = usize::from(SOURCES) * REQUESTS_PER_SOURCE;
    // A request is refused, or becomes a transfer that finishes, or was
    // dropped by the kernel (the server's socket buffer was full).
    let handled = |lab: &Lab| {
        let m = lab.metrics();
        m.sum("bootfleet_tftp_requests_refused_total")
            + m.sum("bootfleet_tftp_transfers_total")
            + lab.udp_receive_errors()
    };
    let (handled_before, dropped_before) = (handled(lab), lab.udp_receive_errors());
    let drained = AtomicBool::new(false);
    let received = boot_during(lab, |begun| {
        in_netns(CLIENT_NS, || {
            std::thread::scope(|scope| {
                let received = scope.spawn(|| never_acknowledge(begun, &drained));
                while !begun.load(Ordering::Acquire) && !received.is_finished() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                // Every request refused or finished, none in progress.
                let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    wait_for("every unacknowledged transfer to end", Duration::from_secs(60), || {
                        let active = lab.metrics().sum("bootfleet_tftp_transfers_active");
                        handled(lab) - handled_before >= requests as f64 && active == 0.0
                    });
                }));
                drained.store(true, Ordering::Release);
                let received = received.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                if let Err(panic) = waited {
                    std::panic::resume_unwind(panic);
                }
                received
            })
        })
    });
    let most = received.values().map(|(datagrams, _)| *datagrams).max().unwrap_or(0);
    let total: usize = received.values().map(|(datagrams, _)| datagrams).sum();
    let errors: usize = received.values().map(|(_, errors)| errors).sum();
    assert_eq!(errors, 0, "error packets went to peers that never acknowledged");
    assert!(total > 0, "no transfer started: the attack proves nothing");
    assert!(
        most <= UNACKNOWLEDGED_PER_SOURCE * UNACKNOWLEDGED_SENDS,
        "one address drew {most} datagrams (at most {} expected)",
        UNACKNOWLEDGED_PER_SOURCE * UNACKNOWLEDGED_SENDS
    );
    let dropped = lab.udp_receive_errors() - dropped_before;
    format!(
        "{requests} requests ({dropped:.0} dropped by the kernel); {total} datagrams back, at most {most} per address, no errors"
    )
}

/// Sends every request, then counts what comes back per source address
/// (datagrams, error packets) until `drained`.
fn never_acknowledge(begun: &AtomicBool, drained: &AtomicBool) -> BTreeMap<String, (usize, usize)> {
    let mut sockets = Vec::new();
    for i in 0..SOURCES {
        for n in 0..REQUESTS_PER_SOURCE {
            let socket = std::net::UdpSocket::bind((source(i).as_str(), 0)).unwrap();
            let options = if n % 2 == 0 { vec![("blksize", "1468"), ("tsize", "0")] } else { vec![] };
            socket.send_to(&request(BIG_TEXT, Mode::Netascii, &options), server()).unwrap();
            socket.set_nonblocking(true).unwrap();
            sockets.push((source(i), socket));
        }
    }
    begun.store(true, Ordering::Release);
    let mut counts = BTreeMap::new();
    let mut buf = vec![0u8; 70_000];
    while !drained.load(Ordering::Acquire) {
        for (address, socket) in &sockets {
            while let Ok(len) = socket.recv(&mut buf) {
                let error = matches!(Packet::parse(&buf[..len]), Ok(Packet::Error { .. }));
                let entry = counts.entry(address.clone()).or_insert((0, 0));
                entry.0 += 1;
                entry.1 += usize::from(error);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    counts
}

/// A hundred clients behind one address, all at once, each retransmitting
/// its request (every 500 ms, as a PXE ROM does more slowly) until served:
/// over the per-client cap a request gets no answer rather than an error,
/// so every client gets the loader in the end.
pub(crate) fn behind_one_address(lab: &Lab) -> String {
    lab.add_client_address(NAT_ADDRESS);
    let want = std::fs::read(lab.original(LOADER)).unwrap();
    let results = boot_during(lab, |begun| {
        in_netns(CLIENT_NS, || {
            runtime().block_on(async {
                let clients = (0..CLIENTS_BEHIND_NAT).map(|_| async {
                    let socket = UdpSocket::bind((NAT_ADDRESS, 0)).await.unwrap();
                    begun.store(true, Ordering::Release);
                    download(&socket, LOADER, Duration::from_millis(500), Duration::from_secs(90)).await
                });
                futures_join_all(clients).await
            })
        })
    });
    let mut retried = 0;
    for (i, result) in results.into_iter().enumerate() {
        let (got, requests) = result.unwrap_or_else(|e| panic!("client {i} behind the NAT: {e}"));
        assert!(got == want, "client {i} got {} bytes, not the loader", got.len());
        retried += usize::from(requests > 1);
    }
    assert!(retried > 0, "the per-client cap was never reached: the attack proves nothing");
    format!("all {CLIENTS_BEHIND_NAT} got the loader; {retried} had to ask again")
}

/// Why a download failed.
#[derive(Debug)]
pub(crate) enum Failed {
    /// The server answered with an error.
    Refused(ErrorCode),
    /// Anything else: no answer, a stall, a stray packet.
    Broken(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(code) => write!(f, "refused with {code:?}"),
            Self::Broken(why) => f.write_str(why),
        }
    }
}

/// Downloads `name` in lockstep (no options) from `socket`, sending the
/// request again every `every` until the server answers, giving up after
/// `within`; the bytes and how many requests went out.
pub(crate) async fn download(
    socket: &UdpSocket,
    name: &str,
    every: Duration,
    within: Duration,
) -> Result<(Vec<u8>, u32), Failed> {
    let rrq = request(name, Mode::Octet, &[]);
    let give_up = Instant::now() + within;
    let mut buf = vec![0u8; 70_000];
    let (mut sent, mut tid, mut out, mut expected) = (0u32, None, Vec::new(), 1u16);
    loop {
        if tid.is_none() {
            if Instant::now() > give_up {
                return Err(Failed::Broken(format!("no answer to {sent} requests")));
            }
            socket.send_to(&rrq, server()).await.map_err(|e| Failed::Broken(e.to_string()))?;
            sent += 1;
        }
        let wait = if tid.is_none() { every } else { Duration::from_secs(10) };
        let Ok(received) = tokio::time::timeout(wait, socket.recv_from(&mut buf)).await else {
            if tid.is_some() {
                return Err(Failed::Broken("the transfer stalled".into()));
            }
            continue;
        };
        let (len, from) = received.map_err(|e| Failed::Broken(e.to_string()))?;
        if *tid.get_or_insert(from) != from {
            return Err(Failed::Broken(format!("a second transfer port {from} answered")));
        }
        match Packet::parse(&buf[..len]).map_err(|e| Failed::Broken(e.to_string()))? {
            Packet::Data { block, data } if block == expected => {
                out.extend_from_slice(&data);
                let ack = Packet::Ack { block }.encode();
                socket.send_to(&ack, from).await.map_err(|e| Failed::Broken(e.to_string()))?;
                if data.len() < 512 {
                    return Ok((out, sent));
                }
                expected = expected.wrapping_add(1);
            }
            Packet::Data { .. } => {}
            Packet::Error { code, .. } => return Err(Failed::Refused(code)),
            other => return Err(Failed::Broken(format!("unexpected {other:?}"))),
        }
    }
}

fn request(name: &str, mode: Mode, options: &[(&str, &str)]) -> Vec<u8> {
    let options = options.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    Packet::Rrq(Request { filename: name.to_owned(), mode, options }).encode()
}

/// Polls every future to completion on this task, in order of the results.
pub(crate) async fn futures_join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut results: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, result) in pinned.iter_mut().zip(results.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(output) => {
                        *result = Some(output);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    results.into_iter().map(|r| r.expect("every future finished")).collect()
}
