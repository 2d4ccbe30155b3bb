//! TFTP benchmark against tftpd-hpa, side by side in one run; prints a table.
//!
//! ```sh
//! scripts/fetch-peers.sh          # unpacks tftpd-hpa's in.tftpd into target/peers
//! cargo bench -p bootfleet-tftp-server --bench tftp
//! ```
//!
//! Both servers run as separate processes on loopback, serving the same
//! directory, driven by the same async client in this process (one task per
//! transfer, so 200 concurrent clients cost no process start-ups).
//! Every transfer and every loop is bounded in count and time.
#![allow(clippy::print_stdout, missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bootfleet_tftp_server::wire::{Mode, Packet, Request};
use tokio::net::UdpSocket;

struct Server {
    name: &'static str,
    addr: SocketAddr,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_bootfleet(root: &Path) -> Server {
    let port = free_udp_port();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // Every benchmark client shares 127.0.0.1, so the per-client limit (a
    // guard against one host hogging the server) is lifted; tftpd-hpa has
    // no such limit.
    let config = root.with_extension("toml");
    std::fs::write(&config, "[tftp]\nmax_transfers_per_client = 4096\n").unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_bootfleet-tftp-server"))
        .arg("-c")
        .arg(&config)
        .args(["--store", "memory", "--log", "warn", "--tftp-listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--tftp-root")
        .arg(root)
        .stdin(Stdio::null())
        .spawn()
        .expect("start bootfleet-tftp-server");
    Server { name: "bootfleet", addr: ([127, 0, 0, 1], port).into(), child }
}

fn start_tftpd_hpa(root: &Path) -> Option<Server> {
    let bin = std::env::var("BOOTFLEET_TFTPD_HPA").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/peers/usr/sbin/in.tftpd").to_owned()
    });
    if !Path::new(&bin).exists() {
        println!("(tftpd-hpa not found at {bin}: run scripts/fetch-peers.sh)");
        return None;
    }
    let port = free_udp_port();
    let child = Command::new(bin)
        .args(["-L", "-a", &format!("127.0.0.1:{port}"), "-s"])
        .arg(root)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some(Server { name: "tftpd-hpa", addr: ([127, 0, 0, 1], port).into(), child })
}

/// Downloads a file; returns its length. Windowed when `windowsize > 1` and
/// the server agreed (ACKs the last block of each window). Kept cheap so the
/// client is not what is measured: once the server's transfer port (TID)
/// is known the socket is connected to it, and ACKs are written in place.
async fn download(server: SocketAddr, file: &str, blksize: u16, windowsize: u16) -> Result<u64, String> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let mut options = vec![("blksize".to_owned(), blksize.to_string()), ("tsize".to_owned(), "0".to_owned())];
    if windowsize > 1 {
        options.push(("windowsize".to_owned(), windowsize.to_string()));
    }
    let request = Packet::Rrq(Request { filename: file.into(), mode: Mode::Octet, options }).encode();
    socket.send_to(&request, server).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 70_000];
    let (mut block_size, mut window) = (512usize, 1u16);
    let mut expected: u16 = 1;
    let mut received = 0u64;
    let mut in_window = 0u16;
    let mut connected = false;
    // The request until the server answers, then the last ACK sent.
    let mut last_ack: Vec<u8> = request;
    let ack = |into: &mut Vec<u8>, block: u16| {
        into.clear();
        into.extend_from_slice(&[0, 4]);
        into.extend_from_slice(&block.to_be_bytes());
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut silent = 0;
    loop {
        if Instant::now() > deadline {
            return Err("took longer than 120 s".into());
        }
        let got = if connected {
            tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf))
                .await
                .map(|r| r.map(|n| (n, server)))
        } else {
            tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf)).await
        };
        let len = match got {
            Ok(Ok((len, from))) => {
                if !connected {
                    // The first answer names the transfer's port; nothing
                    // else is read from here on.
                    socket.connect(from).await.map_err(|e| e.to_string())?;
                    connected = true;
                }
                len
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => {
                silent += 1;
                if silent > 5 {
                    return Err("server stopped answering".into());
                }
                if connected {
                    socket.send(&last_ack).await.map_err(|e| e.to_string())?;
                } else {
                    socket.send_to(&last_ack, server).await.map_err(|e| e.to_string())?;
                }
                continue;
            }
        };
        silent = 0;
        match Packet::parse(&buf[..len]).map_err(|e| e.to_string())? {
            Packet::Oack { options } => {
                for (k, v) in options {
                    match k.as_str() {
                        "blksize" => block_size = v.parse().map_err(|_| "bad blksize")?,
                        "windowsize" => window = v.parse().map_err(|_| "bad windowsize")?,
                        _ => {}
                    }
                }
                ack(&mut last_ack, 0);
                socket.send(&last_ack).await.map_err(|e| e.to_string())?;
            }
            Packet::Data { block, data } => {
                if block != expected {
                    // Lost something: ACK the last in-order block (RFC 7440).
                    socket.send(&last_ack).await.map_err(|e| e.to_string())?;
                    in_window = 0;
                    continue;
                }
                received += data.len() as u64;
                expected = expected.wrapping_add(1);
                in_window += 1;
                let last = data.len() < block_size;
                if last || in_window == window {
                    ack(&mut last_ack, block);
                    socket.send(&last_ack).await.map_err(|e| e.to_string())?;
                    in_window = 0;
                }
                if last {
                    return Ok(received);
                }
            }
            Packet::Error { code, message } => return Err(format!("error {code:?}: {message}")),
            other => return Err(format!("unexpected {other:?}")),
        }
    }
}

async fn storm(server: SocketAddr, clients: usize) -> (Duration, usize) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients).map(|_| tokio::spawn(download(server, "loader.bin", 1468, 1))).collect();
    let mut failures = 0;
    for t in tasks {
        if !matches!(t.await, Ok(Ok(n)) if n == 1024 * 1024) {
            failures += 1;
        }
    }
    (started.elapsed(), failures)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let big: Vec<u8> =
        (0..64u32 * 1024 * 1024).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    std::fs::write(root.join("loader.bin"), &big[..1024 * 1024]).unwrap();
    drop(big);
    let mut servers = vec![start_bootfleet(root)];
    servers.extend(start_tftpd_hpa(root));
    std::thread::sleep(Duration::from_millis(500));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // (server, 64 MiB lockstep, 64 MiB windowsize 16, storm time, storm failures)
    let mut rows = Vec::new();
    // TFTP_BENCH_ONLY=storm skips the 64 MiB downloads (for profiling).
    let storm_only = std::env::var("TFTP_BENCH_ONLY").is_ok_and(|v| v == "storm");
    for server in &servers {
        let row = runtime.block_on(async {
            let mut lockstep = Vec::new();
            let mut windowed = Vec::new();
            for _ in 0..if storm_only { 0 } else { 3 } {
                let t = Instant::now();
                let n = download(server.addr, "big.bin", 1468, 1).await.expect("64 MiB download");
                assert_eq!(n, 64 * 1024 * 1024);
                lockstep.push(t.elapsed());
                let t = Instant::now();
                let n = download(server.addr, "big.bin", 1468, 16).await.expect("64 MiB windowed download");
                assert_eq!(n, 64 * 1024 * 1024);
                windowed.push(t.elapsed());
            }
            let storms: Vec<(Duration, usize)> = {
                let mut out = Vec::new();
                for _ in 0..3 {
                    out.push(storm(server.addr, 200).await);
                }
                out
            };
            let failures: usize = storms.iter().map(|s| s.1).sum();
            (median(lockstep), median(windowed), median(storms.iter().map(|s| s.0).collect()), failures)
        });
        rows.push((server.name, row));
    }
    let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    println!("TFTP on loopback, same client for both servers (median of 3 runs each)");
    println!(
        "| {:<10} | {:>22} | {:>24} | {:>26} | {:>8} |",
        "server", "64 MiB, blksize 1468", "64 MiB, + windowsize 16", "200 clients × 1 MiB storm", "failures"
    );
    println!("|{:-<12}|{:->24}|{:->26}|{:->28}|{:->10}|", "", "", "", "", "");
    for (name, (lockstep, windowed, storm, failures)) in &rows {
        println!(
            "| {:<10} | {:>22} | {:>24} | {:>26} | {:>8} |",
            name,
            s(*lockstep),
            s(*windowed),
            s(*storm),
            failures
        );
    }
    if rows.len() == 2 {
        let (a, b) = (&rows[0].1, &rows[1].1);
        let ratio = |x: Duration, y: Duration| y.as_secs_f64() / x.as_secs_f64();
        println!(
            "bootfleet vs tftpd-hpa: {:.1}x (lockstep), {:.1}x (windowed; tftpd-hpa has no windowsize), {:.1}x (storm)",
            ratio(a.0, b.0),
            ratio(a.1, b.1),
            ratio(a.2, b.2)
        );
    }
}
