//! Rules engine benchmark; prints tables.
//!
//! `cargo bench -p bootfleet-rules-engine --bench rules`
//!
//! 1. Evaluations per second on one core for 10, 1,000 and 10,000 rules:
//!    the indexed engine against a first-match linear scan (what a naive
//!    engine does), both giving the same answers.
//! 2. gRPC Evaluate on loopback (embedded store, 1,000 rules): closed-loop
//!    maximum QPS, then open-loop runs at a fixed 10,000 QPS (evenly paced,
//!    latency counted from when each request was due) with p50/p99 (median
//!    of three runs, and the p99 range), for recorded Evaluates, dry runs,
//!    and grpc.health Check on the same server as the floor of the gRPC
//!    stack on this machine. The server runs on one pinned core, the load
//!    client on the other.
//!
//! `RULES_BENCH_ONLY=evaluate|grpc` runs one part. Every loop is bounded by
//! count and time.
#![allow(clippy::print_stdout, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bootfleet_core::admin::Health;
use bootfleet_core::auth::{Credentials, Role, Token};
use bootfleet_core::store::embedded::EmbeddedStore;
use bootfleet_proto::v1 as pb;
use bootfleet_rules_engine::decide::{Catalog, Engine};
use bootfleet_rules_engine::facts::Facts;
use bootfleet_rules_engine::manifest::match_expr;
use bootfleet_rules_engine::ruleset::CompiledRuleSet;
use bootfleet_rules_engine::store::{RulesState, StateOptions};
use serde_json::json;

const TOKEN: &str = "bench-admin-token-0123456789";
/// What the DHCP responders send: their Evaluate calls record.
const SERVICE_TOKEN: &str = "bench-service-token-0123456789";

/// A deterministic pseudo-random sequence (no dependency needed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn mac(i: u64) -> String {
    format!("52:54:00:{:02x}:{:02x}:{:02x}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)
}

/// A realistic mix: 80 % per-host MAC pins, 10 % subnets, 5 % vendor/model,
/// 5 % hostname globs, then a catch-all.
fn rules(n: usize) -> Vec<pb::Rule> {
    let mut out = Vec::with_capacity(n + 1);
    for i in 0..n {
        let (m, image, host, location) = match i % 20 {
            0 | 1 => (json!({"ipv4": {"cidr": format!("198.18.{}.0/24", i % 250)}}), "", "", "loc"),
            2 => (
                json!({"vendor": format!("vendor{}", i % 40), "model": format!("model{}", i % 7)}),
                "",
                "host",
                "",
            ),
            3 => (json!({"hostname": format!("rack{i}-*")}), "", "host", ""),
            _ => (json!({"mac": mac(i as u64)}), "img", "", ""),
        };
        out.push(pb::Rule {
            name: format!("r{i}"),
            r#match: Some(match_expr(&m, "match").unwrap()),
            image_profile: image.into(),
            host_profile: host.into(),
            location: location.into(),
            ..Default::default()
        });
    }
    out.push(pb::Rule {
        name: "default".into(),
        r#match: Some(match_expr(&json!({"always": true}), "match").unwrap()),
        image_profile: "img".into(),
        host_profile: "host".into(),
        location: "loc".into(),
        ..Default::default()
    });
    out
}

fn hosts(n_rules: usize, count: usize) -> Vec<pb::HostFacts> {
    let mut rng = Lcg(7);
    (0..count)
        .map(|_| {
            let pinned = rng.next().is_multiple_of(2);
            let id = if pinned { rng.next() % n_rules as u64 } else { 1_000_000 + rng.next() % 1_000_000 };
            pb::HostFacts {
                mac: mac(id),
                arch: "efi-x64".into(),
                vendor: format!("vendor{}", rng.next() % 60),
                model: format!("model{}", rng.next() % 7),
                ipv4: format!("198.18.{}.{}", rng.next() % 256, 1 + rng.next() % 250),
                hostname: format!("rack{}-node{}", rng.next() % (n_rules as u64 * 2).max(1), rng.next() % 40),
                ..Default::default()
            }
        })
        .collect()
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn evaluations_table() {
    println!(
        "Evaluations per second, one core (mix: 80% MAC pins, 10% subnets, 5% vendor/model, 5% hostname globs, catch-all)"
    );
    println!(
        "| {:>7} | {:>18} | {:>18} | {:>22} | {:>8} |",
        "rules", "indexed (eval/s)", "linear scan (eval/s)", "indexed + decision msg", "speed-up"
    );
    println!("|{:->9}|{:->20}|{:->22}|{:->24}|{:->10}|", "", "", "", "", "");
    for n in [10usize, 1_000, 10_000] {
        let set = CompiledRuleSet::compile_rules(&rules(n), 1).unwrap();
        let facts: Vec<Facts> = hosts(n, 4096).iter().map(|h| Facts::from_proto(h).unwrap()).collect();
        for f in &facts {
            assert_eq!(set.evaluate(f), set.evaluate_linear(f), "index must not change answers");
        }
        let measure = |f: &dyn Fn(&Facts) -> usize| {
            let limit = Duration::from_secs(2);
            let started = Instant::now();
            let mut done = 0usize;
            let mut sink = 0usize;
            while done < 20_000_000 && started.elapsed() < limit {
                for facts in &facts {
                    sink = sink.wrapping_add(f(facts));
                }
                done += facts.len();
            }
            std::hint::black_box(sink);
            rate(done, started.elapsed())
        };
        let indexed = measure(&|f| set.evaluate(f).image_profile.unwrap_or(0));
        let linear = measure(&|f| set.evaluate_linear(f).image_profile.unwrap_or(0));
        let mut catalog = Catalog::default();
        let image = pb::ImageProfile { name: "img".into(), ..Default::default() };
        catalog.image.insert("img".into(), Arc::new(image));
        let engine =
            Engine { rules: CompiledRuleSet::compile_rules(&rules(n), 1).unwrap(), catalog, built_at: 0 };
        let with_message = measure(&|f| engine.decide(f, 0).matched_rules.len());
        println!(
            "| {n:>7} | {indexed:>18.0} | {linear:>20.0} | {with_message:>22.0} | {:>7.0}x |",
            indexed / linear
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len().saturating_sub(1)) as f64 * p).round() as usize).copied().unwrap_or_default()
}

/// Starts the server on its own runtime (its own threads), as a separate
/// process would have.
async fn start_server() -> (String, Arc<RulesState>) {
    let stop = tokio_util::sync::CancellationToken::new();
    let store = Arc::new(EmbeddedStore::in_memory().unwrap());
    let state = RulesState::start(store, StateOptions { member_id: "bench".into(), history_limit: 5 }, &stop);
    state.ready().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let serve_state = Arc::clone(&state);
    let credentials = Credentials::new()
        .grant(Role::Admin, Some(Token::new(TOKEN)), "rules.admin_token_file")
        .grant(Role::Service, Some(Token::new(SERVICE_TOKEN)), "rules.service_token_file");
    tokio::spawn(async move {
        bootfleet_rules_engine::server::serve_with(listener, serve_state, &Health::new(), credentials, stop)
            .await
    });
    (url, state)
}

/// Waits (at most 20 s) until the host recorder has written everything
/// queued, so that one phase's backlog does not slow the next.
async fn recorder_idle() {
    let writes = || bootfleet_rules_engine::service::metrics::HOST_RECORD_WRITES.get();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = writes();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = writes();
        if now == last {
            return;
        }
        last = now;
    }
}

async fn grpc_table(url: String, state: Arc<RulesState>, pinned: bool) {
    let mut admin = bootfleet_rules_engine::client::connect(&url, Some(TOKEN)).await.unwrap();
    for object in [
        pb::profile_object::Object::Image(pb::ImageProfile {
            name: "img".into(),
            boot: Some(pb::image_profile::Boot::Local(pb::LocalBoot {})),
            ..Default::default()
        }),
        pb::profile_object::Object::Host(pb::HostProfile { name: "host".into(), ..Default::default() }),
        pb::profile_object::Object::Location(pb::Location { name: "loc".into(), ..Default::default() }),
    ] {
        let profile = pb::ProfileObject { object: Some(object), revision: 0 };
        admin
            .put_profile(pb::PutProfileRequest {
                profile: Some(profile),
                expected_revision: 0,
                allow_missing_images: true,
            })
            .await
            .unwrap();
    }
    admin
        .replace_working_set(pb::ReplaceWorkingSetRequest { rules: rules(1000), expected_revision: 0 })
        .await
        .unwrap();
    let activated = admin.activate(pb::ActivateRequest { expected_revision: 0 }).await.unwrap().into_inner();
    state.caught_up(activated.revision).await;
    let facts = Arc::new(hosts(1000, 8192));

    // A few connections, as several DHCP/streamer replicas would open.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(bootfleet_rules_engine::client::connect(&url, Some(SERVICE_TOKEN)).await.unwrap());
    }

    // Closed loop: 32 requests in flight.
    let total = 40_000usize;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..32 {
        let client = clients[worker % clients.len()].clone();
        let facts = Arc::clone(&facts);
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() > deadline {
                    return latencies;
                }
                let mut client = client.clone();
                let request = pb::EvaluateRequest {
                    facts: Some(facts[i % facts.len()].clone()),
                    dry_run: false,
                    ..Default::default()
                };
                let sent = Instant::now();
                client.evaluate(request).await.unwrap();
                latencies.push(sent.elapsed());
            }
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let closed_elapsed = started.elapsed();
    latencies.sort();
    let closed =
        (rate(latencies.len(), closed_elapsed), percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    recorder_idle().await;

    // Open loop at a fixed 10,000 QPS, 3 s per run: recorded Evaluates, dry
    // runs, and grpc.health Check on the same server (the gRPC stack's own
    // floor on this machine, with nothing of ours in it). Three rounds, the
    // kinds taking turns, so that noise from the machine falls on all alike.
    let target = 10_000u32;
    let count = 30_000usize;
    let connections = clients.len();
    let evaluate = move |dry_run: bool| {
        let (clients, facts) = (clients.clone(), Arc::clone(&facts));
        move |i: usize| {
            let mut client = clients[i % clients.len()].clone();
            let request = pb::EvaluateRequest {
                facts: Some(facts[i % facts.len()].clone()),
                dry_run,
                ..Default::default()
            };
            async move {
                client.evaluate(request).await.unwrap();
            }
        }
    };
    // As many connections as the Evaluate rows use.
    let mut health_clients = Vec::new();
    for _ in 0..connections {
        let channel = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await.unwrap();
        health_clients.push(tonic_health::pb::health_client::HealthClient::new(channel));
    }
    let check = move |i: usize| {
        let mut health = health_clients[i % health_clients.len()].clone();
        async move {
            health.check(tonic_health::pb::HealthCheckRequest::default()).await.unwrap();
        }
    };
    let mut runs: [Vec<(f64, Duration, Duration)>; 3] = Default::default();
    let mut drains = Vec::new();
    for _round in 0..3 {
        runs[0].push(open_loop(target, count, evaluate(false)).await);
        let draining = Instant::now();
        recorder_idle().await;
        // recorder_idle waits for 300 ms without a write: that much is not backlog.
        drains.push(draining.elapsed().saturating_sub(Duration::from_millis(300)));
        runs[1].push(open_loop(target, count, evaluate(true)).await);
        runs[2].push(open_loop(target, count, check.clone()).await);
    }
    drop(state);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!();
    let placement = if pinned {
        "server pinned to one core, load client to another"
    } else {
        "one CPU: server and load client share it"
    };
    println!("gRPC on loopback (1,000 rules, embedded store; {placement})");
    println!(
        "| {:<40} | {:>8} | {:>7} | {:>7} | {:>15} |",
        "load", "QPS", "p50 ms", "p99 ms", "p99 range ms"
    );
    println!("|{:-<42}|{:->10}|{:->9}|{:->9}|{:->17}|", "", "", "", "", "");
    let (qps, p50, p99) = closed;
    println!(
        "| {:<40} | {qps:>8.0} | {:>7.3} | {:>7.3} | {:>15} |",
        "closed loop, 32 in flight, recorded",
        ms(p50),
        ms(p99),
        ""
    );
    let labels = ["Evaluate, recorded", "Evaluate, dry run", "health Check (floor)"];
    for (label, runs) in labels.iter().zip(&runs) {
        let qps = runs.iter().map(|r| r.0).sum::<f64>() / runs.len() as f64;
        let mut p50s: Vec<Duration> = runs.iter().map(|r| r.1).collect();
        p50s.sort();
        let mut p99s: Vec<Duration> = runs.iter().map(|r| r.2).collect();
        p99s.sort();
        let range = format!("{:.3}–{:.3}", ms(p99s[0]), ms(p99s[p99s.len() - 1]));
        println!(
            "| {:<40} | {qps:>8.0} | {:>7.3} | {:>7.3} | {range:>15} |",
            format!("open loop {target}/s, {label}"),
            ms(percentile(&p50s, 0.5)),
            ms(percentile(&p99s, 0.5))
        );
    }
    let drains: Vec<String> = drains.iter().map(|d| format!("{:.0} ms", ms(*d))).collect();
    println!(
        "recording backlog left after each recorded run: {} to write; decisions dropped: {}",
        drains.join(", "),
        bootfleet_rules_engine::service::metrics::HOST_EVENTS_DROPPED.get()
    );
}

/// Sends `count` requests at `rate` per second, evenly paced by a thread of
/// its own (tokio's timer ticks only every millisecond, which would send
/// bursts). Latency counts from when a request was due, so a client that
/// falls behind does not hide the wait (no coordinated omission). Returns
/// achieved rate, p50 and p99.
async fn open_loop<F, R>(rate_per_s: u32, count: usize, request: F) -> (f64, Duration, Duration)
where
    F: Fn(usize) -> R + Send + 'static,
    R: Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    // Each request stores its latency here and counts itself done, so
    // finished tasks are freed at once instead of piling up.
    let latencies: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new((AtomicUsize::new(0), tokio::sync::Notify::new()));
    let started = Instant::now();
    let (results, finished) = (Arc::clone(&latencies), Arc::clone(&done));
    tokio::task::spawn_blocking(move || {
        let spacing = Duration::from_secs(1) / rate_per_s;
        for i in 0..count {
            let due = started + spacing * u32::try_from(i).unwrap();
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let sent = request(i);
            let (results, finished) = (Arc::clone(&results), Arc::clone(&finished));
            runtime.spawn(async move {
                sent.await;
                let latency = u64::try_from(due.elapsed().as_nanos()).unwrap_or(u64::MAX);
                results[i].store(latency, Ordering::Relaxed);
                if finished.0.fetch_add(1, Ordering::AcqRel) + 1 == count {
                    finished.1.notify_one();
                }
            });
        }
    })
    .await
    .unwrap();
    if done.0.load(Ordering::Acquire) < count {
        tokio::time::timeout(Duration::from_secs(30), done.1.notified()).await.expect("requests finish");
    }
    let elapsed = started.elapsed();
    let mut sorted: Vec<Duration> =
        latencies.iter().map(|nanos| Duration::from_nanos(nanos.load(Ordering::Relaxed))).collect();
    sorted.sort();
    (rate(count, elapsed), percentile(&sorted, 0.5), percentile(&sorted, 0.99))
}

fn main() {
    let only = std::env::var("RULES_BENCH_ONLY").unwrap_or_default();
    if only != "grpc" {
        evaluations_table();
    }
    if only == "evaluate" {
        return;
    }
    // The server gets a core of its own, as it would on its own machine,
    // and the load client the other: they do not preempt each other.
    let cpus = bootfleet_test_support::cpu::two_cpus();
    if cpus.is_none() {
        eprintln!("only one CPU: server and client share it");
    }
    let pin = move |side: fn((usize, usize)) -> usize| {
        if let Some(pair) = cpus {
            bootfleet_test_support::cpu::run_here_on(&[side(pair)]);
        }
    };
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("server")
        .on_thread_start(move || pin(|(server, _)| server))
        .enable_all()
        .build()
        .unwrap();
    // The server's threads (the store's writer too) start from here.
    pin(|(server, _)| server);
    let (url, state) = server_runtime.block_on(start_server());
    pin(|(_, client)| client);
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(move || pin(|(_, client)| client))
        .enable_all()
        .build()
        .unwrap();
    client_runtime.block_on(grpc_table(url, state, cpus.is_some()));
}
