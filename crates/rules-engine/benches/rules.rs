//! Rules engine benchmark; prints tables.
//!
//! `cargo bench -p bootfleet-rules-engine --bench rules`
//!
//! 1. Evaluations per second on one core for 10, 1,000 and 10,000 rules:
//!    the indexed engine against a first-match linear scan (what a naive
//!    engine does), both giving the same answers.
//! 2. gRPC Evaluate on loopback (embedded store, 1,000 rules, decisions
//!    recorded): closed-loop maximum QPS, then an open-loop run at a fixed
//!    10,000 QPS, with p50/p99 latency.
//!
//! Every loop is bounded by count and time.
#![allow(clippy::print_stdout, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bootfleet_core::admin::Health;
use bootfleet_core::store::embedded::EmbeddedStore;
use bootfleet_proto::v1 as pb;
use bootfleet_rules_engine::decide::{Catalog, Engine};
use bootfleet_rules_engine::facts::Facts;
use bootfleet_rules_engine::manifest::match_expr;
use bootfleet_rules_engine::ruleset::CompiledRuleSet;
use bootfleet_rules_engine::store::{RulesState, StateOptions};
use serde_json::json;

const TOKEN: &str = "bench-admin-token-0123456789";

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
            let pinned = rng.next() % 2 == 0;
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
    tokio::spawn(async move {
        bootfleet_rules_engine::server::serve(listener, serve_state, &Health::new(), Some(TOKEN.into()), stop)
            .await
    });
    (url, state)
}

async fn grpc_table(url: String, state: Arc<RulesState>) {
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
            .put_profile(pb::PutProfileRequest { profile: Some(profile), expected_revision: 0 })
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
        clients.push(bootfleet_rules_engine::client::connect(&url, None).await.unwrap());
    }
    let call = |client: bootfleet_rules_engine::client::Client, facts: pb::HostFacts, dry_run: bool| async move {
        let mut client = client;
        let started = Instant::now();
        client.evaluate(pb::EvaluateRequest { facts: Some(facts), dry_run }).await.unwrap();
        started.elapsed()
    };

    // Closed loop: 32 requests in flight.
    let total = 40_000usize;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
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
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total || Instant::now() > deadline {
                    return latencies;
                }
                latencies.push(call(client.clone(), facts[i % facts.len()].clone(), false).await);
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

    // Open loop at a fixed 10,000 QPS for 2 s (tokio's timer ticks every
    // millisecond, so requests leave in bursts of ten).
    let target = 10_000u32;
    let count = 20_000usize;
    let mut open_runs = Vec::new();
    for dry_run in [false, true] {
        let mut interval = tokio::time::interval(Duration::from_secs(1) / target);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(count);
        for i in 0..count {
            interval.tick().await;
            tasks.push(tokio::spawn(call(
                clients[i % clients.len()].clone(),
                facts[i % facts.len()].clone(),
                dry_run,
            )));
        }
        let mut open = Vec::with_capacity(count);
        for t in tasks {
            open.push(t.await.unwrap());
        }
        let elapsed = started.elapsed();
        open.sort();
        open_runs.push((dry_run, rate(open.len(), elapsed), percentile(&open, 0.5), percentile(&open, 0.99)));
    }
    drop(state);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!();
    println!(
        "gRPC Evaluate on loopback (1,000 rules, embedded store, every decision recorded on its host record; client and server on separate runtimes, sharing the 2 cores)"
    );
    println!("| {:<34} | {:>10} | {:>9} | {:>9} |", "load", "QPS", "p50 ms", "p99 ms");
    println!("|{:-<36}|{:->12}|{:->11}|{:->11}|", "", "", "", "");
    println!(
        "| {:<34} | {:>10.0} | {:>9.3} | {:>9.3} |",
        "closed loop, 32 in flight",
        closed.0,
        ms(closed.1),
        ms(closed.2)
    );
    for (dry_run, qps, p50, p99) in open_runs {
        let label = if dry_run {
            format!("open loop, {target} QPS, dry run")
        } else {
            format!("open loop, {target} QPS offered")
        };
        println!("| {:<34} | {:>10.0} | {:>9.3} | {:>9.3} |", label, qps, ms(p50), ms(p99));
    }
}

fn main() {
    evaluations_table();
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()
        .unwrap();
    let (url, state) = server_runtime.block_on(start_server());
    let client_runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    client_runtime.block_on(grpc_table(url, state));
}
