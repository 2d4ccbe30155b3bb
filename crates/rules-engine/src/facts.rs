//! Host facts, normalized once so that matching is cheap and predictable:
//! MACs lowercase colon-separated (and as a 48-bit number), UUIDs lowercase,
//! IPv4 addresses parsed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use bootfleet_proto::v1::HostFacts;

use crate::error::RulesError;

/// A fact a condition can test.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// MAC address.
    Mac,
    /// Client UUID.
    Uuid,
    /// Serial number.
    Serial,
    /// Asset tag.
    AssetTag,
    /// Manufacturer.
    Vendor,
    /// Product name.
    Model,
    /// Firmware architecture.
    Arch,
    /// Host IPv4 address.
    Ipv4,
    /// Relay (giaddr) address.
    Relay,
    /// Host name.
    Hostname,
    /// Domain.
    Domain,
    /// DHCP option 82's circuit id (the switch port), from a trusted relay.
    CircuitId,
    /// DHCP option 82's remote id (the relay agent), from a trusted relay.
    RemoteId,
    /// A free-form label.
    Label(String),
}

impl Field {
    /// Parses a field name as written in rules ("mac", "label.rack", …).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "mac" => Self::Mac,
            "uuid" => Self::Uuid,
            "serial" => Self::Serial,
            "asset_tag" => Self::AssetTag,
            "vendor" => Self::Vendor,
            "model" => Self::Model,
            "arch" => Self::Arch,
            "ipv4" => Self::Ipv4,
            "relay" => Self::Relay,
            "hostname" => Self::Hostname,
            "domain" => Self::Domain,
            "circuit_id" => Self::CircuitId,
            "remote_id" => Self::RemoteId,
            other => {
                let key = other.strip_prefix("label.")?;
                if key.is_empty() {
                    return None;
                }
                Self::Label(key.to_owned())
            }
        })
    }

    /// Field names accepted by [`Field::parse`], for error messages.
    pub const NAMES: &'static str = "mac, uuid, serial, asset_tag, vendor, model, arch, ipv4, relay, hostname, domain, circuit_id, remote_id, \
         label.<key>";

    /// Whether a DHCP server knows this field when a machine first asks
    /// (MAC, client UUID, architecture, address, relay); the rest —
    /// serial, asset tag, manufacturer, product, host name, domain and
    /// labels — reach Bootfleet only with iPXE's request for its script.
    pub fn known_to_dhcp(&self) -> bool {
        matches!(
            self,
            Self::Mac | Self::Uuid | Self::Arch | Self::Ipv4 | Self::Relay | Self::CircuitId | Self::RemoteId
        )
    }

    /// Whether values of this field are IPv4 addresses.
    pub fn is_address(&self) -> bool {
        matches!(self, Self::Ipv4 | Self::Relay)
    }
}

/// Facts ready for matching.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// Normalized MAC ("52:54:00:12:34:56").
    pub mac: String,
    /// The MAC as a number, for ranges.
    pub mac_value: u64,
    /// Lowercase UUID.
    pub uuid: String,
    /// Serial number.
    pub serial: String,
    /// Asset tag.
    pub asset_tag: String,
    /// Manufacturer.
    pub vendor: String,
    /// Product.
    pub model: String,
    /// Architecture name.
    pub arch: String,
    /// IPv4 address as text ("" when unknown).
    pub ipv4: String,
    /// Parsed IPv4 address.
    pub ipv4_value: Option<u32>,
    /// Relay address as text.
    pub relay: String,
    /// Parsed relay address.
    pub relay_value: Option<u32>,
    /// Host name.
    pub hostname: String,
    /// Domain.
    pub domain: String,
    /// DHCP option 82 circuit id (trusted relays only).
    pub circuit_id: String,
    /// DHCP option 82 remote id (trusted relays only).
    pub remote_id: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// Parses a MAC in any common spelling (`:`/`-`/`.` separated or bare hex).
pub fn parse_mac(text: &str) -> Option<u64> {
    let hex: String = text.chars().filter(|c| !matches!(c, ':' | '-' | '.')).collect();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(&hex, 16).ok()
}

/// Formats a 48-bit MAC as lowercase colon-separated hex.
pub fn format_mac(value: u64) -> String {
    let b = value.to_be_bytes();
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[2], b[3], b[4], b[5], b[6], b[7])
}

/// Normalizes a MAC; the error names the bad input.
pub fn normalize_mac(text: &str) -> Result<String, RulesError> {
    parse_mac(text).map(format_mac).ok_or_else(|| {
        RulesError::invalid("facts.mac", format!("{text:?} is not a MAC address like 52:54:00:12:34:56"))
    })
}

fn parse_address(field: &str, text: &str) -> Result<Option<u32>, RulesError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<Ipv4Addr>()
        .map(|a| Some(u32::from(a)))
        .map_err(|_| RulesError::invalid(field, format!("{text:?} is not an IPv4 address")))
}

/// Largest facts accepted: they are kept in every history entry of the
/// host's record, so they must stay small.
pub const MAX_FACTS_BYTES: usize = 16 * 1024;

impl Facts {
    /// Validates and normalizes facts from the wire. The MAC is required:
    /// it keys the host record.
    pub fn from_proto(facts: &HostFacts) -> Result<Self, RulesError> {
        let size = prost::Message::encoded_len(facts);
        if size > MAX_FACTS_BYTES {
            return Err(RulesError::invalid(
                "facts",
                format!("{size} bytes; at most {MAX_FACTS_BYTES} (labels included)"),
            ));
        }
        let mac_value = parse_mac(&facts.mac).ok_or_else(|| {
            RulesError::invalid(
                "facts.mac",
                format!("{:?} is not a MAC address like 52:54:00:12:34:56", facts.mac),
            )
        })?;
        Ok(Self {
            mac: format_mac(mac_value),
            mac_value,
            uuid: facts.uuid.trim().to_ascii_lowercase(),
            serial: facts.serial.trim().to_owned(),
            asset_tag: facts.asset_tag.trim().to_owned(),
            vendor: facts.vendor.trim().to_owned(),
            model: facts.model.trim().to_owned(),
            arch: facts.arch.trim().to_ascii_lowercase(),
            ipv4: facts.ipv4.trim().to_owned(),
            ipv4_value: parse_address("facts.ipv4", facts.ipv4.trim())?,
            relay: facts.relay.trim().to_owned(),
            relay_value: parse_address("facts.relay", facts.relay.trim())?,
            hostname: facts.hostname.trim().to_owned(),
            domain: facts.domain.trim().to_owned(),
            circuit_id: facts.circuit_id.trim().to_owned(),
            remote_id: facts.remote_id.trim().to_owned(),
            labels: facts.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })
    }

    /// The normalized facts as a message, for host records.
    pub fn to_proto(&self) -> HostFacts {
        HostFacts {
            mac: self.mac.clone(),
            uuid: self.uuid.clone(),
            serial: self.serial.clone(),
            asset_tag: self.asset_tag.clone(),
            vendor: self.vendor.clone(),
            model: self.model.clone(),
            arch: self.arch.clone(),
            ipv4: self.ipv4.clone(),
            relay: self.relay.clone(),
            hostname: self.hostname.clone(),
            domain: self.domain.clone(),
            labels: self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            circuit_id: self.circuit_id.clone(),
            remote_id: self.remote_id.clone(),
        }
    }

    /// The value of a field; `None` when the host did not report it.
    pub fn get(&self, field: &Field) -> Option<&str> {
        let value = match field {
            Field::Mac => &self.mac,
            Field::Uuid => &self.uuid,
            Field::Serial => &self.serial,
            Field::AssetTag => &self.asset_tag,
            Field::Vendor => &self.vendor,
            Field::Model => &self.model,
            Field::Arch => &self.arch,
            Field::Ipv4 => &self.ipv4,
            Field::Relay => &self.relay,
            Field::Hostname => &self.hostname,
            Field::Domain => &self.domain,
            Field::CircuitId => &self.circuit_id,
            Field::RemoteId => &self.remote_id,
            Field::Label(key) => return self.labels.get(key).map(String::as_str),
        };
        (!value.is_empty()).then_some(value.as_str())
    }

    /// The parsed address of an address field.
    pub fn address(&self, field: &Field) -> Option<u32> {
        match field {
            Field::Ipv4 => self.ipv4_value,
            Field::Relay => self.relay_value,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_facts_are_refused_naming_the_field() {
        let mut facts = HostFacts { mac: "52:54:00:00:00:01".into(), ..HostFacts::default() };
        facts.labels.insert("note".into(), "x".repeat(MAX_FACTS_BYTES));
        let err = Facts::from_proto(&facts).unwrap_err().to_string();
        assert!(err.contains("facts") && err.contains("at most 16384"), "{err}");
        facts.labels.insert("note".into(), "x".repeat(100));
        assert!(Facts::from_proto(&facts).is_ok());
    }

    #[test]
    fn macs_normalize_from_any_spelling() {
        for text in ["52:54:00:AB:cd:01", "52-54-00-ab-cd-01", "5254.00ab.cd01", "525400abcd01"] {
            assert_eq!(normalize_mac(text).unwrap(), "52:54:00:ab:cd:01", "{text}");
        }
        for bad in ["", "52:54:00:ab:cd", "52:54:00:ab:cd:0g", "52:54:00:ab:cd:01:02"] {
            assert!(normalize_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn facts_require_a_mac_and_valid_addresses() {
        let mut facts = HostFacts { mac: "52:54:00:00:00:01".into(), ..Default::default() };
        assert!(Facts::from_proto(&facts).is_ok());
        facts.ipv4 = "300.1.1.1".into();
        let err = Facts::from_proto(&facts).unwrap_err();
        assert!(err.to_string().contains("facts.ipv4"), "{err}");
        facts.ipv4.clear();
        facts.mac.clear();
        assert!(Facts::from_proto(&facts).unwrap_err().to_string().contains("facts.mac"));
    }
}
