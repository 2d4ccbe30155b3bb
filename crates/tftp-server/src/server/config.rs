//! TFTP settings: flags, `BOOTFLEET_TFTP_*` variables and the `[tftp]`
//! section of the configuration file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bootfleet_core::config::{
    ConfigError, CoreConfig, check_url, listen_address, parse_duration, service_section,
};
use serde::Deserialize;

/// TFTP flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TftpArgs {
    /// Address to serve TFTP on.
    #[arg(id = "tftp_listen", long = "tftp-listen", env = "BOOTFLEET_TFTP_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory whose files are served (read-only).
    #[arg(id = "tftp_root", long = "tftp-root", env = "BOOTFLEET_TFTP_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Rules engine to render per-host loader configs from (e.g. http://rules:7070).
    #[arg(
        id = "tftp_rules_url",
        long = "tftp-rules-url",
        env = "BOOTFLEET_TFTP_RULES_URL",
        value_name = "URL"
    )]
    pub rules_url: Option<String>,
    /// Base URL of the image streamer, for kernel and initrd URLs in rendered configs.
    #[arg(
        id = "tftp_http_base",
        long = "tftp-http-base",
        env = "BOOTFLEET_TFTP_HTTP_BASE",
        value_name = "URL"
    )]
    pub http_base: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TftpSection {
    listen: Option<String>,
    root: Option<PathBuf>,
    mtu: Option<u16>,
    max_windowsize: Option<u16>,
    timeout: Option<String>,
    max_retries: Option<u32>,
    max_transfers: Option<usize>,
    max_transfers_per_client: Option<usize>,
    max_unacknowledged_per_client: Option<usize>,
    unacknowledged_retries: Option<u32>,
    rendered_cache_entries: Option<usize>,
    cache_mib: Option<u64>,
    cache_file_limit_mib: Option<u64>,
    rules_url: Option<String>,
    http_base: Option<String>,
}

/// Validated TFTP settings.
#[derive(Clone, Debug)]
pub struct TftpConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Served directory.
    pub root: PathBuf,
    /// Link MTU: caps the block size.
    pub mtu: u16,
    /// Largest RFC 7440 window granted.
    pub max_windowsize: u16,
    /// Retransmission timeout unless the client negotiates one.
    pub timeout: Duration,
    /// Retransmissions before a transfer is abandoned.
    pub max_retries: u32,
    /// Concurrent transfers, in all.
    pub max_transfers: usize,
    /// Concurrent transfers per client address. A request over this or
    /// `max_transfers` gets no answer, so the client retransmits it and is
    /// served when a transfer ends (an error would end its boot).
    pub max_per_client: usize,
    /// Transfers per source address that have not yet received an ACK.
    /// A request's source address can be forged; until its first ACK a
    /// transfer may be sending to a victim who never asked. Requests over
    /// this get no answer. With `unacknowledged_retries`, it bounds what one
    /// forged address can make this server send: at most this many
    /// transfers at a time, each sending its first packet (an OACK, or the
    /// first window when the client asked for no options) at most
    /// `1 + unacknowledged_retries` times, one timeout apart, and no error.
    pub max_unacknowledged_per_client: usize,
    /// Resends of a transfer's first packet before any ACK (see above);
    /// capped by `max_retries`.
    pub unacknowledged_retries: u32,
    /// Rendered files remembered for offline mode, one per kind and MAC;
    /// the oldest rendering goes first when full.
    pub rendered_cache_entries: usize,
    /// Bytes of hot files kept in memory.
    pub cache_bytes: u64,
    /// Largest file kept in memory.
    pub cache_file_limit: u64,
    /// Rendering of per-host loader configs, when configured.
    pub render: Option<RenderConfig>,
}

impl bootfleet_core::process::Components for TftpConfig {
    fn components(&self) -> Vec<&'static str> {
        vec!["tftp"]
    }
}

/// Where rendered files come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderConfig {
    /// Rules engine gRPC URL.
    pub rules_url: String,
    /// Image streamer base URL.
    pub http_base: String,
}

impl TftpConfig {
    /// Defaults for everything but the root and address.
    pub fn new(listen: SocketAddr, root: PathBuf) -> Self {
        Self {
            listen,
            root,
            mtu: 1500,
            max_windowsize: 64,
            timeout: Duration::from_secs(1),
            max_retries: 5,
            max_transfers: 4096,
            max_per_client: 8,
            max_unacknowledged_per_client: 4,
            unacknowledged_retries: 2,
            rendered_cache_entries: 10_000,
            cache_bytes: 256 * 1024 * 1024,
            cache_file_limit: 32 * 1024 * 1024,
            render: None,
        }
    }

    /// Merges flags and the `[tftp]` section; errors name the key.
    pub fn load(args: &TftpArgs, core: &CoreConfig) -> Result<Self, ConfigError> {
        let section: TftpSection = service_section(core.file.tftp.as_ref(), "tftp")?;
        let listen = listen_address(
            args.listen.as_ref(),
            section.listen.as_ref(),
            ("--tftp-listen / BOOTFLEET_TFTP_LISTEN", "tftp.listen"),
            "0.0.0.0:69",
        )?;
        let (root, key) = match (&args.root, &section.root) {
            (Some(v), _) => (v.clone(), Some("--tftp-root / BOOTFLEET_TFTP_ROOT")),
            (None, Some(v)) => (v.clone(), Some("tftp.root")),
            // The default lives in the data directory and is created on start.
            (None, None) => (core.data_dir.join("tftp"), None),
        };
        if let Some(key) = key
            && !root.is_dir()
        {
            return Err(ConfigError::new(key, format!("{} is not a directory", root.display())));
        }
        let mut config = Self::new(listen, root);
        if let Some(mtu) = section.mtu {
            if !(576..=65_535).contains(&mtu) {
                return Err(ConfigError::new("tftp.mtu", "must be between 576 and 65535"));
            }
            config.mtu = mtu;
        }
        if let Some(w) = section.max_windowsize {
            if w == 0 {
                return Err(ConfigError::new("tftp.max_windowsize", "must be at least 1"));
            }
            config.max_windowsize = w;
        }
        if let Some(t) = &section.timeout {
            config.timeout = parse_duration(t).map_err(|m| ConfigError::new("tftp.timeout", m))?;
            if config.timeout.is_zero() {
                return Err(ConfigError::new("tftp.timeout", "must be greater than zero"));
            }
        }
        if let Some(r) = section.max_retries {
            config.max_retries = r;
        }
        if let Some(r) = section.unacknowledged_retries {
            config.unacknowledged_retries = r;
        }
        for (value, key, target) in [
            (section.max_transfers, "tftp.max_transfers", &mut config.max_transfers),
            (section.max_transfers_per_client, "tftp.max_transfers_per_client", &mut config.max_per_client),
            (
                section.max_unacknowledged_per_client,
                "tftp.max_unacknowledged_per_client",
                &mut config.max_unacknowledged_per_client,
            ),
            (
                section.rendered_cache_entries,
                "tftp.rendered_cache_entries",
                &mut config.rendered_cache_entries,
            ),
        ] {
            if let Some(v) = value {
                if v == 0 {
                    return Err(ConfigError::new(key, "must be at least 1"));
                }
                *target = v;
            }
        }
        if let Some(mib) = section.cache_mib {
            config.cache_bytes = mib * 1024 * 1024;
        }
        if let Some(mib) = section.cache_file_limit_mib {
            config.cache_file_limit = mib * 1024 * 1024;
        }
        let rules_url = args.rules_url.clone().or(section.rules_url);
        let http_base = args.http_base.clone().or(section.http_base);
        config.render = match (rules_url, http_base) {
            (None, None) => None,
            (Some(rules_url), Some(http_base)) => {
                check_url(&rules_url, "tftp.rules_url")?;
                check_url(&http_base, "tftp.http_base")?;
                Some(RenderConfig { rules_url, http_base })
            }
            (Some(_), None) => {
                return Err(ConfigError::new("tftp.http_base", "required with tftp.rules_url"));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new("tftp.rules_url", "required with tftp.http_base"));
            }
        };
        Ok(config)
    }
}
