//! NBD benchmark against qemu-nbd and nbdkit's file plugin, side by side
//! in one run; prints a table.
//!
//! ```sh
//! cargo bench -p bootfleet-nbd --bench nbd                      # 1 GiB export
//! NBD_BENCH_SIZE=256M NBD_BENCH_ROUNDS=1 cargo bench -p bootfleet-nbd --bench nbd   # a quick look
//! ```
//!
//! Every server is a process of its own on 127.0.0.1 serving the same
//! golden file (in the page cache: what is measured is the server, not
//! the disk), driven by the same clients: nbdcopy for sequential reads
//! (with multi-conn where the server offers it, and with one connection),
//! fio's nbd engine for 4 KiB random reads, and nbdcopy from a local file
//! into a copy-on-write overlay for writes (written to the same disk for
//! every server, with a flush at the end). Servers get one CPU and the
//! clients another when two are available. Every run is bounded in time;
//! the figure is the median of `NBD_BENCH_ROUNDS` (default 3).
//! `NBD_BENCH_ONLY=read` or `=write` runs one half, `NBD_BENCH_SECONDS`
//! sets the random-read time (default 10). The failover pause (see
//! [`failover`]) runs with the reads.
#![allow(clippy::print_stdout, missing_docs)]

mod failover;
mod servers;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bootfleet_test_support::cpu;
use servers::{Role, SERVE_BOOTFLEET, Server};

const MIB: f64 = 1024.0 * 1024.0;

fn env_size(name: &str, default: u64) -> u64 {
    let Ok(value) = std::env::var(name) else { return default };
    let value = value.trim();
    let (digits, unit) = value.split_at(value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len()));
    let n: u64 = digits.parse().unwrap_or_else(|_| panic!("{name}={value}: a size like 256M or 1G"));
    n * match unit {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        _ => panic!("{name}={value}: a size like 256M or 1G"),
    }
}

/// Writes `size` bytes of pseudo-random data (incompressible, no zero
/// blocks, so no client skips anything).
fn make_golden(path: &Path, size: u64) {
    use std::io::Write;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    out.flush().unwrap();
}

/// Runs `command` to completion within `limit`; its stdout, or `None`
/// (with a note) when it fails.
fn run(command: &mut Command, limit: Duration) -> Option<String> {
    let description = format!("{command:?}");
    let mut child =
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().ok()?;
    let stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().ok()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            println!("({description} took longer than {limit:?}; stopped)");
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        let err =
            child.stderr.take().map(|e| std::io::read_to_string(e).unwrap_or_default()).unwrap_or_default();
        println!("({description} failed: {status}: {})", err.trim());
        return None;
    }
    Some(out)
}

/// MiB/s of `nbdcopy <args>` moving `bytes`.
fn nbdcopy(args: &[&str], bytes: u64) -> Option<f64> {
    let start = Instant::now();
    run(Command::new("nbdcopy").args(args), Duration::from_secs(600))?;
    Some(bytes as f64 / MIB / start.elapsed().as_secs_f64())
}

/// IOPS of 4 KiB random reads over `seconds`, 32 in flight.
fn fio_random_reads(uri: &str, seconds: u64) -> Option<f64> {
    let out = run(
        Command::new("fio").args([
            "--name=randread",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--readonly",
            "--rw=randread",
            "--bs=4k",
            "--iodepth=32",
            "--time_based",
            &format!("--runtime={seconds}"),
            "--output-format=json",
        ]),
        Duration::from_secs(seconds + 60),
    )?;
    // fio may print a line before its JSON.
    let json: serde_json::Value = serde_json::from_str(&out[out.find('{')?..]).ok()?;
    json["jobs"][0]["read"]["iops"].as_f64()
}

#[derive(Default, Clone)]
struct Row {
    multi_conn: Vec<f64>,
    one_conn: Vec<f64>,
    random: Vec<f64>,
    write: Vec<f64>,
    failover_ms: Vec<f64>,
    multi_conn_offered: bool,
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

fn offers_multi_conn(uri: &str) -> bool {
    run(Command::new("nbdinfo").args(["--json", uri]), Duration::from_secs(30))
        .and_then(|out| serde_json::from_str::<serde_json::Value>(&out).ok())
        .is_some_and(|v| v["exports"][0]["can_multi_conn"] == true)
}

fn pin(server: &Server, cpus: Option<(usize, usize)>) {
    if let Some((_, server_cpu)) = cpus {
        cpu::run_process_on(server.pid(), &[server_cpu]);
    }
}

fn measure_reads(server: &Server, cpus: Option<(usize, usize)>, size: u64, seconds: u64, row: &mut Row) {
    pin(server, cpus);
    let uri = server.uri(Role::Read);
    row.multi_conn_offered = offers_multi_conn(&uri);
    row.multi_conn.extend(nbdcopy(&[&uri, "null:"], size));
    row.one_conn.extend(nbdcopy(&["--connections=1", &uri, "null:"], size));
    row.random.extend(fio_random_reads(&uri, seconds));
}

fn measure_write(server: &Server, cpus: Option<(usize, usize)>, golden: &Path, size: u64, row: &mut Row) {
    pin(server, cpus);
    let uri = server.uri(Role::Write);
    let golden = golden.to_string_lossy();
    row.write.extend(nbdcopy(&["--flush", &golden, &uri], size));
}

fn cell(values: &[f64], unit: &str, reference: Option<f64>) -> String {
    match (median(values), reference) {
        (Some(v), Some(r)) if r > 0.0 => format!("{v:.0} {unit} ({:.2}x)", v / r),
        (Some(v), _) => format!("{v:.0} {unit}"),
        (None, _) => "-".into(),
    }
}

fn main() {
    if let Ok(spec) = std::env::var(SERVE_BOOTFLEET) {
        servers::serve_bootfleet(&spec);
        return;
    }
    let size = env_size("NBD_BENCH_SIZE", 1 << 30);
    let rounds = env_size("NBD_BENCH_ROUNDS", 3).max(1);
    let seconds = env_size("NBD_BENCH_SECONDS", 10).max(1);
    let scratch = tempfile::Builder::new().prefix("nbd-bench").tempdir().unwrap();
    let golden = scratch.path().join("golden.img");
    make_golden(&golden, size);
    // Into the page cache for everyone alike.
    std::io::copy(&mut std::fs::File::open(&golden).unwrap(), &mut std::io::sink()).unwrap();

    let cpus = cpu::two_cpus();
    match cpus {
        Some((client, _)) => cpu::run_here_on(&[client]),
        None => println!("(only one CPU available: clients and servers share it)"),
    }
    let only = std::env::var("NBD_BENCH_ONLY").unwrap_or_default();
    let names = ["bootfleet", "qemu-nbd", "nbdkit"];
    let mut rows = vec![Row::default(); names.len()];
    for round in 0..rounds {
        println!("round {}/{rounds}", round + 1);
        for (i, name) in names.iter().enumerate() {
            let reader = match *name {
                _ if only == "write" => None,
                "bootfleet" => servers::start_bootfleet(&golden, scratch.path()),
                "qemu-nbd" => servers::start_qemu_nbd(&golden, scratch.path(), Role::Read),
                _ => servers::start_nbdkit(&golden, scratch.path(), Role::Read),
            };
            if let Some(server) = reader {
                measure_reads(&server, cpus, size, seconds, &mut rows[i]);
            }
            if only != "write" {
                let start = |replica: usize| {
                    let dir = scratch.path().join(format!("replica-{replica}"));
                    std::fs::create_dir_all(&dir).ok()?;
                    let server = match *name {
                        "bootfleet" => servers::start_bootfleet(&golden, &dir),
                        "qemu-nbd" => servers::start_qemu_nbd(&golden, &dir, Role::Read),
                        _ => servers::start_nbdkit(&golden, &dir, Role::Read),
                    }?;
                    pin(&server, cpus);
                    Some(server)
                };
                rows[i].failover_ms.extend(failover::pause(&start));
            }
            let writer = match *name {
                _ if only == "read" => None,
                "bootfleet" => servers::start_bootfleet(&golden, scratch.path()),
                "qemu-nbd" => servers::start_qemu_nbd(&golden, scratch.path(), Role::Write),
                _ => servers::start_nbdkit(&golden, scratch.path(), Role::Write),
            };
            if let Some(server) = writer {
                measure_write(&server, cpus, &golden, size, &mut rows[i]);
            }
        }
    }

    let reference = &rows[1];
    println!();
    println!(
        "NBD on loopback, {} MiB export, median of {rounds} round(s); (x) = relative to qemu-nbd",
        size >> 20
    );
    println!(
        "| {:<10} | {:>26} | {:>22} | {:>26} | {:>26} | {:>20} |",
        "server",
        "seq read, multi-conn",
        "seq read, 1 conn",
        "4 KiB random read, QD32",
        "write via COW overlay",
        "failover pause"
    );
    println!("|{:-<12}|{:->28}|{:->24}|{:->28}|{:->28}|{:->22}|", "", "", "", "", "", "");
    for (name, row) in names.iter().zip(&rows) {
        let multi = if row.multi_conn_offered || row.multi_conn.is_empty() {
            cell(&row.multi_conn, "MiB/s", median(&reference.multi_conn))
        } else {
            format!("{} (1 conn)", cell(&row.multi_conn, "MiB/s", median(&reference.multi_conn)))
        };
        let pause = median(&row.failover_ms).map_or_else(|| "-".into(), |ms| format!("{ms:.1} ms"));
        println!(
            "| {:<10} | {:>26} | {:>22} | {:>26} | {:>26} | {:>20} |",
            name,
            multi,
            cell(&row.one_conn, "MiB/s", median(&reference.one_conn)),
            cell(&row.random, "IOPS", median(&reference.random)),
            cell(&row.write, "MiB/s", median(&reference.write)),
            pause,
        );
    }
}
