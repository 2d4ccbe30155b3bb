//! DHCP settings: `[dhcp]` section plus a few flags. The responder binds
//! only the interfaces it is given and refuses to start without one.

use std::net::Ipv4Addr;

use bootfleet_core::config::{ConfigError, CoreConfig, check_url, service_section};
use serde::Deserialize;

use std::time::Duration;

use bootfleet_core::config::parse_duration;

use crate::full::{MAX_LEASE_REUSE, Pool, Reservations};
use crate::proxy::Loaders;
use crate::relays::{Subnet, TrustedRelays};

/// DHCP flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DhcpArgs {
    /// Interface to answer on (repeatable). Nothing is answered elsewhere.
    #[arg(
        id = "dhcp_interface",
        long = "dhcp-interface",
        env = "BOOTFLEET_DHCP_INTERFACES",
        value_delimiter = ',',
        value_name = "IFACE"
    )]
    pub interfaces: Option<Vec<String>>,
    /// Our IPv4 address on those interfaces (server identifier).
    #[arg(
        id = "dhcp_server_ip",
        long = "dhcp-server-ip",
        env = "BOOTFLEET_DHCP_SERVER_IP",
        value_name = "ADDR"
    )]
    pub server_ip: Option<String>,
    /// File holding the rules engine's service token
    /// (rules.service_token_file): with it, this responder's Evaluate calls
    /// record host records; without it they are dry runs.
    #[arg(
        id = "dhcp_service_token_file",
        long = "dhcp-service-token-file",
        env = "BOOTFLEET_DHCP_SERVICE_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub service_token_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoaderSection {
    bios: Option<String>,
    efi_x64: Option<String>,
    efi_ia32: Option<String>,
    efi_arm64: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolSection {
    subnet: String,
    start: String,
    end: String,
    router: Option<String>,
    #[serde(default)]
    dns: Vec<String>,
    lease_time: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReservationSection {
    mac: String,
    ip: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DhcpSection {
    #[serde(default)]
    pools: Vec<PoolSection>,
    #[serde(default)]
    reservations: Vec<ReservationSection>,
    mode: Option<String>,
    interfaces: Option<Vec<String>>,
    server_ip: Option<String>,
    tftp_server: Option<String>,
    http_base: Option<String>,
    rules_url: Option<String>,
    service_token_file: Option<std::path::PathBuf>,
    boot_unknown: Option<bool>,
    requests_per_mac_per_second: Option<u32>,
    router_advertisements: Option<bool>,
    tftp_from_members: Option<bool>,
    streamers_from_members: Option<bool>,
    rules_cache: Option<String>,
    lease_reuse: Option<f64>,
    ha: Option<String>,
    trusted_relays: Option<Vec<String>>,
    #[serde(default)]
    loaders: LoaderSection,
}

/// Proxy or full DHCP.
#[derive(Clone, Debug)]
pub enum Mode {
    /// proxyDHCP beside another DHCP server: no addresses.
    Proxy,
    /// Addresses from these pools, leases in the store.
    Full {
        /// Pools, one per subnet.
        pools: Vec<Pool>,
        /// Fixed addresses by MAC.
        reservations: Reservations,
        /// A REQUEST for a lease its client got or renewed less than this
        /// fraction of the lease time ago is acknowledged for the time it
        /// has left, without a store write (0: always write).
        lease_reuse: f64,
        /// How the replicas share the work.
        ha: Ha,
    },
}

/// How full-mode replicas share the work (`dhcp.ha`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ha {
    /// One elected leader answers everyone; the others watch the leases
    /// and take over when its election lease lapses.
    #[default]
    HotStandby,
    /// Every live member answers its share of the clients (see
    /// [`crate::shares`]), all allocating from the same pools, each lease
    /// write fenced by the writer's membership.
    LoadBalancing,
}

/// Validated DHCP settings.
#[derive(Clone, Debug)]
pub struct DhcpConfig {
    /// Mode.
    pub mode: Mode,
    /// Interfaces answered on.
    pub interfaces: Vec<String>,
    /// Server identifier.
    pub server_ip: Ipv4Addr,
    /// TFTP server handed to PXE clients.
    pub tftp_server: Ipv4Addr,
    /// Image streamer base URL (iPXE scripts, HTTP loaders).
    pub http_base: String,
    /// Rules engine URL.
    pub rules_url: String,
    /// Sent with Evaluate so the rules engine records (its service token).
    pub service_token: Option<bootfleet_core::auth::Token>,
    /// Answer hosts no rule names.
    pub boot_unknown: bool,
    /// Loader per architecture.
    pub loaders: Loaders,
    /// Flood limit per MAC.
    pub requests_per_mac_per_second: u32,
    /// Answer IPv6 router solicitations with "nothing to configure", so
    /// iPXE does not wait ~13 s for IPv6 on links without a router.
    pub router_advertisements: bool,
    /// Send PXE clients to the least-loaded live TFTP replica registered in
    /// the store (on port 69), falling back to `tftp_server`.
    pub tftp_from_members: bool,
    /// Hand iPXE the boot-script URL of the least-loaded live image
    /// streamer registered in the store, falling back to `http_base`.
    pub streamers_from_members: bool,
    /// How long a host's answer from the rules engine is reused at most
    /// (zero: ask on every request). Any rule or image-profile change seen
    /// in the store ends it sooner.
    pub rules_cache: Duration,
    /// Relay agents (addresses or subnets) whose relayed requests are
    /// answered; a request with `giaddr` set from anywhere else is dropped.
    pub trusted_relays: TrustedRelays,
}

impl bootfleet_core::process::Components for DhcpConfig {
    fn components(&self) -> Vec<&'static str> {
        vec!["dhcp"]
    }
}

fn address(text: &str, key: &str) -> Result<Ipv4Addr, ConfigError> {
    text.parse().map_err(|_| ConfigError::new(key, format!("{text:?} is not an IPv4 address")))
}

impl DhcpConfig {
    /// `Ok(None)` when DHCP is not configured at all (no `[dhcp]`, no
    /// interface flag): `bootfleet up` then runs without it.
    pub fn load(args: &DhcpArgs, core: &CoreConfig) -> Result<Option<Self>, ConfigError> {
        if core.file.dhcp.is_none() && args.interfaces.is_none() {
            return Ok(None);
        }
        let section: DhcpSection = service_section(core.file.dhcp.as_ref(), "dhcp")?;
        let mode = mode(&section)?;
        let interfaces = args.interfaces.clone().or(section.interfaces).unwrap_or_default();
        if interfaces.is_empty() || interfaces.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                "dhcp.interfaces",
                "name the interfaces to answer on; the responder never answers on every interface",
            ));
        }
        let server_ip = match (&args.server_ip, &section.server_ip) {
            (Some(v), _) => address(v, "--dhcp-server-ip / BOOTFLEET_DHCP_SERVER_IP")?,
            (None, Some(v)) => address(v, "dhcp.server_ip")?,
            (None, None) => {
                return Err(ConfigError::new("dhcp.server_ip", "required: our address on those interfaces"));
            }
        };
        let tftp_server = match &section.tftp_server {
            Some(v) => address(v, "dhcp.tftp_server")?,
            None => server_ip,
        };
        let url = |value: Option<String>, key: &str| -> Result<String, ConfigError> {
            let value = value.ok_or_else(|| ConfigError::new(key, "required"))?;
            check_url(&value, key)?;
            Ok(value)
        };
        let http_base = url(section.http_base, "dhcp.http_base")?;
        let rules_url = url(section.rules_url, "dhcp.rules_url")?;
        let service_token = match (&args.service_token_file, &section.service_token_file) {
            (Some(file), _) => Some(bootfleet_core::config::token_file(
                file,
                "--dhcp-service-token-file / BOOTFLEET_DHCP_SERVICE_TOKEN_FILE",
            )?),
            (None, Some(file)) => Some(bootfleet_core::config::token_file(file, "dhcp.service_token_file")?),
            (None, None) => None,
        };
        let loaders = Loaders {
            bios: section.loaders.bios.or_else(|| Some("undionly.kpxe".into())),
            efi_x64: section.loaders.efi_x64.or_else(|| Some("ipxe.efi".into())),
            efi_ia32: section.loaders.efi_ia32,
            efi_arm64: section.loaders.efi_arm64,
        };
        let rate = section.requests_per_mac_per_second.unwrap_or(10);
        if rate == 0 {
            return Err(ConfigError::new("dhcp.requests_per_mac_per_second", "must be at least 1"));
        }
        let rules_cache = match &section.rules_cache {
            Some(t) => parse_duration(t).map_err(|m| ConfigError::new("dhcp.rules_cache", m))?,
            None => Duration::from_secs(30),
        };
        if rules_cache > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "dhcp.rules_cache",
                "at most 1h: a rule change must reach every host",
            ));
        }
        let trusted_relays = trusted_relays(section.trusted_relays.as_deref().unwrap_or_default())?;
        Ok(Some(Self {
            mode,
            interfaces,
            server_ip,
            tftp_server,
            http_base,
            rules_url,
            service_token,
            boot_unknown: section.boot_unknown.unwrap_or(false),
            loaders,
            requests_per_mac_per_second: rate,
            router_advertisements: section.router_advertisements.unwrap_or(false),
            tftp_from_members: section.tftp_from_members.unwrap_or(false),
            streamers_from_members: section.streamers_from_members.unwrap_or(false),
            rules_cache,
            trusted_relays,
        }))
    }
}

/// `dhcp.trusted_relays`: addresses or subnets; none by default (relayed
/// requests dropped). Trusting every source would let any client pick any
/// pool by writing a giaddr, so `0.0.0.0/0` is refused.
fn trusted_relays(entries: &[String]) -> Result<TrustedRelays, ConfigError> {
    let mut subnets = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let key = format!("dhcp.trusted_relays[{i}]");
        let subnet = Subnet::parse(entry).map_err(|e| ConfigError::new(&key, e.to_string()))?;
        if subnet.prefix == 0 {
            return Err(ConfigError::new(
                key,
                "trusts every source, so any client could pick any pool by writing a giaddr: name the relays",
            ));
        }
        subnets.push(subnet);
    }
    Ok(TrustedRelays::new(subnets))
}

/// `dhcp.mode` (and `dhcp.ha`, which only full mode takes).
fn mode(section: &DhcpSection) -> Result<Mode, ConfigError> {
    match section.mode.as_deref().unwrap_or("proxy") {
        "proxy" => {
            if ha(section.ha.as_deref())? == Ha::LoadBalancing {
                return Err(ConfigError::new(
                    "dhcp.ha",
                    "\"load-balancing\" is for full mode: in proxy mode every replica answers every client already (it writes nothing, and a client takes the first answer)",
                ));
            }
            Ok(Mode::Proxy)
        }
        "full" => full_mode(section),
        other => Err(ConfigError::new("dhcp.mode", format!("{other:?}: expected proxy or full"))),
    }
}

/// `dhcp.ha`: `"hot-standby"` (the default) or `"load-balancing"`.
fn ha(value: Option<&str>) -> Result<Ha, ConfigError> {
    match value.unwrap_or("hot-standby") {
        "hot-standby" => Ok(Ha::HotStandby),
        "load-balancing" => Ok(Ha::LoadBalancing),
        other => Err(ConfigError::new(
            "dhcp.ha",
            format!("{other:?}: expected \"hot-standby\" or \"load-balancing\""),
        )),
    }
}

/// Default `dhcp.lease_reuse`: a quarter of the lease time (an hour's
/// lease is written at most every 15 minutes per client, and always when
/// the client renews at T1).
const DEFAULT_LEASE_REUSE: f64 = 0.25;

fn full_mode(section: &DhcpSection) -> Result<Mode, ConfigError> {
    if section.pools.is_empty() {
        return Err(ConfigError::new("dhcp.pools", "full mode needs at least one [[dhcp.pools]]"));
    }
    let mut pools = Vec::new();
    for (i, p) in section.pools.iter().enumerate() {
        let key = |field: &str| format!("dhcp.pools[{i}].{field}");
        let (network, prefix) = p
            .subnet
            .split_once('/')
            .and_then(|(a, l)| {
                Some((a.parse::<Ipv4Addr>().ok()?, l.parse::<u8>().ok().filter(|l| *l <= 32)?))
            })
            .ok_or_else(|| {
                ConfigError::new(key("subnet"), format!("{:?} is not a subnet like 198.18.40.0/24", p.subnet))
            })?;
        let lease_time = match &p.lease_time {
            Some(t) => parse_duration(t).map_err(|m| ConfigError::new(key("lease_time"), m))?,
            None => Duration::from_secs(3600),
        };
        if lease_time < Duration::from_secs(2) {
            return Err(ConfigError::new(key("lease_time"), "must be at least 2s"));
        }
        let pool = Pool {
            network,
            prefix,
            start: address(&p.start, &key("start"))?,
            end: address(&p.end, &key("end"))?,
            router: p.router.as_deref().map(|r| address(r, &key("router"))).transpose()?,
            dns: p.dns.iter().map(|d| address(d, &key("dns"))).collect::<Result<_, _>>()?,
            lease_time,
        };
        if pool.on_subnet(pool.network)
            && (!pool.on_subnet(pool.start) || !pool.on_subnet(pool.end) || pool.start > pool.end)
        {
            return Err(ConfigError::new(key("start"), "start and end must be on the subnet, start first"));
        }
        if u32::from(pool.network) & !(if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) })
            != 0
        {
            return Err(ConfigError::new(key("subnet"), "host bits set"));
        }
        pools.push(pool);
    }
    let mut pairs = Vec::new();
    for (i, r) in section.reservations.iter().enumerate() {
        let mac = bootfleet_rules_engine::facts::normalize_mac(&r.mac).map_err(|_| {
            ConfigError::new(format!("dhcp.reservations[{i}].mac"), format!("{:?} is not a MAC", r.mac))
        })?;
        pairs.push((mac, address(&r.ip, &format!("dhcp.reservations[{i}].ip"))?));
    }
    let reservations = Reservations::new(pairs)
        .map_err(|ip| ConfigError::new("dhcp.reservations", format!("{ip} is reserved for two MACs")))?;
    for (i, pool) in pools.iter().enumerate() {
        if let Some(other) = pools[..i].iter().position(|p| p.start <= pool.end && pool.start <= p.end) {
            return Err(ConfigError::new(
                format!("dhcp.pools[{i}]"),
                format!("its range overlaps dhcp.pools[{other}]'s: an address belongs to one pool"),
            ));
        }
    }
    let lease_reuse = section.lease_reuse.unwrap_or(DEFAULT_LEASE_REUSE);
    if !(0.0..=MAX_LEASE_REUSE).contains(&lease_reuse) {
        return Err(ConfigError::new(
            "dhcp.lease_reuse",
            format!("{lease_reuse} is not a fraction from 0 to {MAX_LEASE_REUSE} of the lease time"),
        ));
    }
    Ok(Mode::Full { pools, reservations, lease_reuse, ha: ha(section.ha.as_deref())? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ha_is_hot_standby_unless_load_balancing_is_asked_for_in_full_mode() {
        assert_eq!(ha(None).unwrap(), Ha::HotStandby);
        assert_eq!(ha(Some("hot-standby")).unwrap(), Ha::HotStandby);
        assert_eq!(ha(Some("load-balancing")).unwrap(), Ha::LoadBalancing);
        let error = ha(Some("active-active")).unwrap_err().to_string();
        assert!(error.contains("dhcp.ha") && error.contains("active-active"), "{error}");
        let section = |mode: &str, ha: &str| DhcpSection {
            mode: Some(mode.into()),
            ha: Some(ha.into()),
            pools: vec![PoolSection {
                subnet: "198.18.0.0/24".into(),
                start: "198.18.0.10".into(),
                end: "198.18.0.20".into(),
                router: None,
                dns: Vec::new(),
                lease_time: None,
            }],
            ..DhcpSection::default()
        };
        let Mode::Full { ha: chosen, .. } = mode(&section("full", "load-balancing")).unwrap() else {
            panic!("full mode")
        };
        assert_eq!(chosen, Ha::LoadBalancing);
        assert!(matches!(mode(&section("full", "hot-standby")), Ok(Mode::Full { ha: Ha::HotStandby, .. })));
        let error = mode(&section("proxy", "load-balancing")).unwrap_err().to_string();
        assert!(error.contains("dhcp.ha") && error.contains("full mode"), "{error}");
        assert!(matches!(mode(&section("proxy", "hot-standby")), Ok(Mode::Proxy)));
    }

    #[test]
    fn trusted_relays_are_addresses_or_subnets_and_never_everyone() {
        let entries = |list: &[&str]| list.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>();
        let trusted = trusted_relays(&entries(&["198.18.0.2", "198.18.70.0/24"])).unwrap();
        let relay = Ipv4Addr::new(198, 18, 61, 1);
        assert!(trusted.admits(relay, Ipv4Addr::new(198, 18, 70, 9).into()));
        assert!(!trusted.admits(relay, Ipv4Addr::new(198, 18, 0, 3).into()));
        assert!(trusted_relays(&[]).unwrap().is_empty(), "none by default");
        let error = trusted_relays(&entries(&["198.18.0.2", "relay-1"])).unwrap_err().to_string();
        assert!(error.contains("dhcp.trusted_relays[1]") && error.contains("relay-1"), "{error}");
        let error = trusted_relays(&entries(&["0.0.0.0/0"])).unwrap_err().to_string();
        assert!(error.contains("dhcp.trusted_relays[0]") && error.contains("any pool"), "{error}");
        assert!(trusted_relays(&entries(&["198.18.0.1/16"])).is_err(), "host bits set");
    }
}
