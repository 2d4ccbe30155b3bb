//! `bootfleet up`: every service in one process on the embedded store.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bootfleet_core::admin::{self, ComponentHealth, Health};
use bootfleet_core::config::{CommonArgs, CoreConfig, Defaults, EXIT_USAGE};
use bootfleet_core::membership::Registration;
use bootfleet_core::shutdown::Shutdown;
use bootfleet_core::snapshot::SnapshotCache;
use bootfleet_core::store::{self, KEY_ROOT};
use bootfleet_proto::v1::Member;

/// Defaults of the all-in-one process: local admin port, embedded store.
const DEFAULTS: Defaults = Defaults { admin_listen: "127.0.0.1:9100", store: "embedded" };

/// Arguments of `bootfleet up`.
#[derive(clap::Args)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    common: CommonArgs,
}

/// Runs `up`; returns the process exit status.
pub(crate) fn main(args: UpArgs) -> i32 {
    let config = match CoreConfig::load(&args.common, &DEFAULTS) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("Error: {e}");
            return EXIT_USAGE;
        }
    };
    if args.common.validate {
        eprintln!("configuration is valid:\n{config:#?}");
        return 0;
    }
    bootfleet_core::telemetry::init(&config.log_filter, config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: starting the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("Error: {e:#}");
            1
        }
    }
}

async fn run(config: CoreConfig) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals().context("installing signal handlers")?;
    let admin_listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding the admin endpoint on {}", config.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?;
    let store = store::open(&config.store).await.context("opening the state store")?;
    tracing::info!(backend = store.backend_name(), store = ?config.store.backend, admin = %admin_addr, "bootfleet up");

    let health = Health::new();
    health.set("process", ComponentHealth::Serving).await;
    let snapshot = SnapshotCache::start(store.clone(), KEY_ROOT, shutdown.token());
    health.track_snapshot("store", &snapshot, shutdown.token());
    shutdown.spawn(admin::serve(admin_listener, health.clone(), shutdown.token()));

    let started = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let member = Member {
        service: "bootfleet".into(),
        id: config.member_id.clone(),
        admin_address: admin_addr.to_string(),
        started_at_unix_ms: i64::try_from(started).unwrap_or(i64::MAX),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Member::default()
    };
    let registration = Registration::start(store.clone(), member, config.store.member_ttl);

    shutdown.token().cancelled().await;
    health.set_shutting_down().await;
    if let Err(e) = registration.deregister().await {
        tracing::warn!(error = %e, "deregistering failed; the record lapses with its lease");
    }
    shutdown.drain(config.shutdown_grace).await;
    tracing::info!("stopped");
    Ok(())
}
