//! `bootfleet`: the operator's binary.
//!
//! `bootfleet up` runs Bootfleet on one machine, every service in one
//! process on the embedded store. The other commands talk to a rules engine
//! over gRPC: apply declarative files, list and inspect rules, profiles and
//! hosts, activate, diff, test compliance. Exit codes: see `cli`.

mod bootstrap;
mod cli;
mod up;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Help is wrapped at this width whatever the terminal, so it reads the
/// same everywhere (and the golden help files stay stable).
const HELP_WIDTH: usize = 100;

#[derive(Parser)]
#[command(
    name = "bootfleet",
    version,
    about = "Highly available network boot for fleets of machines",
    term_width = HELP_WIDTH,
    max_term_width = HELP_WIDTH
)]
struct Cli {
    #[command(flatten)]
    client: cli::ClientArgs,
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
    /// Image catalog: push versions, list, replication and NBD status per replica, write caches, garbage collection, delete.
    Images(cli::images::ImagesCommand),
    /// Ask the rules engine how a host would boot (recorded unless --dry-run).
    Evaluate(cli::hosts::EvaluateArgs),
    /// Act as a network-boot client once on an interface and print the answer.
    ProbeDhcp(cli::probe::ProbeArgs),
    /// Bootable media (ISO, disk image, EFI) listing boot servers: no PXE, TFTP or DHCP options needed.
    Bootstrap(bootstrap::BootstrapCommand),
    /// Print the script enabling shell completion (names asked from the servers).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// Parses the command line; usage errors exit 64, `--help` and `--version` 0.
fn parse() -> Cli {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches).map(|cli| (cli, matches)));
    match parsed {
        Ok((mut cli, matches)) => {
            cli.client.note_sources(&matches);
            cli
        }
        Err(e) => {
            let code = if e.use_stderr() { cli::EXIT_USAGE } else { cli::EXIT_OK };
            let _ = e.print();
            std::process::exit(code);
        }
    }
}

fn main() {
    // Answers the shell's completion requests (COMPLETE=bash …) and exits;
    // a normal run goes on.
    clap_complete::CompleteEnv::with_factory(Cli::command).complete();
    let Cli { client, command } = parse();
    let code = match command {
        Command::Up(args) => up::main(*args),
        Command::Completions { shell } => {
            match cli::complete::write_registration(shell, &mut std::io::stdout()) {
                Ok(()) => cli::EXIT_OK,
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    cli::EXIT_ERROR
                }
            }
        }
        Command::Apply(args) => cli::run(&client, || cli::apply::run(args, &client)),
        Command::Rules(command) => cli::run(&client, || cli::rules::run(command, &client)),
        Command::Profiles(command) => cli::run(&client, || cli::profiles::run(command, &client)),
        Command::Hosts(command) => cli::run(&client, || cli::hosts::run_hosts(command, &client)),
        Command::Images(command) => cli::run(&client, || cli::images::run(command, &client)),
        Command::Evaluate(args) => cli::run(&client, || cli::hosts::run_evaluate(args, &client)),
        Command::Bootstrap(command) => bootstrap::main(command, &client),
        Command::ProbeDhcp(args) => match cli::probe::run(&args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("Error: {e:#}");
                cli::EXIT_ERROR
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

    /// A subcommand flag that shadows a global one with another type
    /// passes `debug_assert` but panics when parsed (probe-dhcp's old
    /// `--server`): parse every subcommand that takes its own flags.
    #[test]
    fn subcommand_flags_parse_beside_the_global_ones() {
        use clap::Parser;
        let lines: &[&[&str]] = &[
            &["probe-dhcp", "--interface", "veth0", "--mac", "52:54:00:00:00:01", "--kind", "pxe-bios"],
            &["probe-dhcp", "--interface", "veth0", "--mac", "52:54:00:00:00:01", "--relay", "198.18.0.2"],
            &["--server", "http://127.0.0.1:1", "apply", "-f", "-", "--dry-run", "--prune"],
            &["evaluate", "--mac", "52:54:00:00:00:01", "--label", "a=b", "-o", "json"],
            &[
                "images",
                "push",
                ".",
                "--image",
                "i",
                "--version",
                "1",
                "--images-server",
                "http://127.0.0.1:1",
            ],
        ];
        for line in lines {
            let mut argv = vec!["bootfleet"];
            argv.extend_from_slice(line);
            if line.contains(&"--relay") {
                argv.extend(["--dhcp-server", "198.18.0.1"]);
            }
            super::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
    }
}
