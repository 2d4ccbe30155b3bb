//! `bootfleet-rules-engine`: the rules engine as its own process.

use bootfleet_core::config::{CommonArgs, Defaults, parse_cli};
use bootfleet_rules_engine::server::{self, RulesArgs, RulesConfig};
use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Bootfleet rules engine: decides how each host boots (gRPC RulesService)")]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    rules: RulesArgs,
}

const DEFAULTS: Defaults = Defaults { admin_listen: "127.0.0.1:9101", store: "etcd" };

fn main() {
    let cli: Cli = parse_cli();
    let code = bootfleet_core::process::run_service(
        "rules-engine",
        &cli.common,
        &DEFAULTS,
        |core| RulesConfig::load(&cli.rules, core),
        server::run,
    );
    std::process::exit(code);
}
