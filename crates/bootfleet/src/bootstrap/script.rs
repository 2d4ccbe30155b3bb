//! The iPXE script a bootstrap medium carries. Pure.
//!
//! It works with Debian 12's iPXE (a 2019 build, the BIOS loader) and
//! later ones: only `dhcp`, `ifopen`, `set`, `chain --timeout`, `goto`,
//! `echo` and `exit`. It gets an address, asks each server in order for
//! this host's boot script (the URL a machine's own iPXE would use, with
//! every fact iPXE knows and `source=bootstrap`), and when none answers,
//! exits with an error so the firmware boots its next device.
//!
//! A server's script that runs and returns (a `local` profile, or every
//! copy of a kernel failing) ends the medium's script as well when it
//! succeeded, and moves on to the next server when it failed.

use super::manifest::{Address, Medium};

/// The boot-script query: what `crates/image-streamer/src/query.rs`
/// accepts, each free-text fact URL-encoded by iPXE (`:uristring`), the
/// MAC of the NIC that got the address (`netX`).
const QUERY: &str = "mac=${netX/mac}&uuid=${uuid}&serial=${serial:uristring}\
&manufacturer=${manufacturer:uristring}&product=${product:uristring}\
&asset=${asset:uristring}&platform=${platform}&buildarch=${buildarch}&source=bootstrap";

/// The script for a medium; its second line is the medium's record.
pub(crate) fn render(medium: &Medium) -> String {
    let count = medium.servers.len();
    let mut out = String::new();
    out.push_str("#!ipxe\n");
    out.push_str(&medium.line());
    out.push('\n');
    out.push_str(
        "# Written by `bootfleet bootstrap`: get an address, ask each boot server in turn for\n\
         # this host's boot script, and exit (the firmware boots its next device) if none answers.\n",
    );
    out.push_str(&format!(
        "echo Bootfleet bootstrap medium built {}: {count} boot server{}\n",
        medium.built_at,
        if count == 1 { "" } else { "s" }
    ));
    match &medium.address {
        Address::Dhcp => out.push_str("dhcp || goto no-address\n"),
        Address::Static { ip, prefix, gateway, dns } => {
            out.push_str("ifopen net0 || goto no-address\n");
            out.push_str(&format!("set net0/ip {ip}\n"));
            out.push_str(&format!("set net0/netmask {}\n", netmask(*prefix)));
            if let Some(gateway) = gateway {
                out.push_str(&format!("set net0/gateway {gateway}\n"));
            }
            if let Some(dns) = dns {
                out.push_str(&format!("set dns {dns}\n"));
            }
        }
    }
    for (i, server) in medium.servers.iter().enumerate() {
        let next = if i + 1 == count { "none".to_owned() } else { format!("server-{}", i + 2) };
        out.push_str(&format!(":server-{}\n", i + 1));
        out.push_str(&format!("echo Bootfleet: asking {server} ({} of {count})\n", i + 1));
        out.push_str(&format!(
            "chain --autofree --timeout {} {server}/boot.ipxe?{QUERY} && exit 0 || goto {next}\n",
            medium.timeout_ms
        ));
    }
    out.push_str(":none\necho Bootfleet: no boot server answered; booting the next device\nexit 1\n");
    out.push_str(":no-address\necho Bootfleet: no address; booting the next device\nexit 1\n");
    out
}

/// `255.255.255.0` for 24.
fn netmask(prefix: u8) -> std::net::Ipv4Addr {
    let bits = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
    std::net::Ipv4Addr::from(bits)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::manifest::{Format, find, rfc3339};
    use super::*;

    fn medium(address: Address, servers: &[&str]) -> Medium {
        Medium {
            format: Format::Iso,
            firmware: vec!["bios".into()],
            built_at: rfc3339(1_796_400_000),
            built_at_unix: 1_796_400_000,
            servers_from: "flags".into(),
            servers: servers.iter().map(|s| (*s).to_owned()).collect(),
            timeout_ms: 4000,
            address,
        }
    }

    #[test]
    fn dhcp_script_tries_each_server_in_order_then_exits() {
        let m = medium(Address::Dhcp, &["http://198.18.0.1:8080", "http://198.18.0.2:8081"]);
        let script = render(&m);
        let expected = format!(
            "#!ipxe\n{}\n\
             # Written by `bootfleet bootstrap`: get an address, ask each boot server in turn for\n\
             # this host's boot script, and exit (the firmware boots its next device) if none answers.\n\
             echo Bootfleet bootstrap medium built 2026-12-04T16:00:00Z: 2 boot servers\n\
             dhcp || goto no-address\n\
             :server-1\n\
             echo Bootfleet: asking http://198.18.0.1:8080 (1 of 2)\n\
             chain --autofree --timeout 4000 http://198.18.0.1:8080/boot.ipxe?{QUERY} && exit 0 || goto server-2\n\
             :server-2\n\
             echo Bootfleet: asking http://198.18.0.2:8081 (2 of 2)\n\
             chain --autofree --timeout 4000 http://198.18.0.2:8081/boot.ipxe?{QUERY} && exit 0 || goto none\n\
             :none\n\
             echo Bootfleet: no boot server answered; booting the next device\n\
             exit 1\n\
             :no-address\n\
             echo Bootfleet: no address; booting the next device\n\
             exit 1\n",
            m.line()
        );
        assert_eq!(script, expected);
        // The record read back from the script is the medium.
        assert_eq!(find(script.as_bytes()), Ok(m));
    }

    #[test]
    fn the_query_is_one_the_streamer_accepts() {
        // As iPXE would expand it (uristring leaves these characters be).
        let query = QUERY
            .replace("${netX/mac}", "52:54:00:00:00:01")
            .replace("${uuid}", "6c1a7d52-0000-0000-0000-000000000000")
            .replace("${serial:uristring}", "S1")
            .replace("${manufacturer:uristring}", "QEMU")
            .replace("${product:uristring}", "Standard%20PC")
            .replace("${asset:uristring}", "")
            .replace("${platform}", "pcbios")
            .replace("${buildarch}", "i386");
        let facts = bootfleet_image_streamer::query::facts_from_query(&query, None).unwrap();
        assert_eq!(facts.mac, "52:54:00:00:00:01");
        assert_eq!(facts.arch, "bios");
        assert_eq!(bootfleet_image_streamer::query::boot_source(&query), "bootstrap");
    }

    #[test]
    fn static_address_is_set_on_the_first_nic() {
        let address = Address::Static {
            ip: Ipv4Addr::new(198, 18, 73, 50),
            prefix: 20,
            gateway: Some(Ipv4Addr::new(198, 18, 73, 1)),
            dns: Some(Ipv4Addr::new(198, 18, 73, 2)),
        };
        let script = render(&medium(address, &["http://198.18.73.1:8080"]));
        assert!(
            script.contains(
                "ifopen net0 || goto no-address\nset net0/ip 198.18.73.50\nset net0/netmask 255.255.240.0\n\
                 set net0/gateway 198.18.73.1\nset dns 198.18.73.2\n:server-1\n"
            ),
            "{script}"
        );
        assert!(!script.contains("dhcp"), "{script}");
        assert!(
            script.contains("echo Bootfleet bootstrap medium built 2026-12-04T16:00:00Z: 1 boot server\n")
        );
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(netmask(8), Ipv4Addr::new(255, 0, 0, 0));
        assert_eq!(netmask(31), Ipv4Addr::new(255, 255, 255, 254));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
    }
}
