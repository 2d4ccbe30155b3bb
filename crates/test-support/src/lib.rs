//! Test harness pieces shared by every Bootfleet test: a real etcd (one
//! member or a 3-member cluster on loopback), a TCP proxy that can cut a
//! client off from etcd, network-namespace guards for the services that
//! answer broadcasts, and tracing set up for tests.
//!
//! Everything started here is killed by PID when its guard drops, also when
//! the test fails.

pub mod cpu;
pub mod etcd;
pub mod netns;
pub mod pki;
pub mod process;
pub mod proxy;

use std::sync::Once;

/// Routes tracing output to the test harness (shown for failing tests).
/// Honors `BOOTFLEET_LOG` (default `info`).
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("BOOTFLEET_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

/// A free TCP port on 127.0.0.1 (bound, then released: good enough for tests
/// that start a server on it right away).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// `GET path` over HTTP/1.1 on 127.0.0.1:`port`; the body, or an empty
/// string when nothing answers (for polling a starting server).
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

/// The admin endpoint's `/healthz` body ("serving", "degraded", …).
pub fn healthz(port: u16) -> String {
    http_get(port, "/healthz")
}

/// Monotonic clock in nanoseconds, comparable across processes on this host
/// (CLOCK_MONOTONIC), for ordering events logged by several processes.
pub fn monotonic_ns() -> i128 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux");
    i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec())
}

/// Deterministic test bytes (xorshift), different per seed.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
