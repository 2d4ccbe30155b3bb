//! Issue 20's hostile boot network: one lab (`bootfleet up` on a real etcd
//! in one network namespace, the attackers in another, the host that boots
//! for real in a third, all on one segment in 198.18.80.0/24; see `lab.rs`)
//! and a sequence of attacks, each bounded in count and time. For each attack four things are asserted:
//! - the process's resident memory, sampled every 20 ms while it runs,
//!   stays within 64 MiB of its level before;
//! - the store (every key in etcd) gains no more new keys than the
//!   attack's stated allowance (none for every random-MAC attack);
//! - the process logs at most a few dozen lines (a warning per packet would
//!   let the attacker write the log);
//! - a real boot (udhcpc, TFTP and HTTP with real clients; see `boot.rs`)
//!   running at the same time succeeds, every time it is tried.
//!
//! The upload attack also starts a second image streamer (see `upload.rs`).
//!
//! The measurements end up in a table, printed and written to
//! `target/hostile-report.md`. Nothing here leaves the namespaces.

mod common;

#[path = "hostile/boot.rs"]
mod boot;
#[path = "hostile/dhcp.rs"]
mod dhcp;
#[path = "hostile/grpc.rs"]
mod grpc;
#[path = "hostile/http.rs"]
mod http;
#[path = "hostile/lab.rs"]
mod lab;
#[path = "hostile/measure.rs"]
mod measure;
#[path = "hostile/report.rs"]
mod report;
#[path = "hostile/spellings.rs"]
mod spellings;
#[path = "hostile/templates.rs"]
mod templates;
#[path = "hostile/tftp.rs"]
mod tftp;
#[path = "hostile/upload.rs"]
mod upload;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use lab::Lab;
use measure::RssSampler;
use report::Row;

/// Memory an attack may add to the process, at its peak.
const RSS_GROWTH_LIMIT: u64 = 64 << 20;
/// Log lines (at the default level, warnings) an attack may cause: each
/// call site the network can reach logs a few lines a minute at most, so
/// an attack's volume does not decide the log's.
const LOG_LINES_LIMIT: usize = 40;

/// One attack: its name in the table, the keys it may add, and the attack,
/// which asserts what it checks itself, records the boots it runs in the
/// lab and returns a line on what it saw.
type Attack<'a> = (&'a str, usize, &'a dyn Fn(&Lab) -> String);

#[test]
fn a_hostile_boot_network_neither_grows_the_process_or_the_store_nor_fails_a_boot() {
    let cap = lab::MAX_HOSTS;
    run_attacks(
        "hostile-report.md",
        &[
            ("DHCP DISCOVER flood: 5,000 random MACs", 0, &dhcp::discover_flood),
            ("Evaluate, no credential: 2,000 random MACs a rule boots", 0, &grpc::evaluate_anonymous),
            ("Evaluate, service token: 2,000 random MACs no rule boots", 0, &grpc::evaluate_unbooted),
            ("slowloris: 3,000 half-sent HTTP requests", 0, &http::slowloris),
            ("TFTP netascii never acknowledged: 1,000 requests from 100 addresses", 0, &tftp::unacknowledged),
            ("TFTP: 100 clients behind one address", 0, &tftp::behind_one_address),
            ("1,000 MAC spellings of one host (TFTP names, HTTP ?mac=)", 0, &spellings::mac_spellings),
            ("2,048 idle WatchDecisions streams", 0, &grpc::idle_watches),
            // Two hosts with hostile facts: each gets its record and boot status.
            ("hostile facts in templates (serial, hostname, label)", 4, &templates::hostile_facts),
            // On a second streamer replica, which deregisters at the end;
            // the version is deleted again.
            (
                "SIGKILL halfway through a 48 MiB upload, restart, push again",
                0,
                &upload::sigkill_during_upload,
            ),
            // It fills the host-record cap. Hosts a rule boots are recorded,
            // by the service, up to rules.max_hosts and no further.
            ("Evaluate, service token: 2,000 random MACs a rule boots", cap, &grpc::evaluate_booted),
            // With the cap full, boot scripts for new hosts (anyone may ask
            // for any MAC's) add neither records nor boot statuses.
            ("boot scripts for 2,000 random MACs a rule boots", 0, &http::boot_script_flood),
        ],
    );
}

/// Starts the lab (one at a time: every lab uses the same namespaces), boots
/// once, runs `attacks` in order, writes the table to `target/<report>`, and
/// fails if any attack did. `BOOTFLEET_HOSTILE_ONLY=text` runs only the
/// attacks whose name has it.
fn run_attacks(report: &str, attacks: &[Attack<'_>]) {
    // Held until the lab is gone, across test processes too (nextest runs
    // each test in its own).
    let alone = std::fs::File::create(std::env::temp_dir().join("bootfleet-hostile-lab.lock")).unwrap();
    alone.lock().unwrap();
    let lab = Lab::start();
    // A first boot: the host's record, boot status and lease exist from here
    // on, so the attacks' boots add no key.
    boot::boot(&lab).unwrap_or_else(|e| panic!("the first boot, before any attack: {e}"));
    let only = std::env::var("BOOTFLEET_HOSTILE_ONLY").unwrap_or_default();
    let started = Instant::now();
    let mut rows = Vec::new();
    for (name, allowance, attack) in attacks.iter().filter(|(name, ..)| name.contains(only.as_str())) {
        let row = measure(&lab, name, *allowance, *attack);
        eprintln!("{}", row.line());
        rows.push(row);
    }
    let table = report::table(&rows, started.elapsed());
    eprintln!("\n{table}");
    report::write(report, &table);
    let failed: Vec<String> =
        rows.iter().filter_map(|r| r.failure.as_ref().map(|f| format!("{}: {f}", r.attack))).collect();
    if !failed.is_empty() {
        eprintln!("the last lines of bootfleet up's log:\n{}", lab.log_tail(40));
    }
    drop(lab);
    drop(alone);
    assert!(failed.is_empty(), "{} attacks failed:\n{}", failed.len(), failed.join("\n"));
}

/// Runs one attack between two measurements: keys (once the host-record
/// queue is empty) and memory before; the memory peak while it runs; keys
/// and memory after. A failing attack is reported in its row, and the next
/// one still runs.
fn measure(lab: &Lab, name: &str, allowance: usize, attack: &dyn Fn(&Lab) -> String) -> Row {
    lab.settle();
    lab.take_boots();
    let keys_before = lab.keys();
    let log_before = lab.log_lines();
    let rss_before = lab.rss();
    let sampler = RssSampler::start(lab.up_pid);
    let started = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| attack(lab)));
    let took = started.elapsed();
    let rss_peak = sampler.finish();
    let settled = catch_unwind(AssertUnwindSafe(|| lab.settle()));
    let keys_after = lab.keys();
    let log_lines = lab.log_lines().saturating_sub(log_before);
    let rss_after = lab.rss();
    let mut failures = Vec::new();
    let boots = lab.take_boots();
    let note = match outcome {
        Ok(note) => note,
        Err(panic) => {
            failures.push(format!("the attack failed: {}", panic_text(&*panic)));
            String::new()
        }
    };
    if let Err(panic) = settled {
        failures.push(panic_text(&*panic));
    }
    if rss_peak > rss_before + RSS_GROWTH_LIMIT {
        failures.push(format!("memory grew from {} to {}", report::mib(rss_before), report::mib(rss_peak)));
    }
    let added: Vec<&String> = keys_after.iter().filter(|k| !keys_before.contains(k)).collect();
    if added.len() > allowance {
        let first: Vec<&&String> = added.iter().take(5).collect();
        failures.push(format!(
            "{} new keys (allowed: {allowance}), {} → {} in all; new keys include {first:?}",
            added.len(),
            keys_before.len(),
            keys_after.len()
        ));
    }
    if lab.log_filter_is_default && log_lines > LOG_LINES_LIMIT {
        failures.push(format!(
            "{log_lines} log lines (allowed: {LOG_LINES_LIMIT}); the last: {}",
            lab.log_tail(3)
        ));
    }
    if boots.ok == 0 && boots.failures.is_empty() && failures.is_empty() {
        failures.push("no boot ran beside the attack".into());
    }
    if let Some(first) = boots.failures.first() {
        failures.push(format!(
            "{} of {} boots failed; the first: {first}",
            boots.failures.len(),
            boots.total()
        ));
    }
    Row {
        attack: name.to_owned(),
        rss_before,
        rss_peak,
        rss_after,
        keys_before: keys_before.len(),
        keys_after: keys_after.len(),
        allowance,
        log_lines,
        boots_ok: boots.ok,
        boots: boots.total(),
        took,
        note,
        failure: (!failures.is_empty()).then(|| failures.join("; ")),
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".into())
}
