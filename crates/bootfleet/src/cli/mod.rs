//! The operator's commands over gRPC: shared flags, output, errors.

pub(crate) mod apply;
pub(crate) mod describe;
pub(crate) mod hosts;
pub(crate) mod images;
pub(crate) mod probe;
pub(crate) mod profiles;
pub(crate) mod rules;

use std::path::PathBuf;

use anyhow::Context;
use bootfleet_rules_engine::client::{Client, connect};

/// How to reach the rules engine; shared by every client command.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ClientArgs {
    /// Rules engine URL.
    #[arg(long, env = "BOOTFLEET_SERVER", default_value = "http://127.0.0.1:7070", global = true)]
    server: String,
    /// File holding the admin token (needed for changes).
    #[arg(long, env = "BOOTFLEET_TOKEN_FILE", value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
    /// The admin token itself (prefer --token-file).
    #[arg(long, env = "BOOTFLEET_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Output: table (for people) or json (for programs).
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    pub(crate) output: Output,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns.
    Table,
    /// Pretty JSON (the API's messages).
    Json,
}

impl ClientArgs {
    /// Connects, reading the token file if given.
    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("reading the token file {}", file.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        Ok(connect(&self.server, token.as_deref()).await?)
    }
}

/// Returned by a command that found changes to make (`rules diff`, `apply
/// --dry-run`): the process exits 2, as `terraform plan -detailed-exitcode`
/// does, and prints nothing more.
#[derive(Debug, thiserror::Error)]
#[error("changes pending")]
pub(crate) struct PendingChanges;

/// Turns a gRPC status into a sentence an operator can act on.
pub(crate) fn explain(status: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let hint = match status.code() {
        Code::Unauthenticated => " (pass --token-file or set BOOTFLEET_TOKEN_FILE)",
        Code::FailedPrecondition => " (someone else changed it; read it again and retry)",
        Code::Unavailable => " (is the server running, and can it reach its store?)",
        _ => "",
    };
    anyhow::anyhow!("{}: {}{hint}", code_name(status.code()), status.message())
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::InvalidArgument => "invalid",
        Code::NotFound => "not found",
        Code::FailedPrecondition => "conflict",
        Code::Unauthenticated => "not allowed",
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "timed out",
        _ => "server error",
    }
}

/// Runs an async command on a fresh runtime; prints errors; exit status.
pub(crate) fn run<F, Fut>(command: F) -> i32
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: starting the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(command()) {
        Ok(()) => 0,
        Err(e) if e.is::<PendingChanges>() => 2,
        Err(e) => {
            eprintln!("Error: {e:#}");
            1
        }
    }
}

/// Prints a message as pretty JSON.
#[allow(clippy::print_stdout)]
pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints rows as aligned columns under a header.
#[allow(clippy::print_stdout)]
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints one line (for command results).
#[allow(clippy::print_stdout)]
pub(crate) fn say(text: &str) {
    println!("{text}");
}
