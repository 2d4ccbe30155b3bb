//! The rules engine's gRPC port: Evaluate calls for random MACs (with and
//! without the boot services' credential) and thousands of idle
//! WatchDecisions streams. The port listens on the server namespace's
//! loopback, so the attacker runs there.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bootfleet_proto::v1::{self as pb, Recording};
use bootfleet_rules_engine::client::{Client, connect};
use tonic::Code;

use crate::boot::boot_during;
use crate::dhcp::Xorshift;
use crate::lab::{Lab, MAX_HOSTS, RULES_URL, SERVER_NS, SERVICE_TOKEN, in_netns, runtime};

const EVALUATIONS: usize = 2_000;
/// Calls in flight at once.
const CONCURRENCY: usize = 16;
const WATCHES: usize = 2_048;
/// Connections the watches are spread over (each takes 512 streams).
const WATCH_CONNECTIONS: usize = 5;
/// How long the open watches are held while the boots run.
const HOLD: Duration = Duration::from_secs(5);

/// Anyone on the network may call Evaluate, for MACs a rule boots: without
/// the service credential it is a dry run, and nothing is recorded.
pub(crate) fn evaluate_anonymous(lab: &Lab) -> String {
    let counts = evaluate_during(lab, None, "52:54:00");
    assert_eq!(
        counts,
        BTreeMap::from([(Recording::NoCredential, EVALUATIONS)]),
        "anonymous Evaluate recorded"
    );
    outcomes(&counts)
}

/// The boot services' own credential, MACs no rule boots (what a DHCP or
/// boot-script flood of made-up MACs turns into): nothing is recorded.
pub(crate) fn evaluate_unbooted(lab: &Lab) -> String {
    let counts = evaluate_during(lab, Some(SERVICE_TOKEN), "02");
    assert_eq!(counts, BTreeMap::from([(Recording::NotBooted, EVALUATIONS)]), "unbooted hosts recorded");
    outcomes(&counts)
}

/// The service credential and MACs a rule boots: records are created up to
/// `rules.max_hosts` and no further.
pub(crate) fn evaluate_booted(lab: &Lab) -> String {
    let counts = evaluate_during(lab, Some(SERVICE_TOKEN), "52:54:00");
    let queued = counts.get(&Recording::Queued).copied().unwrap_or(0);
    let capped = counts.get(&Recording::Capped).copied().unwrap_or(0);
    assert_eq!(queued + capped, EVALUATIONS, "{counts:?}");
    assert!(capped > 0, "the cap never applied: {counts:?}");
    // Evaluate checks the cap against the records it sees; the writer
    // stops a burst at the cap itself. The store is what must hold.
    lab.settle();
    let hosts = lab.keys().iter().filter(|k| k.starts_with("/bootfleet/v1/hosts/")).count();
    assert!(hosts <= MAX_HOSTS, "{hosts} host records, the cap is {MAX_HOSTS}");
    format!("{}; {hosts} host records (cap {MAX_HOSTS})", outcomes(&counts))
}

fn outcomes(counts: &BTreeMap<Recording, usize>) -> String {
    let parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {}", r.as_str_name())).collect();
    parts.join(", ")
}

/// [`EVALUATIONS`] Evaluate calls for random MACs under `prefix` (whole
/// octets), boots beside them; the calls by recording outcome.
fn evaluate_during(lab: &Lab, token: Option<&str>, prefix: &str) -> BTreeMap<Recording, usize> {
    let mut random = Xorshift(0x2545_f491_4f6c_dd1d ^ u64::from(std::process::id()) ^ prefix.len() as u64);
    let octets = prefix.split(':').count();
    let macs: Vec<String> = (0..EVALUATIONS)
        .map(|_| {
            let bytes = random.next().to_be_bytes();
            let tail: Vec<String> = bytes[..6 - octets].iter().map(|b| format!("{b:02x}")).collect();
            format!("{prefix}:{}", tail.join(":"))
        })
        .collect();
    boot_during(lab, |begun| in_netns(SERVER_NS, || runtime().block_on(evaluate_all(token, macs, begun))))
}

async fn evaluate_all(
    token: Option<&str>,
    macs: Vec<String>,
    begun: &AtomicBool,
) -> BTreeMap<Recording, usize> {
    let client = connect(RULES_URL, token).await.unwrap();
    let mut calls = tokio::task::JoinSet::new();
    let mut counts = BTreeMap::new();
    let mut count = |done: Option<Result<Recording, tokio::task::JoinError>>| {
        if let Some(done) = done {
            *counts.entry(done.unwrap()).or_insert(0) += 1;
        }
    };
    for mac in macs {
        if calls.len() >= CONCURRENCY {
            count(calls.join_next().await);
            begun.store(true, Ordering::Release);
        }
        let mut client = client.clone();
        calls.spawn(async move {
            let facts = pb::HostFacts { mac: mac.clone(), arch: "bios".into(), ..Default::default() };
            let request = pb::EvaluateRequest { facts: Some(facts), dry_run: false, ..Default::default() };
            let answer = client.evaluate(request).await.unwrap_or_else(|e| panic!("Evaluate {mac}: {e}"));
            answer.into_inner().recording()
        });
    }
    while let Some(done) = calls.join_next().await {
        count(Some(done));
    }
    counts
}

/// Thousands of WatchDecisions streams that never read: at most 1,024
/// are open per replica, the rest refused with RESOURCE_EXHAUSTED, while
/// boots (whose decisions go to every open stream) run; closing a stream
/// frees its slot.
pub(crate) fn idle_watches(lab: &Lab) -> String {
    let (open, refused) =
        boot_during(lab, |begun| in_netns(SERVER_NS, || runtime().block_on(hold_watches(begun))));
    assert_eq!(
        (open, refused),
        (
            bootfleet_rules_engine::service::MAX_WATCHERS,
            WATCHES - bootfleet_rules_engine::service::MAX_WATCHERS
        ),
        "open and refused watches"
    );
    format!("{open} open, {refused} refused (RESOURCE_EXHAUSTED); a slot freed on close")
}

/// Opens the watches, holds them for [`HOLD`], drops them and waits until
/// a new one is accepted; open and refused counts.
async fn hold_watches(begun: &AtomicBool) -> (usize, usize) {
    let mut clients: Vec<Client> = Vec::new();
    for _ in 0..WATCH_CONNECTIONS {
        clients.push(connect(RULES_URL, None).await.unwrap());
    }
    let mut open = Vec::new();
    let mut refused = 0;
    for i in 0..WATCHES {
        let request = pb::WatchDecisionsRequest { mac: String::new() };
        match clients[i % WATCH_CONNECTIONS].watch_decisions(request).await {
            Ok(stream) => open.push(stream.into_inner()),
            Err(status) if status.code() == Code::ResourceExhausted => refused += 1,
            Err(status) => panic!("watch {i}: {status:?}"),
        }
    }
    begun.store(true, Ordering::Release);
    let counts = (open.len(), refused);
    // The connections stay served (pings answered) while nothing is read.
    tokio::time::sleep(HOLD).await;
    drop(open);
    let freed = Instant::now();
    loop {
        let mut client = connect(RULES_URL, None).await.unwrap();
        if client.watch_decisions(pb::WatchDecisionsRequest { mac: String::new() }).await.is_ok() {
            break;
        }
        assert!(freed.elapsed() < Duration::from_secs(20), "closed watches never freed their slots");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    counts
}
