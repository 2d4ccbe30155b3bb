//! Query strings of boot-script and report requests, checked. Pure.
//!
//! iPXE fills the boot-script URL from its settings, e.g.
//! `/boot.ipxe?mac=${net0/mac}&uuid=${uuid}&serial=${serial}&manufacturer=${manufacturer}&product=${product}&platform=${platform}&buildarch=${buildarch}`.
//! Unset settings arrive empty and are ignored.

use bootfleet_proto::v1::HostFacts;
use bootfleet_rules_engine::facts::{Facts, format_mac, parse_mac};
use percent_encoding::percent_decode_str;

/// Longest value accepted for one parameter.
const MAX_VALUE: usize = 256;

/// Splits and percent-decodes `a=b&c=d` (`+` is a space); errors name the
/// bad parameter.
pub fn parse_pairs(query: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_decode_str(&s.replace('+', " "))
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| format!("parameter {k:?} is not UTF-8 after percent-decoding"))
        };
        let (k, v) = (decode(k)?, decode(v)?);
        if v.len() > MAX_VALUE {
            return Err(format!("parameter {k:?} is longer than {MAX_VALUE} bytes"));
        }
        if v.chars().any(char::is_control) {
            return Err(format!("parameter {k:?} contains control characters"));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// Architecture name from iPXE's `platform` and `buildarch` settings, in the
/// rules engine's vocabulary (the DHCP responder's option-93 names).
fn arch_of(platform: &str, buildarch: &str) -> Option<&'static str> {
    Some(match (platform, buildarch) {
        ("pcbios", _) => "bios",
        ("efi", "x86_64") => "efi-x64",
        ("efi", "i386") => "efi-ia32",
        ("efi", "arm64") => "efi-arm64",
        ("efi", "arm32") => "efi-arm32",
        _ => return None,
    })
}

/// Host facts from a boot-script query (`mac` required).
pub fn facts_from_query(query: &str, client_ip: Option<&str>) -> Result<Facts, String> {
    let mut facts = HostFacts::default();
    let (mut platform, mut buildarch) = (String::new(), String::new());
    for (key, value) in parse_pairs(query)? {
        let value = value.trim().to_owned();
        match key.as_str() {
            "mac" => facts.mac = value,
            "uuid" => facts.uuid = value,
            "serial" => facts.serial = value,
            "asset" | "asset_tag" => facts.asset_tag = value,
            "manufacturer" | "vendor" => facts.vendor = value,
            "product" | "model" => facts.model = value,
            "arch" => facts.arch = value,
            "platform" => platform = value,
            "buildarch" => buildarch = value,
            "hostname" => facts.hostname = value,
            "domain" => facts.domain = value,
            // Not a fact: where the request came from (see `boot_source`).
            "source" => check_boot_source(&value)?,
            other => {
                if let Some(label) = other.strip_prefix("label.") {
                    facts.labels.insert(label.to_owned(), value);
                } else {
                    return Err(format!("unknown parameter {other:?}"));
                }
            }
        }
    }
    if facts.mac.is_empty() {
        return Err("parameter \"mac\" is required".into());
    }
    facts.mac = parse_mac(&facts.mac)
        .map(format_mac)
        .ok_or_else(|| format!("parameter \"mac\": {:?} is not a MAC address", facts.mac))?;
    if facts.arch.is_empty() {
        facts.arch = arch_of(&platform, &buildarch).unwrap_or_default().to_owned();
    }
    if let Some(ip) = client_ip {
        facts.ipv4 = ip.to_owned();
    }
    Facts::from_proto(&facts).map_err(|e| e.to_string())
}

/// Whether a boot-script query carries the facts iPXE knows of the host
/// (serial, manufacturer, product, asset tag, platform, labels, …) rather
/// than only what a DHCP server knows (its MAC). Malformed queries carry
/// nothing ([`facts_from_query`] refuses them).
pub fn carries_host_facts(query: &str) -> bool {
    const HOST_FACTS: [&str; 11] = [
        "serial",
        "asset",
        "asset_tag",
        "manufacturer",
        "vendor",
        "product",
        "model",
        "platform",
        "buildarch",
        "hostname",
        "domain",
    ];
    parse_pairs(query).is_ok_and(|pairs| {
        pairs.iter().any(|(k, _)| HOST_FACTS.contains(&k.as_str()) || k.starts_with("label."))
    })
}

/// What a boot-script request may say it came from: `bootstrap` from
/// bootstrap media (`bootfleet bootstrap`); nothing on the network boot
/// path.
const BOOT_SOURCES: [&str; 2] = ["", "bootstrap"];

fn check_boot_source(source: &str) -> Result<(), String> {
    if BOOT_SOURCES.contains(&source) {
        Ok(())
    } else {
        Err(format!("source {source:?} must be \"bootstrap\" or left out"))
    }
}

/// Where a boot-script request says the host started from (`bootstrap`,
/// or empty), kept as the `script` report's source so the host's boot
/// status says the boot came from bootstrap media and which replica it
/// reached. Only values [`facts_from_query`] accepts are returned.
pub fn boot_source(query: &str) -> String {
    parse_pairs(query)
        .ok()
        .and_then(|pairs| pairs.into_iter().find(|(k, _)| k == "source"))
        .map(|(_, v)| v)
        .filter(|v| check_boot_source(v).is_ok())
        .unwrap_or_default()
}

/// A boot report: MAC, stage and, for `booted`, where the OS came from.
#[derive(Debug, PartialEq, Eq)]
pub struct Report {
    /// Normalized MAC.
    pub mac: String,
    /// Stage name.
    pub stage: String,
    /// `network`, `disk` or empty.
    pub source: String,
}

fn check_stage(stage: &str) -> Result<(), String> {
    if stage.is_empty()
        || stage.len() > 32
        || !stage.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("stage {stage:?} must be 1-32 of A-Z a-z 0-9 - _"));
    }
    Ok(())
}

/// Builds a report from its parts, checking each.
pub fn report(mac: &str, stage: &str, source: &str) -> Result<Report, String> {
    let mac = parse_mac(mac).map(format_mac).ok_or_else(|| format!("mac {mac:?} is not a MAC address"))?;
    check_stage(stage)?;
    if !matches!(source, "" | "network" | "disk") {
        return Err(format!("source {source:?} must be \"network\" or \"disk\""));
    }
    Ok(Report { mac, stage: stage.to_owned(), source: source.to_owned() })
}

/// A report from `/report?mac=…&stage=…[&source=network|disk]`.
pub fn report_from_query(query: &str) -> Result<Report, String> {
    let (mut mac, mut stage, mut source) = (String::new(), String::new(), String::new());
    for (key, value) in parse_pairs(query)? {
        match key.as_str() {
            "mac" => mac = value,
            "stage" => stage = value,
            "source" => source = value,
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    if mac.is_empty() || stage.is_empty() {
        return Err("parameters \"mac\" and \"stage\" are required".into());
    }
    report(&mac, &stage, &source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bootstrap_medium_says_where_the_request_came_from() {
        let query = "mac=52:54:00:00:00:01&platform=pcbios&source=bootstrap";
        assert_eq!(facts_from_query(query, None).unwrap().mac, "52:54:00:00:00:01");
        assert_eq!(boot_source(query), "bootstrap");
        assert_eq!(boot_source("mac=52:54:00:00:00:01"), "");
        let err = facts_from_query("mac=52:54:00:00:00:01&source=usb", None).unwrap_err();
        assert!(err.contains("source"), "{err}");
        assert_eq!(boot_source("mac=52:54:00:00:00:01&source=usb"), "");
    }

    #[test]
    fn ipxe_query_becomes_facts() {
        let f = facts_from_query(
            "mac=52%3A54%3A00%3Aab%3Acd%3AEF&uuid=&serial=S1&manufacturer=QEMU&product=Standard+PC&platform=efi&buildarch=x86_64&label.role=web",
            Some("198.18.0.9"),
        )
        .unwrap();
        assert_eq!(f.mac, "52:54:00:ab:cd:ef");
        assert_eq!(f.serial, "S1");
        assert_eq!(f.arch, "efi-x64");
        assert_eq!(f.to_proto().model, "Standard PC");
        assert_eq!(f.to_proto().ipv4, "198.18.0.9");
        assert_eq!(f.to_proto().labels.get("role").map(String::as_str), Some("web"));
    }

    #[test]
    fn bad_queries_name_the_reason() {
        for (q, why) in [
            ("", "\"mac\" is required"),
            ("mac=zz", "not a MAC"),
            ("mac=52:54:00:00:00:01&color=red", "unknown parameter \"color\""),
            ("mac=52:54:00:00:00:01&serial=%FF", "not UTF-8"),
            ("mac=52:54:00:00:00:01&serial=a%0Ab", "control characters"),
        ] {
            let e = facts_from_query(q, None).unwrap_err();
            assert!(e.contains(why), "{q}: {e}");
        }
        let long = format!("mac=52:54:00:00:00:01&serial={}", "x".repeat(300));
        assert!(facts_from_query(&long, None).unwrap_err().contains("longer"));
    }

    #[test]
    fn reports_are_checked() {
        assert_eq!(
            report_from_query("mac=52-54-00-00-00-01&stage=booted&source=disk").unwrap(),
            Report { mac: "52:54:00:00:00:01".into(), stage: "booted".into(), source: "disk".into() }
        );
        assert!(report_from_query("mac=52:54:00:00:00:01").is_err());
        assert!(report("52:54:00:00:00:01", "a b", "").is_err());
        assert!(report("52:54:00:00:00:01", "booted", "floppy").is_err());
    }
}
