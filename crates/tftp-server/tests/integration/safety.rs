//! Nothing outside the root, no panics on garbage, limits and shutdown.

use std::time::Duration;

use bootfleet_tftp_server::wire::{ErrorCode, Packet};

use crate::{RawClient, start, start_with};

fn error_of(result: Result<Vec<u8>, Packet>) -> (ErrorCode, String) {
    match result {
        Err(Packet::Error { code, message }) => (code, message),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_path_leaves_the_root() {
    let f = start().await;
    let client = RawClient::new(f.addr).await;
    let root = f.root.to_string_lossy().into_owned();
    for name in ["../etc/passwd", "a/../../etc/passwd", "..\\..\\boot.ini", "escape", "pxelinux.cfg", "/.."] {
        let (code, message) = error_of(client.get(name, &[]).await);
        assert_eq!(code, ErrorCode::AccessViolation, "{name}: {message}");
        assert!(
            !message.contains(&root) && !message.contains("/etc"),
            "{name}: message leaks a path: {message}"
        );
    }
    let (code, message) = error_of(client.get("missing.bin", &[]).await);
    assert_eq!((code, message.as_str()), (ErrorCode::FileNotFound, "file not found"));
    // A leading slash means the root, as PXE ROMs send it.
    assert_eq!(
        client.get("/small.bin", &[]).await.unwrap(),
        std::fs::read(f.root.join("small.bin")).unwrap()
    );
    // Writes are refused.
    client.send_raw(b"\x00\x02upload.bin\x00octet\x00").await;
    let (packet, _) = client.recv().await.unwrap();
    assert!(matches!(packet, Packet::Error { code: ErrorCode::AccessViolation, .. }), "{packet:?}");
    assert!(!f.root.join("upload.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_dropped_and_service_continues() {
    let f = start().await;
    let client = RawClient::new(f.addr).await;
    let mut datagrams: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 9, 1, 2],
        b"\x00\x01no-terminator".to_vec(),
        b"\x00\x01f\x00mail\x00".to_vec(),
        b"\x00\x01f\x00octet\x00blksize\x00".to_vec(),
        b"\x00\x03\x00\x01data-to-the-server-port".to_vec(),
        b"\x00\x04\x00\x01".to_vec(),
        vec![0xff; 65_000],
    ];
    let mut x = 0x1234_5678_u32;
    for len in [1usize, 3, 17, 600, 1500] {
        datagrams.push(
            (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (x >> 16) as u8
                })
                .collect(),
        );
    }
    for d in &datagrams {
        client.send_raw(d).await;
    }
    // Still serving, and options nobody standardized are not echoed.
    let other = RawClient::new(f.addr).await;
    other.request("small.bin", &[("utimeout", "1"), ("windowwait", "0"), ("blksize", "1024")]).await;
    let (oack, _) = other.recv().await.unwrap();
    assert_eq!(oack, Packet::Oack { options: vec![("blksize".into(), "1024".into())] });
}

/// Over the per-client cap a request gets no answer, not a "busy" error
/// that would end the client's boot: it retransmits, and is served once a
/// transfer ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_per_client_cap_a_request_waits_unanswered_then_is_served() {
    let f = start_with(|c| c.max_per_client = 1).await;
    let first = RawClient::new(f.addr).await;
    first.request("medium.bin", &[]).await;
    let (data, tid) = first.recv().await.unwrap();
    assert!(matches!(data, Packet::Data { block: 1, .. }));
    // Same address, second transfer while the first is open: no answer.
    let second = RawClient::new(f.addr).await;
    second.request("small.bin", &[]).await;
    assert_eq!(second.recv_within(Duration::from_millis(300)).await, None, "answered over the cap");
    // The first ends (the client aborts); the retransmitted request is served.
    let abort = Packet::Error { code: ErrorCode::NotDefined, message: "done".into() };
    first.socket.send_to(&abort.encode(), tid).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(second.get("small.bin", &[]).await.unwrap(), std::fs::read(f.root.join("small.bin")).unwrap());
}

/// 100 clients behind one address, 8 transfers at a time for it: every one
/// downloads in the end (each retransmits its request until served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_behind_one_address_all_boot() {
    let f = start_with(|c| c.max_per_client = 8).await;
    let want = std::fs::read(f.root.join("small.bin")).unwrap();
    let clients: Vec<_> = (0..100)
        .map(|_| {
            tokio::spawn(crate::download_retrying(
                f.addr,
                "small.bin",
                Duration::from_millis(200),
                Duration::from_millis(20),
            ))
        })
        .collect();
    let mut retried = 0;
    for (i, client) in clients.into_iter().enumerate() {
        let (got, requests) = client.await.unwrap().unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert!(got == want, "client {i}: wrong content");
        retried += usize::from(requests > 1);
    }
    assert!(retried > 0, "the cap was never reached: the test proves nothing");
}

/// A retransmitted request from a client already being served starts no
/// second transfer: only one transfer port ever answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retransmitted_request_starts_no_second_transfer() {
    let f = start_with(|c| c.timeout = Duration::from_secs(5)).await;
    let client = RawClient::new(f.addr).await;
    client.request("small.bin", &[]).await;
    let (first, tid) = client.recv().await.unwrap();
    assert!(matches!(first, Packet::Data { block: 1, .. }));
    client.request("small.bin", &[]).await;
    client.request("small.bin", &[]).await;
    assert_eq!(client.recv_within(Duration::from_millis(500)).await, None, "a second transfer answered");
    assert_eq!(f.tracker.len(), 1);
    // The one transfer goes on.
    client.socket.send_to(&Packet::Ack { block: 1 }.encode(), tid).await.unwrap();
    let (second, from) = client.recv().await.unwrap();
    assert!(matches!(second, Packet::Data { block: 2, .. }) && from == tid, "{second:?}");
}

/// Forged requests (a victim's address, never acknowledged) make the server
/// send a bounded number of datagrams: `max_unacknowledged_per_client`
/// transfers at a time, each sending its first packet at most
/// `1 + unacknowledged_retries` times, and no error packets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_are_never_acknowledged_get_a_bounded_answer() {
    let f = start_with(|c| {
        c.timeout = Duration::from_millis(300);
        c.max_unacknowledged_per_client = 2;
        c.unacknowledged_retries = 1;
    })
    .await;
    // The "victim": 50 sockets on one address, each asking once, with and
    // without options (an OACK, or a first block).
    let mut victims = Vec::new();
    for i in 0..50 {
        let victim = RawClient::new(f.addr).await;
        let options: &[(&str, &str)] = if i % 2 == 0 { &[("blksize", "1468"), ("tsize", "0")] } else { &[] };
        victim.request("medium.bin", options).await;
        victims.push(victim);
    }
    let started = std::time::Instant::now();
    while !f.tracker.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "transfers never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut received = 0;
    for victim in &victims {
        while let Some((packet, _)) = victim.recv_within(Duration::from_millis(20)).await {
            assert!(
                !matches!(packet, Packet::Error { .. }),
                "an error went to a peer that never acknowledged"
            );
            received += 1;
        }
    }
    assert!(received > 0);
    assert!(received <= 2 * (1 + 1), "{received} datagrams reached the forged address");
    // A real client from the same address is served afterwards.
    let client = RawClient::new(f.addr).await;
    assert_eq!(client.get("small.bin", &[]).await.unwrap(), std::fs::read(f.root.join("small.bin")).unwrap());
}

/// Shutdown stops new requests but lets a transfer in flight finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_transfers_in_flight() {
    let f = start().await;
    let client = RawClient::new(f.addr).await;
    client.request("small.bin", &[("blksize", "100")]).await;
    let (oack, tid) = client.recv().await.unwrap();
    assert!(matches!(oack, Packet::Oack { .. }));
    f.stop.cancel();
    f.tracker.close();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A new request gets no answer…
    let late = RawClient::new(f.addr).await;
    late.request("small.bin", &[]).await;
    assert!(
        late.recv_within(Duration::from_millis(300)).await.is_none(),
        "no new transfers after shutdown began"
    );
    // …while the open one completes.
    let mut got = Vec::new();
    let mut block = 0u16;
    loop {
        client.socket.send_to(&Packet::Ack { block }.encode(), tid).await.unwrap();
        let Some((Packet::Data { block: b, data }, _)) = client.recv().await else {
            panic!("transfer stalled")
        };
        got.extend_from_slice(&data);
        block = b;
        if data.len() < 100 {
            client.socket.send_to(&Packet::Ack { block }.encode(), tid).await.unwrap();
            break;
        }
    }
    assert_eq!(got, std::fs::read(f.root.join("small.bin")).unwrap());
    tokio::time::timeout(Duration::from_secs(5), f.tracker.wait()).await.expect("transfer task ends");
}

/// The tsize probe UEFI firmware does: ask, read the size, abort with 8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsize_probe_then_abort_is_clean() {
    let f = start().await;
    let client = RawClient::new(f.addr).await;
    client.request("medium.bin", &[("tsize", "0"), ("blksize", "1468")]).await;
    let (oack, tid) = client.recv().await.unwrap();
    let Packet::Oack { options } = oack else { panic!("{oack:?}") };
    let size = std::fs::metadata(f.root.join("medium.bin")).unwrap().len().to_string();
    assert!(options.contains(&("tsize".into(), size)), "{options:?}");
    let abort = Packet::Error { code: ErrorCode::OptionRefused, message: "size probe".into() };
    client.socket.send_to(&abort.encode(), tid).await.unwrap();
    // The transfer ends without sending data.
    assert!(client.recv().await.is_none());
    // And a full download right after works.
    assert_eq!(client.get("medium.bin", &[("blksize", "1468")]).await.unwrap().len(), 3 * 1024 * 1024 + 17);
}
