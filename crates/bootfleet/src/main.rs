//! `bootfleet`: the operator's binary.
//!
//! `bootfleet up` runs Bootfleet on one machine, every service in one
//! process on the embedded store. The other commands talk to a rules engine
//! over gRPC: apply declarative files, list and inspect rules, profiles and
//! hosts, activate, diff, test compliance.

mod cli;
mod up;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bootfleet", version, about = "Highly available network boot for fleets of machines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run Bootfleet on this machine, on the embedded store, until SIGTERM/SIGINT.
    Up(Box<up::UpArgs>),
    /// Create or replace profiles and the working rule set from a YAML or TOML file.
    Apply(cli::apply::ApplyArgs),
    /// Rule sets: list, get, delete, activate, diff, test-compliance, repair.
    Rules(cli::rules::RulesCommand),
    /// Image profiles, host profiles and locations.
    Profiles(cli::profiles::ProfilesCommand),
    /// Host records: list, get, watch decisions.
    Hosts(cli::hosts::HostsCommand),
    /// Image catalog: push versions, list, replication status per replica, delete.
    Images(cli::images::ImagesCommand),
    /// Ask the rules engine how a host would boot (recorded unless --dry-run).
    Evaluate(cli::hosts::EvaluateArgs),
    /// Act as a network-boot client once on an interface and print the answer.
    ProbeDhcp(cli::probe::ProbeArgs),
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

fn main() {
    let cli: Cli = bootfleet_core::config::parse_cli();
    let code = match cli.command {
        Command::Up(args) => up::main(*args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "bootfleet", &mut std::io::stdout());
            0
        }
        Command::Apply(args) => cli::run(|| cli::apply::run(args)),
        Command::Rules(command) => cli::run(|| cli::rules::run(command)),
        Command::Profiles(command) => cli::run(|| cli::profiles::run(command)),
        Command::Hosts(command) => cli::run(|| cli::hosts::run_hosts(command)),
        Command::Images(command) => cli::run(|| cli::images::run(command)),
        Command::Evaluate(args) => cli::run(|| cli::hosts::run_evaluate(args)),
        Command::ProbeDhcp(args) => match cli::probe::run(&args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("Error: {e:#}");
                1
            }
        },
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
