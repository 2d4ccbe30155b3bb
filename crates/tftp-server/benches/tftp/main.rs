//! TFTP benchmark against tftpd-hpa and the `tftpd` crate (the one the
//! customer named), side by side in one run; prints a table.
//!
//! ```sh
//! scripts/fetch-peers.sh          # unpacks tftpd-hpa's in.tftpd into target/peers
//! cargo bench -p bootfleet-tftp-server --bench tftp
//! TFTP_BENCH_ROUNDS=1 cargo bench -p bootfleet-tftp-server --bench tftp   # a quick look
//! ```
//!
//! All servers run as separate processes on loopback, serving the same
//! directory, driven by the same async client in this process (one task per
//! transfer, so 200 concurrent clients cost no process start-ups). The
//! `tftpd` crate is a dev-dependency: this bench binary runs its server in
//! a child process of its own (see [`SERVE_TFTPD`]).
//! Every transfer and every loop is bounded in count and time.
#![allow(clippy::print_stdout, missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod client;

use bootfleet_test_support::cpu;
use client::{CLIENT_TIMEOUTS, download};

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
    // Every benchmark client shares 127.0.0.1, so the per-client limits (a
    // guard against one host hogging the server, and against forged
    // requests) are lifted; the peers have no such limits.
    let config = root.with_extension("toml");
    std::fs::write(
        &config,
        "[tftp]\nmax_transfers_per_client = 4096\nmax_unacknowledged_per_client = 4096\n",
    )
    .unwrap();
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

/// Set in a child of this bench: run the `tftpd` crate's server on
/// `127.0.0.1:<port>` serving `<dir>` (value `<port>:<dir>`), read-only.
const SERVE_TFTPD: &str = "TFTP_BENCH_SERVE_TFTPD";

/// The `tftpd` crate's own server, as its binary runs it.
fn serve_tftpd(spec: &str) {
    let (port, dir) = spec.split_once(':').expect("port:dir");
    let args = ["tftpd", "-i", "127.0.0.1", "-p", port, "-d", dir, "-r", "-q", "-q"].map(String::from);
    let config = tftpd::Config::new(args.into_iter()).expect("tftpd arguments");
    tftpd::Server::new(&config).expect("tftpd binds").listen();
}

fn start_tftpd_crate(root: &Path) -> Option<Server> {
    let port = free_udp_port();
    let child = Command::new(std::env::current_exe().ok()?)
        .env(SERVE_TFTPD, format!("{port}:{}", root.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some(Server { name: "tftpd-rs", addr: ([127, 0, 0, 1], port).into(), child })
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
/// the server agreed (ACKs the last block of each window).
///
/// Kept cheap so the client is not what is measured:
/// - once the server's transfer port (TID) is known the socket is connected
///   to it, and ACKs are written in place;
/// - one timer per download, pushed on lazily, instead of one per datagram;
/// - no receive that is bound to find nothing: once an ACK is due, nothing
///   more comes until the server has it (`receive_settling`, as the server
///   does).
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

/// How the two CPUs are shared during a storm.
#[derive(Clone, Copy, PartialEq)]
enum Cores {
    /// The server on one CPU, the load client (one thread) on the other:
    /// a server with a core of its own, as on its own machine, and a
    /// client that cannot take the server's CPU.
    OneEach,
    /// Both on both CPUs; the client runs two threads.
    Shared,
}

struct Storm {
    took: Duration,
    failed: usize,
}

/// One storm against `server` with the CPUs shared as `cores` says.
fn run_storm(server: &Server, cores: Cores, runtimes: &Runtimes) -> Storm {
    let all = &runtimes.cpus;
    let one_each = cores == Cores::OneEach && all.len() >= 2;
    let (client_cpus, server_cpus) =
        if one_each { (&all[..1], &all[all.len() - 1..]) } else { (&all[..], &all[..]) };
    if one_each {
        cpu::run_process_on(server.child.id(), server_cpus);
        cpu::run_here_on(client_cpus);
    }
    CLIENT_TIMEOUTS.store(0, std::sync::atomic::Ordering::Relaxed);
    let own = ["self".to_owned()];
    let (client_before, ticks_before) = (cpu::process_cpu_seconds(&own), cpu::cpu_ticks());
    let (took, failed) = if one_each {
        runtimes.single.block_on(storm(server.addr, 200))
    } else {
        runtimes.multi.block_on(storm(server.addr, 200))
    };
    let (client_cpu, ticks) = (cpu::process_cpu_seconds(&own) - client_before, cpu::cpu_ticks());
    if one_each {
        cpu::run_process_on(server.child.id(), all);
        cpu::run_here_on(all);
    }
    let busy = if one_each {
        format!(
            "busy: server's core {:.0} %, client's core {:.0} %",
            cpu::busy_percent(&ticks_before, &ticks, server_cpus),
            cpu::busy_percent(&ticks_before, &ticks, client_cpus)
        )
    } else {
        format!("busy: both cores {:.0} %", cpu::busy_percent(&ticks_before, &ticks, all))
    };
    println!(
        "  {:<9} {:<16} {:.2} s, {failed} failed; {busy}; load client CPU {client_cpu:.2} s; client timeouts {}",
        server.name,
        if one_each { "one core each:" } else { "2 shared cores:" },
        took.as_secs_f64(),
        CLIENT_TIMEOUTS.load(std::sync::atomic::Ordering::Relaxed)
    );
    Storm { took, failed }
}

/// The load client's runtimes: one thread (for one core each), or two.
struct Runtimes {
    cpus: Vec<usize>,
    single: tokio::runtime::Runtime,
    multi: tokio::runtime::Runtime,
}

/// Rounds unless `TFTP_BENCH_ROUNDS` says otherwise.
const ROUNDS: usize = 3;

#[derive(Default)]
struct Row {
    lockstep: Vec<Duration>,
    windowed: Vec<Duration>,
    storm_one_each: Vec<Duration>,
    storm_shared: Vec<Duration>,
    failures: usize,
}

fn main() {
    if let Ok(spec) = std::env::var(SERVE_TFTPD) {
        serve_tftpd(&spec);
        return;
    }
    let rounds =
        std::env::var("TFTP_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(ROUNDS).max(1);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let big: Vec<u8> =
        (0..64u32 * 1024 * 1024).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    std::fs::write(root.join("loader.bin"), &big[..1024 * 1024]).unwrap();
    drop(big);
    let mut servers = vec![start_bootfleet(root)];
    servers.extend(start_tftpd_hpa(root));
    servers.extend(start_tftpd_crate(root));
    std::thread::sleep(Duration::from_millis(500));
    let runtimes = Runtimes {
        cpus: cpu::allowed_cpus(),
        single: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
        multi: tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap(),
    };
    if runtimes.cpus.len() < 2 {
        println!("(only one CPU available: the \"one core each\" storms share it)");
    }
    let mut rows: Vec<Row> = servers.iter().map(|_| Row::default()).collect();
    // TFTP_BENCH_ONLY=storm skips the 64 MiB downloads (for profiling).
    let storm_only = std::env::var("TFTP_BENCH_ONLY").is_ok_and(|v| v == "storm");
    // Rounds take turns between the servers, each round starting with the
    // next one, so that a slow spell of this shared machine does not land
    // on one server only.
    for round in 0..rounds {
        let mut order: Vec<(&Server, &mut Row)> = servers.iter().zip(&mut rows).collect();
        order.rotate_left(round % servers.len());
        for (server, row) in order {
            if !storm_only {
                let (lockstep, windowed) = runtimes.multi.block_on(async {
                    let t = Instant::now();
                    let n = download(server.addr, "big.bin", 1468, 1).await.expect("64 MiB download");
                    assert_eq!(n, 64 * 1024 * 1024);
                    let lockstep = t.elapsed();
                    let t = Instant::now();
                    let n =
                        download(server.addr, "big.bin", 1468, 16).await.expect("64 MiB windowed download");
                    assert_eq!(n, 64 * 1024 * 1024);
                    (lockstep, t.elapsed())
                });
                row.lockstep.push(lockstep);
                row.windowed.push(windowed);
            }
            for cores in [Cores::OneEach, Cores::Shared] {
                let storm = run_storm(server, cores, &runtimes);
                row.failures += storm.failed;
                match cores {
                    Cores::OneEach => row.storm_one_each.push(storm.took),
                    Cores::Shared => row.storm_shared.push(storm.took),
                }
            }
        }
    }
    print_table(&servers, rows, rounds);
}

fn print_table(servers: &[Server], rows: Vec<Row>, rounds: usize) {
    // Zero: not run (TFTP_BENCH_ONLY=storm).
    let s = |d: Duration| if d.is_zero() { "-".to_owned() } else { format!("{:.2} s", d.as_secs_f64()) };
    println!();
    println!("TFTP on loopback, same client for every server, median of {rounds} rounds");
    println!(
        "| {:<10} | {:>20} | {:>23} | {:>28} | {:>29} | {:>8} |",
        "server",
        "64 MiB, blksize 1468",
        "64 MiB, + windowsize 16",
        "storm 200 × 1 MiB, 1 core each",
        "storm 200 × 1 MiB, 2 shared cores",
        "failures"
    );
    println!("|{:-<12}|{:->22}|{:->25}|{:->30}|{:->31}|{:->10}|", "", "", "", "", "", "");
    let failures: Vec<usize> = rows.iter().map(|row| row.failures).collect();
    let medians: Vec<[Duration; 4]> = rows
        .into_iter()
        .map(|row| {
            [median(row.lockstep), median(row.windowed), median(row.storm_one_each), median(row.storm_shared)]
        })
        .collect();
    for ((server, m), failures) in servers.iter().zip(&medians).zip(failures) {
        println!(
            "| {:<10} | {:>20} | {:>23} | {:>30} | {:>33} | {:>8} |",
            server.name,
            s(m[0]),
            s(m[1]),
            s(m[2]),
            s(m[3]),
            failures
        );
    }
    let Some((ours, peers)) = medians.split_first() else { return };
    for (peer, theirs) in servers[1..].iter().zip(peers) {
        let ratio = |i: usize| {
            if ours[i].is_zero() || theirs[i].is_zero() {
                "-".to_owned()
            } else {
                format!("{:.1}x", theirs[i].as_secs_f64() / ours[i].as_secs_f64())
            }
        };
        println!(
            "bootfleet vs {}: {} (64 MiB lockstep), {} (64 MiB windowed{}), {} (storm, one core each), {} \
             (storm, 2 shared cores)",
            peer.name,
            ratio(0),
            ratio(1),
            if peer.name == "tftpd-hpa" { "; tftpd-hpa has no windowsize" } else { "" },
            ratio(2),
            ratio(3)
        );
    }
}
