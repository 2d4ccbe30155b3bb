//! The life of a service process, shared by every binary and by
//! `bootfleet up`: configuration checked before anything binds (exit 64 on
//! error, `--validate` stops there), logging, the store, the admin endpoint,
//! membership, signals, and an orderly shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bootfleet_proto::v1::Member;

use crate::admin::{self, ComponentHealth, Health};
use crate::config::{CommonArgs, ConfigError, CoreConfig, Defaults, EXIT_USAGE};
use crate::membership::Registration;
use crate::shutdown::Shutdown;
use crate::store::{self, SharedStore};

/// What a running service gets from the process shell.
pub struct ServiceContext {
    /// The validated shared configuration.
    pub config: CoreConfig,
    /// The opened store.
    pub store: SharedStore,
    /// Process health, served on the admin port.
    pub health: Health,
    /// Shutdown signal and task tracker.
    pub shutdown: Shutdown,
    /// Where the admin endpoint listens.
    pub admin_addr: SocketAddr,
    started_at_unix_ms: i64,
}

/// The health components a service's settings say it runs: the process
/// reports ready only once each of them serves (see [`Health::expect`]).
pub trait Components {
    /// Component names, as the service passes them to [`Health::set`].
    fn components(&self) -> Vec<&'static str>;
}

impl ServiceContext {
    /// Registers this process as a live member of `service` serving on
    /// `addresses`. The record stays while the returned handle lives (call
    /// `deregister` on the way out).
    pub fn register(&self, service: &str, addresses: Vec<String>) -> Registration {
        let member = Member {
            service: service.into(),
            id: self.config.member_id.clone(),
            addresses,
            admin_address: self.admin_addr.to_string(),
            started_at_unix_ms: self.started_at_unix_ms,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Member::default()
        };
        Registration::start(self.store.clone(), member, self.config.store.member_ttl)
    }
}

/// Runs a service process and returns its exit status.
///
/// `check` validates the service's own settings (from flags and its file
/// section) before anything binds; `body` runs the service (registering it
/// with [`ServiceContext::register`]) until `ctx.shutdown` fires, then
/// returns. Afterwards the shell marks health NOT_SERVING and drains tracked
/// tasks within the grace period.
pub fn run_service<S, F, Fut>(
    service: &'static str,
    args: &CommonArgs,
    defaults: &Defaults,
    check: impl FnOnce(&CoreConfig) -> Result<S, ConfigError>,
    body: F,
) -> i32
where
    S: std::fmt::Debug + Components,
    F: FnOnce(Arc<ServiceContext>, S) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let checked = CoreConfig::load(args, defaults).and_then(|core| check(&core).map(|s| (core, s)));
    let (config, settings) = match checked {
        Ok(both) => both,
        Err(e) => {
            eprintln!("Error: {e}");
            return EXIT_USAGE;
        }
    };
    if args.validate {
        eprintln!("configuration is valid:\n{config:#?}\n{settings:#?}");
        return 0;
    }
    if args.probe {
        return probe(config.admin_listen);
    }
    crate::telemetry::init(&config.log_filter, config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: starting the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(service, config, settings, body)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("Error: {e:#}");
            1
        }
    }
}

async fn run<S, F, Fut>(service: &'static str, config: CoreConfig, settings: S, body: F) -> anyhow::Result<()>
where
    S: Components,
    F: FnOnce(Arc<ServiceContext>, S) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals().context("installing signal handlers")?;
    let admin_listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding the admin endpoint on {}", config.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?;
    let store =
        store::open_secured(&config.store, &config.etcd_security).await.context("opening the state store")?;
    tracing::info!(service, backend = store.backend_name(), admin = %admin_addr, member = %config.member_id, "starting");

    let health = Health::new();
    // Before the admin endpoint answers: no moment where it says "serving"
    // because a component has not registered yet.
    health.expect(&settings.components()).await;
    health.set("process", ComponentHealth::Serving).await;
    shutdown.spawn(admin::serve(admin_listener, health.clone(), shutdown.token()));

    let started = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let grace = config.shutdown_grace;
    let ctx = ServiceContext {
        config,
        store,
        health: health.clone(),
        shutdown: shutdown.clone(),
        admin_addr,
        started_at_unix_ms: i64::try_from(started).unwrap_or(i64::MAX),
    };

    // Once shutdown begins, the services get the grace period to return;
    // one that does not (a stream a client keeps open, say) is cut off, and
    // the process says so and fails rather than hanging. The grace period
    // is one budget for the services and the tracked tasks together, so
    // the process is gone within it (an orchestrator's kill timeout is set
    // from it).
    let stopping = shutdown.token();
    let stop_began = Arc::new(std::sync::OnceLock::new());
    shutdown.spawn({
        let stop_began = Arc::clone(&stop_began);
        let stopping = stopping.clone();
        async move {
            stopping.cancelled().await;
            let _ = stop_began.set(tokio::time::Instant::now());
        }
    });
    let body = body(Arc::new(ctx), settings);
    let result = tokio::select! {
        result = body => result,
        () = async { stopping.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::error!(grace = ?grace, "services did not stop within the grace period; stopping anyway");
            Err(anyhow::anyhow!("services did not stop within the grace period ({grace:?})"))
        }
    };
    // Whatever ended the body (signal or failure), shut everything down.
    shutdown.trigger();
    health.set_shutting_down().await;
    let began = stop_began.get().copied().unwrap_or_else(tokio::time::Instant::now);
    shutdown.drain(grace.saturating_sub(began.elapsed())).await;
    tracing::info!(service, "stopped");
    result
}

/// `--probe`: GET /readyz on the admin endpoint of the service running with
/// this configuration; 0 when it answers 200 within 3 s, else 1.
fn probe(admin: SocketAddr) -> i32 {
    use std::io::{Read, Write};
    let target =
        if admin.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], admin.port())) } else { admin };
    let timeout = std::time::Duration::from_secs(3);
    let answer = (|| -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect_timeout(&target, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })();
    match answer {
        Ok(response) if response.starts_with("HTTP/1.1 200") => 0,
        Ok(response) => {
            eprintln!("not ready: {}", response.lines().last().unwrap_or_default());
            1
        }
        Err(e) => {
            eprintln!("no answer from the admin endpoint at {target}: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::Duration;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    struct NoComponents;

    impl Components for NoComponents {
        fn components(&self) -> Vec<&'static str> {
            Vec::new()
        }
    }

    /// A service that ignores the stop and leaves a task that ignores it
    /// too: the process still ends one grace period after the stop began,
    /// not one for the services and another for the tasks.
    #[tokio::test(start_paused = true)]
    async fn the_grace_period_is_one_budget_for_services_and_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_str().unwrap();
        let cli = Cli::parse_from([
            "test",
            "--store",
            "embedded",
            "--data-dir",
            data_dir,
            "--admin-listen",
            "127.0.0.1:0",
            "--shutdown-grace",
            "10s",
        ]);
        let defaults = Defaults { admin_listen: "127.0.0.1:0", store: "embedded" };
        let config = CoreConfig::load(&cli.common, &defaults).unwrap();
        let start = tokio::time::Instant::now();
        let result = run("test", config, NoComponents, |ctx, NoComponents| async move {
            ctx.shutdown.spawn(std::future::pending::<()>());
            ctx.shutdown.trigger();
            std::future::pending::<anyhow::Result<()>>().await
        })
        .await;
        assert!(result.is_err(), "a service cut off at the grace period is an error");
        let took = start.elapsed();
        assert!(took < Duration::from_secs(11), "stopped after {took:?} with a 10 s grace period");
    }
}
