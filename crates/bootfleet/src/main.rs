//! `bootfleet`: the operator's binary.
//!
//! `bootfleet up` runs a single-node Bootfleet in one process on the embedded
//! store. Today that is the shared foundation every service stands on — the
//! persisted store, the admin endpoint (health, metrics), membership and the
//! watched snapshot; the services join it as they land (see README).

mod up;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bootfleet", version, about = "Highly available network boot for fleets of machines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run Bootfleet on this machine, on the embedded store, until SIGTERM/SIGINT.
    Up(up::UpArgs),
}

fn main() {
    let cli: Cli = bootfleet_core::config::parse_cli();
    let code = match cli.command {
        Command::Up(args) => up::main(args),
    };
    std::process::exit(code);
}
