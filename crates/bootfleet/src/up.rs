//! `bootfleet up`: every service in one process on the embedded store,
//! through the same `run` functions as the service binaries.

use bootfleet_core::config::{CommonArgs, Defaults};
use bootfleet_rules_engine::server::{RulesArgs, RulesConfig};

/// Defaults of the all-in-one process: local admin port, embedded store.
const DEFAULTS: Defaults = Defaults { admin_listen: "127.0.0.1:9100", store: "embedded" };

/// Arguments of `bootfleet up`.
#[derive(clap::Args)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    rules: RulesArgs,
}

/// Runs `up`; returns the process exit status.
pub(crate) fn main(args: UpArgs) -> i32 {
    bootfleet_core::process::run_service(
        "bootfleet",
        &args.common,
        &DEFAULTS,
        |core| RulesConfig::load(&args.rules, core),
        bootfleet_rules_engine::server::run,
    )
}
