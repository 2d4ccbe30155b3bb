//! End to end, diskless (issue 23): QEMU VMs with SeaBIOS and the iPXE NIC
//! ROM boot through `bootfleet up` — DHCP → iPXE → boot script → kernel
//! and the vDisk initramfs over HTTP — and run from a golden ext4 root
//! filesystem in the catalog, streamed over NBD by the image streamer. Both
//! are `vdisk` profiles: the boot script names the NBD replicas, the export
//! and the write cache on the kernel's command line, and the initramfs
//! module (`boot/initramfs/bootfleet-vdisk.sh`) attaches the disk with the
//! kernel's NBD client.
//!
//! `client-ram`: the golden disk read-only under a RAM overlay; the VM
//! prints a value only the golden image holds, writes a file, reboots, and
//! the file is gone. `server`: the VM runs read-write from its own export,
//! `host/<mac>`; its writes land in its cache on the streamer, a reboot (a
//! new boot id) starts an empty cache, and no other address than the one
//! holding the VM's lease may open that export. The golden file is
//! unchanged.
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
/// The catalog version holding the kernel, the initramfs and the root disk.
const IMAGE: &str = "vdisk";
const VERSION: &str = "1";
const ROOT_FILE: &str = "vdisk-root.ext4";
/// Two TCG boots (SeaBIOS, iPXE, the kernel, the NBD root) and a reboot
/// between them, on a busy 2-core machine.
const TWO_BOOTS_WITHIN: Duration = Duration::from_secs(300);
/// The VM whose root is in client-ram mode.
const CLIENT_RAM_MAC: &str = "52:54:00:00:68:01";
/// The VM running from `host/<mac>` with a `server` write cache.
const SERVER_CACHE_MAC: &str = "52:54:00:00:68:02";

/// The rules: both VMs run diskless from the golden disk, one per write
/// cache; the golden image's init writes a file and reboots
/// (`bootfleet.then=write-reboot`).
fn manifest() -> String {
    let profile = |name: &str, cache: &str| {
        format!(
            "  - name: {name}\n    vdisk:\n      disk: {IMAGE}/{VERSION}/{ROOT_FILE}\n      \
             kernel: {IMAGE}/{VERSION}/vmlinuz\n      initrds: [{IMAGE}/{VERSION}/vdisk-initrd.img]\n      \
             cmdline: \"console=ttyS0 quiet bootfleet.then=write-reboot\"\n      write_cache: {cache}\n"
        )
    };
    format!(
        r#"
image_profiles:
{}{}
rules:
  - {{ name: server-cache, match: {{ mac: "{SERVER_CACHE_MAC}" }}, image_profile: vdisk-server }}
  - {{ name: client-ram, match: {{ mac: "{CLIENT_RAM_MAC}" }}, image_profile: diskless }}
"#,
        profile("vdisk-server", "server"),
        profile("diskless", "client-ram")
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
        let found = find_files(&self.dir.path().join("data"), &|path| path.ends_with(sha256));
        found
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no blob {sha256} under the streamer's data directory"))
    }
}

/// Files under `dir` (recursively) for which `wanted` holds.
fn find_files(dir: &Path, wanted: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(find_files(&path, wanted));
        } else if wanted(&path) {
            found.push(path);
        }
    }
    found
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

/// Waits until `console()` shows `count` marker lines; returns it.
fn wait_markers(name: &str, console: impl Fn() -> String, count: usize, within: Duration) -> String {
    let started = Instant::now();
    loop {
        let text = console();
        if vdisk_markers(&text).len() >= count {
            eprintln!("{name}: marker {count} after {:.1} s more", started.elapsed().as_secs_f64());
            return text;
        }
        assert!(started.elapsed() < within, "{name}: no marker {count} within {within:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Bytes the streamer's hosts' write caches (`write-caches/*.overlay`)
/// hold on disk.
fn write_cache_bytes(lab: &Lab) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let is_cache = |path: &Path| {
        path.extension().is_some_and(|e| e == "overlay")
            && path.parent().is_some_and(|dir| dir.ends_with("write-caches"))
    };
    let caches = find_files(&lab.dir.path().join("data"), &is_cache);
    assert!(!caches.is_empty(), "no write cache under the streamer's data directory");
    caches.iter().filter_map(|path| std::fs::metadata(path).ok()).map(|meta| meta.blocks() * 512).sum()
}

/// client-ram: iPXE boots the VM, its root is the golden disk read-only
/// under a RAM overlay; what it writes is gone after a reboot.
fn client_ram_vm_forgets_its_writes(lab: &Lab, value: &str) {
    let export = format!("{IMAGE}/{VERSION}/{ROOT_FILE}");
    let mut vm = Vm::start(&lab.client, lab.dir.path(), "ram", CLIENT_RAM_MAC, Firmware::Bios);
    // First boot: the root is the overlay on the golden disk, the value
    // comes from it, the scratch file is not there yet; init writes it
    // (into RAM) and reboots.
    let console = vm.wait_for("BOOTFLEET-VDISK-WROTE", TWO_BOOTS_WITHIN);
    assert!(console.contains(&format!("attached {export} from {NBD}")), "{console}");
    let expected = format!("BOOTFLEET-VDISK {value} root=overlay scratch=absent");
    assert_eq!(vdisk_markers(&console), [expected.as_str()], "first boot:\n{console}");

    // Second boot (the guest rebooted itself: SeaBIOS, iPXE, the same
    // script): the file written before is gone.
    let console = wait_markers("ram", || vm.serial(), 2, TWO_BOOTS_WITHIN);
    assert_eq!(vdisk_markers(&console)[1], expected, "second boot:\n{console}");
    // The guest's kernel logs none (its console shows warnings and errors).
    assert!(!console.contains("I/O error"), "{console}");
    // It would write and reboot again: stop it here (the guard kills QEMU).
}

/// server: the VM runs read-write from `host/<mac>`; its writes reach its
/// write cache on the streamer, and its next boot starts with an empty one.
/// Only the address holding the VM's lease opens that export.
fn server_cache_vm_writes_to_its_cache_until_it_reboots(lab: &Lab, value: &str) {
    let mut vm = Vm::start(&lab.client, lab.dir.path(), "srv", SERVER_CACHE_MAC, Firmware::Bios);
    let console = vm.wait_for("BOOTFLEET-VDISK-WROTE", TWO_BOOTS_WITHIN);
    assert!(console.contains(&format!("attached host/{SERVER_CACHE_MAC}/")), "{console}");
    // The root is the export itself, mounted read-write.
    let expected = format!("BOOTFLEET-VDISK {value} root=ext4 scratch=absent");
    assert_eq!(vdisk_markers(&console), [expected.as_str()], "first boot:\n{console}");
    // The guest synced its write: the streamer's write cache holds it.
    assert!(write_cache_bytes(lab) > 0, "nothing reached the write cache");
    // The operator sees the cache, and the streamer's NBD service.
    let caches = lab.cli(&["images", "caches", "--images-server", IMAGES, "-o", "json"]);
    let caches: serde_json::Value = serde_json::from_slice(&caches.stdout).unwrap();
    let host = caches["caches"].as_array().unwrap().iter().find(|c| c["mac"] == SERVER_CACHE_MAC);
    assert!(host.is_some_and(|c| c["bytes"].as_u64() > Some(0)), "{caches}");
    let status = lab.cli(&["images", "status", "--images-server", IMAGES, "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let nbd = &status["nbd"][0];
    assert_eq!(nbd["address"], NBD, "{status}");
    assert!(nbd["sessions"].as_u64() >= Some(1) && nbd["bytes_read"].as_u64() > Some(0), "{status}");
    let metrics = lab.server.run("curl", &["-sf", "http://127.0.0.1:9100/metrics"]).unwrap();
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(value("bootfleet_streamer_nbd_write_caches") >= 1.0, "{metrics}");
    assert!(value("bootfleet_streamer_nbd_written_bytes_total") > 0.0, "{metrics}");
    // Anyone else naming the VM's MAC is refused: the server's address
    // holds no lease, and the VM's lease is elsewhere.
    let url = format!("nbd://{NBD}/host/{SERVER_CACHE_MAC}/someone-else");
    let stolen = lab.server.command("nbdinfo").arg(&url).env("LIBNBD_DEBUG", "1").output().unwrap();
    let refusal = String::from_utf8_lossy(&stolen.stderr);
    assert!(!stolen.status.success(), "another address opened the VM's export:\n{refusal}");
    assert!(refusal.contains(&format!("the lease of {SERVER_CACHE_MAC} is held at")), "{refusal}");

    // The guest rebooted (same kernel, a new boot id): a new cache, the
    // file is gone.
    let console = wait_markers("srv", || vm.serial(), 2, TWO_BOOTS_WITHIN);
    assert_eq!(vdisk_markers(&console)[1], expected, "second boot:\n{console}");
    assert!(!console.contains("I/O error"), "{console}");
}

#[test]
fn diskless_vms_run_from_a_catalog_vdisk_with_client_ram_and_server_write_caches() {
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

    client_ram_vm_forgets_its_writes(&lab, &value);
    server_cache_vm_writes_to_its_cache_until_it_reboots(&lab, &value);

    // The golden file on the streamer is the file pushed.
    let blob = lab.blob(&golden_sha);
    assert_eq!(sha256(&blob), golden_sha, "the golden image changed on the streamer");
}
