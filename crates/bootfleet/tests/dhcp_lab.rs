//! proxyDHCP in a network-namespace lab: `bootfleet up` (rules engine,
//! TFTP, DHCP) runs in one namespace, `bootfleet probe-dhcp` plays each
//! kind of boot client in another, across a veth pair in 198.18.0.0/15.
//! Nothing here touches the host's interfaces.

use std::process::Output;
use std::time::{Duration, Instant};

use bootfleet_test_support::netns::{Netns, link};

const BIN: &str = env!("CARGO_BIN_EXE_bootfleet");
const TOKEN: &str = "dhcp-lab-token-0123456789";

/// Kills and reaps the process when the test ends, however it ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_in(ns: &Netns, args: &[&str]) -> Output {
    ns.command(BIN).args(args).output().unwrap()
}

fn probe(client: &Netns, mac: &str, kind: &str) -> Option<serde_json::Value> {
    let out = run_in(
        client,
        &["probe-dhcp", "--interface", "bfdB-dA", "--mac", mac, "--kind", kind, "--timeout", "1.5", "--json"],
    );
    match out.status.code() {
        Some(0) => Some(serde_json::from_slice(&out.stdout).unwrap()),
        Some(2) => None,
        _ => panic!("probe failed: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

#[test]
fn proxy_dhcp_answers_each_boot_client_correctly() {
    let server = Netns::create("bfdA").unwrap();
    let client = Netns::create("bfdB").unwrap();
    link(&server, "198.18.30.1/24", &client, "198.18.30.2/24").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lab.toml");
    std::fs::create_dir(dir.path().join("tftp")).unwrap();
    std::fs::write(
        &config,
        format!(
            r#"
[store]
backend = "memory"
[admin]
listen = "127.0.0.1:9100"
[rules]
listen = "127.0.0.1:7070"
admin_token = "{TOKEN}"
[tftp]
listen = "198.18.30.1:69"
root = "{}"
[dhcp]
interfaces = ["bfdA-dB"]
server_ip = "198.18.30.1"
http_base = "http://198.18.30.1:8080"
rules_url = "http://127.0.0.1:7070"
"#,
            dir.path().join("tftp").display()
        ),
    )
    .unwrap();
    let _up = Reaped(server.spawn(BIN, &["up", "-c", config.to_str().unwrap(), "--log", "warn"]).unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health = server.run("curl", &["-s", "127.0.0.1:9100/healthz"]).unwrap_or_default();
        if health.starts_with("serving") && health.contains("dhcp: serving") {
            break;
        }
        assert!(Instant::now() < deadline, "bootfleet up never became healthy: {health}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let manifest = dir.path().join("rules.yaml");
    std::fs::write(
        &manifest,
        r#"
image_profiles:
  - { name: tiny, kernel: { kernel: tiny/1/vmlinuz, cmdline: "console=ttyS0" } }
  - { name: quiet, ignore: true }
rules:
  - { name: quiet-host, match: { mac: "52:54:00:00:30:02" }, image_profile: quiet }
  - { name: lab, match: { mac: "52:54:00:00:30:*" }, image_profile: tiny }
"#,
    )
    .unwrap();
    let server_url = "http://127.0.0.1:7070";
    let applied = run_in(
        &server,
        &["apply", "-f", manifest.to_str().unwrap(), "--activate", "--server", server_url, "--token", TOKEN],
    );
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out =
            run_in(&server, &["evaluate", "--mac", "52:54:00:00:30:01", "--dry-run", "--server", server_url]);
        if String::from_utf8_lossy(&out.stdout).contains("image=tiny") {
            break;
        }
        assert!(Instant::now() < deadline, "rules never became active");
        std::thread::sleep(Duration::from_millis(100));
    }

    let booted = "52:54:00:00:30:01";
    let answer = probe(&client, booted, "pxe-bios").expect("a PXE BIOS client is answered");
    assert_eq!(answer["file"], "undionly.kpxe");
    assert_eq!(answer["siaddr"], "198.18.30.1");
    assert_eq!(answer["yiaddr"], "0.0.0.0", "proxyDHCP offers no address");
    assert_eq!(answer["vendor_class"], "PXEClient");
    assert_eq!(answer["server_id"], "198.18.30.1");
    assert_eq!(probe(&client, booted, "pxe-efi").unwrap()["file"], "ipxe.efi");
    let http = probe(&client, booted, "http").unwrap();
    assert_eq!(
        (http["file"].as_str(), http["vendor_class"].as_str()),
        (Some("http://198.18.30.1:8080/loaders/ipxe.efi"), Some("HTTPClient"))
    );
    assert_eq!(
        probe(&client, booted, "ipxe").unwrap()["file"],
        "http://198.18.30.1:8080/boot.ipxe?mac=52:54:00:00:30:01"
    );
    // Through a relay: unicast to the relay, option 82 echoed.
    let out = run_in(
        &client,
        &[
            "probe-dhcp",
            "--interface",
            "bfdB-dA",
            "--mac",
            booted,
            "--relay",
            "198.18.30.2",
            "--server",
            "198.18.30.1",
            "--json",
        ],
    );
    assert!(out.status.success(), "relayed probe: {}", String::from_utf8_lossy(&out.stderr));
    let relayed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(relayed["from"], "198.18.30.1:67");
    assert_eq!(relayed["giaddr"], "198.18.30.2");
    assert_eq!(relayed["relay_info"], "010570726f6265");
    assert_eq!(relayed["file"], "undionly.kpxe");
    // Silence: a plain DHCP client, a host whose profile is ignore, a host no rule names.
    assert!(probe(&client, booted, "plain").is_none());
    assert!(probe(&client, "52:54:00:00:30:02", "pxe-bios").is_none());
    assert!(probe(&client, "00:11:22:33:44:55", "pxe-bios").is_none());
}
