//! `bootfleet up`: every service in one process on the embedded store,
//! through the same `run` functions as the service binaries.

use std::sync::Arc;

use bootfleet_core::config::{CommonArgs, Defaults};
use bootfleet_core::process::ServiceContext;
use bootfleet_dhcp_responder::server::{DhcpArgs, DhcpConfig};
use bootfleet_image_streamer::server::{StreamerArgs, StreamerConfig};
use bootfleet_rules_engine::server::{RulesArgs, RulesConfig};
use bootfleet_tftp_server::server::{TftpArgs, TftpConfig};

/// Defaults of the all-in-one process: local admin port, embedded store.
const DEFAULTS: Defaults = Defaults { admin_listen: "127.0.0.1:9100", store: "embedded" };

/// Arguments of `bootfleet up`.
#[derive(clap::Args)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    rules: RulesArgs,
    #[command(flatten)]
    tftp: TftpArgs,
    #[command(flatten)]
    streamer: StreamerArgs,
    #[command(flatten)]
    dhcp: DhcpArgs,
}

/// Settings of every service `up` runs.
#[derive(Debug)]
struct Services {
    rules: RulesConfig,
    tftp: TftpConfig,
    streamer: StreamerConfig,
    /// Only when `[dhcp]` names interfaces: DHCP is never on by default.
    dhcp: Option<DhcpConfig>,
}

/// Runs every service until shutdown; the first failure stops them all.
async fn run_all(ctx: Arc<ServiceContext>, services: Services) -> anyhow::Result<()> {
    let stop = ctx.shutdown.clone();
    let on_failure = |result: anyhow::Result<()>| {
        if result.is_err() {
            stop.trigger();
        }
        result
    };
    let (rules, tftp, streamer, dhcp) = tokio::join!(
        async { on_failure(bootfleet_rules_engine::server::run(Arc::clone(&ctx), services.rules).await) },
        async { on_failure(bootfleet_tftp_server::server::run(Arc::clone(&ctx), services.tftp).await) },
        async {
            on_failure(bootfleet_image_streamer::server::run(Arc::clone(&ctx), services.streamer).await)
        },
        async {
            match services.dhcp {
                Some(dhcp) => on_failure(bootfleet_dhcp_responder::server::run(Arc::clone(&ctx), dhcp).await),
                None => Ok(()),
            }
        },
    );
    rules.and(tftp).and(streamer).and(dhcp)
}

/// Runs `up`; returns the process exit status.
pub(crate) fn main(args: UpArgs) -> i32 {
    bootfleet_core::process::run_service(
        "bootfleet",
        &args.common,
        &DEFAULTS,
        |core| {
            Ok(Services {
                rules: RulesConfig::load(&args.rules, core)?,
                tftp: TftpConfig::load(&args.tftp, core)?,
                streamer: StreamerConfig::load_with_default(&args.streamer, core, "127.0.0.1:8080")?,
                dhcp: DhcpConfig::load(&args.dhcp, core)?,
            })
        },
        run_all,
    )
}
