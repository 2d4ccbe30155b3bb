//! Configuration every service shares: flags, `BOOTFLEET_*` variables and an
//! optional TOML file, merged and checked before anything binds.
//!
//! Precedence: flag, then environment variable, then file, then default.
//! The file rejects unknown keys. Every error names the offending key (the
//! flag and variable, or the dotted path in the file); binaries exit with
//! [`EXIT_USAGE`] (64, `EX_USAGE`) on any of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::election::DEFAULT_ELECTION_TTL;
use crate::membership::DEFAULT_MEMBER_TTL;

mod tls;

pub use tls::{
    ClientAuth, EtcdCredentials, EtcdSecurity, EtcdTls, ServerTls, ServerTlsSection,
    plaintext_remote_endpoints, read_pem,
};

/// Exit status for configuration errors (`EX_USAGE` from sysexits.h).
pub const EXIT_USAGE: i32 = 64;

/// Environment variable names, in one place.
pub mod env {
    /// Path of the TOML configuration file.
    pub const CONFIG: &str = "BOOTFLEET_CONFIG";
    /// Log filter (`tracing` `EnvFilter` directives, e.g. `info,bootfleet_core=debug`).
    pub const LOG: &str = "BOOTFLEET_LOG";
    /// Log output format: `plain` or `json`.
    pub const LOG_FORMAT: &str = "BOOTFLEET_LOG_FORMAT";
    /// Admin endpoint address (health, metrics).
    pub const ADMIN_LISTEN: &str = "BOOTFLEET_ADMIN_LISTEN";
    /// Store backend: `embedded`, `etcd` or `memory`.
    pub const STORE: &str = "BOOTFLEET_STORE";
    /// Comma-separated etcd client URLs.
    pub const ETCD_ENDPOINTS: &str = "BOOTFLEET_ETCD_ENDPOINTS";
    /// Directory for the embedded store and local data.
    pub const DATA_DIR: &str = "BOOTFLEET_DATA_DIR";
    /// This replica's identity in membership and elections.
    pub const MEMBER_ID: &str = "BOOTFLEET_MEMBER_ID";
    /// How long in-flight work may take to finish after SIGTERM.
    pub const SHUTDOWN_GRACE: &str = "BOOTFLEET_SHUTDOWN_GRACE";
}

/// Flags every service shares; flatten into a service's clap parser.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct CommonArgs {
    /// TOML configuration file. Flags and BOOTFLEET_* variables override it.
    #[arg(long, short = 'c', env = env::CONFIG, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Load and check the configuration, print the result, and exit
    /// (status 0 when valid, 64 otherwise). Binds nothing.
    #[arg(long)]
    pub validate: bool,
    /// Ask the running service's admin endpoint whether it serves, and exit
    /// 0 if it does, 1 if not (for container health checks).
    #[arg(long)]
    pub probe: bool,
    /// Log filter, e.g. "info" or "info,bootfleet_core=debug".
    #[arg(long = "log", env = env::LOG, value_name = "FILTER")]
    pub log: Option<String>,
    /// Log format: plain or json.
    #[arg(long, env = env::LOG_FORMAT, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Address of the admin endpoint: gRPC health, /healthz, /metrics.
    #[arg(long, env = env::ADMIN_LISTEN, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Where shared state lives: embedded (local file), etcd, or memory (tests).
    #[arg(long, env = env::STORE, value_name = "BACKEND")]
    pub store: Option<String>,
    /// etcd client URLs, comma-separated (with --store etcd).
    #[arg(long, env = env::ETCD_ENDPOINTS, value_name = "URLS", value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    /// Directory for the embedded store and other local data.
    #[arg(long, env = env::DATA_DIR, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Identity of this replica (default: hostname-pid).
    #[arg(long, env = env::MEMBER_ID, value_name = "ID")]
    pub member_id: Option<String>,
    /// Grace period for in-flight work after SIGTERM, e.g. "10s".
    #[arg(long, env = env::SHUTDOWN_GRACE, value_name = "DURATION")]
    pub shutdown_grace: Option<String>,
}

/// A configuration problem, naming the key it is about.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key}: {message}")]
pub struct ConfigError {
    /// The flag/variable or dotted file key.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

/// The TOML file as written. Sections of the services stay raw here; each
/// service validates its own (rejecting unknown keys too).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[log]`
    #[serde(default)]
    pub log: LogSection,
    /// `[admin]`
    #[serde(default)]
    pub admin: AdminSection,
    /// `[store]`
    #[serde(default)]
    pub store: StoreSection,
    /// `[member]`
    #[serde(default)]
    pub member: MemberSection,
    /// `[shutdown]`
    #[serde(default)]
    pub shutdown: ShutdownSection,
    /// `[dhcp]`, owned by dhcp-responder.
    pub dhcp: Option<toml::Table>,
    /// `[tftp]`, owned by tftp-server.
    pub tftp: Option<toml::Table>,
    /// `[streamer]`, owned by image-streamer.
    pub streamer: Option<toml::Table>,
    /// `[rules]`, owned by rules-engine.
    pub rules: Option<toml::Table>,
}

/// `[log]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// Filter directives.
    pub filter: Option<String>,
    /// `plain` or `json`.
    pub format: Option<String>,
}

/// `[admin]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Admin endpoint address.
    pub listen: Option<String>,
}

/// `[store]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `embedded`, `etcd` or `memory`.
    pub backend: Option<String>,
    /// etcd client URLs.
    pub etcd_endpoints: Option<Vec<String>>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Per-request timeout against etcd.
    pub request_timeout: Option<String>,
    /// Lease TTL of leader elections.
    pub election_ttl: Option<String>,
    /// Lease TTL of member records.
    pub member_ttl: Option<String>,
    /// PEM CA that signed the etcd members' certificates (https:// endpoints).
    pub etcd_ca_file: Option<PathBuf>,
    /// PEM client certificate for etcd (`--client-cert-auth` clusters).
    pub etcd_cert_file: Option<PathBuf>,
    /// PEM key of `etcd_cert_file`.
    pub etcd_key_file: Option<PathBuf>,
    /// etcd user (etcd's own authentication).
    pub etcd_username: Option<String>,
    /// File holding that user's password.
    pub etcd_password_file: Option<PathBuf>,
}

/// `[member]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSection {
    /// Replica identity.
    pub id: Option<String>,
}

/// `[shutdown]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSection {
    /// Grace period.
    pub grace: Option<String>,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Which backend holds shared state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreBackend {
    /// In-process, persisted to `<data_dir>/state.redb`.
    Embedded {
        /// The store file.
        path: PathBuf,
    },
    /// In-process, lost on exit (tests and demos).
    Memory,
    /// A real etcd cluster.
    Etcd {
        /// Client URLs.
        endpoints: Vec<String>,
    },
}

/// Store settings after validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// The backend.
    pub backend: StoreBackend,
    /// Per-request timeout against etcd.
    pub request_timeout: Duration,
    /// Lease TTL of leader elections.
    pub election_ttl: Duration,
    /// Lease TTL of member records.
    pub member_ttl: Duration,
}

/// The validated configuration shared by every service.
#[derive(Debug)]
pub struct CoreConfig {
    /// Log filter directives.
    pub log_filter: String,
    /// Log output format.
    pub log_format: LogFormat,
    /// Admin endpoint address.
    pub admin_listen: SocketAddr,
    /// Store settings.
    pub store: StoreConfig,
    /// TLS and credentials towards etcd (empty for other backends). Kept
    /// beside [`StoreConfig`] rather than in it so code building a
    /// `StoreConfig` for plaintext etcd stays as it is.
    pub etcd_security: EtcdSecurity,
    /// Local data directory.
    pub data_dir: PathBuf,
    /// This replica's identity.
    pub member_id: String,
    /// Grace period after SIGTERM.
    pub shutdown_grace: Duration,
    /// The file as read (service sections still raw), or the default.
    pub file: FileConfig,
}

/// Per-service defaults that differ between binaries.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// Admin endpoint address.
    pub admin_listen: &'static str,
    /// Store backend name when none is configured.
    pub store: &'static str,
}

const DEFAULT_LOG_FILTER: &str = "info";
const DEFAULT_DATA_DIR: &str = "/var/lib/bootfleet";
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Parses the command line of a binary. `--help` and `--version` print and
/// exit 0; any other error prints clap's message and exits [`EXIT_USAGE`].
pub fn parse_cli<T: clap::Parser>() -> T {
    match T::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    }
}

/// Parses "250ms", "10s", "2m", "1h" or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration (examples: 250ms, 10s, 2m)"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!("unknown unit {other:?} in {text:?} (use ms, s, m or h)"));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is out of range"))
}

/// A value from a flag/variable or from the file, remembering which.
fn pick<T>(flag: Option<T>, flag_key: &str, file: Option<T>, file_key: &str) -> Option<(T, String)> {
    flag.map(|v| (v, flag_key.to_owned())).or_else(|| file.map(|v| (v, file_key.to_owned())))
}

fn flag_key(flag: &str, env: &str) -> String {
    format!("--{flag} / {env}")
}

/// Parses a service's own `[name]` section (kept raw in [`FileConfig`]),
/// rejecting unknown keys and naming `name.<key>` in errors. A missing
/// section gives the defaults.
pub fn service_section<T>(section: Option<&toml::Table>, name: &str) -> Result<T, ConfigError>
where
    T: serde::de::DeserializeOwned + Default,
{
    match section {
        Some(table) => serde_path_to_error::deserialize(toml::Value::Table(table.clone()))
            .map_err(|e| ConfigError::new(format!("{name}.{}", e.path()), e.inner().to_string())),
        None => Ok(T::default()),
    }
}

/// A listen address from its flag, else its file key, else `default`;
/// errors name whichever the value came from (`keys`: flag and file key).
pub fn listen_address(
    flag: Option<&String>,
    file: Option<&String>,
    keys: (&str, &str),
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let (text, key) = match (flag, file) {
        (Some(v), _) => (v.clone(), keys.0.to_owned()),
        (None, Some(v)) => (v.clone(), keys.1.to_owned()),
        (None, None) => (default.to_owned(), format!("{} (default)", keys.1)),
    };
    text.parse().map_err(|_| ConfigError::new(key, format!("{text:?} is not an address like {default}")))
}

/// Checks that `value` is an http(s) URL; the error names `key`.
pub fn check_url(value: &str, key: &str) -> Result<(), ConfigError> {
    if value.starts_with("http://") || value.starts_with("https://") {
        Ok(())
    } else {
        Err(ConfigError::new(key, format!("{value:?} is not a URL like http://host:port")))
    }
}

/// Shortest bearer token accepted from a file.
pub const MIN_TOKEN_LEN: usize = 16;

/// Reads a bearer token from `path` (surrounding whitespace dropped, at
/// least [`MIN_TOKEN_LEN`] characters); errors name `key`.
pub fn token_file(path: &Path, key: &str) -> Result<crate::auth::Token, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(key, format!("reading {}: {e}", path.display())))?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN {
        return Err(ConfigError::new(
            key,
            format!("the token in {} is too short: use at least {MIN_TOKEN_LEN} characters", path.display()),
        ));
    }
    Ok(crate::auth::Token::new(token))
}

/// Reads and parses the TOML file, naming the dotted key of any error.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let key = format!("--config {}", path.display());
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::new(&key, format!("cannot read: {e}")))?;
    parse_file(&text).map_err(|e| ConfigError::new(format!("{} (in {})", e.key, path.display()), e.message))
}

/// Parses TOML text as a [`FileConfig`].
pub fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
    let deserializer =
        toml::Deserializer::parse(text).map_err(|e| ConfigError::new("file", e.to_string()))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." { "file".to_owned() } else { path };
        ConfigError::new(key, e.into_inner().message().to_owned())
    })
}

fn duration_setting(
    flag: Option<String>,
    flag_key: &str,
    file: Option<String>,
    file_key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match pick(flag, flag_key, file, file_key) {
        None => Ok(default),
        Some((text, key)) => {
            let d = parse_duration(&text).map_err(|m| ConfigError::new(&key, m))?;
            if d.is_zero() {
                return Err(ConfigError::new(key, "must be greater than zero"));
            }
            Ok(d)
        }
    }
}

impl CoreConfig {
    /// Merges flags, variables, file and defaults, and validates the result.
    pub fn load(args: &CommonArgs, defaults: &Defaults) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::from_parts(args, file, defaults)
    }

    /// As [`Self::load`], with the file already parsed.
    pub fn from_parts(args: &CommonArgs, file: FileConfig, defaults: &Defaults) -> Result<Self, ConfigError> {
        let log_filter = pick(args.log.clone(), "", file.log.filter.clone(), "")
            .map_or_else(|| DEFAULT_LOG_FILTER.to_owned(), |(v, _)| v);
        tracing_subscriber::EnvFilter::try_new(&log_filter).map_err(|e| {
            let key = if args.log.is_some() { flag_key("log", env::LOG) } else { "log.filter".into() };
            ConfigError::new(key, format!("{log_filter:?}: {e}"))
        })?;

        let log_format = match pick(
            args.log_format.clone(),
            &flag_key("log-format", env::LOG_FORMAT),
            file.log.format.clone(),
            "log.format",
        ) {
            None => LogFormat::Plain,
            Some((v, key)) => match v.as_str() {
                "plain" => LogFormat::Plain,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError::new(key, format!("{other:?}: expected plain or json")));
                }
            },
        };

        let (admin_text, admin_key) = pick(
            args.admin_listen.clone(),
            &flag_key("admin-listen", env::ADMIN_LISTEN),
            file.admin.listen.clone(),
            "admin.listen",
        )
        .unwrap_or_else(|| (defaults.admin_listen.to_owned(), "admin.listen (default)".into()));
        let admin_listen: SocketAddr = admin_text.parse().map_err(|_| {
            ConfigError::new(admin_key, format!("{admin_text:?} is not an address like 127.0.0.1:9090"))
        })?;

        let data_dir = pick(args.data_dir.clone(), "", file.store.data_dir.clone(), "")
            .map_or_else(|| PathBuf::from(DEFAULT_DATA_DIR), |(v, _)| v);

        let (backend_name, backend_key) = pick(
            args.store.clone(),
            &flag_key("store", env::STORE),
            file.store.backend.clone(),
            "store.backend",
        )
        .unwrap_or_else(|| (defaults.store.to_owned(), "store.backend (default)".into()));
        let endpoints = pick(
            args.etcd_endpoints.clone(),
            &flag_key("etcd-endpoints", env::ETCD_ENDPOINTS),
            file.store.etcd_endpoints.clone(),
            "store.etcd_endpoints",
        );
        let mut etcd_security = EtcdSecurity::default();
        let backend = match backend_name.as_str() {
            "embedded" => StoreBackend::Embedded { path: data_dir.join("state.redb") },
            "memory" => StoreBackend::Memory,
            "etcd" => {
                let Some((endpoints, key)) = endpoints else {
                    return Err(ConfigError::new(
                        flag_key("etcd-endpoints", env::ETCD_ENDPOINTS),
                        "required with store backend etcd",
                    ));
                };
                let endpoints: Vec<String> =
                    endpoints.into_iter().map(|e| e.trim().to_owned()).filter(|e| !e.is_empty()).collect();
                if endpoints.is_empty() {
                    return Err(ConfigError::new(key, "lists no endpoint"));
                }
                if let Some(bad) =
                    endpoints.iter().find(|e| !e.starts_with("http://") && !e.starts_with("https://"))
                {
                    return Err(ConfigError::new(
                        key,
                        format!("{bad:?} is not a URL like http://etcd-0:2379"),
                    ));
                }
                let keys = tls::EtcdSecurityKeys {
                    ca_file: file.store.etcd_ca_file.as_ref(),
                    cert_file: file.store.etcd_cert_file.as_ref(),
                    key_file: file.store.etcd_key_file.as_ref(),
                    username: file.store.etcd_username.as_ref(),
                    password_file: file.store.etcd_password_file.as_ref(),
                };
                etcd_security = tls::etcd_security(&keys, &endpoints, &key)?;
                StoreBackend::Etcd { endpoints }
            }
            other => {
                return Err(ConfigError::new(
                    backend_key,
                    format!("unknown backend {other:?}: expected embedded, etcd or memory"),
                ));
            }
        };
        let store = StoreConfig {
            backend,
            request_timeout: duration_setting(
                None,
                "",
                file.store.request_timeout.clone(),
                "store.request_timeout",
                DEFAULT_REQUEST_TIMEOUT,
            )?,
            election_ttl: duration_setting(
                None,
                "",
                file.store.election_ttl.clone(),
                "store.election_ttl",
                DEFAULT_ELECTION_TTL,
            )?,
            member_ttl: duration_setting(
                None,
                "",
                file.store.member_ttl.clone(),
                "store.member_ttl",
                DEFAULT_MEMBER_TTL,
            )?,
        };
        if store.election_ttl < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "store.election_ttl",
                "must be at least 1s (etcd leases count whole seconds)",
            ));
        }

        let shutdown_grace = duration_setting(
            args.shutdown_grace.clone(),
            &flag_key("shutdown-grace", env::SHUTDOWN_GRACE),
            file.shutdown.grace.clone(),
            "shutdown.grace",
            DEFAULT_SHUTDOWN_GRACE,
        )?;

        let member_id = match pick(
            args.member_id.clone(),
            &flag_key("member-id", env::MEMBER_ID),
            file.member.id.clone(),
            "member.id",
        ) {
            Some((id, key)) => {
                let valid = !id.is_empty()
                    && id.len() <= 128
                    && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if !valid {
                    return Err(ConfigError::new(key, format!("{id:?}: use 1-128 of A-Z a-z 0-9 - _ .")));
                }
                id
            }
            None => default_member_id(),
        };

        Ok(Self {
            log_filter,
            log_format,
            admin_listen,
            store,
            etcd_security,
            data_dir,
            member_id,
            shutdown_grace,
            file,
        })
    }
}

/// `hostname-pid`, sanitized to the member-id alphabet.
fn default_member_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    let host: String =
        host.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Defaults = Defaults { admin_listen: "127.0.0.1:9100", store: "embedded" };

    fn load(args: CommonArgs, file: &str) -> Result<CoreConfig, ConfigError> {
        CoreConfig::from_parts(&args, parse_file(file)?, &DEFAULTS)
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c = load(CommonArgs::default(), "").unwrap();
        assert_eq!(c.admin_listen, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(c.store.backend, StoreBackend::Embedded { path: "/var/lib/bootfleet/state.redb".into() });
        assert_eq!(c.store.election_ttl, Duration::from_secs(2));
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
        assert_eq!(c.log_format, LogFormat::Plain);
    }

    #[test]
    fn file_values_apply_and_flags_override_them() {
        let file = r#"
            [admin]
            listen = "0.0.0.0:9200"
            [store]
            backend = "etcd"
            etcd_endpoints = ["http://10.0.0.1:2379"]
            election_ttl = "3s"
            [log]
            format = "json"
        "#;
        let c = load(CommonArgs::default(), file).unwrap();
        assert_eq!(c.admin_listen.port(), 9200);
        assert_eq!(c.store.backend, StoreBackend::Etcd { endpoints: vec!["http://10.0.0.1:2379".into()] });
        assert_eq!(c.store.election_ttl, Duration::from_secs(3));
        assert_eq!(c.log_format, LogFormat::Json);
        let args = CommonArgs {
            admin_listen: Some("127.0.0.1:1".into()),
            store: Some("memory".into()),
            ..Default::default()
        };
        let c = load(args, file).unwrap();
        assert_eq!(c.admin_listen.port(), 1);
        assert_eq!(c.store.backend, StoreBackend::Memory);
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(CommonArgs, &str, &str)] = &[
            (CommonArgs::default(), "[store]\nbackend = \"etc\"", "store.backend"),
            (
                CommonArgs::default(),
                "[store]\nbackend = \"etcd\"",
                "--etcd-endpoints / BOOTFLEET_ETCD_ENDPOINTS",
            ),
            (
                CommonArgs::default(),
                "[store]\nbackend = \"etcd\"\netcd_endpoints = [\"etcd:2379\"]",
                "store.etcd_endpoints",
            ),
            (CommonArgs::default(), "[admin]\nlisten = \"nowhere\"", "admin.listen"),
            (CommonArgs::default(), "[shutdown]\ngrace = \"10 parsecs\"", "shutdown.grace"),
            (CommonArgs::default(), "[store]\nelection_ttl = \"500ms\"", "store.election_ttl"),
            (CommonArgs::default(), "[log]\nformat = \"xml\"", "log.format"),
            (CommonArgs::default(), "[store]\nbakend = \"etcd\"", "store.bakend"),
            (CommonArgs::default(), "colour = true", "colour"),
            (CommonArgs::default(), "[store\nbackend", "file"),
            (
                CommonArgs { shutdown_grace: Some("-1s".into()), ..Default::default() },
                "",
                "--shutdown-grace / BOOTFLEET_SHUTDOWN_GRACE",
            ),
            (
                CommonArgs { member_id: Some("a b".into()), ..Default::default() },
                "",
                "--member-id / BOOTFLEET_MEMBER_ID",
            ),
        ];
        for (args, file, key) in cases {
            let err = load(args.clone(), file).expect_err(file);
            assert_eq!(err.key, *key, "{file}: {err}");
        }
    }

    #[test]
    fn etcd_tls_and_credentials_are_checked_when_the_config_loads() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n").unwrap();
        let password = dir.path().join("password");
        std::fs::write(&password, "s3cret\n").unwrap();
        let file = |endpoint: &str, extra: &str| {
            format!("[store]\nbackend = \"etcd\"\netcd_endpoints = [\"{endpoint}\"]\n{extra}")
        };
        let (pem, password) = (pem.display(), password.display());
        let refused = [
            (file("https://10.0.0.1:2379", ""), "store.etcd_ca_file"),
            (
                file(
                    "https://10.0.0.1:2379",
                    &format!("etcd_ca_file = \"{pem}\"\netcd_cert_file = \"{pem}\""),
                ),
                "store.etcd_key_file",
            ),
            (
                file(
                    "https://10.0.0.1:2379",
                    &format!("etcd_ca_file = \"{pem}\"\netcd_key_file = \"{pem}\""),
                ),
                "store.etcd_cert_file",
            ),
            (file("https://10.0.0.1:2379", "etcd_ca_file = \"/nonexistent/ca.pem\""), "store.etcd_ca_file"),
            (file("http://10.0.0.1:2379", &format!("etcd_ca_file = \"{pem}\"")), "store.etcd_ca_file"),
            (file("http://10.0.0.1:2379", "etcd_username = \"root\""), "store.etcd_password_file"),
            (
                file("http://10.0.0.1:2379", &format!("etcd_password_file = \"{password}\"")),
                "store.etcd_username",
            ),
            (
                "[store]\nbackend = \"etcd\"\netcd_endpoints = [\"https://a:1\", \"http://b:1\"]".to_owned(),
                "store.etcd_endpoints",
            ),
        ];
        for (text, key) in refused {
            let err = load(CommonArgs::default(), &text).expect_err(&text);
            assert_eq!(err.key, key, "{text}: {err}");
        }
        let text = file(
            "https://10.0.0.1:2379",
            &format!(
                "etcd_ca_file = \"{pem}\"\netcd_cert_file = \"{pem}\"\netcd_key_file = \"{pem}\"\n\
                 etcd_username = \"root\"\netcd_password_file = \"{password}\""
            ),
        );
        let security = load(CommonArgs::default(), &text).unwrap().etcd_security;
        let tls = security.tls.expect("tls");
        assert!(tls.ca_pem.starts_with(b"-----BEGIN CERTIFICATE"));
        assert!(tls.identity.is_some());
        let credentials = security.credentials.expect("credentials");
        assert_eq!((credentials.username.as_str(), credentials.password.as_str()), ("root", "s3cret"));
        assert!(!format!("{:?}", load(CommonArgs::default(), &text).unwrap()).contains("s3cret"));
        // Plaintext stays plaintext.
        let plain = load(CommonArgs::default(), &file("http://127.0.0.1:2379", "")).unwrap();
        assert_eq!(plain.etcd_security, EtcdSecurity::default());
    }

    #[test]
    fn unknown_keys_are_rejected_in_every_section() {
        for section in ["log", "admin", "store", "member", "shutdown"] {
            let err = parse_file(&format!("[{section}]\nstray = 1")).expect_err(section);
            assert_eq!(err.key, format!("{section}.stray"), "{err}");
            assert!(err.message.contains("stray"), "{err}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
