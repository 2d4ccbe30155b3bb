//! End to end: a QEMU VM with SeaBIOS and the iPXE NIC ROM boots a tiny
//! Linux through `bootfleet up` — DHCP (full mode) → iPXE → boot script
//! from the image streamer, chosen by a rule → kernel and initrd over HTTP →
//! the marker from the kernel command line on the serial console. Then a
//! rule change, predicted by test-compliance and activated, changes what
//! the next boot gets.
//!
//! The lab: Bootfleet in one network namespace, the VM's tap device on a
//! bridge in another, joined by a veth pair in 198.18.0.0/15. Boot assets
//! come from `scripts/boot-assets.sh` (the test command runs it).

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use bootfleet_test_support::netns::{Netns, link};
use bootfleet_test_support::process::ChildGuard;
use common::{Firmware, Vm, assets, bridge, wait_serving_in};

const BIN: &str = env!("CARGO_BIN_EXE_bootfleet");
const TOKEN: &str = "qemu-lab-token-0123456789";
const RULES: &str = "http://127.0.0.1:7070";
const IMAGES: &str = "http://127.0.0.1:7072";
/// TCG boots of SeaBIOS + iPXE + Linux take 10-30 s on a busy 2-core machine.
const BOOT_WITHIN: Duration = Duration::from_secs(150);

fn manifest(marker: &str, extra_cmdline: &str) -> String {
    format!(
        r#"
image_profiles:
  - name: tiny
    kernel:
      kernel: tiny/1/vmlinuz
      initrds: [tiny/1/initrd.img]
      cmdline: "console=ttyS0 quiet bootfleet.marker={{{{host.marker}}}} {extra_cmdline}"
host_profiles:
  - {{ name: lab-{marker}, values: {{ marker: {marker} }} }}
rules:
  - {{ name: lab-vms, match: {{ mac: "52:54:00:00:61:*" }}, image_profile: tiny, host_profile: lab-{marker} }}
"#
    )
}

/// Bootfleet in `server`, a bridge with the VM taps in `client`.
struct Lab {
    up: Option<ChildGuard>,
    config: std::path::PathBuf,
    _plain_dhcp: Option<ChildGuard>,
    server: Netns,
    client: Netns,
    dir: tempfile::TempDir,
}

impl Lab {
    /// A lab in namespaces `<prefix>A`/`<prefix>B` on 198.18.<octet>.0/24,
    /// with full DHCP.
    fn start(prefix: &str, octet: u8) -> Self {
        let full = format!(
            "mode = \"full\"\n[[dhcp.pools]]\nsubnet = \"198.18.{octet}.0/24\"\nstart = \"198.18.{octet}.100\"\n\
             end = \"198.18.{octet}.150\"\nlease_time = \"10m\"\n"
        );
        Self::start_with(prefix, octet, &full)
    }

    /// As [`Self::start`] with this DHCP mode and its settings.
    fn start_with(prefix: &str, octet: u8, dhcp: &str) -> Self {
        let assets = assets();
        let server = Netns::create(&format!("{prefix}A")).unwrap();
        let client = Netns::create(&format!("{prefix}B")).unwrap();
        link(&server, &format!("198.18.{octet}.1/24"), &client, &format!("198.18.{octet}.2/24")).unwrap();
        let server_if = format!("{prefix}A-{}B", &prefix[2..]);
        let client_if = format!("{prefix}B-{}A", &prefix[2..]);
        // The client end joins a bridge with the VMs' taps. The server side
        // keeps IPv6 (a link-local address) so the DHCP responder can answer
        // iPXE's router solicitations and spare it a ~13 s wait.
        bridge(&client, &client_if);
        let dir = tempfile::tempdir().unwrap();
        let tftp = dir.path().join("tftp");
        std::fs::create_dir(&tftp).unwrap();
        for loader in ["undionly.kpxe", "ipxe.efi", "snponly.efi"] {
            std::fs::copy(assets.join(loader), tftp.join(loader)).unwrap();
        }
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        let config = dir.path().join("lab.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[store]
backend = "embedded"
data_dir = "{data}"
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
grpc_listen = "127.0.0.1:7072"
admin_token = "{TOKEN}"
loaders_dir = "{tftp}"
[dhcp]
interfaces = ["{server_if}"]
server_ip = "198.18.{octet}.1"
http_base = "http://198.18.{octet}.1:8080"
rules_url = "{RULES}"
router_advertisements = true
{dhcp}
"#,
                data = dir.path().join("data").display(),
                tftp = tftp.display()
            ),
        )
        .unwrap();
        // In proxy mode a plain DHCP server hands out the addresses.
        let plain_dhcp = dhcp.contains("\"proxy\"").then(|| {
            let range = format!("--dhcp-range=198.18.{octet}.100,198.18.{octet}.150,10m");
            let interface = format!("--interface={server_if}");
            let mut args = vec![
                "--no-daemon",
                "--port=0",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--leasefile-ro",
            ];
            args.extend([range.as_str(), interface.as_str(), "--log-dhcp"]);
            ChildGuard(server.spawn("dnsmasq", &args).unwrap())
        });
        let mut lab = Self { up: None, _plain_dhcp: plain_dhcp, server, client, dir, config };
        lab.start_up();
        // The image: the kernel and initramfs, pushed to the streamer.
        let image = lab.dir.path().join("image");
        std::fs::create_dir(&image).unwrap();
        std::fs::copy(assets.join("vmlinuz"), image.join("vmlinuz")).unwrap();
        std::fs::copy(assets.join("initrd.img"), image.join("initrd.img")).unwrap();
        let token_file = lab.dir.path().join("token");
        let push = lab.cli(&[
            "images",
            "push",
            image.to_str().unwrap(),
            "--image",
            "tiny",
            "--version",
            "1",
            "--images-server",
            IMAGES,
            "--token-file",
            token_file.to_str().unwrap(),
        ]);
        assert!(push.status.success(), "push: {}", String::from_utf8_lossy(&push.stderr));
        lab
    }

    /// Starts `bootfleet up` (again: same configuration and data) and waits
    /// until it serves, DHCP included.
    fn start_up(&mut self) {
        let config = self.config.to_str().unwrap().to_owned();
        self.up = Some(ChildGuard(self.server.spawn(BIN, &["up", "-c", &config, "--log", "info"]).unwrap()));
        wait_serving_in(&self.server, 9100, "dhcp: serving", Duration::from_secs(30));
    }

    /// Stops every Bootfleet service (SIGTERM) and waits for the exit.
    fn stop_up(&mut self) {
        let up = self.up.take().expect("bootfleet up is running");
        let status = up.terminate(Duration::from_secs(15));
        assert!(status.is_some_and(|s| s.success()), "bootfleet up did not stop cleanly: {status:?}");
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.server.command(BIN).args(args).output().unwrap()
    }

    /// Applies the rules with this marker to the working set.
    fn apply(&self, marker: &str, activate: bool) {
        self.apply_with(marker, activate, "");
    }

    /// As [`Self::apply`], with more on the kernel command line.
    fn apply_with(&self, marker: &str, activate: bool, extra_cmdline: &str) {
        let file = self.dir.path().join(format!("rules-{marker}.yaml"));
        std::fs::write(&file, manifest(marker, extra_cmdline)).unwrap();
        let mut args = vec!["apply", "-f", file.to_str().unwrap(), "--server", RULES, "--token", TOKEN];
        if activate {
            args.push("--activate");
        }
        let out = self.cli(&args);
        assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Boots a VM with `mac` from the network; returns its serial console
    /// output once the marker line appeared (or panics with it).
    fn boot(&self, name: &str, mac: &str, firmware: Firmware) -> String {
        Vm::start(&self.client, self.dir.path(), name, mac, firmware).wait_marker(&self.client, BOOT_WITHIN)
    }
}

/// The first boot report of `stage` on a host record (`GetHost` as JSON).
fn report_of(host: &serde_json::Value, stage: &str) -> serde_json::Value {
    let reports = host["boot_status"]["reports"].as_array().cloned().unwrap_or_default();
    reports.into_iter().find(|r| r["stage"] == stage).unwrap_or_default()
}

#[test]
fn bios_vm_boots_through_bootfleet_up_and_follows_a_rule_change() {
    let lab = Lab::start("bfq", 61);
    lab.apply("first-boot", true);
    let mac = "52:54:00:00:61:01";
    let serial = lab.boot("vm1", mac, Firmware::Bios);
    assert!(serial.contains("BOOTFLEET-MARKER first-boot"), "{serial}");

    // The host record shows the decision and which replica served each stage.
    let host = lab.cli(&["hosts", "get", mac, "--server", RULES, "-o", "json"]);
    let host: serde_json::Value = serde_json::from_slice(&host.stdout).unwrap();
    let stages: Vec<&str> = host["boot_status"]["reports"]
        .as_array()
        .map(|r| r.iter().filter_map(|r| r["stage"].as_str()).collect())
        .unwrap_or_default();
    let metrics = lab.server.run("curl", &["-s", "127.0.0.1:9100/metrics"]).unwrap_or_default();
    let requests: Vec<&str> =
        metrics.lines().filter(|l| l.starts_with("bootfleet_streamer_requests_total")).collect();
    assert!(stages.contains(&"script") && stages.contains(&"loaded"), "{host}\n{requests:#?}");
    // Beside the streamer's stages, the DHCP replica with the address it
    // gave (issue 17; the NIC's ROM is iPXE already: no TFTP here).
    let dhcp = report_of(&host, "dhcp");
    assert!(dhcp["source"].as_str().is_some_and(|a| a.starts_with("198.18.61.")), "{host}");
    assert!(dhcp["replica"].as_str().is_some_and(|r| !r.is_empty()), "{host}");

    // The working set now assigns another host profile (another marker):
    // test-compliance predicts the change for this host, activation makes
    // the next boot get it.
    lab.apply("second-boot", false);
    let predicted = lab.cli(&["rules", "test-compliance", mac, "--server", RULES, "-o", "json"]);
    let predicted: serde_json::Value = serde_json::from_slice(&predicted.stdout).unwrap();
    let changes = predicted["non_compliant"].as_array().cloned().unwrap_or_default();
    assert!(
        changes.iter().any(|c| c["mac"] == mac && c["changed"].to_string().contains("host_profile")),
        "{predicted}"
    );
    let activated = lab.cli(&["rules", "activate", "--server", RULES, "--token", TOKEN]);
    assert!(activated.status.success(), "{}", String::from_utf8_lossy(&activated.stderr));
    std::thread::sleep(Duration::from_millis(500));
    let serial = lab.boot("vm1-again", mac, Firmware::Bios);
    assert!(serial.contains("BOOTFLEET-MARKER second-boot"), "{serial}");
}

/// Rules on a fact DHCP cannot see: two VMs whose MACs fall under the
/// same pattern, told apart only by their SMBIOS serials, boot different
/// images. DHCP finds them undecided and answers; the streamer answers
/// iPXE's MAC-only request with a script that asks again with every fact;
/// the serial decides.
#[test]
fn vms_told_apart_by_their_serials_boot_different_images() {
    // Namespaces and subnet of its own: the VM tests may run at once.
    let lab = Lab::start("bfk", 67);
    let profile = |name: &str| {
        format!(
            "  - {{ name: {name}, kernel: {{ kernel: tiny/1/vmlinuz, initrds: [tiny/1/initrd.img], \
             cmdline: \"console=ttyS0 quiet bootfleet.marker={name}\" }} }}\n"
        )
    };
    let rule = |name: &str, serial: &str| {
        format!(
            "  - {{ name: {name}, match: {{ mac: \"52:54:00:00:67:*\", serial: \"{serial}*\" }}, \
             image_profile: {name} }}\n"
        )
    };
    let manifest = format!(
        "image_profiles:\n{}{}rules:\n{}{}",
        profile("by-serial-a"),
        profile("by-serial-b"),
        rule("by-serial-a", "BF-SERIAL-A"),
        rule("by-serial-b", "BF-SERIAL-B")
    );
    let file = lab.dir.path().join("rules-serials.yaml");
    std::fs::write(&file, manifest).unwrap();
    let out =
        lab.cli(&["apply", "-f", file.to_str().unwrap(), "--server", RULES, "--token", TOKEN, "--activate"]);
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(500));
    // Both at once: the cores allow two TCG guests.
    let a = Vm::start_with(
        &lab.client,
        lab.dir.path(),
        "ser-a",
        "52:54:00:00:67:01",
        Firmware::Bios,
        &["-smbios", "type=1,serial=BF-SERIAL-A1"],
    );
    let b = Vm::start_with(
        &lab.client,
        lab.dir.path(),
        "ser-b",
        "52:54:00:00:67:02",
        Firmware::Bios,
        &["-smbios", "type=1,serial=BF-SERIAL-B1"],
    );
    let serial_a = a.wait_marker(&lab.client, BOOT_WITHIN);
    let serial_b = b.wait_marker(&lab.client, BOOT_WITHIN);
    assert!(serial_a.contains("BOOTFLEET-MARKER by-serial-a"), "{serial_a}");
    assert!(serial_b.contains("BOOTFLEET-MARKER by-serial-b"), "{serial_b}");
    // The host record holds the serial the decision was made on.
    let host = lab.cli(&["hosts", "get", "52:54:00:00:67:02", "--server", RULES, "-o", "json"]);
    let host = String::from_utf8_lossy(&host.stdout).into_owned();
    assert!(host.contains("BF-SERIAL-B1") && host.contains("by-serial-b"), "{host}");
}

/// UEFI (OVMF): PXE → ipxe.efi over TFTP → script → kernel; and UEFI HTTP
/// boot (vendor class HTTPClient) → ipxe.efi over HTTP → script → kernel.
#[test]
fn uefi_vms_boot_by_pxe_and_by_http_boot() {
    let lab = Lab::start("bfu", 62);
    lab.apply("uefi", true);
    let serial = lab.boot("pxe", "52:54:00:00:61:11", Firmware::UefiPxe);
    assert!(serial.contains("BOOTFLEET-MARKER uefi"), "{serial}");
    // Its record names the TFTP replica and the loader it sent, and the
    // DHCP replica (issue 17).
    let host = lab.cli(&["hosts", "get", "52:54:00:00:61:11", "--server", RULES, "-o", "json"]);
    let host: serde_json::Value = serde_json::from_slice(&host.stdout).unwrap();
    let (tftp, dhcp) = (report_of(&host, "tftp"), report_of(&host, "dhcp"));
    assert!(tftp["source"].as_str().is_some_and(|f| f.ends_with(".efi")), "{host}");
    assert!(tftp["replica"] == dhcp["replica"] && dhcp["replica"] != "", "{host}");
    let serial = lab.boot("http", "52:54:00:00:61:12", Firmware::UefiHttp);
    assert!(serial.contains("BOOTFLEET-MARKER uefi"), "{serial}");
    // The second VM fetched its loader over HTTP, not TFTP.
    let metrics = lab.server.run("curl", &["-s", "127.0.0.1:9100/metrics"]).unwrap_or_default();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bootfleet_streamer_requests_total{route=\"loaders\",status=\"200\"}")),
        "no loader was fetched over HTTP"
    );
}

/// Proxy mode beside a plain DHCP server (dnsmasq handing out addresses,
/// nothing about booting): the address comes from dnsmasq, the boot
/// instructions from Bootfleet's proxyDHCP, and the VM boots.
#[test]
fn proxy_mode_boots_a_vm_beside_a_plain_dhcp_server() {
    // Not bfp: the DHCP bench (tests/src/bin/dhcp_bench.rs) uses bfpA/bfpB,
    // and a bench may run beside the suite.
    let lab = Lab::start_with("bfi", 63, "mode = \"proxy\"");
    lab.apply("proxied", true);
    let serial = lab.boot("vm", "52:54:00:00:61:21", Firmware::Bios);
    assert!(serial.contains("BOOTFLEET-MARKER proxied"), "{serial}");
}

/// Stateless fallback: with every Bootfleet service stopped, a VM whose
/// boot order is network then disk boots its disk; once the services are
/// back its host record says it came up from its cached disk ("not booted
/// stateless"), and its next network boot clears that.
#[test]
fn without_services_a_vm_boots_its_disk_and_is_flagged_until_it_boots_from_the_network() {
    // 198.18.65.1 is where the disk image's OS reports (boot-assets.sh).
    let mut lab = Lab::start("bfs", 65);
    lab.apply_with(
        "stateless",
        true,
        "bootfleet.report=http://198.18.65.1:8080/report bootfleet.source=network",
    );
    let mac = "52:54:00:00:61:31";
    let flag = |lab: &Lab| -> Option<bool> {
        let out = lab.cli(&["hosts", "get", mac, "--server", RULES, "-o", "json"]);
        let host: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        host["boot_status"]["not_booted_stateless"].as_bool()
    };
    lab.stop_up();
    let mut vm = Vm::start(&lab.client, lab.dir.path(), "vm", mac, Firmware::BiosNetThenDisk);
    vm.wait_for("BOOTFLEET-MARKER from-disk", BOOT_WITHIN);
    // The disk's OS keeps trying to report until the services are back.
    lab.start_up();
    vm.wait_for("BOOTFLEET-REPORTED disk", BOOT_WITHIN);
    vm.finish(&lab.client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while flag(&lab) != Some(true) {
        assert!(Instant::now() < deadline, "the host record never said 'not booted stateless'");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Services up: the network comes first again, and a good network boot
    // clears the flag.
    let mut vm = Vm::start(&lab.client, lab.dir.path(), "vm-again", mac, Firmware::BiosNetThenDisk);
    let serial = vm.wait_for("BOOTFLEET-REPORTED network", BOOT_WITHIN);
    assert!(serial.contains("BOOTFLEET-MARKER stateless"), "{serial}");
    vm.finish(&lab.client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while flag(&lab) != Some(false) {
        assert!(Instant::now() < deadline, "the network boot did not clear the flag");
        std::thread::sleep(Duration::from_millis(200));
    }
}
