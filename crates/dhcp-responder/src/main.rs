//! `bootfleet-dhcp-responder`: proxyDHCP as its own process.

use bootfleet_core::config::{CommonArgs, ConfigError, Defaults, parse_cli};
use bootfleet_dhcp_responder::server::{self, DhcpArgs, DhcpConfig};
use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Bootfleet DHCP responder (proxyDHCP): tells PXE, iPXE and UEFI HTTP clients where to boot"
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    dhcp: DhcpArgs,
}

const DEFAULTS: Defaults = Defaults { admin_listen: "127.0.0.1:9103", store: "etcd" };

fn main() {
    let cli: Cli = parse_cli();
    let code = bootfleet_core::process::run_service(
        "dhcp-responder",
        &cli.common,
        &DEFAULTS,
        |core| {
            DhcpConfig::load(&cli.dhcp, core)?.ok_or_else(|| {
                ConfigError::new(
                    "dhcp.interfaces",
                    "name the interfaces to answer on ([dhcp] or --dhcp-interface)",
                )
            })
        },
        server::run,
    );
    std::process::exit(code);
}
