//! Shared by the end-to-end tests: boot assets, the client side of the lab
//! (a bridge with one tap per VM) and QEMU VMs that boot from the network
//! and print a marker on their serial console.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bootfleet_test_support::netns::Netns;
use bootfleet_test_support::process::ChildGuard;

/// The boot assets from `scripts/boot-assets.sh`.
pub(crate) fn assets() -> PathBuf {
    let dir = std::env::var_os("BOOTFLEET_BOOT_ASSETS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/boot-assets"),
        PathBuf::from,
    );
    assert!(
        dir.join("vmlinuz").is_file() && dir.join("initrd.img").is_file(),
        "boot assets missing in {}: run scripts/boot-assets.sh",
        dir.display()
    );
    dir
}

/// Waits until `/healthz` on 127.0.0.1:`port` inside `ns` says serving
/// and mentions `needle` (e.g. "dhcp: serving"); panics after `within`.
pub(crate) fn wait_serving_in(ns: &Netns, port: u16, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let health = ns.run("curl", &["-s", &format!("127.0.0.1:{port}/healthz")]).unwrap_or_default();
        if health.starts_with("serving") && health.contains(needle) {
            return;
        }
        assert!(Instant::now() < deadline, "the service on admin port {port} never served: {health}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Member id of the acting DHCP leader (the first campaigner by creation
/// revision), read with etcdctl from inside `ns`.
pub(crate) fn dhcp_leader(ns: &Netns, etcd_endpoint: &str) -> String {
    let out = ns
        .run(
            "etcdctl",
            &[
                "--endpoints",
                etcd_endpoint,
                "get",
                "--prefix",
                "/bootfleet/v1/election/dhcp-responder/",
                "--sort-by=CREATE",
                "--order=ASCEND",
                "--print-value-only",
            ],
        )
        .unwrap();
    out.lines().next().unwrap_or_default().to_owned()
}

/// Puts `client_if` on a new bridge `br0` in `client` (VM taps join it).
pub(crate) fn bridge(client: &Netns, client_if: &str) {
    client.run("sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"]).unwrap();
    client.ip(&["addr", "flush", "dev", client_if]).unwrap();
    client.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
    client.ip(&["link", "set", client_if, "master", "br0"]).unwrap();
    client.ip(&["link", "set", "br0", "up"]).unwrap();
}

/// How a VM's firmware boots from the network.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Firmware {
    /// SeaBIOS with the e1000's iPXE ROM; SeaBIOS retries a failed boot
    /// after a second, as real machines loop on PXE.
    Bios,
    /// OVMF's own PXE (virtio-net without an option ROM) → ipxe.efi over TFTP.
    UefiPxe,
    /// OVMF's UEFI HTTP boot (PXE switched off) → ipxe.efi over HTTP.
    UefiHttp,
    /// SeaBIOS trying the network first, then the local disk
    /// (`disk.img` from the boot assets, its writes discarded).
    BiosNetThenDisk,
}

/// A running VM.
pub(crate) struct Vm {
    pub(crate) name: String,
    process: ChildGuard,
    serial: PathBuf,
    tap: String,
    started: Instant,
}

impl Vm {
    /// Starts a VM with `mac` on a new tap in `client`'s bridge.
    pub(crate) fn start(client: &Netns, dir: &Path, name: &str, mac: &str, firmware: Firmware) -> Self {
        Self::start_with(client, dir, name, mac, firmware, &[])
    }

    /// As [`Self::start`], with more QEMU arguments (`-smbios …`, say).
    pub(crate) fn start_with(
        client: &Netns,
        dir: &Path,
        name: &str,
        mac: &str,
        firmware: Firmware,
        extra: &[&str],
    ) -> Self {
        let tap = format!("tap-{name}");
        client.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]).unwrap();
        client.ip(&["link", "set", &tap, "master", "br0"]).unwrap();
        client.ip(&["link", "set", &tap, "up"]).unwrap();
        let serial = dir.join(format!("{name}.serial"));
        let accel = std::env::var("BOOTFLEET_LAB_ACCEL").unwrap_or_else(|_| "tcg".into());
        let mut args: Vec<String> = ["-accel", &accel, "-nodefaults", "-vga", "none", "-display", "none"]
            .into_iter()
            .map(String::from)
            .collect();
        args.extend(["-serial".into(), format!("file:{}", serial.display())]);
        args.extend(["-netdev".into(), format!("tap,id=n0,ifname={tap},script=no,downscript=no")]);
        match firmware {
            Firmware::Bios => {
                args.extend(
                    ["-m", "256", "-boot", "order=n,reboot-timeout=1000", "-device"].map(String::from),
                );
                args.push(format!("e1000,netdev=n0,mac={mac},bootindex=1"));
            }
            Firmware::BiosNetThenDisk => {
                let disk = assets().join("disk.img");
                args.extend(["-m", "256", "-device"].map(String::from));
                args.push(format!("e1000,netdev=n0,mac={mac},bootindex=1"));
                args.push("-drive".into());
                args.push(format!("file={},format=raw,if=none,id=d0,snapshot=on", disk.display()));
                args.extend(["-device", "ide-hd,drive=d0,bootindex=2"].map(String::from));
            }
            Firmware::UefiPxe | Firmware::UefiHttp => {
                let vars = dir.join(format!("{name}.vars.fd"));
                std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
                args.extend(["-no-reboot", "-machine", "q35", "-m", "512", "-drive"].map(String::from));
                args.push(
                    "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
                );
                args.push("-drive".into());
                args.push(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
                // No option ROM: the firmware's own network stack boots.
                args.push("-device".into());
                args.push(format!("virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1"));
                if matches!(firmware, Firmware::UefiHttp) {
                    for option in ["IPv4PXESupport", "IPv6PXESupport"] {
                        args.push("-fw_cfg".into());
                        args.push(format!("name=opt/org.tianocore/{option},string=n"));
                    }
                }
            }
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = ChildGuard(client.spawn("qemu-system-x86_64", &args).unwrap());
        Self { name: name.to_owned(), process, serial, tap, started: Instant::now() }
    }

    /// The serial console so far.
    pub(crate) fn serial(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// The console once the marker line appeared, `None` while not yet;
    /// panics if QEMU exited without it.
    pub(crate) fn marker(&mut self) -> Option<String> {
        let text = self.serial();
        if text.contains("BOOTFLEET-MARKER") {
            return Some(text);
        }
        if let Ok(Some(status)) = self.process.0.try_wait() {
            panic!("{}: QEMU exited ({status}) before the marker; serial:\n{text}", self.name);
        }
        None
    }

    /// Waits until the console shows `text`; returns the console so far.
    pub(crate) fn wait_for(&mut self, text: &str, within: Duration) -> String {
        loop {
            let console = self.serial();
            if console.contains(text) {
                eprintln!("{}: {text:?} after {:.1} s", self.name, self.started.elapsed().as_secs_f64());
                return console;
            }
            if let Ok(Some(status)) = self.process.0.try_wait() {
                panic!("{}: QEMU exited ({status}) before {text:?}; serial:\n{console}", self.name);
            }
            assert!(
                self.started.elapsed() < within,
                "{}: no {text:?} within {within:?}; serial:\n{console}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for the marker; returns the console (the VM powers off).
    pub(crate) fn wait_marker(mut self, client: &Netns, within: Duration) -> String {
        loop {
            if let Some(text) = self.marker() {
                eprintln!("{}: marker after {:.1} s", self.name, self.started.elapsed().as_secs_f64());
                self.finish(client);
                return text;
            }
            assert!(
                self.started.elapsed() < within,
                "{}: no marker within {within:?}; serial:\n{}",
                self.name,
                self.serial()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for QEMU to exit (the VM powers off after the marker) and
    /// removes its tap.
    pub(crate) fn finish(mut self, client: &Netns) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.process.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = client.ip(&["link", "del", &self.tap]);
    }

    /// Seconds since it started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Loopback ports of a local `bootfleet up`; 0 lets the system pick.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct UpPorts {
    pub(crate) admin: u16,
    pub(crate) rules: u16,
    pub(crate) http: u16,
    pub(crate) images: u16,
}

/// `bootfleet up` on the embedded store in `data_dir`, every service on
/// loopback, `token` guarding rule and image writes, logging warnings; the
/// caller adds what else it needs and spawns it.
pub(crate) fn up_command(data_dir: &Path, ports: UpPorts, token: &str) -> std::process::Command {
    let at = |port: u16| format!("127.0.0.1:{port}");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bootfleet"));
    command
        .args(["up", "--store", "embedded", "--log", "warn", "--data-dir"])
        .arg(data_dir)
        .args(["--admin-listen", &at(ports.admin), "--rules-listen", &at(ports.rules)])
        .args(["--rules-admin-token", token, "--streamer-admin-token", token])
        .args(["--tftp-listen", "127.0.0.1:0", "--streamer-listen", &at(ports.http)])
        .args(["--streamer-grpc-listen", &at(ports.images)])
        .stdin(std::process::Stdio::null());
    command
}
