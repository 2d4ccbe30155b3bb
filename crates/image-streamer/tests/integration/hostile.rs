//! Clients that hold connections open without finishing a request
//! (slowloris), that never send a byte, or that open more connections than
//! the streamer allows. Each is bounded in count and time, on loopback;
//! a real download must still work while they run.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::{curl, start_replica};

const EMBEDDED: &[&str] = &["--store", "embedded"];

/// Reads until the server closes; true when it did within `within`.
/// Waits until the streamer's gauge of open HTTP connections reads `want`.
fn wait_open_connections(admin: u16, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = bootfleet_test_support::http_get(admin, "/metrics");
        let open = metrics
            .lines()
            .find_map(|l| l.strip_prefix("bootfleet_streamer_http_connections "))
            .and_then(|v| v.trim().parse::<i64>().ok());
        if open == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "open HTTP connections stayed at {open:?}, not {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn slow_and_silent_connections_are_closed_and_the_cap_refuses_with_503() {
    let dir = tempfile::tempdir().unwrap();
    let settings = "http_header_timeout = \"1s\"\nhttp_idle_timeout = \"2s\"\nhttp_max_connections = 60";
    let replica = start_replica(EMBEDDED, dir.path(), "r1", settings);
    let addr = format!("127.0.0.1:{}", replica.http);

    // Slowloris: 30 requests whose headers never end, one more header line
    // every 300 ms (so the connections are never idle), and 20 connections
    // that send nothing at all.
    let mut slow: Vec<TcpStream> = (0..30)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /boot.ipxe?mac=52:54:00:00:00:01 HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    let mut silent: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    let started = Instant::now();
    let mut dripping = slow.iter().map(|s| s.try_clone().unwrap()).collect::<Vec<_>>();
    let drip = std::thread::spawn(move || {
        // Bounded: at most 30 rounds (9 s).
        for round in 0..30 {
            let mut alive = 0;
            for s in &mut dripping {
                if s.write_all(format!("X-Slow-{round}: y\r\n").as_bytes()).is_ok() {
                    alive += 1;
                }
            }
            if alive == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    // A real client is still served meanwhile.
    let ok = curl(&format!("{}/nope", replica.url()), &[]);
    assert_eq!(ok.status, 404, "a real request while the attack runs");
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(10)),
            "slow request {i} still open after {:?}",
            started.elapsed()
        );
    }
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(closed_within(s, Duration::from_secs(10)), "silent connection {i} still open");
    }
    drip.join().unwrap();

    // The cap: 60 connections admitted, the next one is told 503 and
    // closed. Waits for exactly those states on the streamer's own gauge
    // (a connection still closing, or one not yet accepted, would
    // otherwise take the slot the test means for `over`).
    wait_open_connections(replica.admin, 0);
    let held: Vec<TcpStream> = (0..60).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    wait_open_connections(replica.admin, 60);
    let mut over = TcpStream::connect(&addr).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = over.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "over the cap: {answer:?}");
    // Once they time out, the slots free and requests are served again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = curl(&format!("{}/nope", replica.url()), &[]);
        if answer.status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "slots never freed: {}", answer.status);
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = curl(&format!("http://127.0.0.1:{}/metrics", replica.admin), &[]);
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(metrics.contains("bootfleet_streamer_http_connections_refused_total 1"), "{metrics}");
}

/// The admin endpoint (health probes, metrics) holds the same limits: a
/// request whose headers never end is closed after its header timeout (5 s).
#[test]
fn the_admin_endpoint_closes_slow_requests() {
    let dir = tempfile::tempdir().unwrap();
    let replica = start_replica(EMBEDDED, dir.path(), "r1", "");
    let mut slow = TcpStream::connect(("127.0.0.1", replica.admin)).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(20)), "a slow admin request stays open");
}
