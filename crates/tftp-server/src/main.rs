//! `bootfleet-tftp-server`: the TFTP server as its own process.

use bootfleet_core::config::{CommonArgs, Defaults, parse_cli};
use bootfleet_tftp_server::server::{self, TftpArgs, TftpConfig};
use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Bootfleet TFTP server: read-only, fast delivery of first-stage loaders")]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    tftp: TftpArgs,
}

const DEFAULTS: Defaults = Defaults { admin_listen: "127.0.0.1:9102", store: "etcd" };

fn main() {
    let cli: Cli = parse_cli();
    let code = bootfleet_core::process::run_service(
        "tftp-server",
        &cli.common,
        &DEFAULTS,
        |core| TftpConfig::load(&cli.tftp, core),
        server::run,
    );
    std::process::exit(code);
}
