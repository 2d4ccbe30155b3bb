//! Streamer settings: flags, `BOOTFLEET_STREAMER_*` variables and the
//! `[streamer]` section of the configuration file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bootfleet_core::config::{
    ClientAuth, ConfigError, CoreConfig, ServerTls, ServerTlsSection, check_url, listen_address,
    parse_duration, service_section,
};
use bootfleet_rules_engine::host_settings::HostRecordSettings;
use serde::Deserialize;

use crate::script::Templates;
use bootfleet_core::http_limits::HttpLimits;

/// Default HTTP address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default gRPC (ImageService) address.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:7072";
/// NBD port when `streamer.nbd_listen` names an address without one (IANA).
pub const DEFAULT_NBD_PORT: u16 = bootfleet_nbd::server::DEFAULT_PORT;

/// Streamer flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct StreamerArgs {
    /// Address to serve HTTP (boot scripts, images, reports) on.
    #[arg(
        id = "streamer_listen",
        long = "streamer-listen",
        env = "BOOTFLEET_STREAMER_LISTEN",
        value_name = "ADDR"
    )]
    pub listen: Option<String>,
    /// Address of the ImageService gRPC endpoint (uploads, catalog, status).
    #[arg(
        id = "streamer_grpc_listen",
        long = "streamer-grpc-listen",
        env = "BOOTFLEET_STREAMER_GRPC_LISTEN",
        value_name = "ADDR"
    )]
    pub grpc_listen: Option<String>,
    /// Base URL clients and peers reach this replica at (default: from the listen address).
    #[arg(
        id = "streamer_public_url",
        long = "streamer-public-url",
        env = "BOOTFLEET_STREAMER_PUBLIC_URL",
        value_name = "URL"
    )]
    pub public_url: Option<String>,
    /// Directory holding this replica's image files.
    #[arg(
        id = "streamer_data_dir",
        long = "streamer-data-dir",
        env = "BOOTFLEET_STREAMER_DATA_DIR",
        value_name = "DIR"
    )]
    pub data_dir: Option<PathBuf>,
    /// Address to serve vDisks over NBD on (an IP alone means port 10809);
    /// no NBD unless set.
    #[arg(
        id = "streamer_nbd_listen",
        long = "streamer-nbd-listen",
        env = "BOOTFLEET_STREAMER_NBD_LISTEN",
        value_name = "ADDR"
    )]
    pub nbd_listen: Option<String>,
    /// File holding the admin bearer token uploads require.
    #[arg(
        id = "streamer_admin_token_file",
        long = "streamer-admin-token-file",
        env = "BOOTFLEET_STREAMER_ADMIN_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub admin_token_file: Option<PathBuf>,
    /// The admin bearer token itself (prefer the file).
    #[arg(
        id = "streamer_admin_token",
        long = "streamer-admin-token",
        env = "BOOTFLEET_STREAMER_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamerSection {
    listen: Option<String>,
    grpc_listen: Option<String>,
    nbd_listen: Option<String>,
    public_url: Option<String>,
    data_dir: Option<PathBuf>,
    admin_token_file: Option<PathBuf>,
    admin_token: Option<String>,
    loaders_dir: Option<PathBuf>,
    cache_mib: Option<u64>,
    cache_file_limit_mib: Option<u64>,
    scrub_interval: Option<String>,
    record_decisions: Option<bool>,
    templates: Option<BTreeMap<String, PathBuf>>,
    http_header_timeout: Option<String>,
    http_idle_timeout: Option<String>,
    http_max_connections: Option<usize>,
    nbd_write_cache_mib: Option<u64>,
    nbd_max_write_caches: Option<usize>,
    grpc_tls_cert_file: Option<PathBuf>,
    grpc_tls_key_file: Option<PathBuf>,
    grpc_tls_client_ca_file: Option<PathBuf>,
    grpc_tls_client_auth: Option<ClientAuth>,
}

/// Validated streamer settings.
#[derive(Clone)]
pub struct StreamerConfig {
    /// HTTP address.
    pub listen: SocketAddr,
    /// gRPC address.
    pub grpc_listen: SocketAddr,
    /// NBD address; `None` serves no NBD.
    pub nbd_listen: Option<SocketAddr>,
    /// Base URL of this replica, without a trailing slash; `None` means
    /// `http://<bound address>` (the listen address is a specific IP).
    pub public_url: Option<String>,
    /// Image files live here.
    pub data_dir: PathBuf,
    /// Served under `/loaders/` (UEFI HTTP boot fetches iPXE from here).
    pub loaders_dir: Option<PathBuf>,
    /// Bearer token for uploads and catalog writes; `None` refuses them.
    pub admin_token: Option<String>,
    /// Bytes of verified files kept in memory.
    pub cache_bytes: u64,
    /// Largest file kept in memory.
    pub cache_file_limit: u64,
    /// How often every file is hashed again.
    pub scrub_interval: Duration,
    /// Record each boot-script decision on the host record.
    pub record_decisions: bool,
    /// Boot-script templates.
    pub templates: Templates,
    /// Connection limits of the HTTP port.
    pub http_limits: HttpLimits,
    /// The `[rules]` host-record settings, which bind the host records this
    /// replica writes for the boot scripts it serves.
    pub records: HostRecordSettings,
    /// Bounds on the hosts' `server` write caches on this replica.
    pub write_caches: WriteCacheLimits,
    /// TLS on the gRPC (ImageService) port (`streamer.grpc_tls_*`);
    /// `None`: plaintext.
    pub grpc_tls: Option<ServerTls>,
}

/// Bounds on the hosts' `server` write caches of one replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteCacheLimits {
    /// Bytes one host's cache may hold (`streamer.nbd_write_cache_mib`);
    /// its writes past that fail with ENOSPC.
    pub bytes_per_host: u64,
    /// Hosts with a cache at once (`streamer.nbd_max_write_caches`); more
    /// are refused their export.
    pub hosts: usize,
}

impl WriteCacheLimits {
    /// 16 GiB per host: a desktop's writes between two boots (logs, temp
    /// files, updates) with room to spare, while a runaway writer cannot
    /// fill the replica's disk alone.
    pub const DEFAULT_MIB_PER_HOST: u64 = 16 << 10;
    /// 4,096 hosts: a replica's disk at the default per-host cap is the
    /// operator's to size; this bounds the open files and the memory
    /// (one cluster map per host).
    pub const DEFAULT_HOSTS: usize = 4096;
}

impl bootfleet_core::process::Components for StreamerConfig {
    fn components(&self) -> Vec<&'static str> {
        vec!["streamer"]
    }
}

impl std::fmt::Debug for StreamerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamerConfig")
            .field("listen", &self.listen)
            .field("grpc_listen", &self.grpc_listen)
            .field("nbd_listen", &self.nbd_listen)
            .field("public_url", &self.public_url)
            .field("data_dir", &self.data_dir)
            .field("loaders_dir", &self.loaders_dir)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("cache_bytes", &self.cache_bytes)
            .field("cache_file_limit", &self.cache_file_limit)
            .field("scrub_interval", &self.scrub_interval)
            .field("record_decisions", &self.record_decisions)
            .field("http_limits", &self.http_limits)
            .field("records", &self.records)
            .field("write_caches", &self.write_caches)
            .field("grpc_tls", &self.grpc_tls)
            .finish_non_exhaustive()
    }
}

impl StreamerConfig {
    /// Merges flags and the `[streamer]` section; errors name the key.
    pub fn load(args: &StreamerArgs, core: &CoreConfig) -> Result<Self, ConfigError> {
        Self::load_with_default(args, core, DEFAULT_LISTEN)
    }

    /// As [`Self::load`], with another default HTTP address (`bootfleet up`
    /// serves loopback unless told otherwise).
    pub fn load_with_default(
        args: &StreamerArgs,
        core: &CoreConfig,
        default_listen: &str,
    ) -> Result<Self, ConfigError> {
        let section: StreamerSection = service_section(core.file.streamer.as_ref(), "streamer")?;
        let http_limits = http_limits(&section)?;
        let write_caches = write_cache_limits(&section)?;
        let listen = listen_address(
            args.listen.as_ref(),
            section.listen.as_ref(),
            ("--streamer-listen / BOOTFLEET_STREAMER_LISTEN", "streamer.listen"),
            default_listen,
        )?;
        let grpc_listen = listen_address(
            args.grpc_listen.as_ref(),
            section.grpc_listen.as_ref(),
            ("--streamer-grpc-listen / BOOTFLEET_STREAMER_GRPC_LISTEN", "streamer.grpc_listen"),
            DEFAULT_GRPC_LISTEN,
        )?;
        let nbd_listen = nbd_address(args.nbd_listen.as_ref(), section.nbd_listen.as_ref())?;
        let public_url = match args.public_url.clone().or(section.public_url) {
            Some(url) => {
                check_url(&url, "streamer.public_url")?;
                Some(url.trim_end_matches('/').to_owned())
            }
            None if listen.ip().is_unspecified() => {
                return Err(ConfigError::new(
                    "streamer.public_url",
                    format!(
                        "required when listening on {listen}: the URL clients and peers use, \
                         e.g. http://boot.example.net:{}",
                        listen.port()
                    ),
                ));
            }
            None => None,
        };
        let data_dir =
            args.data_dir.clone().or(section.data_dir).unwrap_or_else(|| core.data_dir.join("streamer"));
        if let Some(dir) = &section.loaders_dir
            && !dir.is_dir()
        {
            return Err(ConfigError::new(
                "streamer.loaders_dir",
                format!("{} is not a directory", dir.display()),
            ));
        }
        let token_file = args.admin_token_file.clone().or(section.admin_token_file);
        let admin_token = match (args.admin_token.clone().or(section.admin_token), token_file) {
            (Some(token), _) => Some(token),
            (None, Some(file)) => Some(
                std::fs::read_to_string(&file)
                    .map_err(|e| {
                        ConfigError::new(
                            "streamer.admin_token_file",
                            format!("reading {}: {e}", file.display()),
                        )
                    })?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        if admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(ConfigError::new("streamer.admin_token", "too short: use at least 16 characters"));
        }
        let scrub_interval = match &section.scrub_interval {
            Some(text) => {
                let d = parse_duration(text).map_err(|m| ConfigError::new("streamer.scrub_interval", m))?;
                if d < Duration::from_secs(1) {
                    return Err(ConfigError::new("streamer.scrub_interval", "must be at least 1s"));
                }
                d
            }
            None => Duration::from_secs(3600),
        };
        let mut overrides = Vec::new();
        for (kind, path) in section.templates.unwrap_or_default() {
            let key = format!("streamer.templates.{kind}");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::new(&key, format!("reading {}: {e}", path.display())))?;
            overrides.push((kind, text));
        }
        let templates =
            Templates::with_overrides(&overrides).map_err(|m| ConfigError::new("streamer.templates", m))?;
        let grpc_tls = ServerTlsSection {
            cert_file: section.grpc_tls_cert_file,
            key_file: section.grpc_tls_key_file,
            client_ca_file: section.grpc_tls_client_ca_file,
            client_auth: section.grpc_tls_client_auth,
        }
        .validate("streamer.grpc_tls_")?;
        Ok(Self {
            listen,
            grpc_listen,
            nbd_listen,
            public_url,
            data_dir,
            loaders_dir: section.loaders_dir,
            admin_token,
            cache_bytes: section.cache_mib.unwrap_or(1024) * 1024 * 1024,
            cache_file_limit: section.cache_file_limit_mib.unwrap_or(256) * 1024 * 1024,
            scrub_interval,
            record_decisions: section.record_decisions.unwrap_or(true),
            templates,
            http_limits,
            records: HostRecordSettings::load(core)?,
            write_caches,
            grpc_tls,
        })
    }
}

/// The write caches' bounds from `[streamer]`; errors name the key.
fn write_cache_limits(section: &StreamerSection) -> Result<WriteCacheLimits, ConfigError> {
    let mib = section.nbd_write_cache_mib.unwrap_or(WriteCacheLimits::DEFAULT_MIB_PER_HOST);
    if mib == 0 || mib > 1 << 30 {
        return Err(ConfigError::new("streamer.nbd_write_cache_mib", "must be between 1 and 1073741824"));
    }
    let hosts = section.nbd_max_write_caches.unwrap_or(WriteCacheLimits::DEFAULT_HOSTS);
    if hosts == 0 {
        return Err(ConfigError::new("streamer.nbd_max_write_caches", "must be at least 1"));
    }
    Ok(WriteCacheLimits { bytes_per_host: mib << 20, hosts })
}

/// The NBD address from the flag or `streamer.nbd_listen`: `IP:PORT`, or
/// an IP alone for port 10809.
fn nbd_address(flag: Option<&String>, file: Option<&String>) -> Result<Option<SocketAddr>, ConfigError> {
    let (text, key) = match (flag, file) {
        (Some(v), _) => (v, "--streamer-nbd-listen / BOOTFLEET_STREAMER_NBD_LISTEN"),
        (None, Some(v)) => (v, "streamer.nbd_listen"),
        (None, None) => return Ok(None),
    };
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(Some(address));
    }
    match text.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(Some(SocketAddr::new(ip, DEFAULT_NBD_PORT))),
        Err(_) => Err(ConfigError::new(
            key,
            format!("{text:?} is not an address like 0.0.0.0:{DEFAULT_NBD_PORT} or 0.0.0.0"),
        )),
    }
}

/// The HTTP connection limits from `[streamer]`, defaults from
/// `HttpLimits::PUBLIC`.
fn http_limits(section: &StreamerSection) -> Result<HttpLimits, ConfigError> {
    let defaults = HttpLimits::PUBLIC;
    let duration = |value: &Option<String>, key: &str, default: Duration| match value {
        Some(text) => {
            let d = parse_duration(text).map_err(|m| ConfigError::new(key, m))?;
            if d < Duration::from_millis(100) {
                return Err(ConfigError::new(key, "must be at least 100ms"));
            }
            Ok(d)
        }
        None => Ok(default),
    };
    let max_connections = section.http_max_connections.unwrap_or(defaults.max_connections);
    if max_connections == 0 {
        return Err(ConfigError::new("streamer.http_max_connections", "must be at least 1"));
    }
    Ok(HttpLimits {
        header_timeout: duration(
            &section.http_header_timeout,
            "streamer.http_header_timeout",
            defaults.header_timeout,
        )?,
        idle_timeout: duration(
            &section.http_idle_timeout,
            "streamer.http_idle_timeout",
            defaults.idle_timeout,
        )?,
        max_connections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nbd_listen_takes_an_address_or_an_ip_and_is_off_by_default() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(nbd_address(None, None).unwrap(), None);
        assert_eq!(
            nbd_address(None, s("127.0.0.1:1234").as_ref()).unwrap(),
            Some("127.0.0.1:1234".parse().unwrap())
        );
        assert_eq!(nbd_address(None, s("0.0.0.0").as_ref()).unwrap(), Some("0.0.0.0:10809".parse().unwrap()));
        assert_eq!(nbd_address(None, s("::").as_ref()).unwrap(), Some("[::]:10809".parse().unwrap()));
        assert_eq!(
            nbd_address(s("127.0.0.2:1").as_ref(), s("127.0.0.1:2").as_ref()).unwrap(),
            Some("127.0.0.2:1".parse().unwrap()),
            "the flag wins"
        );
        let err = nbd_address(None, s("nbd.example:10809").as_ref()).unwrap_err();
        assert_eq!(err.key, "streamer.nbd_listen");
    }

    #[test]
    fn write_cache_limits_have_defaults_and_bounds() {
        let section = |mib: Option<u64>, hosts: Option<usize>| StreamerSection {
            nbd_write_cache_mib: mib,
            nbd_max_write_caches: hosts,
            ..StreamerSection::default()
        };
        assert_eq!(
            write_cache_limits(&section(None, None)).unwrap(),
            WriteCacheLimits { bytes_per_host: 16 << 30, hosts: 4096 }
        );
        assert_eq!(
            write_cache_limits(&section(Some(64), Some(2))).unwrap(),
            WriteCacheLimits { bytes_per_host: 64 << 20, hosts: 2 }
        );
        assert_eq!(
            write_cache_limits(&section(Some(0), None)).unwrap_err().key,
            "streamer.nbd_write_cache_mib"
        );
        assert_eq!(
            write_cache_limits(&section(None, Some(0))).unwrap_err().key,
            "streamer.nbd_max_write_caches"
        );
    }

    #[test]
    fn grpc_tls_keys_load_and_errors_name_them() {
        use bootfleet_core::config::{CommonArgs, Defaults, parse_file};
        let pki = bootfleet_test_support::pki::TestPki::new("bootfleet-test-ca").unwrap();
        let server = pki.server();
        let dir = tempfile::tempdir().unwrap();
        let load = |keys: &str| {
            let text = format!(
                "[streamer]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{keys}",
                dir.path().display()
            );
            let defaults = Defaults { admin_listen: "127.0.0.1:0", store: "memory" };
            let core = CoreConfig::from_parts(&CommonArgs::default(), parse_file(&text).unwrap(), &defaults)
                .unwrap();
            StreamerConfig::load(&StreamerArgs::default(), &core)
        };
        let cert = format!("grpc_tls_cert_file = \"{}\"\n", server.cert.display());
        let key = format!("grpc_tls_key_file = \"{}\"\n", server.key.display());
        let ca = format!("grpc_tls_client_ca_file = \"{}\"\n", pki.ca().display());
        assert!(load("").unwrap().grpc_tls.is_none());
        let tls =
            load(&format!("{cert}{key}{ca}grpc_tls_client_auth = \"required\"\n")).unwrap().grpc_tls.unwrap();
        assert_eq!(tls.client_auth, ClientAuth::Required);
        assert_eq!(load(&cert).unwrap_err().key, "streamer.grpc_tls_key_file");
        assert_eq!(load(&format!("{cert}{key}{ca}")).unwrap_err().key, "streamer.grpc_tls_client_auth");
        assert_eq!(
            load("grpc_tls_client_auth = \"sometimes\"\n").unwrap_err().key,
            "streamer.grpc_tls_client_auth"
        );
    }
}
