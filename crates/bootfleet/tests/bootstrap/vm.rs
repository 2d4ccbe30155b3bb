//! QEMU VMs that boot from a bootstrap medium (a CD or a disk), their NIC
//! without any option ROM: nothing but the medium's iPXE can boot from the
//! network.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bootfleet_test_support::netns::Netns;
use bootfleet_test_support::process::ChildGuard;

/// What the VM boots.
#[derive(Clone, Debug)]
pub(crate) enum Boot {
    /// SeaBIOS, the ISO as its CD-ROM.
    BiosCd(PathBuf),
    /// SeaBIOS, the ISO as CD-ROM first, then the local disk
    /// (`disk.img` from the boot assets, writes discarded).
    BiosCdThenDisk(PathBuf),
    /// OVMF, the ISO as CD-ROM.
    UefiCd(PathBuf),
    /// OVMF, the raw disk image as its disk.
    UefiDisk(PathBuf),
}

/// A running VM, killed when dropped.
pub(crate) struct Vm {
    name: String,
    process: ChildGuard,
    serial: PathBuf,
    started: Instant,
}

impl Vm {
    /// Starts a VM with `mac` on a new tap in `ns`'s bridge `br0`.
    pub(crate) fn start(ns: &Netns, dir: &Path, name: &str, mac: &str, boot: &Boot) -> Self {
        let tap = format!("tap-{name}");
        ns.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]).unwrap();
        ns.ip(&["link", "set", &tap, "master", "br0"]).unwrap();
        ns.ip(&["link", "set", &tap, "up"]).unwrap();
        let serial = dir.join(format!("{name}.serial"));
        let mut args: Vec<String> =
            ["-accel", "tcg", "-nodefaults", "-vga", "none", "-display", "none", "-no-reboot"]
                .map(String::from)
                .to_vec();
        args.push("-serial".into());
        args.push(format!("file:{}", serial.display()));
        args.push("-netdev".into());
        args.push(format!("tap,id=n0,ifname={tap},script=no,downscript=no"));
        let cd = |iso: &Path, index: u8| {
            [
                "-drive".to_owned(),
                format!("file={},media=cdrom,if=none,id=cd0,readonly=on", iso.display()),
                "-device".to_owned(),
                format!("ide-cd,drive=cd0,bootindex={index}"),
            ]
        };
        let uefi = |args: &mut Vec<String>| {
            let vars = dir.join(format!("{name}.vars.fd"));
            std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
            args.extend(["-machine", "q35", "-m", "512", "-drive"].map(String::from));
            args.push("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".into());
            args.push("-drive".into());
            args.push(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
            args.push("-device".into());
            args.push(format!("virtio-net-pci,netdev=n0,mac={mac},romfile="));
        };
        let bios = |args: &mut Vec<String>| {
            args.extend(["-m", "256", "-device"].map(String::from));
            args.push(format!("e1000,netdev=n0,mac={mac},romfile="));
        };
        match boot {
            Boot::BiosCd(iso) => {
                bios(&mut args);
                args.extend(cd(iso, 1));
            }
            Boot::BiosCdThenDisk(iso) => {
                bios(&mut args);
                args.extend(cd(iso, 1));
                let disk = super::common::assets().join("disk.img");
                args.push("-drive".into());
                args.push(format!("file={},format=raw,if=none,id=d0,snapshot=on", disk.display()));
                args.extend(["-device", "ide-hd,drive=d0,bootindex=2"].map(String::from));
            }
            Boot::UefiCd(iso) => {
                uefi(&mut args);
                args.extend(cd(iso, 1));
            }
            Boot::UefiDisk(image) => {
                uefi(&mut args);
                args.push("-drive".into());
                args.push(format!("file={},format=raw,if=none,id=d0,snapshot=on", image.display()));
                args.extend(["-device", "virtio-blk-pci,drive=d0,bootindex=1"].map(String::from));
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = ChildGuard(ns.spawn("qemu-system-x86_64", &args).unwrap());
        Self { name: name.to_owned(), process, serial, started: Instant::now() }
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits until the console shows `text` (the VM may power off right
    /// after); returns the console and the time since start.
    pub(crate) fn wait_for(mut self, text: &str, within: Duration) -> (String, Duration) {
        loop {
            let console = self.console();
            if console.contains(text) {
                let took = self.started.elapsed();
                eprintln!("{}: {text:?} after {:.1} s", self.name, took.as_secs_f64());
                return (console, took);
            }
            if let Ok(Some(status)) = self.process.0.try_wait() {
                // The console file may lag the exit by a moment.
                std::thread::sleep(Duration::from_millis(200));
                let console = self.console();
                if console.contains(text) {
                    return (console, self.started.elapsed());
                }
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
}
