//! The operator's commands over gRPC: shared flags, output, errors and exit
//! codes.
//!
//! # Exit codes
//!
//! Every client command exits with one of these, so scripts can branch on
//! the outcome without reading the message:
//!
//! | Code | Meaning |
//! |------|---------|
//! | 0    | done |
//! | 1    | any other error, including an internal server error |
//! | 2    | changes pending: `rules diff` and `apply --dry-run` found something to do (not an error) |
//! | 64   | usage: unknown flag or command, a malformed flag value (`--label`, `--server` URL) |
//! | 65   | invalid input: rejected by the server (INVALID_ARGUMENT), or a bad local file (manifest, token file, CA file) |
//! | 66   | not found (NOT_FOUND) |
//! | 67   | conflict: FAILED_PRECONDITION, ABORTED, ALREADY_EXISTS (changed meanwhile, or still in use) |
//! | 68   | not allowed: UNAUTHENTICATED or PERMISSION_DENIED (missing or rejected token) |
//! | 69   | unreachable: cannot connect, TLS failed, UNAVAILABLE, DEADLINE_EXCEEDED, a watch the server ended |
//!
//! The code is decided in one place, [`run`], from the error's type: commands
//! return typed errors ([`ApiError`] through [`explain`], [`PendingChanges`],
//! [`UsageError`], [`Unreachable`], [`WentAway`]) and add context freely.

pub(crate) mod apply;
pub(crate) mod complete;
pub(crate) mod describe;
pub(crate) mod hosts;
pub(crate) mod images;
pub(crate) mod probe;
pub(crate) mod profiles;
pub(crate) mod rules;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use bootfleet_image_streamer::client::ImageClient;
use bootfleet_proto::v1::image_service_client::ImageServiceClient;
use bootfleet_proto::v1::rules_service_client::RulesServiceClient;
use bootfleet_rules_engine::client::{BearerToken, Client, ConnectError, connect_channel_with_identity};
use tonic::Code;

/// Success.
pub(crate) const EXIT_OK: i32 = 0;
/// Any error not classified below.
pub(crate) const EXIT_ERROR: i32 = 1;
/// There is something to do (`rules diff`, `apply --dry-run`); not an error.
pub(crate) const EXIT_PENDING: i32 = 2;
/// Bad usage (clap errors, malformed flag values); `EX_USAGE`.
pub(crate) const EXIT_USAGE: i32 = bootfleet_core::config::EXIT_USAGE;
/// Invalid input, from the server or a local file; `EX_DATAERR`.
pub(crate) const EXIT_INVALID: i32 = 65;
/// Not found; `EX_NOINPUT`.
pub(crate) const EXIT_NOT_FOUND: i32 = 66;
/// Conflict: changed meanwhile, exists, or in use.
pub(crate) const EXIT_CONFLICT: i32 = 67;
/// Missing or rejected token.
pub(crate) const EXIT_DENIED: i32 = 68;
/// The server cannot be reached or went away; `EX_UNAVAILABLE`.
pub(crate) const EXIT_UNREACHABLE: i32 = 69;

/// Flags shared by every client command; global, so they go before or
/// after the subcommand.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ClientArgs {
    /// Rules engine gRPC URL (https:// always uses TLS).
    #[arg(long, env = "BOOTFLEET_SERVER", default_value = "http://127.0.0.1:7070", global = true)]
    server: String,
    /// Image streamer gRPC URL, for `images` (https:// always uses TLS).
    #[arg(long, env = "BOOTFLEET_IMAGES_SERVER", default_value = "http://127.0.0.1:7072", global = true)]
    images_server: String,
    /// File holding the admin token (needed for changes).
    #[arg(long, env = "BOOTFLEET_TOKEN_FILE", value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
    /// The admin token itself (prefer --token-file).
    #[arg(long, env = "BOOTFLEET_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// PEM file of the CA that signed the servers' certificates, for
    /// https:// URLs (default: the system's roots).
    #[arg(long, env = "BOOTFLEET_CA_FILE", value_name = "FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that ask for one
    /// (tls_client_auth = optional or required); with --key.
    #[arg(long, env = "BOOTFLEET_CERT_FILE", value_name = "FILE", global = true, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, env = "BOOTFLEET_KEY_FILE", value_name = "FILE", global = true, requires = "cert")]
    key: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', env = "BOOTFLEET_OUTPUT", value_enum, default_value_t = Output::Table, global = true)]
    pub(crate) output: Output,
    /// Where the token came from, for messages; set by `main` from clap's
    /// value sources.
    #[arg(skip)]
    pub(crate) token_source: TokenSource,
}

/// Where the token came from, named in the message when it is rejected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum TokenSource {
    /// No token given.
    #[default]
    None,
    /// `--token` on the command line.
    Flag,
    /// `BOOTFLEET_TOKEN`.
    Env,
    /// `--token-file` on the command line.
    FileFlag,
    /// `BOOTFLEET_TOKEN_FILE`.
    FileEnv,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns and sentences, for people.
    Table,
    /// Pretty JSON (the API's messages), for programs.
    Json,
    /// YAML (the API's messages).
    Yaml,
}

impl ClientArgs {
    /// Records where the token came from (clap's derive drops it).
    pub(crate) fn note_sources(&mut self, matches: &clap::ArgMatches) {
        use clap::parser::ValueSource;
        let from = |id: &str| matches.value_source(id);
        self.token_source = match (from("token"), from("token_file")) {
            (Some(ValueSource::CommandLine), _) => TokenSource::Flag,
            (Some(ValueSource::EnvVariable), _) => TokenSource::Env,
            (_, Some(ValueSource::CommandLine)) => TokenSource::FileFlag,
            (_, Some(ValueSource::EnvVariable)) => TokenSource::FileEnv,
            _ => TokenSource::None,
        };
    }

    /// The token, read from the token file when that is how it was given.
    fn token(&self) -> anyhow::Result<Option<String>> {
        match (&self.token, &self.token_file) {
            (Some(token), _) => Ok(Some(token.clone())),
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| LocalFileError(format!("reading the token file {}: {e}", file.display())))?;
                Ok(Some(text.trim().to_owned()))
            }
            (None, None) => Ok(None),
        }
    }

    /// Connects to the rules engine.
    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        let token = BearerToken::new(self.token()?.as_deref())?;
        let channel = self.channel(Service::Rules).await?;
        Ok(RulesServiceClient::with_interceptor(channel, token))
    }

    /// Connects to the image streamer.
    pub(crate) async fn connect_images(&self) -> anyhow::Result<ImageClient> {
        let token = BearerToken::new(self.token()?.as_deref())?;
        let channel = self.channel(Service::Images).await?;
        // Catalog listings carry every file's digest: allow 8 MiB answers.
        Ok(ImageServiceClient::with_interceptor(channel, token).max_decoding_message_size(8 << 20))
    }

    async fn channel(&self, service: Service) -> anyhow::Result<tonic::transport::Channel> {
        let url = match service {
            Service::Rules => &self.server,
            Service::Images => &self.images_server,
        };
        let identity = self.cert.as_deref().zip(self.key.as_deref());
        connect_channel_with_identity(url, self.ca_file.as_deref(), identity).await.map_err(|e| match e {
            ConnectError::Unreachable { url, cause } => Unreachable { service, url, cause }.into(),
            ConnectError::BadUrl { url, reason } => {
                UsageError(format!("{}: {url:?} is not a valid URL: {reason}", service.flag())).into()
            }
            ConnectError::CaFile { .. } => anyhow::Error::from(LocalFileError(e.to_string())),
            other => other.into(),
        })
    }

    /// Whether any token was given.
    fn token_sent(&self) -> bool {
        self.token.is_some() || self.token_file.is_some()
    }

    /// What to tell the operator when the server refuses the token (or its absence).
    fn token_hint(&self) -> String {
        if !self.token_sent() {
            return "this needs the admin token: pass --token-file FILE or set BOOTFLEET_TOKEN_FILE".into();
        }
        let file = || self.token_file.as_ref().map_or_else(String::new, |f| f.display().to_string());
        let from = match self.token_source {
            TokenSource::Flag | TokenSource::None => "--token".to_owned(),
            TokenSource::Env => "BOOTFLEET_TOKEN".to_owned(),
            TokenSource::FileFlag => format!("--token-file {}", file()),
            TokenSource::FileEnv => format!("BOOTFLEET_TOKEN_FILE ({})", file()),
        };
        format!("the server rejected the token from {from}")
    }
}

/// Which server a command talks to, for messages naming the flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Service {
    /// The rules engine (`--server`).
    Rules,
    /// The image streamer (`--images-server`).
    Images,
}

impl Service {
    fn flag(self) -> &'static str {
        match self {
            Self::Rules => "--server",
            Self::Images => "--images-server",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Rules => "the rules engine",
            Self::Images => "the image streamer",
        }
    }

    fn env(self) -> &'static str {
        match self {
            Self::Rules => "BOOTFLEET_SERVER",
            Self::Images => "BOOTFLEET_IMAGES_SERVER",
        }
    }
}

/// A command found something to do (`rules diff`, `apply --dry-run`):
/// exit 2, printing nothing on stderr.
#[derive(Debug, thiserror::Error)]
#[error("changes pending")]
pub(crate) struct PendingChanges;

/// The command line is wrong in a way clap cannot see (a malformed
/// `--label`, a bad URL): exit 64.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

/// A local file (token file, CA file) cannot be used: exit 65.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct LocalFileError(pub(crate) String);

/// A server could not be reached: exit 69.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot reach {} at {url}: {cause} (set the address with {} or {})",
    service.describe(), service.flag(), service.env()
)]
pub(crate) struct Unreachable {
    service: Service,
    url: String,
    cause: bootfleet_rules_engine::client::Unreachable,
}

/// A server ended a stream that only the client ends (`hosts watch`): exit 69.
#[derive(Debug, thiserror::Error)]
#[error("the server went away ({0})")]
pub(crate) struct WentAway(pub(crate) String);

/// A server's refusal, with its gRPC code kept for the exit code.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}{}", code_name(*code), hint.as_ref().map_or_else(String::new, |h| format!(" ({h})")))]
pub(crate) struct ApiError {
    /// The gRPC code.
    pub(crate) code: Code,
    /// The server's message.
    pub(crate) message: String,
    /// What the operator can do about it, if we know.
    pub(crate) hint: Option<String>,
}

/// Turns a gRPC status into an error an operator can act on; [`run`]
/// picks the exit code from its gRPC code.
pub(crate) fn explain(status: tonic::Status) -> anyhow::Error {
    let hint = match status.code() {
        Code::FailedPrecondition | Code::Aborted => Some("someone else changed it; read it again and retry"),
        Code::Unavailable => Some("is the server running, and can it reach its store?"),
        _ => None,
    };
    // A connection that fails under a call (a TLS alert such as "certificate
    // required" arrives after the handshake) says only "transport error":
    // the innermost cause is what the operator can act on.
    let mut message = status.message().to_owned();
    let mut cause = std::error::Error::source(&status);
    let hint = match (hint, cause) {
        (None, Some(_)) => Some(
            "the connection broke under the call: is the server TLS (use https:// and --ca-file), and does it \
             want a client certificate (--cert and --key)?",
        ),
        (hint, _) => hint,
    };
    while let Some(inner) = cause {
        if inner.source().is_none() {
            message = format!("{message}: {inner}");
        }
        cause = inner.source();
    }
    ApiError { code: status.code(), message, hint: hint.map(str::to_owned) }.into()
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument | Code::OutOfRange => "invalid",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::FailedPrecondition | Code::Aborted => "conflict",
        Code::Unauthenticated | Code::PermissionDenied => "not allowed",
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "timed out",
        Code::Cancelled => "cancelled",
        _ => "server error",
    }
}

/// The exit code for a gRPC code.
fn exit_for_code(code: Code) -> i32 {
    match code {
        Code::Ok => EXIT_OK,
        Code::InvalidArgument | Code::OutOfRange => EXIT_INVALID,
        Code::NotFound => EXIT_NOT_FOUND,
        Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists => EXIT_CONFLICT,
        Code::Unauthenticated | Code::PermissionDenied => EXIT_DENIED,
        Code::Unavailable | Code::DeadlineExceeded => EXIT_UNREACHABLE,
        _ => EXIT_ERROR,
    }
}

/// The exit code for an error: the first typed error in its chain decides.
pub(crate) fn exit_code(error: &anyhow::Error) -> i32 {
    for cause in error.chain() {
        if cause.is::<PendingChanges>() {
            return EXIT_PENDING;
        }
        if cause.is::<StdoutClosed>() {
            return EXIT_ERROR;
        }
        if let Some(api) = cause.downcast_ref::<ApiError>() {
            return exit_for_code(api.code);
        }
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return exit_for_code(status.code());
        }
        if let Some(call) = cause.downcast_ref::<bootfleet_image_streamer::client::CallError>() {
            return exit_for_code(call.status.code());
        }
        if cause.is::<UsageError>() {
            return EXIT_USAGE;
        }
        if cause.is::<LocalFileError>()
            || cause.is::<std::io::Error>()
            || cause.is::<bootfleet_rules_engine::error::RulesError>()
        {
            return EXIT_INVALID;
        }
        if cause.is::<Unreachable>() || cause.is::<WentAway>() {
            return EXIT_UNREACHABLE;
        }
        if let Some(connect) = cause.downcast_ref::<ConnectError>() {
            return match connect {
                ConnectError::Unreachable { .. } => EXIT_UNREACHABLE,
                ConnectError::BadUrl { .. } | ConnectError::BadToken => EXIT_USAGE,
                _ => EXIT_INVALID,
            };
        }
    }
    EXIT_ERROR
}

/// Runs an async command on a fresh runtime; prints errors; returns the
/// exit status (see the table at the top).
pub(crate) fn run<F, Fut>(client: &ClientArgs, command: F) -> i32
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: starting the async runtime: {e}");
            return EXIT_ERROR;
        }
    };
    match runtime.block_on(command()) {
        Ok(()) => EXIT_OK,
        Err(mut e) => {
            let code = exit_code(&e);
            if code == EXIT_PENDING || e.is::<StdoutClosed>() {
                return code;
            }
            if let Some(api) = e.downcast_mut::<ApiError>()
                && matches!(api.code, Code::Unauthenticated | Code::PermissionDenied)
            {
                api.hint = Some(client.token_hint());
            }
            eprintln!("Error: {e:#}");
            code
        }
    }
}

/// Prints `value` as pretty JSON or YAML; table output, which each command
/// renders itself, falls back to JSON.
pub(crate) fn print_structured(output: Output, value: &impl serde::Serialize) -> anyhow::Result<()> {
    match output {
        Output::Table | Output::Json => print_json(value),
        Output::Yaml => {
            // Through JSON's data model: a YAML serializer writes enums as
            // tags (`!Condition`), which most YAML readers cannot map; the
            // JSON shape reads the same in every language.
            let value = serde_json::to_value(value).context("encoding YAML")?;
            let text = serde_saphyr::to_string(&value).context("encoding YAML")?;
            write_stdout(text.as_bytes())
        }
    }
}

/// Prints a message as pretty JSON.
pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    text.push('\n');
    write_stdout(text.as_bytes())
}

/// Prints one compact JSON object on its own line and flushes, for streams
/// read line by line (`hosts watch -o json`).
pub(crate) fn print_json_line(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string(value).context("encoding JSON")?;
    text.push('\n');
    write_stdout(text.as_bytes())
}

/// Writes and flushes stdout, so output reaches a pipe as it is made.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).and_then(|()| out.flush()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            anyhow::Error::from(StdoutClosed)
        } else {
            anyhow::Error::from(e).context("writing to stdout")
        }
    })
}

/// Whoever read stdout stopped (`… | head -1`): exit 1 quietly, there is
/// nobody to tell.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub(crate) struct StdoutClosed;

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

/// Prints a command's result: `sentence` in table mode, `object` as JSON
/// or YAML otherwise, so scripts never parse sentences.
pub(crate) fn report(output: Output, sentence: &str, object: &serde_json::Value) -> anyhow::Result<()> {
    match output {
        Output::Table => {
            say(sentence);
            Ok(())
        }
        Output::Json | Output::Yaml => print_structured(output, object),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_distinct_exits() {
        let exit = |code| exit_code(&explain(tonic::Status::new(code, "x")));
        assert_eq!(exit(Code::NotFound), EXIT_NOT_FOUND);
        assert_eq!(exit(Code::InvalidArgument), EXIT_INVALID);
        assert_eq!(exit(Code::FailedPrecondition), EXIT_CONFLICT);
        assert_eq!(exit(Code::AlreadyExists), EXIT_CONFLICT);
        assert_eq!(exit(Code::Unauthenticated), EXIT_DENIED);
        assert_eq!(exit(Code::PermissionDenied), EXIT_DENIED);
        assert_eq!(exit(Code::Unavailable), EXIT_UNREACHABLE);
        assert_eq!(exit(Code::Internal), EXIT_ERROR);
        assert_eq!(exit_code(&anyhow::Error::from(PendingChanges).context("diff")), EXIT_PENDING);
        assert_eq!(exit_code(&explain(tonic::Status::not_found("x")).context("getting it")), EXIT_NOT_FOUND);
        assert_eq!(exit_code(&anyhow::anyhow!("plain")), EXIT_ERROR);
    }

    #[test]
    fn api_errors_read_as_sentences() {
        let e = explain(tonic::Status::not_found("no profile \"x\""));
        assert_eq!(format!("{e:#}"), "not found: no profile \"x\"");
    }
}
