//! Downloads through a link that drops datagrams still complete intact.
//! The link is a UDP proxy dropping every Nth datagram in each direction
//! (deterministic, and needs no netem in the kernel).

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bootfleet_tftp_server::wire::Packet;
use tokio::net::UdpSocket;

use crate::start;

/// Relays one client's transfer: requests to the server's port, then
/// everything between the client and the server's transfer port, dropping
/// every `drop_every`th datagram each way (never the first request).
async fn lossy_proxy(server: SocketAddr, drop_every: u64) -> (SocketAddr, Arc<AtomicU64>) {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&dropped);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 70_000];
        let Ok((len, client)) = front.recv_from(&mut buf).await else { return };
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        back.send_to(&buf[..len], server).await.unwrap();
        // Server → client, from the first reply's port (the TID) on.
        let (len, tid) = back.recv_from(&mut buf).await.unwrap();
        let face = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        face.send_to(&buf[..len], client).await.unwrap();
        let seen = Arc::new(AtomicU64::new(1));
        let (down_back, down_face, down_seen, down_counter) =
            (Arc::clone(&back), Arc::clone(&face), Arc::clone(&seen), Arc::clone(&counter));
        tokio::spawn(async move {
            let mut buf = vec![0u8; 70_000];
            while let Ok((len, _)) = down_back.recv_from(&mut buf).await {
                if down_seen.fetch_add(1, Ordering::SeqCst) % drop_every == 0 {
                    down_counter.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let _ = down_face.send_to(&buf[..len], client).await;
            }
        });
        let mut buf = vec![0u8; 70_000];
        while let Ok((len, _)) = face.recv_from(&mut buf).await {
            if seen.fetch_add(1, Ordering::SeqCst).is_multiple_of(drop_every) {
                counter.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            let _ = back.send_to(&buf[..len], tid).await;
        }
    });
    (addr, dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_link_still_completes() {
    let f = start().await;
    let file = f.root.join("lossy.bin");
    let data: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let out = tempfile::tempdir().unwrap();
    for (tag, args) in [
        ("lockstep", vec!["--option", "blksize 512"]),
        ("windowed", vec!["--option", "blksize 512", "--option", "windowsize 8"]),
    ] {
        // 13 is coprime with a window's 8 blocks + 1 ACK, so losses move
        // around instead of hitting every retransmitted ACK.
        let (proxy, dropped) = lossy_proxy(f.addr, 13).await;
        let (host, port) = (proxy.ip().to_string(), proxy.port().to_string());
        let dir = out.path().to_owned();
        let local = format!("{tag}.bin");
        let mut full: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        full.extend(["-g", "-r", "lossy.bin", "-l", &local, &host, &port].map(String::from));
        let status = tokio::task::spawn_blocking(move || {
            Command::new("atftp").args(&full).current_dir(dir).output().unwrap()
        })
        .await
        .unwrap();
        assert!(status.status.success(), "{tag}: {}", String::from_utf8_lossy(&status.stderr));
        assert_eq!(std::fs::read(out.path().join(&local)).unwrap(), data, "{tag}");
        assert!(dropped.load(Ordering::SeqCst) >= 5, "{tag}: the link must actually lose datagrams");
    }
}

/// The shell's retransmission timer: a client that stops acknowledging gets
/// the same block again once per timeout (never sooner), then an error.
/// (It acknowledges the first block: a peer that never acknowledged
/// anything gets fewer resends and no error, see `safety.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_gets_resends_at_the_timeout_then_an_error() {
    let f = crate::start_with(|c| {
        c.timeout = Duration::from_millis(300);
        c.max_retries = 2;
    })
    .await;
    let client = crate::RawClient::new(f.addr).await;
    client.request("small.bin", &[]).await;
    let (first, tid) = client.recv().await.unwrap();
    assert!(matches!(first, Packet::Data { block: 1, .. }));
    client.socket.send_to(&Packet::Ack { block: 1 }.encode(), tid).await.unwrap();
    let started = std::time::Instant::now();
    let mut arrivals = Vec::new();
    loop {
        let (packet, _) = client.recv_within(Duration::from_secs(5)).await.expect("the server keeps talking");
        match packet {
            Packet::Data { block, .. } => {
                assert_eq!(block, 2, "only the unacknowledged block is resent");
                arrivals.push(started.elapsed());
            }
            Packet::Error { message, .. } => {
                assert!(message.contains("timed out"), "{message}");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(arrivals.len(), 3, "the first send and two resends: {arrivals:?}");
    for pair in arrivals.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(250), "resent before the timeout: {arrivals:?}");
    }
}

/// A client whose port has closed (its ROM moved on) answers with ICMP port
/// unreachable; the transfer ends at the next send instead of resending
/// into the void until its retries run out (20 × 300 ms here).
#[tokio::test]
async fn a_vanished_client_ends_the_transfer_at_the_next_send() {
    let f = crate::start_with(|c| {
        c.timeout = Duration::from_millis(300);
        c.max_retries = 20;
        c.unacknowledged_retries = 20;
    })
    .await;
    let client = crate::RawClient::new(f.addr).await;
    client.request("small.bin", &[]).await;
    drop(client);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(f.tracker.len(), 1, "the transfer started");
    let started = std::time::Instant::now();
    while !f.tracker.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(3), "still resending to a closed port");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
