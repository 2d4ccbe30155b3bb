//! DHCP in a network-namespace lab: `bootfleet up` (rules engine, TFTP,
//! DHCP) runs in one namespace; clients — `bootfleet probe-dhcp` playing
//! each kind of boot client, and busybox udhcpc — run in another, across a
//! veth pair in 198.18.0.0/15. Nothing here touches the host's interfaces.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

mod common;

use bootfleet_test_support::netns::{Netns, link};
use common::{dhcp_leader, wait_serving_in};

const BIN: &str = env!("CARGO_BIN_EXE_bootfleet");
const TOKEN: &str = "dhcp-lab-token-0123456789";
const RULES: &str = "http://127.0.0.1:7070";

/// Kills and reaps the process when the test ends, however it ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Server namespace running `bootfleet up`, client namespace, and the
/// client's interface name. Fields drop in order: process, then namespaces.
struct Lab {
    _up: Reaped,
    server: Netns,
    client: Netns,
    client_if: String,
    dir: tempfile::TempDir,
}

fn run_in(ns: &Netns, args: &[&str]) -> Output {
    ns.command(BIN).args(args).output().unwrap()
}

/// Starts a lab on 198.18.<octet>.0/24 (server .1, client .2) with the
/// given `[dhcp]` body and rules manifest, and waits until it serves.
fn start_lab(names: (&str, &str), octet: u8, dhcp: &str, manifest: &str) -> Lab {
    let server = Netns::create(names.0).unwrap();
    let client = Netns::create(names.1).unwrap();
    link(&server, &format!("198.18.{octet}.1/24"), &client, &format!("198.18.{octet}.2/24")).unwrap();
    let server_if = format!("{}-{}", names.0, &names.1[2..]);
    let client_if = format!("{}-{}", names.1, &names.0[2..]);
    let dir = tempfile::tempdir().unwrap();
    let config: PathBuf = dir.path().join("lab.toml");
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
listen = "198.18.{octet}.1:69"
root = "{tftp}"
[streamer]
listen = "198.18.{octet}.1:8080"
grpc_listen = "127.0.0.1:0"
data_dir = "{streamer}"
[dhcp]
interfaces = ["{server_if}"]
server_ip = "198.18.{octet}.1"
http_base = "http://198.18.{octet}.1:8080"
rules_url = "{RULES}"
{dhcp}
"#,
            tftp = dir.path().join("tftp").display(),
            streamer = dir.path().join("streamer").display()
        ),
    )
    .unwrap();
    let up = Reaped(server.spawn(BIN, &["up", "-c", config.to_str().unwrap(), "--log", "warn"]).unwrap());
    wait_serving_in(&server, 9100, "dhcp: serving", Duration::from_secs(20));
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, manifest).unwrap();
    let applied = run_in(
        &server,
        // DHCP answers name no image files: none are pushed.
        &[
            "apply",
            "-f",
            rules.to_str().unwrap(),
            "--activate",
            "--allow-missing-images",
            "--server",
            RULES,
            "--token",
            TOKEN,
        ],
    );
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    Lab { _up: up, server, client, client_if, dir }
}

impl Lab {
    /// Waits until the rules engine gives `mac` an image profile.
    fn wait_rules(&self, mac: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = run_in(&self.server, &["evaluate", "--mac", mac, "--dry-run", "--server", RULES]);
            if String::from_utf8_lossy(&out.stdout).contains("image=") {
                return;
            }
            assert!(Instant::now() < deadline, "rules never became active");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn probe(&self, mac: &str, kind: &str) -> Option<serde_json::Value> {
        let args = [
            "probe-dhcp",
            "--interface",
            &self.client_if,
            "--mac",
            mac,
            "--kind",
            kind,
            "--timeout",
            "1.5",
            "--json",
        ];
        let out = run_in(&self.client, &args);
        match out.status.code() {
            Some(0) => Some(serde_json::from_slice(&out.stdout).unwrap()),
            Some(2) => None,
            _ => panic!("probe failed: {}", String::from_utf8_lossy(&out.stderr)),
        }
    }
}

const PROXY_RULES: &str = r#"
image_profiles:
  - { name: tiny, kernel: { kernel: tiny/1/vmlinuz, cmdline: "console=ttyS0" } }
  - { name: quiet, ignore: true }
rules:
  - { name: quiet-host, match: { mac: "52:54:00:00:30:02" }, image_profile: quiet }
  - { name: lab, match: { mac: "52:54:00:00:30:*" }, image_profile: tiny }
"#;

#[test]
fn proxy_dhcp_answers_each_boot_client_correctly() {
    // The client namespace also plays a relay agent (probe-dhcp --relay).
    let lab = start_lab(("bfdA", "bfdB"), 30, r#"trusted_relays = ["198.18.30.2"]"#, PROXY_RULES);
    let booted = "52:54:00:00:30:01";
    lab.wait_rules(booted);
    let answer = lab.probe(booted, "pxe-bios").expect("a PXE BIOS client is answered");
    assert_eq!(answer["file"], "undionly.kpxe");
    assert_eq!(answer["siaddr"], "198.18.30.1");
    assert_eq!(answer["yiaddr"], "0.0.0.0", "proxyDHCP offers no address");
    assert_eq!(answer["vendor_class"], "PXEClient");
    assert_eq!(answer["server_id"], "198.18.30.1");
    assert_eq!(lab.probe(booted, "pxe-efi").unwrap()["file"], "ipxe.efi");
    let http = lab.probe(booted, "http").unwrap();
    assert_eq!(
        (http["file"].as_str(), http["vendor_class"].as_str()),
        (Some("http://198.18.30.1:8080/loaders/ipxe.efi"), Some("HTTPClient"))
    );
    assert_eq!(
        lab.probe(booted, "ipxe").unwrap()["file"],
        "http://198.18.30.1:8080/boot.ipxe?mac=52:54:00:00:30:01"
    );
    // Through a relay: unicast to the relay, option 82 echoed.
    let args = [
        "probe-dhcp",
        "--interface",
        &lab.client_if,
        "--mac",
        booted,
        "--relay",
        "198.18.30.2",
        "--dhcp-server",
        "198.18.30.1",
        "--json",
    ];
    let out = run_in(&lab.client, &args);
    assert!(out.status.success(), "relayed probe: {}", String::from_utf8_lossy(&out.stderr));
    let relayed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(relayed["from"], "198.18.30.1:67");
    assert_eq!(relayed["giaddr"], "198.18.30.2");
    assert_eq!(relayed["relay_info"], "010570726f6265");
    assert_eq!(relayed["file"], "undionly.kpxe");
    // Silence: a plain DHCP client, a host whose profile is ignore, a host no rule names.
    assert!(lab.probe(booted, "plain").is_none());
    assert!(lab.probe("52:54:00:00:30:02", "pxe-bios").is_none());
    assert!(lab.probe("00:11:22:33:44:55", "pxe-bios").is_none());
    drop(lab.dir);
}

const FULL: &str = r#"
mode = "full"
[[dhcp.pools]]
subnet = "198.18.40.0/24"
start = "198.18.40.100"
end = "198.18.40.110"
router = "198.18.40.1"
dns = ["198.18.40.1"]
lease_time = "60s"
"#;

const FULL_RULES: &str = r#"
image_profiles:
  - { name: tiny, kernel: { kernel: tiny/1/vmlinuz, cmdline: "console=ttyS0" } }
rules:
  - { name: lab, match: { mac: "52:54:00:00:40:*" }, image_profile: tiny }
"#;

fn udhcpc(lab: &Lab, extra: &[&str]) -> Output {
    let mut args =
        vec!["-i", lab.client_if.as_str(), "-f", "-s", "/bin/true", "-t", "3", "-T", "1", "-A", "1"];
    args.extend_from_slice(extra);
    lab.client.command("udhcpc").args(&args).output().unwrap()
}

#[test]
fn full_dhcp_leases_to_a_real_client_and_renews() {
    let lab = start_lab(("bfeA", "bfeB"), 40, FULL, FULL_RULES);
    let known = "52:54:00:00:40:01";
    lab.client.ip(&["link", "set", &lab.client_if, "address", known]).unwrap();
    lab.wait_rules(known);
    // A lease, then the same address again for the same host. The second
    // comes moments after the first (as the OS's follows iPXE's): it is
    // acknowledged for the time the stored lease has left, without a write.
    let reused = || {
        let metrics =
            lab.server.command("curl").args(["-sf", "http://127.0.0.1:9100/metrics"]).output().unwrap();
        assert!(metrics.status.success(), "metrics: {metrics:?}");
        String::from_utf8_lossy(&metrics.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("bootfleet_dhcp_leases_reused_total ")?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    // udhcpc once: the address and the lease time it was given.
    let lease = |round: &str| {
        let out = udhcpc(&lab, &["-n", "-q"]);
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{round}: {text}");
        let word_after =
            |marker: &str| text.split(marker).nth(1)?.split_whitespace().next().map(str::to_owned);
        let address = word_after("lease of ").unwrap_or_else(|| panic!("{round}: no lease in {text}"));
        let seconds = word_after("lease time ").and_then(|s| s.parse::<u32>().ok());
        (address, seconds.unwrap_or_else(|| panic!("{round}: no lease time in {text}")))
    };
    // Configures the leased address, so udhcpc can renew and release from it.
    let script = lab.dir.path().join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in bound|renew) ip addr replace \"$ip/24\" dev \"$interface\" ;; esac\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    assert_eq!(lease("first"), ("198.18.40.100".to_owned(), 60), "a new lease is a whole lease");
    let before = reused();
    let (address, again) = lease("again");
    assert_eq!(address, "198.18.40.100", "the same address again");
    // What the stored lease has left (whole seconds; leases are stored with
    // a second's allowance for the write, so within a second it is still 60).
    assert!((50..=60).contains(&again), "a reused lease has no more than it had left: {again}");
    assert!(reused() > before, "the second lease was written again, not reused");
    // Renewal: SIGUSR1 makes udhcpc renew now (unicast, from the leased
    // address, which its script configures); it must get the lease again.
    // Then SIGUSR2 releases it.
    let child = lab
        .client
        .command("udhcpc")
        .args(["-i", &lab.client_if, "-f", "-t", "3", "-T", "1", "-s"])
        .arg(&script)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    std::thread::sleep(Duration::from_millis(2500));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR2).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.matches("lease of 198.18.40.100 obtained").count() >= 2, "no renewal seen: {text}");
    assert!(text.contains("entering released state"), "no release sent: {text}");
    // Released: the next lease is written afresh, a whole lease again.
    let (held, seconds) = lease("after release");
    assert_eq!(seconds, 60, "a released lease must not be reused");
    // A PXE ROM gets an address and its loader in one answer.
    let pxe = lab.probe("52:54:00:00:40:07", "pxe-bios").expect("a PXE client is answered in full mode");
    assert_eq!((pxe["message_type"].as_u64(), pxe["file"].as_str()), (Some(2), Some("undionly.kpxe")));
    assert!(pxe["yiaddr"].as_str().unwrap().starts_with("198.18.40.1"), "{pxe}");
    assert_ne!(pxe["yiaddr"].as_str(), Some(held.as_str()), "that address is the first client's");
    assert_eq!(lab.probe("52:54:00:00:40:08", "http").unwrap()["vendor_class"], "HTTPClient");
    // A host no rule names gets nothing.
    lab.client.ip(&["link", "set", &lab.client_if, "address", "00:11:22:33:44:55"]).unwrap();
    let out = udhcpc(&lab, &["-n", "-q"]);
    assert!(!out.status.success(), "an unknown host must not get an address");
}

/// Two full `bootfleet up` replicas on one etcd (all inside the server
/// namespace): their DHCP responders run hot-standby. SIGKILL the acting
/// one in the middle of a stream of clients: the standby takes over, every
/// client gets an address, and no address goes to two clients.
#[test]
fn full_dhcp_hot_standby_survives_the_leader_dying() {
    let server = Netns::create("bfhA").unwrap();
    let client = Netns::create("bfhB").unwrap();
    link(&server, "198.18.50.1/24", &client, "198.18.50.2/24").unwrap();
    let mut etcd = bootfleet_test_support::etcd::EtcdCluster::start_in(1, Some("bfhA")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tftp")).unwrap();
    let replica = |id: &str, n: u16| -> Reaped {
        let config = dir.path().join(format!("{id}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
[store]
backend = "etcd"
etcd_endpoints = ["{endpoint}"]
election_ttl = "2s"
[member]
id = "{id}"
[admin]
listen = "127.0.0.1:92{n:02}"
[rules]
listen = "127.0.0.1:71{n:02}"
admin_token = "{TOKEN}"
[tftp]
listen = "198.18.50.1:69{n:02}"
root = "{tftp}"
[streamer]
listen = "198.18.50.1:80{n:02}"
grpc_listen = "127.0.0.1:0"
data_dir = "{streamer}"
[dhcp]
mode = "full"
interfaces = ["bfhA-hB"]
server_ip = "198.18.50.1"
http_base = "http://198.18.50.1:8080"
rules_url = "http://127.0.0.1:71{n:02}"
[[dhcp.pools]]
subnet = "198.18.50.0/24"
start = "198.18.50.100"
end = "198.18.50.120"
lease_time = "60s"
"#,
                endpoint = etcd.endpoint(0),
                tftp = dir.path().join("tftp").display(),
                streamer = dir.path().join(format!("streamer-{id}")).display()
            ),
        )
        .unwrap();
        Reaped(server.spawn(BIN, &["up", "-c", config.to_str().unwrap(), "--log", "warn"]).unwrap())
    };
    let mut replicas = vec![("ra", replica("ra", 1)), ("rb", replica("rb", 2))];
    for port in [9201, 9202] {
        wait_serving_in(&server, port, "dhcp: serving", Duration::from_secs(30));
    }
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, FULL_RULES.replace("52:54:00:00:40:*", "52:54:00:00:50:*")).unwrap();
    let applied = run_in(
        &server,
        &[
            "apply",
            "-f",
            rules.to_str().unwrap(),
            "--activate",
            "--allow-missing-images",
            "--server",
            "http://127.0.0.1:7101",
            "--token",
            TOKEN,
        ],
    );
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    for port in [7101, 7102] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = format!("http://127.0.0.1:{port}");
            let out =
                run_in(&server, &["evaluate", "--mac", "52:54:00:00:50:01", "--dry-run", "--server", &url]);
            if String::from_utf8_lossy(&out.stdout).contains("image=tiny") {
                break;
            }
            assert!(Instant::now() < deadline, "rules never reached the replica on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let client_if = "bfhB-hA";
    let leader = || dhcp_leader(&server, &etcd.endpoint(0));
    let mut addresses = std::collections::BTreeMap::new();
    let mut takeover = None;
    for i in 1..=6u8 {
        if i == 4 {
            let acting = leader();
            assert!(acting == "ra" || acting == "rb", "a leader before the kill: {acting:?}");
            let index = replicas.iter().position(|(id, _)| *id == acting).unwrap();
            let (_, mut victim) = replicas.remove(index);
            victim.0.kill().unwrap();
            victim.0.wait().unwrap();
            takeover = Some(Instant::now());
        }
        let mac = format!("52:54:00:00:50:{i:02x}");
        client.ip(&["link", "set", client_if, "address", &mac]).unwrap();
        let out = client
            .command("udhcpc")
            .args(["-i", client_if, "-f", "-q", "-n", "-s", "/bin/true", "-t", "6", "-T", "1", "-A", "1"])
            .output()
            .unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "client {mac}: {text}");
        let ip = text.split("lease of ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap().to_owned();
        if let Some(killed) = takeover.take() {
            let took = killed.elapsed();
            eprintln!("standby answered {} ms after the leader was killed", took.as_millis());
            // TTL 2 s + 1 s, plus udhcpc's 1 s retry step and a little slack.
            assert!(took < Duration::from_millis(4500), "took {took:?}");
        }
        addresses.insert(mac, ip);
    }
    let distinct: std::collections::BTreeSet<&String> = addresses.values().collect();
    assert_eq!(distinct.len(), addresses.len(), "an address went to two clients: {addresses:?}");
    // Without the store nothing new is allocated (documented behaviour):
    // a new client gets no address rather than one that might collide.
    etcd.stop_all();
    client.ip(&["link", "set", client_if, "address", "52:54:00:00:50:0f"]).unwrap();
    let out = client
        .command("udhcpc")
        .args(["-i", client_if, "-f", "-q", "-n", "-s", "/bin/true", "-t", "2", "-T", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "no new allocation without the store");
    drop(replicas);
    drop(etcd);
}
