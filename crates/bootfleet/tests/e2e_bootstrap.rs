//! End to end, bootstrap media (issue 16): VMs boot through Bootfleet from
//! media `bootfleet bootstrap` wrote, on a network whose DHCP server
//! (dnsmasq, DHCP only) hands out addresses and no boot options, with no
//! Bootfleet DHCP and no TFTP on it; their NICs have no option ROM, so
//! nothing but the medium's iPXE boots from the network.
//!
//! One lab for the whole binary: a one-member etcd and two `bootfleet up`
//! replicas (`ra`, `rb`; their streamers are the boot servers) in one
//! namespace; the DHCP network in a second; a network with no DHCP at all
//! in a third. Two VMs run at a time (one per core):
//! 1. a BIOS VM from the ISO as CD-ROM, and a UEFI VM from the same ISO;
//!    the first one's boot report says bootstrap media and replica `ra`;
//! 2. a UEFI VM from the disk image, and a BIOS VM from a static-address
//!    ISO on the network without DHCP;
//! 3. `ra` SIGKILLed: a BIOS VM from the first ISO boots through `rb`
//!    (time to marker printed, the report names `rb`), while `--servers
//!    auto` goes from listing both streamers to listing exactly `rb`;
//! 4. `rb` SIGKILLed too: a BIOS VM from the ISO boots its next device, a
//!    local disk.
//!
//! UEFI media need an iPXE that runs autoexec.ipxe (Debian 12's 2019
//! ipxe.efi does not): `tests/bootstrap/newer-ipxe.sh` fetches Debian 13's
//! into the boot assets when it is missing.

mod common;
#[path = "bootstrap/vm.rs"]
mod vm;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use bootfleet_test_support::etcd::EtcdCluster;
use bootfleet_test_support::netns::{Netns, link};
use bootfleet_test_support::process::ChildGuard;
use common::{assets, bridge, wait_serving_in};
use vm::{Boot, Vm};

const BIN: &str = env!("CARGO_BIN_EXE_bootfleet");
const TOKEN: &str = "bootstrap-lab-token-0123456789";
/// TCG boots of firmware, iPXE and Linux on a busy 2-core machine.
const BOOT_WITHIN: Duration = Duration::from_secs(150);
/// The boot servers as the DHCP network reaches them.
const RA: &str = "http://198.18.72.1:8081";
const RB: &str = "http://198.18.72.1:8082";

const MANIFEST: &str = r#"
image_profiles:
  - name: tiny
    kernel:
      kernel: tiny/1/vmlinuz
      initrds: [tiny/1/initrd.img]
      cmdline: "console=ttyS0 quiet bootfleet.marker=from-bootstrap-media"
rules:
  - { name: bootstrap-vms, match: { mac: "52:54:00:00:72:*" }, image_profile: tiny }
"#;

/// One `bootfleet up` replica: its loopback ports, its streamer's HTTP port.
struct Replica {
    id: &'static str,
    process: Option<ChildGuard>,
    admin: u16,
    rules: u16,
    images: u16,
}

impl Replica {
    fn rules_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rules)
    }

    fn images_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.images)
    }
}

struct Lab {
    replicas: Vec<Replica>,
    _dnsmasq: ChildGuard,
    _etcd: EtcdCluster,
    newer_efi: PathBuf,
    dir: tempfile::TempDir,
    // Dropped last: deleting a namespace kills what still runs in it.
    dhcp_net: Netns,
    static_net: Netns,
    server: Netns,
}

impl Lab {
    fn start() -> Self {
        let assets = assets();
        let newer_efi = newer_ipxe_efi(&assets);
        let server = Netns::create("bfbS").unwrap();
        let dhcp_net = Netns::create("bfbC").unwrap();
        let static_net = Netns::create("bfbD").unwrap();
        link(&server, "198.18.72.1/24", &dhcp_net, "198.18.72.2/24").unwrap();
        link(&server, "198.18.73.1/24", &static_net, "198.18.73.2/24").unwrap();
        bridge(&dhcp_net, "bfbC-bS");
        bridge(&static_net, "bfbD-bS");
        // Addresses only: no boot file, no next server, no iPXE options.
        let dnsmasq = ChildGuard(
            server
                .spawn(
                    "dnsmasq",
                    &[
                        "--no-daemon",
                        "--port=0",
                        "--bind-interfaces",
                        "--interface=bfbS-bC",
                        "--no-resolv",
                        "--no-hosts",
                        "--leasefile-ro",
                        "--quiet-dhcp",
                        "--dhcp-range=198.18.72.100,198.18.72.150,10m",
                    ],
                )
                .unwrap(),
        );
        let etcd = EtcdCluster::start_in(1, Some("bfbS")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tftp")).unwrap();
        let mut replicas = vec![
            Replica { id: "ra", process: None, admin: 9221, rules: 7121, images: 7221 },
            Replica { id: "rb", process: None, admin: 9222, rules: 7122, images: 7222 },
        ];
        for (replica, http) in replicas.iter_mut().zip([8081, 8082]) {
            let config = dir.path().join(format!("{}.toml", replica.id));
            std::fs::write(
                &config,
                format!(
                    r#"
[store]
backend = "etcd"
etcd_endpoints = ["{endpoint}"]
member_ttl = "2s"
[member]
id = "{id}"
[admin]
listen = "127.0.0.1:{admin}"
[rules]
listen = "127.0.0.1:{rules}"
admin_token = "{TOKEN}"
[tftp]
listen = "127.0.0.1:0"
root = "{tftp}"
[streamer]
listen = "0.0.0.0:{http}"
public_url = "http://198.18.72.1:{http}"
grpc_listen = "127.0.0.1:{images}"
admin_token = "{TOKEN}"
data_dir = "{data}"
"#,
                    endpoint = etcd.endpoint(0),
                    id = replica.id,
                    admin = replica.admin,
                    rules = replica.rules,
                    images = replica.images,
                    tftp = dir.path().join("tftp").display(),
                    data = dir.path().join(format!("streamer-{}", replica.id)).display(),
                ),
            )
            .unwrap();
            let up = server.spawn(BIN, &["up", "-c", config.to_str().unwrap(), "--log", "warn"]).unwrap();
            replica.process = Some(ChildGuard(up));
        }
        for replica in &replicas {
            wait_serving_in(&server, replica.admin, "", Duration::from_secs(30));
        }
        let lab =
            Self { replicas, _dnsmasq: dnsmasq, _etcd: etcd, newer_efi, dir, dhcp_net, static_net, server };
        lab.publish_image(&assets);
        lab
    }

    /// Pushes the tiny image through `ra`, activates the rule, and waits
    /// until both replicas hold the files.
    fn publish_image(&self, assets: &Path) {
        let image = self.dir.path().join("image");
        std::fs::create_dir(&image).unwrap();
        for file in ["vmlinuz", "initrd.img"] {
            std::fs::copy(assets.join(file), image.join(file)).unwrap();
        }
        let ra = &self.replicas[0];
        let (images, rules) = (ra.images_url(), ra.rules_url());
        let push = self.cli(&[
            "images",
            "push",
            image.to_str().unwrap(),
            "--image",
            "tiny",
            "--version",
            "1",
            "--images-server",
            &images,
            "--token",
            TOKEN,
        ]);
        assert!(push.status.success(), "push: {}", String::from_utf8_lossy(&push.stderr));
        let rules_file = self.dir.path().join("rules.yaml");
        std::fs::write(&rules_file, MANIFEST).unwrap();
        let apply = self.cli(&[
            "apply",
            "-f",
            rules_file.to_str().unwrap(),
            "--activate",
            "--server",
            &rules,
            "--token",
            TOKEN,
        ]);
        assert!(apply.status.success(), "apply: {}", String::from_utf8_lossy(&apply.stderr));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.cli(&["images", "status", "-o", "json", "--images-server", &images]);
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let present: Vec<&str> = status["states"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter(|s| s["state"] == "present")
                        .filter_map(|s| s["member_id"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            if present.contains(&"ra") && present.contains(&"rb") {
                return;
            }
            assert!(Instant::now() < deadline, "the image never reached both replicas: {status}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs the CLI in the server namespace.
    fn cli(&self, args: &[&str]) -> Output {
        self.server.command(BIN).args(args).output().unwrap()
    }

    /// `bootfleet bootstrap KIND FILE ARGS…`; returns the medium's path.
    fn medium(&self, kind: &str, name: &str, args: &[&str]) -> PathBuf {
        let file = self.dir.path().join(name);
        let mut all =
            vec!["bootstrap", kind, file.to_str().unwrap(), "--ipxe-efi", self.newer_efi.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(out.status.success(), "bootstrap {kind}: {}", String::from_utf8_lossy(&out.stderr));
        file
    }

    /// The servers a medium lists, read back with `bootstrap inspect`.
    fn inspect(&self, file: &Path) -> Vec<String> {
        let out = self.cli(&["bootstrap", "inspect", file.to_str().unwrap(), "-o", "json"]);
        assert!(out.status.success(), "inspect: {}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["medium"]["servers"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
    }

    /// The servers `--servers auto` finds, asking `replica`'s streamer.
    /// With `check`, every server must answer as well.
    fn auto_servers(&self, replica: &Replica, name: &str, check: bool) -> Vec<String> {
        let images = replica.images_url();
        let mut args = vec!["--servers", "auto", "--bios-only", "--images-server", &images];
        if !check {
            args.push("--no-check");
        }
        let file = self.medium("iso", name, &args);
        self.inspect(&file)
    }

    fn start_vm(&self, name: &str, mac: &str, boot: &Boot) -> Vm {
        let ns = if name.starts_with("static") { &self.static_net } else { &self.dhcp_net };
        Vm::start(ns, self.dir.path(), name, mac, boot)
    }

    /// Waits until `mac`'s boot status holds a `script` report from
    /// bootstrap media answered by `replica`; returns the host record.
    fn wait_bootstrap_report(&self, mac: &str, rules: &Replica, replica: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.cli(&["hosts", "get", mac, "-o", "json", "--server", &rules.rules_url()]);
            let host: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let found = host["boot_status"]["reports"].as_array().is_some_and(|reports| {
                reports
                    .iter()
                    .any(|r| r["stage"] == "script" && r["source"] == "bootstrap" && r["replica"] == replica)
            });
            if found {
                return host;
            }
            assert!(Instant::now() < deadline, "no bootstrap report from {replica} for {mac}: {host}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILLs a replica (the whole `bootfleet up`).
    fn kill(&mut self, index: usize) {
        drop(self.replicas[index].process.take());
    }
}

/// Debian 13's iPXE EFI loader in the boot assets, fetched when missing.
fn newer_ipxe_efi(assets: &Path) -> PathBuf {
    let dir = assets.join("ipxe-trixie");
    let efi = dir.join("ipxe.efi");
    if !efi.is_file() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bootstrap/newer-ipxe.sh");
        let status = std::process::Command::new(&script).arg(&dir).status().unwrap();
        assert!(status.success(), "{} failed", script.display());
    }
    efi
}

const MARKER: &str = "BOOTFLEET-MARKER from-bootstrap-media";

#[test]
fn vms_boot_from_bootstrap_media_with_no_pxe_tftp_or_dhcp_options() {
    let mut lab = Lab::start();
    let both = format!("{RA},{RB}");
    let iso = lab.medium("iso", "both.iso", &["--servers", &both, "--timeout", "3s"]);
    assert_eq!(lab.inspect(&iso), [RA, RB]);
    let disk = lab.medium("disk", "both.img", &["--servers", &both, "--timeout", "3s"]);
    assert_eq!(lab.inspect(&disk), [RA, RB]);
    // rb reached from the network without DHCP, through its gateway.
    let static_iso = lab.medium(
        "iso",
        "static.iso",
        &[
            "--servers",
            "http://198.18.73.1:8082",
            "--address",
            "198.18.73.50/24",
            "--gateway",
            "198.18.73.1",
            "--bios-only",
        ],
    );
    // Both streamers are live.
    assert_eq!(lab.auto_servers(&lab.replicas[0], "auto-both.iso", true), [RA, RB]);

    // 1. BIOS and UEFI from the ISO as CD-ROM.
    let bios = lab.start_vm("bios-cd", "52:54:00:00:72:01", &Boot::BiosCd(iso.clone()));
    let uefi = lab.start_vm("uefi-cd", "52:54:00:00:72:02", &Boot::UefiCd(iso.clone()));
    bios.wait_for(MARKER, BOOT_WITHIN);
    uefi.wait_for(MARKER, BOOT_WITHIN);
    let host = lab.wait_bootstrap_report("52:54:00:00:72:01", &lab.replicas[0], "ra");
    assert_eq!(host["last_decision"]["image_profile"]["name"], "tiny", "{host}");

    // 2. UEFI from the disk image; BIOS with a static address, no DHCP.
    let uefi_disk = lab.start_vm("uefi-disk", "52:54:00:00:72:03", &Boot::UefiDisk(disk));
    let static_vm = lab.start_vm("static-cd", "52:54:00:00:72:04", &Boot::BiosCd(static_iso));
    uefi_disk.wait_for(MARKER, BOOT_WITHIN);
    static_vm.wait_for(MARKER, BOOT_WITHIN);
    lab.wait_bootstrap_report("52:54:00:00:72:04", &lab.replicas[1], "rb");

    // 3. The first listed server dies: the boot goes through the second,
    // and `auto` comes to list exactly the live streamer.
    lab.kill(0);
    let failover = lab.start_vm("failover", "52:54:00:00:72:05", &Boot::BiosCd(iso.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Unchecked: ra is dead, but listed until its membership lapses.
        let live = lab.auto_servers(&lab.replicas[1], "auto-live.iso", false);
        if live == [RB] {
            break;
        }
        assert!(live == [RA, RB], "auto listed {live:?}");
        assert!(Instant::now() < deadline, "ra's membership never lapsed: auto still lists {live:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, took) = failover.wait_for(MARKER, BOOT_WITHIN);
    eprintln!("failover: first listed server SIGKILLed, marker after {:.1} s", took.as_secs_f64());
    lab.wait_bootstrap_report("52:54:00:00:72:05", &lab.replicas[1], "rb");

    // 4. Every server down: the firmware boots its next device.
    lab.kill(1);
    let fallback = lab.start_vm("all-down", "52:54:00:00:72:06", &Boot::BiosCdThenDisk(iso));
    fallback.wait_for("BOOTFLEET-MARKER from-disk", BOOT_WITHIN);
}

/// Bad input is refused with an error naming it, and the exit code says
/// which kind (no VM, no lab).
#[test]
fn bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| -> (i32, String) {
        let out = std::process::Command::new(BIN).args(args).output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let iso = dir.path().join("m.iso");
    let iso = iso.to_str().unwrap();
    let (code, err) = run(&["bootstrap", "iso", iso, "--servers", " , ", "--bios-only"]);
    assert_eq!((code, err.contains("empty server list")), (64, true), "{err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{closed}");
    let (code, err) = run(&["bootstrap", "iso", iso, "--servers", &url, "--bios-only"]);
    assert_eq!((code, err.contains(&url)), (69, true), "{err}");

    let (code, err) =
        run(&["bootstrap", "iso", "/nonexistent/m.iso", "--servers", &url, "--no-check", "--bios-only"]);
    assert_eq!((code, err.contains("cannot write /nonexistent/m.iso")), (73, true), "{err}");

    let old = dir.path().join("old.efi");
    std::fs::write(&old, b"MZ an EFI loader that never looks for a script").unwrap();
    let (code, err) = run(&[
        "bootstrap",
        "disk",
        iso,
        "--servers",
        &url,
        "--no-check",
        "--ipxe-efi",
        old.to_str().unwrap(),
    ]);
    assert_eq!((code, err.contains("does not run autoexec.ipxe")), (65, true), "{err}");
    assert!(!Path::new(iso).exists(), "nothing written");

    let (code, err) = run(&["bootstrap", "inspect", old.to_str().unwrap()]);
    assert_eq!(code, 66, "no autoexec.ipxe beside it: {err}");
    let (code, err) = run(&["bootstrap", "inspect", "/etc/hostname"]);
    assert_eq!((code, err.contains("not a medium bootfleet bootstrap made")), (65, true), "{err}");

    // A good one reads back.
    let (code, err) =
        run(&["bootstrap", "iso", iso, "--servers", &url, "--no-check", "--bios-only", "--timeout", "2s"]);
    assert_eq!(code, 0, "{err}");
    let out =
        std::process::Command::new(BIN).args(["bootstrap", "inspect", iso, "-o", "json"]).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["medium"]["servers"], serde_json::json!([url]));
    assert_eq!(json["medium"]["timeout_ms"], 2000);
    assert_eq!(json["medium"]["firmware"], serde_json::json!(["bios"]));
}
