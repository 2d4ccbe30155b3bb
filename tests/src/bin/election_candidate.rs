//! A leader-election candidate process for failover tests and the bench.
//!
//! Campaigns on etcd and prints one line per change of its acting state,
//! stamped with CLOCK_MONOTONIC nanoseconds (comparable across processes):
//! `ACQUIRED <id> <ns>`, `LOST <id> <ns>`, `RESIGNING <id> <ns>`,
//! `RESIGNED <id> <ns>`. On SIGTERM/SIGINT it resigns and exits.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bootfleet_core::config::parse_duration;
use bootfleet_core::election::{Election, Leadership};
use bootfleet_core::shutdown::Shutdown;
use bootfleet_core::store::SharedStore;
use bootfleet_core::store::etcd::{EtcdOptions, EtcdStore};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Campaign in a Bootfleet election and report acting intervals on stdout")]
struct Args {
    /// etcd client URLs, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Election name.
    #[arg(long, default_value = "test")]
    election: String,
    /// Candidate identity printed in every line.
    #[arg(long)]
    id: String,
    /// Lease TTL.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    ttl: Duration,
}

fn report(event: &str, id: &str) {
    let line = format!("{event} {id} {}\n", bootfleet_test_support::monotonic_ns());
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    bootfleet_core::telemetry::init("warn", bootfleet_core::config::LogFormat::Plain);
    let store: SharedStore = Arc::new(
        EtcdStore::connect(EtcdOptions::new(args.endpoints.clone())).await.context("connecting to etcd")?,
    );
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals()?;
    let cancel = shutdown.token();
    let election = Election::new(store, &args.election);
    report("READY", &args.id);
    while !cancel.is_cancelled() {
        let mut leadership =
            match Leadership::acquire(&election, args.id.clone().into_bytes(), args.ttl, &cancel).await {
                Ok(Some(leadership)) => leadership,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "campaign failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
        report("ACQUIRED", &args.id);
        tokio::select! {
            () = leadership.lost() => report("LOST", &args.id),
            () = cancel.cancelled() => {
                report("RESIGNING", &args.id);
                let resigned = leadership.resign().await;
                report("RESIGNED", &args.id);
                resigned.context("resigning")?;
                return Ok(());
            }
        }
    }
    Ok(())
}
