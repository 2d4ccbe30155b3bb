//! vDisk failover (issue 23): a diskless VM keeps running when the image
//! streamer serving its root disk dies.
//!
//! The lab: a 3-member etcd and two image streamer replicas (separate
//! processes, `streamer.nbd_listen` each) in one network namespace, both
//! holding the same vDisk (pushed to each); the VM's tap on a bridge in
//! another, joined by a veth pair in 198.18.71.0/24. The VM boots the
//! kernel and the vDisk initramfs from the boot assets directly (QEMU
//! `-kernel`), with both replicas on its command line, in `client-ram`
//! mode. Its root is a test image built here: busybox, a 64 MiB file of
//! known checksum, and an init that reads the file with O_DIRECT (every
//! block from the network) a MiB at a time, printing its progress, then
//! the checksum and the kernel's log.
//!
//! A quarter into the read the serving replica fails, three times, with a
//! VM each time: first it hangs (SIGSTOP: connections stay open, requests
//! go unanswered, as with a machine or link gone dark), then it is drained
//! (SIGTERM, as an orchestrator stops it: it answers what is in flight,
//! closes its sessions and exits cleanly), then, started again, it dies
//! (SIGKILL: connections reset). The initramfs's `bootfleet-nbd-attach`
//! moves the device to the other replica: the checksum matches, no read
//! fails, and the guest kernel logged no I/O error. The failover pause
//! (the fault to the first read the other replica serves, seen in its
//! metrics) is printed, not asserted.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bootfleet_test_support::etcd::EtcdCluster;
use bootfleet_test_support::netns::{Netns, link};
use bootfleet_test_support::process::ChildGuard;
use common::{assets, bridge, wait_serving_in};

const BIN: &str = env!("CARGO_BIN_EXE_bootfleet");
const TOKEN: &str = "vdisk-failover-token-0123456789";
const SERVER_IF: &str = "bfoA-oB";
const CLIENT_IF: &str = "bfoB-oA";
const IMAGE: &str = "failover";
const VERSION: &str = "1";
const ROOT_FILE: &str = "failover-root.ext4";
/// The replicas' NBD listeners, in the order the VM's command line lists
/// them: the VM attaches to `a` first.
const NBD_A: &str = "198.18.71.11:10809";
const NBD_B: &str = "198.18.71.12:10809";
/// The file the guest reads: 64 chunks of 1 MiB.
const BIG_CHUNKS: usize = 64;
/// The chunk after which the serving replica fails.
const FAIL_AT_CHUNK: usize = 16;
/// A TCG boot and a 64 MiB read over NBD, beside etcd and two streamers on
/// 2 busy cores.
const WITHIN: Duration = Duration::from_secs(150);

/// The guest's init: sends the NBD helper SIGTERM and SIGHUP, reads /big
/// a MiB at a time with O_DIRECT into sha256sum, printing every 4th chunk and any failed read, then the
/// checksum and the kernel's whole log, and powers off.
const INIT: &str = r#"#!/bin/busybox sh
bb=/bin/busybox
chunks=$(( $($bb stat -c %s /big) / 1048576 ))
# As an init system at shutdown would: the helper must not go.
helper=$($bb ps -o pid,args | $bb grep '[n]bd-attach' | $bb awk '{print $1}')
$bb kill -TERM $helper
$bb kill -HUP $helper
echo "FAILOVER-READING $chunks"
i=0
while [ $i -lt $chunks ]; do
  $bb dd if=/big bs=1M skip=$i count=1 iflag=direct 2>/dev/null || echo "FAILOVER-READ-ERROR $i" > /dev/console
  [ $((i % 4)) = 0 ] && echo "FAILOVER-PROGRESS $i" > /dev/console
  i=$((i+1))
done | $bb sha256sum > /tmp/sum
echo "FAILOVER-SUM $($bb cut -d' ' -f1 /tmp/sum)"
echo "FAILOVER-HELPER $($bb ps -o args | $bb grep '[n]bd-attach')"
$bb dmesg | $bb sed 's/^/FAILOVER-DMESG /'
echo "FAILOVER-END"
$bb sync
$bb poweroff -f
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

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_owned()
}

/// Builds the guest's root filesystem in `dir`; the path of the image and
/// the checksum of its big file.
fn build_root(dir: &Path) -> (PathBuf, String) {
    let stage = dir.join("root");
    for sub in ["bin", "sbin", "dev", "proc", "sys", "run", "tmp"] {
        std::fs::create_dir_all(stage.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", stage.join("bin/busybox")).unwrap();
    let init = stage.join("sbin/init");
    std::fs::write(&init, INIT).unwrap();
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    let big = stage.join("big");
    std::fs::write(&big, bootfleet_test_support::pseudo_random(BIG_CHUNKS << 20, 71)).unwrap();
    let checksum = sha256(&big);
    let image = dir.join(ROOT_FILE);
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-L", "failover-root", "-d"])
        .arg(&stage)
        .arg(&image)
        .arg("80M")
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_dir_all(&stage).unwrap();
    (image, checksum)
}

struct Lab {
    /// By name, with their admin ports; dropped (killed) with the lab.
    streamers: Vec<(String, ChildGuard, u16)>,
    /// The `[store]` section every replica shares.
    store: String,
    dir: tempfile::TempDir,
    _etcd: EtcdCluster,
    // Dropped last: deleting a namespace kills what still runs in it.
    client: Netns,
    server: Netns,
}

impl Lab {
    fn start() -> Self {
        let server = Netns::create("bfoA").unwrap();
        let client = Netns::create("bfoB").unwrap();
        link(&server, "198.18.71.1/24", &client, "198.18.71.2/24").unwrap();
        for replica in [11, 12] {
            server.ip(&["addr", "add", &format!("198.18.71.{replica}/24"), "dev", SERVER_IF]).unwrap();
        }
        bridge(&client, CLIENT_IF);
        let etcd = EtcdCluster::start_in(3, Some("bfoA")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let loaders = dir.path().join("loaders");
        std::fs::create_dir(&loaders).unwrap();
        let store = format!(
            "[store]\nbackend = \"etcd\"\netcd_endpoints = [{}]\nelection_ttl = \"2s\"\nmember_ttl = \"3s\"\n",
            etcd.endpoints().iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(", ")
        );
        let mut lab = Self { streamers: Vec::new(), store, dir, _etcd: etcd, client, server };
        for letter in ["a", "b"] {
            lab.spawn_streamer(letter);
        }
        for (_, _, admin) in &lab.streamers {
            wait_serving_in(&lab.server, *admin, "", Duration::from_secs(40));
        }
        lab
    }

    /// Starts replica `a` or `b` (again: its data directory stays).
    fn spawn_streamer(&mut self, letter: &str) {
        let (n, nbd) = if letter == "a" { (1u16, NBD_A) } else { (2, NBD_B) };
        let name = format!("streamer-{letter}");
        let config = format!(
            "{}[streamer]\nlisten = \"198.18.71.{}:8080\"\ngrpc_listen = \"127.0.0.1:{}\"\n\
             nbd_listen = \"{nbd}\"\nadmin_token = \"{TOKEN}\"\ndata_dir = \"{}\"\nloaders_dir = \"{}\"\n",
            self.store,
            10 + n,
            7070 + n,
            self.dir.path().join(&name).display(),
            self.dir.path().join("loaders").display()
        );
        let file = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, config).unwrap();
        let admin = 9220 + n;
        let binary = service_binary("bootfleet-image-streamer");
        let args = [
            "-c",
            file.to_str().unwrap(),
            "--member-id",
            &name,
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
            "--log",
            "warn",
        ];
        let child = self.server.spawn(binary.to_str().unwrap(), &args).unwrap();
        self.streamers.push((name, ChildGuard(child), admin));
    }

    /// Pushes the root image to both replicas (a version is immutable:
    /// the same files committed twice are one version).
    fn push_to_both(&self, root: &Path) {
        let image = self.dir.path().join("image");
        std::fs::create_dir(&image).unwrap();
        std::fs::rename(root, image.join(ROOT_FILE)).unwrap();
        let token = self.dir.path().join("token");
        std::fs::write(&token, TOKEN).unwrap();
        for grpc in [7071, 7072] {
            let out = self
                .server
                .command(BIN)
                .args(["images", "push", image.to_str().unwrap(), "--image", IMAGE, "--version", VERSION])
                .args(["--images-server", &format!("http://127.0.0.1:{grpc}")])
                .args(["--token-file", token.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(out.status.success(), "push to {grpc}: {}", String::from_utf8_lossy(&out.stderr));
        }
        // Each replica exports it (a real client asks).
        let export = format!("{IMAGE}/{VERSION}/{ROOT_FILE}");
        for nbd in [NBD_A, NBD_B] {
            let listed = self.server.run("nbdinfo", &["--list", "--json", &format!("nbd://{nbd}")]).unwrap();
            assert!(listed.contains(&format!("\"{export}\"")), "{nbd} does not export {export}: {listed}");
        }
    }

    /// A VM: kernel and vDisk initramfs from the boot assets, its root
    /// the export, replica a first, on tap `tap-<name>` with `ip`.
    fn start_vm(&self, name: &str, mac: &str, ip: &str) -> Vm {
        let tap = format!("tap-{name}");
        self.client.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]).unwrap();
        self.client.ip(&["link", "set", &tap, "master", "br0"]).unwrap();
        self.client.ip(&["link", "set", &tap, "up"]).unwrap();
        let serial = self.dir.path().join(format!("{name}.serial"));
        let assets = assets();
        let accel = std::env::var("BOOTFLEET_LAB_ACCEL").unwrap_or_else(|_| "tcg".into());
        let cmdline = format!(
            "console=ttyS0 quiet bootfleet.nbd={NBD_A},{NBD_B} bootfleet.export={IMAGE}/{VERSION}/{ROOT_FILE} \
             bootfleet.cache=client-ram bootfleet.ip={ip}/24"
        );
        let args = [
            "-accel".into(),
            accel,
            "-nodefaults".into(),
            "-vga".into(),
            "none".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-m".into(),
            "256".into(),
            "-serial".into(),
            format!("file:{}", serial.display()),
            "-netdev".into(),
            format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            "-device".into(),
            format!("e1000,netdev=n0,mac={mac}"),
            "-kernel".into(),
            assets.join("vmlinuz").display().to_string(),
            "-initrd".into(),
            assets.join("vdisk-initrd.img").display().to_string(),
            "-append".into(),
            cmdline,
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = ChildGuard(self.client.spawn("qemu-system-x86_64", &args).unwrap());
        Vm { name: name.to_owned(), process, serial, started: Instant::now() }
    }

    fn streamer_pid(&self, name: &str) -> u32 {
        self.streamers.iter().find(|(n, _, _)| n == name).map(|(_, guard, _)| guard.0.id()).unwrap()
    }

    /// Sends `signal` (`-STOP`, `-CONT`, `-KILL`) to a streamer.
    fn signal(&mut self, name: &str, signal: &str) {
        let pid = self.streamer_pid(name).to_string();
        let status = std::process::Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {name}");
        if signal == "-KILL" || signal == "-TERM" {
            let index = self.streamers.iter().position(|(n, _, _)| n == name).unwrap();
            let (_, mut guard, _) = self.streamers.remove(index);
            let status = guard.0.wait().unwrap();
            // A drained replica stops cleanly: its sessions answered what
            // was in flight and closed.
            assert!(signal == "-KILL" || status.success(), "{name} did not stop cleanly: {status}");
        }
    }

    /// Bytes the replica with admin port `admin` has served over NBD.
    fn nbd_bytes_read(&self, admin: u16) -> u64 {
        let metrics = self.server.run("curl", &["-s", &format!("127.0.0.1:{admin}/metrics")]).unwrap();
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("bootfleet_streamer_nbd_read_bytes_total "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .map(|value| value as u64)
            .unwrap_or_else(|| panic!("no NBD read counter in the metrics of admin port {admin}:\n{metrics}"))
    }
}

/// A running VM; QEMU is killed when it drops.
struct Vm {
    name: String,
    process: ChildGuard,
    serial: PathBuf,
    started: Instant,
}

impl Vm {
    fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits until the console shows `text`; returns the console so far.
    fn wait_console(&mut self, text: &str) -> String {
        loop {
            let console = self.console();
            if console.contains(text) {
                eprintln!("{}: {text:?} after {:.1} s", self.name, self.started.elapsed().as_secs_f64());
                return console;
            }
            if let Ok(Some(status)) = self.process.0.try_wait() {
                panic!("{}: QEMU exited ({status}) before {text:?}; serial:\n{console}", self.name);
            }
            assert!(
                self.started.elapsed() < WITHIN,
                "{}: no {text:?} within {WITHIN:?}:\n{console}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Lines of the guest kernel's log that report a failed I/O.
fn io_errors(console: &str) -> Vec<&str> {
    const SIGNS: [&str; 5] = ["I/O error", "EXT4-fs error", "blk_update_request", "Buffer I/O", "critical"];
    console
        .lines()
        .filter(|line| line.starts_with("FAILOVER-DMESG ") || line.starts_with('['))
        .filter(|line| SIGNS.iter().any(|sign| line.contains(sign)))
        .collect()
}

/// Boots a VM that reads the big file from replica a, hits a with
/// `signal` a quarter into the read, and checks that it read on from
/// replica b without an error; prints the failover pause.
fn vm_reads_on_when_replica_a_fails(
    lab: &mut Lab,
    name: &str,
    mac: &str,
    ip: &str,
    signal: &str,
    checksum: &str,
) {
    let export = format!("{IMAGE}/{VERSION}/{ROOT_FILE}");
    let mut vm = lab.start_vm(name, mac, ip);
    let console = vm.wait_console(&format!("attached {export} from "));
    assert!(
        console.contains(&format!("attached {export} from {NBD_A}")),
        "{name} did not attach to the first replica (are the boot assets older than bootfleet-nbd-attach? \
         run scripts/boot-assets.sh):\n{console}"
    );

    vm.wait_console(&format!("FAILOVER-PROGRESS {FAIL_AT_CHUNK}"));
    let b_before = lab.nbd_bytes_read(9222);
    lab.signal("streamer-a", signal);
    let failed = Instant::now();
    eprintln!("{name}: kill {signal} streamer-a (serving {NBD_A})");
    // The first read replica b serves after that (or the guest's end,
    // should b never serve: the checks below then say what the guest saw).
    let pause = loop {
        if lab.nbd_bytes_read(9222) > b_before {
            break Some(failed.elapsed());
        }
        if vm.console().contains("FAILOVER-END") || failed.elapsed() > Duration::from_secs(60) {
            break None;
        }
    };
    match pause {
        Some(pause) => eprintln!(
            "{name}: failover pause (kill {signal} to the first read served by replica b): {} ms",
            pause.as_millis()
        ),
        None => eprintln!("{name}: replica b served nothing after the kill"),
    }

    let console = vm.wait_console("FAILOVER-END");
    let nbd_lines = console
        .lines()
        .filter(|l| l.starts_with("bootfleet-vdisk") || l.contains("FAILOVER-DMESG") && l.contains("nbd0"));
    eprintln!("{}", nbd_lines.collect::<Vec<_>>().join("\n"));
    // The guest's log came through (the check below is not vacuous).
    assert!(
        console.lines().any(|l| l.starts_with("FAILOVER-DMESG ") && l.contains("nbd0")),
        "{name}: no kernel log on the console:\n{console}"
    );
    assert!(!console.contains("FAILOVER-READ-ERROR"), "{name}: a read failed:\n{console}");
    // The helper outlived switch_root, SIGTERM and SIGHUP, under the name
    // systemd's shutdown spares.
    assert!(console.contains("FAILOVER-HELPER @bootfleet-nbd-attach --replicas"), "{name}:\n{console}");
    assert!(
        io_errors(&console).is_empty(),
        "{name}: the guest kernel logged I/O errors: {:#?}",
        io_errors(&console)
    );
    assert!(console.contains(&format!("reattached {export} from {NBD_B}")), "{name}:\n{console}");
    let sum = console
        .lines()
        .find_map(|line| line.strip_prefix("FAILOVER-SUM "))
        .unwrap_or_else(|| panic!("{name}: no checksum:\n{console}"));
    assert_eq!(sum.trim(), checksum, "{name}: the file read differs from the file written:\n{console}");
    // The failure came a quarter into the read: replica b served the rest
    // (at least half the file; O_DIRECT reads are not cached).
    let b_served = lab.nbd_bytes_read(9222) - b_before;
    assert!(b_served >= (BIG_CHUNKS as u64 / 2) << 20, "{name}: replica b served only {b_served} bytes");
    let _ = vm.process.0.wait();
}

#[test]
fn client_ram_vms_read_on_when_their_nbd_replica_hangs_or_is_sigkilled() {
    let mut lab = Lab::start();
    let (root, checksum) = build_root(lab.dir.path());
    lab.push_to_both(&root);
    // Replica a stops answering without closing its connections (a hung
    // process; a machine or link gone dark looks the same): the requests
    // in flight time out, the kernel requeues them and reports the
    // connection dead.
    vm_reads_on_when_replica_a_fails(
        &mut lab,
        "hang",
        "52:54:00:00:71:01",
        "198.18.71.50",
        "-STOP",
        &checksum,
    );
    lab.signal("streamer-a", "-CONT");
    // Replica a is stopped (SIGTERM, as an orchestrator drains it): it
    // answers what is in flight and closes its sessions, which move to b.
    vm_reads_on_when_replica_a_fails(
        &mut lab,
        "drain",
        "52:54:00:00:71:03",
        "198.18.71.52",
        "-TERM",
        &checksum,
    );
    lab.spawn_streamer("a");
    wait_serving_in(&lab.server, 9221, "", Duration::from_secs(40));
    // Replica a dies: its connections are reset at once.
    vm_reads_on_when_replica_a_fails(
        &mut lab,
        "kill",
        "52:54:00:00:71:02",
        "198.18.71.51",
        "-KILL",
        &checksum,
    );
}
