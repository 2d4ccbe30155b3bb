//! `bootfleet bootstrap …`: bootable media that need no PXE, no TFTP and
//! no DHCP boot options (issue 16). Each carries iPXE and a script that
//! gets an address, asks each listed boot server in turn for the host's
//! boot script, and exits so the firmware boots its next device when none
//! answers. `inspect` prints what a medium carries.
//!
//! Modules: `manifest` (the record a medium keeps of itself), `script`
//! (the iPXE script), `servers` (the list: flags, DNS, or the live
//! streamers), `layout` (where files go, the partition table), all pure;
//! `write` runs the image tools.

mod layout;
mod manifest;
mod script;
mod servers;
mod write;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bootfleet_proto::v1 as pb;
use manifest::{Address, Format, Medium};
use servers::ServerSpec;

use crate::cli::{self, ClientArgs, Output};

/// Default per-server wait for a boot script.
const DEFAULT_TIMEOUT: &str = "5s";
/// Debian's iPXE loaders.
const DEFAULT_LKRN: &str = "/usr/lib/ipxe/ipxe.lkrn";
const DEFAULT_EFI: &str = "/usr/lib/ipxe/ipxe.efi";
/// The output cannot be created; sysexits' `EX_CANTCREAT`.
const EXIT_CANT_CREATE: i32 = 73;

/// Bootstrap media: build them, or inspect one.
#[derive(clap::Args)]
pub(crate) struct BootstrapCommand {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Write a hybrid ISO: boots under BIOS (isolinux, ipxe.lkrn with the
    /// script as its initrd) and UEFI (\EFI\BOOT\BOOTX64.EFI with
    /// autoexec.ipxe beside it), from a CD or written to a USB stick with dd.
    Iso(BuildArgs),
    /// Write a raw disk image with one EFI system partition (UEFI), for a
    /// VM template's disk or dd to a small partition.
    Disk(BuildArgs),
    /// Write the EFI loader alone, with its script beside it as
    /// autoexec.ipxe, to copy onto an existing EFI system partition.
    Efi(BuildArgs),
    /// Print the boot servers a medium lists, how it gets an address and
    /// when it was built.
    Inspect {
        /// The ISO, disk image, or EFI loader (its autoexec.ipxe is read).
        file: PathBuf,
    },
}

/// How a medium is built.
#[derive(clap::Args)]
struct BuildArgs {
    /// Where to write the medium (replaced whole once written).
    file: PathBuf,
    /// Boot servers, tried in order: image streamer URLs
    /// (http://HOST[:PORT], comma-separated or repeated); dns:NAME[:PORT]
    /// for every IPv4 address a round-robin name has now; or auto for the
    /// streamer replicas live in the store now (asked through
    /// --images-server).
    #[arg(long, required = true, value_name = "URL,…|dns:NAME[:PORT]|auto")]
    servers: Vec<String>,
    /// A static address for networks without DHCP (on the first NIC); DHCP
    /// otherwise.
    #[arg(long, value_name = "IP/PREFIX")]
    address: Option<String>,
    /// Default gateway, with --address.
    #[arg(long, requires = "address")]
    gateway: Option<Ipv4Addr>,
    /// DNS server, with --address (for server URLs naming hosts).
    #[arg(long, requires = "address")]
    dns: Option<Ipv4Addr>,
    /// How long each server has to send its boot script before the next
    /// one is asked.
    #[arg(long, default_value = DEFAULT_TIMEOUT, value_parser = parse_timeout)]
    timeout: Duration,
    /// Do not check that every server answers as an image streamer now.
    #[arg(long)]
    no_check: bool,
    /// iPXE for BIOS (iso), as a Linux kernel image.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_LKRN)]
    ipxe_lkrn: PathBuf,
    /// iPXE for UEFI; it must run autoexec.ipxe (iPXE 1.21.1 or later,
    /// e.g. Debian 13's; Debian 12's 2019 build does not).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_EFI)]
    ipxe_efi: PathBuf,
    /// iso: BIOS only (no UEFI loader needed).
    #[arg(long)]
    bios_only: bool,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = bootfleet_core::config::parse_duration(text)?;
    if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(600) {
        return Err("between 100ms and 10m".into());
    }
    Ok(timeout)
}

/// Why a medium could not be built or read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BootstrapError {
    /// No server to list.
    #[error("empty server list: {0}")]
    EmptyList(String),
    /// A `--servers` value that is not usable.
    #[error("--servers {value:?}: {reason}")]
    BadServer {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A static address that does not make sense.
    #[error("--address {value:?}: {reason}")]
    BadAddress {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A listed server does not answer as an image streamer.
    #[error(
        "boot server {url} is unreachable: {cause} (start it, drop it from --servers, or pass --no-check)"
    )]
    Unreachable {
        /// The server.
        url: String,
        /// Why.
        cause: String,
    },
    /// The output cannot be written.
    #[error("cannot write {}", path.display())]
    Unwritable {
        /// The output.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An iPXE loader cannot be read.
    #[error("cannot read the iPXE loader {}", path.display())]
    Loader {
        /// The loader.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The EFI loader would ignore the script.
    #[error(
        "{} does not run autoexec.ipxe (iPXE before 1.21.1, such as Debian 12's 2019 build), so under \
         UEFI it would never see the server list: pass --ipxe-efi with a later iPXE (Debian 13's \
         ipxe package), or --bios-only for an ISO",
        path.display()
    )]
    LoaderIgnoresScript {
        /// The loader.
        path: PathBuf,
    },
    /// A tool the build needs is not installed.
    #[error("{tool} is missing: install the Debian package {package}")]
    MissingTool {
        /// The program or file.
        tool: String,
        /// Its Debian package.
        package: &'static str,
    },
    /// A tool failed.
    #[error("{tool} failed: {detail}")]
    Tool {
        /// The program.
        tool: String,
        /// Its status and error output.
        detail: String,
    },
    /// `inspect` found no readable record.
    #[error("{}", path.display())]
    NotAMedium {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        source: manifest::ManifestError,
    },
    /// `inspect` could not read the file.
    #[error("cannot read {}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl BootstrapError {
    fn exit_code(&self) -> i32 {
        match self {
            Self::EmptyList(_) | Self::BadServer { .. } | Self::BadAddress { .. } => cli::EXIT_USAGE,
            Self::Unreachable { .. } => cli::EXIT_UNREACHABLE,
            Self::Unwritable { .. } => EXIT_CANT_CREATE,
            Self::Loader { .. } | Self::LoaderIgnoresScript { .. } | Self::NotAMedium { .. } => {
                cli::EXIT_INVALID
            }
            Self::Unreadable { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                cli::EXIT_NOT_FOUND
            }
            Self::Unreadable { .. } => cli::EXIT_INVALID,
            Self::MissingTool { .. } | Self::Tool { .. } => cli::EXIT_ERROR,
        }
    }
}

/// Runs a bootstrap command; prints errors; returns the exit status.
pub(crate) fn main(command: BootstrapCommand, client: &ClientArgs) -> i32 {
    let result = match command.action {
        Action::Iso(args) => build(Format::Iso, args, client),
        Action::Disk(args) => build(Format::Disk, args, client),
        Action::Efi(args) => build(Format::Efi, args, client),
        Action::Inspect { file } => inspect(&file, client.output),
    };
    match result {
        Ok(()) => cli::EXIT_OK,
        Err(e) => {
            let code = e
                .chain()
                .find_map(|cause| cause.downcast_ref::<BootstrapError>().map(BootstrapError::exit_code))
                .unwrap_or_else(|| cli::exit_code(&e));
            if !e.is::<cli::StdoutClosed>() {
                eprintln!("Error: {e:#}");
            }
            code
        }
    }
}

/// A static address from `IP/PREFIX` and its gateway.
fn static_address(
    text: &str,
    gateway: Option<Ipv4Addr>,
    dns: Option<Ipv4Addr>,
) -> Result<Address, BootstrapError> {
    let bad = |reason: &str| BootstrapError::BadAddress { value: text.to_owned(), reason: reason.to_owned() };
    let (ip, prefix) = text.split_once('/').ok_or_else(|| bad("give IP/PREFIX, e.g. 198.18.0.5/24"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad("not an IPv4 address"))?;
    let prefix: u8 =
        prefix.parse().ok().filter(|p| (1..=32).contains(p)).ok_or_else(|| bad("prefix 1-32"))?;
    let mask = u32::MAX << (32 - u32::from(prefix));
    if prefix < 31 {
        let host = u32::from(ip) & !mask;
        if host == 0 || host == !mask {
            return Err(bad("that is the subnet's network or broadcast address"));
        }
    }
    if let Some(gateway) = gateway
        && (u32::from(gateway) & mask != u32::from(ip) & mask || gateway == ip)
    {
        return Err(bad(&format!("the gateway {gateway} is not another address in its subnet")));
    }
    Ok(Address::Static { ip, prefix, gateway, dns })
}

/// The live streamer replicas, as the streamer asked through
/// `--images-server` sees them in the store: every replica appears in
/// its replication status, one row per catalog version.
async fn live_streamers(client: &ClientArgs) -> anyhow::Result<Vec<String>> {
    let mut images = client.connect_images().await?;
    let status = images.status(pb::StatusRequest {}).await.map_err(cli::explain)?.into_inner();
    let mut replicas: Vec<(String, String)> =
        status.states.into_iter().map(|s| (s.member_id, s.http_url)).collect();
    replicas.sort();
    replicas.dedup();
    if replicas.is_empty() {
        return Err(BootstrapError::EmptyList(
            "--servers auto: the image streamer lists no replica (they appear once the catalog holds a \
             version: push an image first)"
                .into(),
        )
        .into());
    }
    let urls = replicas
        .iter()
        .map(|(id, url)| {
            servers::normalize_url(url)
                .map_err(|e| anyhow::anyhow!("--servers auto: replica {id} publishes an unusable URL: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(urls)
}

fn build(format: Format, args: BuildArgs, client: &ClientArgs) -> anyhow::Result<()> {
    let spec = servers::parse(&args.servers)?;
    let address = match &args.address {
        Some(text) => static_address(text, args.gateway, args.dns)?,
        None => Address::Dhcp,
    };
    // The EFI loader is checked before anything slower happens.
    let efi = match (format, args.bios_only) {
        (Format::Iso, true) => None,
        _ => Some(write::check_efi_loader(&args.ipxe_efi)?),
    };
    if args.bios_only && format != Format::Iso {
        return Err(cli::UsageError("--bios-only is for iso".into()).into());
    }
    let list = match &spec {
        ServerSpec::Urls(urls) => urls.clone(),
        ServerSpec::Dns { name, port } => servers::resolve(name, *port)?,
        ServerSpec::Auto => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(live_streamers(client))?
        }
    };
    if !args.no_check {
        for url in &list {
            servers::check(url)?;
        }
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let firmware = match (format, efi.is_some()) {
        (Format::Iso, true) => vec!["bios", "uefi"],
        (Format::Iso, false) => vec!["bios"],
        _ => vec!["uefi"],
    };
    let medium = Medium {
        format,
        firmware: firmware.into_iter().map(str::to_owned).collect(),
        built_at: manifest::rfc3339(now),
        built_at_unix: now,
        servers_from: spec.origin(),
        servers: list,
        timeout_ms: u64::try_from(args.timeout.as_millis()).unwrap_or(u64::MAX),
        address,
    };
    let text = script::render(&medium);
    match format {
        Format::Iso => write::iso(&args.file, &text, &args.ipxe_lkrn, efi.as_deref())?,
        Format::Disk => write::disk(&args.file, &text, efi.as_deref().unwrap_or_default())?,
        Format::Efi => write::efi(&args.file, &text, efi.as_deref().unwrap_or_default())?,
    }
    let sentence = format!(
        "wrote {} ({} for {}): {} boot server{} from {}",
        args.file.display(),
        format.as_str(),
        medium.firmware.join(" and "),
        medium.servers.len(),
        if medium.servers.len() == 1 { "" } else { "s" },
        medium.servers_from
    );
    cli::report(client.output, &sentence, &serde_json::json!({"file": args.file, "medium": medium}))?;
    if client.output == Output::Table {
        print_servers(&medium);
    }
    Ok(())
}

fn print_servers(medium: &Medium) {
    let rows: Vec<Vec<String>> =
        medium.servers.iter().enumerate().map(|(i, url)| vec![(i + 1).to_string(), url.clone()]).collect();
    cli::print_table(&["ORDER", "SERVER"], &rows);
}

fn inspect(file: &std::path::Path, output: Output) -> anyhow::Result<()> {
    // An EFI loader's record is in the script beside it.
    let is_efi = file.extension().is_some_and(|e| e.eq_ignore_ascii_case("efi"));
    let read = if is_efi { write::script_beside(file) } else { file.to_owned() };
    let bytes =
        std::fs::read(&read).map_err(|source| BootstrapError::Unreadable { path: read.clone(), source })?;
    let medium =
        manifest::find(&bytes).map_err(|source| BootstrapError::NotAMedium { path: read, source })?;
    match output {
        Output::Json | Output::Yaml => {
            cli::print_structured(output, &serde_json::json!({"file": file, "medium": medium}))
        }
        Output::Table => {
            cli::say(&format!(
                "{}: {} medium for {}",
                file.display(),
                medium.format.as_str(),
                medium.firmware.join(" and ")
            ));
            cli::say(&format!("built:    {} ({})", medium.built_at, medium.built_at_unix));
            cli::say(&format!("address:  {}", medium.address.describe()));
            cli::say(&format!("timeout:  {} ms per server", medium.timeout_ms));
            cli::say(&format!("servers:  {} from {}", medium.servers.len(), medium.servers_from));
            print_servers(&medium);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_addresses_are_checked() {
        let gw = Some(Ipv4Addr::new(198, 18, 73, 1));
        assert_eq!(
            static_address("198.18.73.50/24", gw, None).unwrap(),
            Address::Static { ip: Ipv4Addr::new(198, 18, 73, 50), prefix: 24, gateway: gw, dns: None }
        );
        assert!(static_address("198.18.73.50/32", None, None).is_ok());
        let cases = [
            ("198.18.73.50", None, "IP/PREFIX"),
            ("198.18.73/24", None, "not an IPv4 address"),
            ("198.18.73.50/33", None, "prefix 1-32"),
            ("198.18.73.0/24", None, "network or broadcast"),
            ("198.18.73.255/24", None, "network or broadcast"),
            ("198.18.73.50/24", Some(Ipv4Addr::new(198, 18, 74, 1)), "not another address in its subnet"),
            ("198.18.73.50/24", Some(Ipv4Addr::new(198, 18, 73, 50)), "not another address in its subnet"),
        ];
        for (text, gateway, needle) in cases {
            let err = static_address(text, gateway, None).unwrap_err();
            assert!(err.to_string().contains(needle), "{text}: {err}");
            assert!(err.to_string().contains(text), "names the value: {err}");
            assert_eq!(err.exit_code(), cli::EXIT_USAGE);
        }
    }

    #[test]
    fn timeouts_are_bounded() {
        assert_eq!(parse_timeout("5s"), Ok(Duration::from_secs(5)));
        assert!(parse_timeout("10ms").is_err());
        assert!(parse_timeout("1h").is_err());
    }
}
