//! End to end, diskless (issue 23): a QEMU VM with SeaBIOS and the iPXE NIC
//! ROM boots through `bootfleet up` — DHCP → iPXE → boot script → kernel
//! and the vDisk initramfs over HTTP — and runs from a golden ext4 root
//! filesystem in the catalog, streamed over NBD by the image streamer. The
//! initramfs module (`boot/initramfs/bootfleet-vdisk.sh`) attaches it with
//! the kernel's NBD client, read-only, under a RAM overlay (`client-ram`):
//! the VM prints a value only the golden image holds, writes a file,
//! reboots, and the file is gone; the golden file is unchanged.
//!
//! The lab: Bootfleet in one network namespace, the VM's tap on a bridge in
//! another, joined by a veth pair in 198.18.68.0/24. Boot assets come from
//! `scripts/boot-assets.sh` (`vmlinuz`, `vdisk-initrd.img`,
//! `vdisk-root.ext4`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use bootfleet_test_support::netns::{Netns, link};
use bootfleet_test_support::process::ChildGuard;
use common::{Firmware, Vm, assets, bridge, wait_serving_in};

const BIN: &str = env!("CARGO_BIN_EXE_bootfleet");
const TOKEN: &str = "vdisk-lab-token-0123456789";
const RULES: &str = "http://127.0.0.1:7070";
const IMAGES: &str = "http://127.0.0.1:7072";
const SERVER_IP: &str = "198.18.68.1";
/// The streamer's NBD listener in the lab.
const NBD: &str = "198.18.68.1:10809";
/// Nothing listens here: the first replica on the command line, which the
/// initramfs must skip for the next.
const NBD_DEAD: &str = "198.18.68.1:10808";
/// The catalog version holding the kernel, the initramfs and the root disk.
const IMAGE: &str = "vdisk";
const VERSION: &str = "1";
const ROOT_FILE: &str = "vdisk-root.ext4";
/// Two TCG boots (SeaBIOS, iPXE, the kernel, the NBD root) and a reboot
/// between them, on a busy 2-core machine.
const TWO_BOOTS_WITHIN: Duration = Duration::from_secs(300);

/// The rules: every VM of this lab boots the kernel with the vDisk
/// initramfs, its root from the golden disk over NBD in client-ram mode;
/// its init writes a file and reboots.
fn manifest() -> String {
    format!(
        r#"
image_profiles:
  - name: diskless
    kernel:
      kernel: {IMAGE}/{VERSION}/vmlinuz
      initrds: [{IMAGE}/{VERSION}/vdisk-initrd.img]
      cmdline: "console=ttyS0 quiet bootfleet.nbd={NBD_DEAD},{NBD} bootfleet.export={IMAGE}/{VERSION}/{ROOT_FILE} bootfleet.cache=client-ram bootfleet.then=write-reboot"
rules:
  - {{ name: diskless-vms, match: {{ mac: "52:54:00:00:68:*" }}, image_profile: diskless }}
"#
    )
}

/// Bootfleet (`bootfleet up`, NBD on) in `server`, a bridge for the VM's
/// tap in `client`.
struct Lab {
    _up: ChildGuard,
    dir: tempfile::TempDir,
    // Dropped last: deleting a namespace kills what still runs in it.
    client: Netns,
    server: Netns,
}

impl Lab {
    fn start() -> Self {
        let assets = assets();
        let server = Netns::create("bfvA").unwrap();
        let client = Netns::create("bfvB").unwrap();
        link(&server, &format!("{SERVER_IP}/24"), &client, "198.18.68.2/24").unwrap();
        bridge(&client, "bfvB-vA");
        let dir = tempfile::tempdir().unwrap();
        let tftp = dir.path().join("tftp");
        std::fs::create_dir(&tftp).unwrap();
        std::fs::copy(assets.join("undionly.kpxe"), tftp.join("undionly.kpxe")).unwrap();
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
listen = "{SERVER_IP}:69"
root = "{tftp}"
[streamer]
listen = "{SERVER_IP}:8080"
grpc_listen = "127.0.0.1:7072"
nbd_listen = "{NBD}"
admin_token = "{TOKEN}"
loaders_dir = "{tftp}"
[dhcp]
interfaces = ["bfvA-vB"]
server_ip = "{SERVER_IP}"
http_base = "http://{SERVER_IP}:8080"
rules_url = "{RULES}"
router_advertisements = true
mode = "full"
[[dhcp.pools]]
subnet = "198.18.68.0/24"
start = "198.18.68.100"
end = "198.18.68.150"
lease_time = "10m"
"#,
                data = dir.path().join("data").display(),
                tftp = tftp.display()
            ),
        )
        .unwrap();
        let up =
            ChildGuard(server.spawn(BIN, &["up", "-c", config.to_str().unwrap(), "--log", "info"]).unwrap());
        wait_serving_in(&server, 9100, "dhcp: serving", Duration::from_secs(30));
        Self { _up: up, dir, client, server }
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.server.command(BIN).args(args).output().unwrap()
    }

    /// Pushes the kernel, the vDisk initramfs and the golden root disk as
    /// one catalog version.
    fn push_image(&self) {
        let image = self.dir.path().join("image");
        std::fs::create_dir(&image).unwrap();
        for file in ["vmlinuz", "vdisk-initrd.img", ROOT_FILE] {
            std::fs::copy(assets().join(file), image.join(file)).unwrap();
        }
        let token_file = self.dir.path().join("token");
        std::fs::write(&token_file, TOKEN).unwrap();
        let push = self.cli(&[
            "images",
            "push",
            image.to_str().unwrap(),
            "--image",
            IMAGE,
            "--version",
            VERSION,
            "--images-server",
            IMAGES,
            "--token-file",
            token_file.to_str().unwrap(),
        ]);
        assert!(push.status.success(), "push: {}", String::from_utf8_lossy(&push.stderr));
    }

    fn apply_rules(&self) {
        let file = self.dir.path().join("rules.yaml");
        std::fs::write(&file, manifest()).unwrap();
        let args = ["apply", "-f", file.to_str().unwrap(), "--server", RULES, "--token", TOKEN, "--activate"];
        let out = self.cli(&args);
        assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The file the streamer keeps for content `sha256` (its blob store is
    /// named by hash), found under the data directory.
    fn blob(&self, sha256: &str) -> PathBuf {
        find_file(&self.dir.path().join("data"), sha256)
            .unwrap_or_else(|| panic!("no blob {sha256} under the streamer's data directory"))
    }
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if entry.file_name() == name {
            return Some(path);
        }
    }
    None
}

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_owned()
}

/// The value the golden image's init prints, read from the image itself.
fn golden_value(image: &Path) -> String {
    let out = std::process::Command::new("debugfs")
        .args(["-R", "cat /etc/bootfleet-vdisk-value"])
        .arg(image)
        .output()
        .unwrap();
    let value = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(out.status.success() && !value.is_empty(), "debugfs: {}", String::from_utf8_lossy(&out.stderr));
    value
}

/// The root's marker lines on the console so far, one per boot.
fn vdisk_markers(console: &str) -> Vec<&str> {
    console.lines().map(str::trim_end).filter(|l| l.starts_with("BOOTFLEET-VDISK ")).collect()
}

#[test]
fn bios_vm_runs_diskless_from_a_catalog_vdisk_and_its_ram_writes_are_gone_after_a_reboot() {
    let golden = assets().join(ROOT_FILE);
    let value = golden_value(&golden);
    let golden_sha = sha256(&golden);
    let lab = Lab::start();
    lab.push_image();
    lab.apply_rules();
    // The streamer exports the golden disk over NBD (a real client asks).
    let exports = lab.server.run("nbdinfo", &["--list", "--json", &format!("nbd://{NBD}")]).unwrap();
    let export = format!("{IMAGE}/{VERSION}/{ROOT_FILE}");
    assert!(exports.contains(&format!("\"{export}\"")), "{export} is not listed: {exports}");

    let mut vm = Vm::start(&lab.client, lab.dir.path(), "vm", "52:54:00:00:68:01", Firmware::Bios);
    // First boot: the root is the overlay on the golden disk, the value
    // comes from it, the scratch file is not there yet; init writes it
    // (into RAM) and reboots.
    let console = vm.wait_for("BOOTFLEET-VDISK-WROTE", TWO_BOOTS_WITHIN);
    assert!(
        console.contains(&format!(
            "bootfleet-vdisk: replica {NBD_DEAD} did not serve {export}; trying the next"
        )),
        "the dead first replica was not tried first:\n{console}"
    );
    assert!(console.contains(&format!("attached {export} from {NBD}")), "{console}");
    let expected = format!("BOOTFLEET-VDISK {value} root=overlay scratch=absent");
    assert_eq!(vdisk_markers(&console), [expected.as_str()], "first boot:\n{console}");

    // Second boot (the guest rebooted itself: SeaBIOS, iPXE, the same
    // script): the file written before is gone.
    let deadline = Instant::now() + TWO_BOOTS_WITHIN;
    let console = loop {
        let console = vm.serial();
        if vdisk_markers(&console).len() >= 2 {
            break console;
        }
        assert!(Instant::now() < deadline, "no second boot within {TWO_BOOTS_WITHIN:?}:\n{console}");
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("vm: second boot's marker after {:.1} s", vm.elapsed().as_secs_f64());
    assert_eq!(vdisk_markers(&console)[1], expected, "second boot:\n{console}");
    // The guest's kernel logs none (its console shows warnings and errors).
    assert!(!console.contains("I/O error"), "{console}");
    // It would write and reboot again: stop it here (the guard kills QEMU).
    drop(vm);

    // The golden file on the streamer is the file pushed.
    let blob = lab.blob(&golden_sha);
    assert_eq!(sha256(&blob), golden_sha, "the golden image changed on the streamer");
}
