//! Failover while machines boot: separate service processes (two rules
//! engines, two TFTP servers, two image streamers, two DHCP responders in
//! hot standby) over a 3-member etcd. VMs boot in a staggered storm while
//! the DHCP leader, one TFTP replica and one streamer replica are SIGKILLed:
//! every VM (BIOS, UEFI PXE, UEFI HTTP boot) reaches its marker. Then etcd goes away entirely and a known
//! host still boots (offline mode).
//!
//! The service binaries are the workspace's own (built next to `bootfleet`
//! by `cargo nextest run --workspace`).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bootfleet_test_support::etcd::EtcdCluster;
use bootfleet_test_support::netns::{Netns, link};
use bootfleet_test_support::process::ChildGuard;
use common::{Firmware, Vm, assets, bridge, dhcp_leader, wait_serving_in};

const BIN: &str = env!("CARGO_BIN_EXE_bootfleet");
const TOKEN: &str = "failover-lab-token-0123456789";
const SERVER_IF: &str = "bffA-fB";
/// Several TCG VMs share 2 cores with eleven service processes.
const BOOT_WITHIN: Duration = Duration::from_secs(300);

const RULES: &str = r#"
image_profiles:
  - name: tiny
    kernel:
      kernel: tiny/1/vmlinuz
      initrds: [tiny/1/initrd.img]
      cmdline: "console=ttyS0 quiet bootfleet.marker={{host.marker}}"
host_profiles:
  - { name: lab, values: { marker: survived } }
rules:
  - { name: lab-vms, match: { mac: "52:54:00:00:64:*" }, image_profile: tiny, host_profile: lab }
"#;

fn service_binary(name: &str) -> PathBuf {
    let path = Path::new(BIN).with_file_name(name);
    assert!(
        path.is_file(),
        "{} missing: build the workspace (cargo nextest run --workspace)",
        path.display()
    );
    path
}

struct Lab {
    server: Netns,
    client: Netns,
    etcd: EtcdCluster,
    dir: tempfile::TempDir,
    /// By name ("dhcp-a", "tftp-b", …); dropped (killed) with the lab.
    services: Vec<(String, ChildGuard, u16)>,
}

impl Lab {
    fn start() -> Self {
        let assets = assets();
        let server = Netns::create("bffA").unwrap();
        let client = Netns::create("bffB").unwrap();
        link(&server, "198.18.64.1/24", &client, "198.18.64.2/24").unwrap();
        for replica in [11, 12] {
            server.ip(&["addr", "add", &format!("198.18.64.{replica}/24"), "dev", SERVER_IF]).unwrap();
        }
        bridge(&client, "bffB-fA");
        let etcd = EtcdCluster::start_in(3, Some("bffA")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let tftp = dir.path().join("tftp");
        std::fs::create_dir(&tftp).unwrap();
        for loader in ["undionly.kpxe", "ipxe.efi", "snponly.efi"] {
            std::fs::copy(assets.join(loader), tftp.join(loader)).unwrap();
        }
        let mut lab = Self { server, client, etcd, dir, services: Vec::new() };
        let store = format!(
            "[store]\nbackend = \"etcd\"\netcd_endpoints = [{}]\nelection_ttl = \"2s\"\nmember_ttl = \"3s\"\n",
            lab.etcd.endpoints().iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(", ")
        );
        for (n, letter) in [(1u16, "a"), (2, "b")] {
            let ip = format!("198.18.64.{}", 10 + n);
            lab.spawn(
                &format!("rules-{letter}"),
                "bootfleet-rules-engine",
                9200 + n,
                &format!("{store}[rules]\nlisten = \"127.0.0.1:{}\"\nadmin_token = \"{TOKEN}\"\n", 7100 + n),
            );
            lab.spawn(
                &format!("tftp-{letter}"),
                "bootfleet-tftp-server",
                9210 + n,
                &format!("{store}[tftp]\nlisten = \"{ip}:69\"\nroot = \"{}\"\n", tftp.display()),
            );
            let data = lab.dir.path().join(format!("streamer-{letter}"));
            lab.spawn(
                &format!("streamer-{letter}"),
                "bootfleet-image-streamer",
                9220 + n,
                &format!(
                    "{store}[streamer]\nlisten = \"{ip}:8080\"\ngrpc_listen = \"127.0.0.1:{}\"\n\
                     admin_token = \"{TOKEN}\"\ndata_dir = \"{}\"\nloaders_dir = \"{}\"\n",
                    7070 + n,
                    data.display(),
                    tftp.display()
                ),
            );
            lab.spawn(
                &format!("dhcp-{letter}"),
                "bootfleet-dhcp-responder",
                9230 + n,
                &format!(
                    "{store}[dhcp]\nmode = \"full\"\ninterfaces = [\"{SERVER_IF}\"]\nserver_ip = \"198.18.64.1\"\n\
                     tftp_server = \"198.18.64.11\"\nhttp_base = \"http://198.18.64.11:8080\"\n\
                     rules_url = \"http://127.0.0.1:{}\"\nrouter_advertisements = true\n\
                     tftp_from_members = true\nstreamers_from_members = true\n\
                     [[dhcp.pools]]\nsubnet = \"198.18.64.0/24\"\nstart = \"198.18.64.100\"\n\
                     end = \"198.18.64.150\"\nlease_time = \"10m\"\n",
                    7100 + n
                ),
            );
        }
        for (_, _, port) in &lab.services {
            wait_serving_in(&lab.server, *port, "", Duration::from_secs(40));
        }
        lab
    }

    fn spawn(&mut self, name: &str, binary: &str, admin: u16, config: &str) {
        let file = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, config).unwrap();
        let binary = service_binary(binary);
        let args = [
            "-c",
            file.to_str().unwrap(),
            "--member-id",
            name,
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
            "--log",
            "warn",
        ];
        let child = self.server.spawn(binary.to_str().unwrap(), &args).unwrap();
        self.services.push((name.to_owned(), ChildGuard(child), admin));
    }

    fn kill(&mut self, name: &str) {
        let index = self.services.iter().position(|(n, _, _)| n == name).unwrap();
        let (_, mut guard, _) = self.services.remove(index);
        guard.0.kill().unwrap();
        guard.0.wait().unwrap();
        eprintln!("SIGKILLed {name}");
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        self.server.command(BIN).args(args).output().unwrap()
    }

    fn dhcp_leader(&self) -> String {
        dhcp_leader(&self.server, &self.etcd.endpoint(0))
    }
}

#[test]
fn vms_boot_while_replicas_die_and_offline_when_etcd_is_gone() {
    let mut lab = Lab::start();
    let token = lab.dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    // The image goes to streamer a; streamer b pulls it once the rules need it.
    let image = lab.dir.path().join("image");
    std::fs::create_dir(&image).unwrap();
    std::fs::copy(assets().join("vmlinuz"), image.join("vmlinuz")).unwrap();
    std::fs::copy(assets().join("initrd.img"), image.join("initrd.img")).unwrap();
    let image_arg = image.to_str().unwrap();
    let token_arg = token.to_str().unwrap();
    let out = lab.cli(&[
        "images",
        "push",
        image_arg,
        "--image",
        "tiny",
        "--version",
        "1",
        "--images-server",
        "http://127.0.0.1:7071",
        "--token-file",
        token_arg,
    ]);
    assert!(out.status.success(), "push: {}", String::from_utf8_lossy(&out.stderr));
    let rules = lab.dir.path().join("rules.yaml");
    std::fs::write(&rules, RULES).unwrap();
    let rules_arg = rules.to_str().unwrap();
    let out = lab.cli(&[
        "apply",
        "-f",
        rules_arg,
        "--activate",
        "--server",
        "http://127.0.0.1:7101",
        "--token",
        TOKEN,
    ]);
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = lab.cli(&["images", "status", "--images-server", "http://127.0.0.1:7072", "-o", "json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let present =
            status["states"].as_array().map_or(0, |s| s.iter().filter(|s| s["state"] == "present").count());
        if present == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "streamer b never held the image: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A staggered storm; the DHCP leader, a TFTP and a streamer replica die
    // in the middle of it.
    let firmwares = [Firmware::Bios, Firmware::UefiPxe, Firmware::Bios, Firmware::UefiHttp, Firmware::Bios];
    let mut vms = Vec::new();
    for (i, firmware) in firmwares.into_iter().enumerate() {
        let mac = format!("52:54:00:00:64:{:02x}", i + 1);
        vms.push(Vm::start(&lab.client, lab.dir.path(), &format!("vm{}", i + 1), &mac, firmware));
        std::thread::sleep(Duration::from_millis(1500));
        if i == 1 {
            let leader = lab.dhcp_leader();
            assert!(leader == "dhcp-a" || leader == "dhcp-b", "no DHCP leader: {leader:?}");
            lab.kill(&leader);
        }
        if i == 2 {
            lab.kill("tftp-a");
            lab.kill("streamer-a");
        }
    }
    for vm in vms {
        let serial = vm.wait_marker(&lab.client, BOOT_WITHIN);
        assert!(serial.contains("BOOTFLEET-MARKER survived"), "{serial}");
    }

    // etcd gone entirely: a known host still boots from the snapshots and
    // the lease it holds.
    for member in 0..3 {
        lab.etcd.kill(member);
    }
    eprintln!("etcd stopped");
    std::thread::sleep(Duration::from_secs(3));
    let serial = Vm::start(&lab.client, lab.dir.path(), "offline", "52:54:00:00:64:01", Firmware::Bios)
        .wait_marker(&lab.client, BOOT_WITHIN);
    assert!(serial.contains("BOOTFLEET-MARKER survived"), "{serial}");
}
