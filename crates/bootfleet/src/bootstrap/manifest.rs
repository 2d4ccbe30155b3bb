//! What a bootstrap medium records about itself: the boot servers it
//! tries, in order, how it gets an address, and when it was made. Pure.
//!
//! The record travels inside the medium's iPXE script as one comment line,
//! `# bootfleet-medium v1 {json}`, so there is one copy of the truth: the
//! script the loader runs. Media store that script uncompressed (an ISO
//! 9660 file, a FAT file of a few hundred bytes), so `bootfleet bootstrap
//! inspect` finds the line by scanning the image's bytes, with no
//! filesystem code and for every kind of medium alike.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Starts the manifest line in the script.
pub(crate) const MAGIC: &str = "# bootfleet-medium v1 ";

/// How the medium's iPXE gets an address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub(crate) enum Address {
    /// From the site's DHCP server (which needs no boot options).
    Dhcp,
    /// Fixed when the medium was built, on the first NIC (net0).
    Static {
        /// The address.
        ip: Ipv4Addr,
        /// Prefix length of its subnet.
        prefix: u8,
        /// Default gateway, when the servers are on another subnet.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gateway: Option<Ipv4Addr>,
        /// DNS server, when a server URL names a host.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dns: Option<Ipv4Addr>,
    },
}

impl Address {
    /// `dhcp` or `198.18.0.5/24 via 198.18.0.1, dns 198.18.0.1`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Dhcp => "dhcp".to_owned(),
            Self::Static { ip, prefix, gateway, dns } => {
                let mut text = format!("static {ip}/{prefix}");
                if let Some(gateway) = gateway {
                    text.push_str(&format!(" via {gateway}"));
                }
                if let Some(dns) = dns {
                    text.push_str(&format!(", dns {dns}"));
                }
                text
            }
        }
    }
}

/// The kinds of media `bootfleet bootstrap` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Format {
    /// Hybrid ISO: BIOS (isolinux → ipxe.lkrn) and UEFI (El Torito EFI
    /// image), from a CD or `dd`ed to a USB stick.
    Iso,
    /// Raw disk image: an MBR with one EFI system partition.
    Disk,
    /// The EFI binary with its script beside it, for an existing ESP.
    Efi,
}

impl Format {
    /// The word used on the command line and in the manifest.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Iso => "iso",
            Self::Disk => "disk",
            Self::Efi => "efi",
        }
    }
}

/// A medium's record of itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Medium {
    /// What was written.
    pub(crate) format: Format,
    /// Firmware the medium boots under: `bios`, `uefi`.
    pub(crate) firmware: Vec<String>,
    /// When it was built, RFC 3339 UTC.
    pub(crate) built_at: String,
    /// The same, seconds since the epoch.
    pub(crate) built_at_unix: u64,
    /// Where the list came from: `flags`, `dns:NAME`, `auto` (live
    /// streamer replicas).
    pub(crate) servers_from: String,
    /// Boot servers (image streamer base URLs), tried in this order.
    pub(crate) servers: Vec<String>,
    /// How long each server has to send its boot script, in milliseconds.
    pub(crate) timeout_ms: u64,
    /// How the medium gets an address.
    pub(crate) address: Address,
}

impl Medium {
    /// The manifest line (no newline).
    pub(crate) fn line(&self) -> String {
        // Serializing plain strings, numbers and enums cannot fail.
        format!("{MAGIC}{}", serde_json::to_string(self).unwrap_or_default())
    }
}

/// Why no manifest could be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ManifestError {
    /// No manifest line in the bytes.
    #[error("no bootfleet-medium record in it: not a medium bootfleet bootstrap made")]
    Missing,
    /// A manifest line that does not parse.
    #[error("its bootfleet-medium record is damaged: {0}")]
    Damaged(String),
    /// Two different records (one per loader) disagree.
    #[error("it carries two different bootfleet-medium records (one was changed after it was built)")]
    Inconsistent,
}

/// Finds the manifest in a medium's bytes; every copy (one per loader)
/// must agree.
pub(crate) fn find(bytes: &[u8]) -> Result<Medium, ManifestError> {
    let magic = MAGIC.as_bytes();
    let mut found: Option<Medium> = None;
    let mut at = 0;
    while let Some(offset) = bytes[at..].windows(magic.len()).position(|w| w == magic) {
        let start = at + offset + magic.len();
        let end = bytes[start..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |n| start + n);
        let text =
            std::str::from_utf8(&bytes[start..end]).map_err(|e| ManifestError::Damaged(e.to_string()))?;
        let medium: Medium = serde_json::from_str(text).map_err(|e| ManifestError::Damaged(e.to_string()))?;
        match &found {
            Some(first) if *first != medium => return Err(ManifestError::Inconsistent),
            Some(_) => {}
            None => found = Some(medium),
        }
        at = end;
    }
    found.ok_or(ManifestError::Missing)
}

/// `2026-12-04T16:30:05Z` for seconds since the epoch (UTC, proleptic
/// Gregorian; Howard Hinnant's days-to-civil algorithm).
pub(crate) fn rfc3339(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).unwrap_or(i64::MAX);
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Medium {
        Medium {
            format: Format::Iso,
            firmware: vec!["bios".into(), "uefi".into()],
            built_at: rfc3339(1_796_400_000),
            built_at_unix: 1_796_400_000,
            servers_from: "flags".into(),
            servers: vec!["http://198.18.0.1:8080".into(), "http://198.18.0.2:8080".into()],
            timeout_ms: 5000,
            address: Address::Dhcp,
        }
    }

    #[test]
    fn dates_are_utc_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_400_000), "2026-12-04T16:00:00Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn the_record_is_found_among_other_bytes() {
        let medium = sample();
        let mut bytes = vec![0u8; 3000];
        bytes.extend_from_slice(b"#!ipxe\n");
        bytes.extend_from_slice(medium.line().as_bytes());
        bytes.extend_from_slice(b"\necho hi\n");
        bytes.extend_from_slice(&[0xff; 100]);
        // The second loader's copy.
        bytes.extend_from_slice(medium.line().as_bytes());
        bytes.push(b'\n');
        assert_eq!(find(&bytes), Ok(medium));
    }

    #[test]
    fn missing_damaged_and_disagreeing_records_are_errors() {
        assert_eq!(find(b"#!ipxe\necho nothing here\n"), Err(ManifestError::Missing));
        let damaged = format!("{MAGIC}{{\"format\":\"iso\"\n");
        assert!(matches!(find(damaged.as_bytes()), Err(ManifestError::Damaged(_))));
        let mut other = sample();
        other.servers.pop();
        let both = format!("{}\n{}\n", sample().line(), other.line());
        assert_eq!(find(both.as_bytes()), Err(ManifestError::Inconsistent));
    }

    #[test]
    fn static_addresses_describe_themselves() {
        let address = Address::Static {
            ip: Ipv4Addr::new(198, 18, 0, 5),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(198, 18, 0, 1)),
            dns: None,
        };
        assert_eq!(address.describe(), "static 198.18.0.5/24 via 198.18.0.1");
        let mut medium = sample();
        medium.address = address;
        assert_eq!(find(medium.line().as_bytes()), Ok(medium));
    }
}
