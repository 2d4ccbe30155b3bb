//! Store and election benchmark: prints a table comparing the embedded
//! backend with etcd on loopback, and etcd election failover times.
//!
//! `cargo run --release -p bootfleet-tests --bin store-bench [-- --ops N --rounds R]`
//!
//! Every loop is bounded by a count and a time limit.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bootfleet_core::store::embedded::EmbeddedStore;
use bootfleet_core::store::etcd::{EtcdOptions, EtcdStore};
use bootfleet_core::store::{Compare, CompareOp, SharedStore, TxnOp, TxnRequest};
use bootfleet_test_support::etcd::EtcdCluster;
use bootfleet_tests::candidates::Candidates;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Benchmark Bootfleet's StateStore backends and etcd election failover")]
struct Args {
    /// Operations per measurement.
    #[arg(long, default_value_t = 2000)]
    ops: usize,
    /// Concurrent clients for the throughput rows.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Failovers measured per kind (median reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Upper bound on each measurement's duration.
    #[arg(long, default_value = "20")]
    limit_secs: u64,
}

struct Row {
    what: String,
    embedded: String,
    etcd: String,
}

fn rate(ops: usize, elapsed: Duration) -> String {
    format!("{:.0} ops/s", ops as f64 / elapsed.as_secs_f64())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Runs `op(i)` for i in 0..ops over `concurrency` tasks; returns ops/s.
async fn throughput<F, Fut>(ops: usize, concurrency: usize, limit: Duration, op: F) -> anyhow::Result<String>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deadline = Instant::now() + limit;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let op = Arc::clone(&op);
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= ops || Instant::now() > deadline {
                    return Ok::<usize, anyhow::Error>(done);
                }
                op(i).await?;
                done += 1;
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(rate(total, started.elapsed()))
}

#[derive(Clone, Copy)]
enum Op {
    Put,
    Cas,
    Get,
}

/// One operation of a throughput row on key `i`.
async fn run_op(s: SharedStore, op: Op, prefix: String, i: usize) -> anyhow::Result<()> {
    match op {
        Op::Put => s
            .put(&format!("{prefix}kv/{}", i % 512), vec![0u8; 128], None)
            .await
            .map(drop)
            .map_err(Into::into),
        Op::Get => s.get(&format!("{prefix}kv/{}", i % 512)).await.map(drop).map_err(Into::into),
        // CAS on a fresh key: swap only if absent (distinct keys: no conflicts).
        Op::Cas => {
            let key = format!("{prefix}cas/{i}");
            let txn = TxnRequest::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, vec![0u8; 128])]);
            anyhow::ensure!(s.txn(txn).await?.succeeded, "CAS conflict on a fresh key");
            Ok(())
        }
    }
}

async fn measure(store: SharedStore, args: &Args, tag: &str) -> anyhow::Result<Vec<String>> {
    let limit = Duration::from_secs(args.limit_secs);
    let prefix = format!("/bootfleet/v1/bench/{tag}/");
    let mut out = Vec::new();

    // (operation, clients): puts from one client, then everything from many.
    for (op, clients) in
        [(Op::Put, 1), (Op::Put, args.concurrency), (Op::Cas, args.concurrency), (Op::Get, args.concurrency)]
    {
        let (s, p) = (store.clone(), prefix.clone());
        out.push(throughput(args.ops, clients, limit, move |i| run_op(s.clone(), op, p.clone(), i)).await?);
    }

    // Watch latency: put, then time until the watcher sees it.
    let watched = format!("{prefix}watched/");
    let mut watch = store.watch(&watched, 0).await?;
    let mut latencies = Vec::new();
    let deadline = Instant::now() + limit;
    for i in 0..args.ops.min(1000) {
        if Instant::now() > deadline {
            break;
        }
        let started = Instant::now();
        store.put(&format!("{watched}{}", i % 64), vec![1], None).await?;
        tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .context("watch event did not arrive")?
            .context("watch ended")??;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    out.push(format!(
        "p50 {} / p99 {}",
        fmt_ms(percentile(&latencies, 0.5)),
        fmt_ms(percentile(&latencies, 0.99))
    ));
    Ok(out)
}

fn failovers(args: &Args) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let bin = std::env::current_exe()?.with_file_name("election-candidate");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: build it first (cargo build --release -p bootfleet-tests)",
        bin.display()
    );
    let bin = bin.to_str().context("candidate path")?.to_owned();
    let cluster = EtcdCluster::start(3)?;
    let endpoints = cluster.endpoints();
    let members: Vec<(String, Vec<String>)> = (0..3).map(|i| (format!("c{i}"), endpoints.clone())).collect();
    let mut candidates = Candidates::start(&bin, "bench", "2s", &members)?;
    let wait = Duration::from_secs(30);
    let mut kill_times = Vec::new();
    let mut term_times = Vec::new();
    let mut since = 0;
    for (next_id, round) in (3..).zip(0..args.rounds * 2) {
        let leader = candidates.wait_for(wait, |r| r.event == "ACQUIRED" && r.at_ns > since)?;
        let sigkill = round % 2 == 0;
        let at = if sigkill { candidates.kill(&leader.id)? } else { candidates.terminate(&leader.id)? };
        let next = candidates.wait_acquired_after(at, Some(&leader.id), wait)?;
        let took = Duration::from_nanos(u64::try_from(next.at_ns - at).unwrap_or(0));
        if sigkill {
            kill_times.push(took)
        } else {
            term_times.push(took)
        }
        since = next.at_ns - 1;
        // Keep three candidates in the race.
        candidates.add(&bin, "bench", "2s", &format!("c{next_id}"), &endpoints)?;
    }
    candidates.assert_no_overlap();
    kill_times.sort();
    term_times.sort();
    Ok((kill_times, term_times))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (embedded, etcd) = runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let embedded: SharedStore = Arc::new(EmbeddedStore::open(&dir.path().join("bench.redb"))?);
        let embedded_rows = measure(embedded, &args, "embedded").await?;
        let cluster = EtcdCluster::start(1)?;
        let etcd: SharedStore = Arc::new(EtcdStore::connect(EtcdOptions::new(cluster.endpoints())).await?);
        let etcd_rows = measure(etcd, &args, "etcd").await?;
        anyhow::Ok((embedded_rows, etcd_rows))
    })?;
    let names = [
        "put, 1 client",
        &format!("put, {} clients", args.concurrency),
        &format!("CAS txn, {} clients", args.concurrency),
        &format!("get, {} clients", args.concurrency),
        "watch event latency (put → event)",
    ];
    let rows: Vec<Row> = names
        .iter()
        .zip(embedded.into_iter().zip(etcd))
        .map(|(what, (embedded, etcd))| Row { what: (*what).to_owned(), embedded, etcd })
        .collect();
    println!(
        "StateStore backends ({} ops per row, 128-byte values; embedded = redb file, fsync per commit; etcd 3.4 single member on loopback)",
        args.ops
    );
    println!("| {:<36} | {:>28} | {:>28} |", "operation", "embedded", "etcd");
    println!("|{:-<38}|{:->30}|{:->30}|", "", "", "");
    for row in rows {
        println!("| {:<36} | {:>28} | {:>28} |", row.what, row.embedded, row.etcd);
    }

    let (kills, terms) = failovers(&args)?;
    let list = |v: &[Duration]| v.iter().map(|d| format!("{}", d.as_millis())).collect::<Vec<_>>().join(", ");
    println!();
    println!(
        "Election failover on a 3-member etcd, lease TTL 2 s, 3 candidate processes ({} rounds each)",
        args.rounds
    );
    println!("| {:<36} | {:>10} | {:>30} |", "event", "median", "all (ms)");
    println!("|{:-<38}|{:->12}|{:->32}|", "", "", "");
    println!(
        "| {:<36} | {:>10} | {:>30} |",
        "SIGKILL leader → next leader acts",
        fmt_ms(percentile(&kills, 0.5)),
        list(&kills)
    );
    println!(
        "| {:<36} | {:>10} | {:>30} |",
        "SIGTERM leader → next leader acts",
        fmt_ms(percentile(&terms, 0.5)),
        list(&terms)
    );
    Ok(())
}
