//! `bootfleet-image-streamer`: the image streamer as its own process.

use bootfleet_core::config::{CommonArgs, Defaults, parse_cli};
use bootfleet_image_streamer::server::{self, StreamerArgs, StreamerConfig};
use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Bootfleet image streamer: per-host iPXE boot scripts, kernels, initrds and disk images over HTTP \
             with Range, boot reports, and image replication between replicas"
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    streamer: StreamerArgs,
}

const DEFAULTS: Defaults = Defaults { admin_listen: "127.0.0.1:9104", store: "etcd" };

fn main() {
    let cli: Cli = parse_cli();
    let code = bootfleet_core::process::run_service(
        "image-streamer",
        &cli.common,
        &DEFAULTS,
        |core| StreamerConfig::load(&cli.streamer, core),
        server::run,
    );
    std::process::exit(code);
}
