//! Boot time of one VM through Bootfleet vs through dnsmasq + a static HTTP
//! server, side by side in one run; prints a table.
//!
//! ```sh
//! scripts/boot-assets.sh
//! cargo bench -p bootfleet --bench boot
//! ```
//!
//! Both labs are the same: a network namespace with the server(s), a bridge
//! with the VM's tap in another, 198.18.0.0/15 only. The VM is SeaBIOS with
//! the e1000's iPXE ROM under TCG, booting the same kernel and initramfs to
//! the same marker. The peer: dnsmasq hands out the address, sends iPXE to
//! a static `boot.ipxe` (same kernel command line) and answers IPv6 router
//! solicitations (`enable-ra`, as Bootfleet's `router_advertisements`);
//! Python's http.server serves the files. Each VM is timed from QEMU's
//! start to the marker on its serial console; every wait is bounded.
#![allow(clippy::print_stdout, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bootfleet_test_support::netns::{Netns, link};
use bootfleet_test_support::process::ChildGuard;
use common::{Firmware, Vm, assets, bridge};

const BIN: &str = env!("CARGO_BIN_EXE_bootfleet");
const TOKEN: &str = "boot-bench-token-0123456789";
const ROUNDS: usize = 3;
const CMDLINE: &str = "console=ttyS0 quiet bootfleet.marker=bench";

struct Lab {
    server: Netns,
    client: Netns,
    dir: tempfile::TempDir,
    _processes: Vec<ChildGuard>,
}

fn lab(prefix: &str, octet: u8) -> Lab {
    let server = Netns::create(&format!("{prefix}A")).unwrap();
    let client = Netns::create(&format!("{prefix}B")).unwrap();
    link(&server, &format!("198.18.{octet}.1/24"), &client, &format!("198.18.{octet}.2/24")).unwrap();
    bridge(&client, &format!("{prefix}B-{}A", &prefix[2..]));
    Lab { server, client, dir: tempfile::tempdir().unwrap(), _processes: Vec::new() }
}

fn wait_http(ns: &Netns, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while ns.run("curl", &["-sf", "-o", "/dev/null", url]).is_err() {
        assert!(Instant::now() < deadline, "{url} never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn bootfleet_lab() -> Lab {
    let mut lab = lab("bfx", 97);
    let assets = assets();
    let tftp = lab.dir.path().join("tftp");
    std::fs::create_dir(&tftp).unwrap();
    let config = lab.dir.path().join("up.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nbackend = \"embedded\"\ndata_dir = \"{data}\"\n[admin]\nlisten = \"127.0.0.1:9100\"\n\
             [rules]\nlisten = \"127.0.0.1:7070\"\nadmin_token = \"{TOKEN}\"\n\
             [tftp]\nlisten = \"198.18.97.1:69\"\nroot = \"{tftp}\"\n\
             [streamer]\nlisten = \"198.18.97.1:8080\"\ngrpc_listen = \"127.0.0.1:7072\"\nadmin_token = \"{TOKEN}\"\n\
             [dhcp]\nmode = \"full\"\ninterfaces = [\"bfxA-xB\"]\nserver_ip = \"198.18.97.1\"\n\
             http_base = \"http://198.18.97.1:8080\"\nrules_url = \"http://127.0.0.1:7070\"\n\
             router_advertisements = true\n[[dhcp.pools]]\nsubnet = \"198.18.97.0/24\"\n\
             start = \"198.18.97.100\"\nend = \"198.18.97.150\"\nlease_time = \"10m\"\n",
            data = lab.dir.path().join("data").display(),
            tftp = tftp.display()
        ),
    )
    .unwrap();
    let up = lab.server.spawn(BIN, &["up", "-c", config.to_str().unwrap(), "--log", "warn"]).unwrap();
    lab._processes.push(ChildGuard(up));
    wait_http(&lab.server, "http://127.0.0.1:9100/healthz");
    let image = lab.dir.path().join("image");
    std::fs::create_dir(&image).unwrap();
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(assets.join(f), image.join(f)).unwrap();
    }
    std::fs::write(lab.dir.path().join("token"), TOKEN).unwrap();
    let token = lab.dir.path().join("token");
    let push = lab
        .server
        .command(BIN)
        .args(["images", "push", image.to_str().unwrap(), "--image", "tiny", "--version", "1"])
        .args(["--token-file", token.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(push.status.success(), "{}", String::from_utf8_lossy(&push.stderr));
    let rules = lab.dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        format!(
            "image_profiles:\n  - name: tiny\n    kernel:\n      kernel: tiny/1/vmlinuz\n      \
             initrds: [tiny/1/initrd.img]\n      cmdline: \"{CMDLINE}\"\n\
             rules:\n  - {{ name: all, match: {{ mac: \"52:54:00:*\" }}, image_profile: tiny }}\n"
        ),
    )
    .unwrap();
    let apply = lab
        .server
        .command(BIN)
        .args(["apply", "-f", rules.to_str().unwrap(), "--activate", "--token", TOKEN])
        .output()
        .unwrap();
    assert!(apply.status.success(), "{}", String::from_utf8_lossy(&apply.stderr));
    lab
}

fn dnsmasq_lab() -> Lab {
    let mut lab = lab("bfy", 98);
    let assets = assets();
    let www = lab.dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(assets.join(f), www.join(f)).unwrap();
    }
    std::fs::write(
        www.join("boot.ipxe"),
        format!(
            "#!ipxe\nkernel http://198.18.98.1:8080/vmlinuz {CMDLINE} initrd=initrd.img\n\
             initrd http://198.18.98.1:8080/initrd.img\nboot\n"
        ),
    )
    .unwrap();
    // dnsmasq's router advertisements need an IPv6 prefix on the interface.
    lab.server.ip(&["-6", "addr", "add", "fd00:98::1/64", "dev", "bfyA-yB", "nodad"]).unwrap();
    let http = lab
        .server
        .spawn(
            "python3",
            &["-m", "http.server", "8080", "--bind", "198.18.98.1", "-d", www.to_str().unwrap()],
        )
        .unwrap();
    lab._processes.push(ChildGuard(http));
    let args = [
        "--no-daemon",
        "--port=0",
        "--interface=bfyA-yB",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--leasefile-ro",
        "--dhcp-range=198.18.98.100,198.18.98.150,10m",
        "--dhcp-range=::,constructor:bfyA-yB,ra-only",
        "--enable-ra",
        "--dhcp-userclass=set:ipxe,iPXE",
        "--dhcp-boot=tag:ipxe,http://198.18.98.1:8080/boot.ipxe",
        "--quiet-dhcp",
        "--quiet-ra",
    ];
    let dnsmasq = lab.server.spawn("dnsmasq", &args).unwrap();
    lab._processes.push(ChildGuard(dnsmasq));
    wait_http(&lab.server, "http://198.18.98.1:8080/boot.ipxe");
    lab
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time_boots(lab: &Lab, name: &str) -> Vec<f64> {
    (0..ROUNDS)
        .map(|i| {
            let mac = format!("52:54:00:00:97:{:02x}", i + 1);
            let vm = Vm::start(&lab.client, lab.dir.path(), &format!("{name}{i}"), &mac, Firmware::Bios);
            let started = Instant::now();
            let serial = vm.wait_marker(&lab.client, Duration::from_secs(120));
            assert!(serial.contains("BOOTFLEET-MARKER bench"), "{serial}");
            started.elapsed().as_secs_f64()
        })
        .collect()
}

fn main() {
    let ours = {
        let lab = bootfleet_lab();
        time_boots(&lab, "bf")
    };
    let theirs = {
        let lab = dnsmasq_lab();
        time_boots(&lab, "dm")
    };
    println!(
        "\nBIOS VM (SeaBIOS + iPXE ROM, TCG) from power-on to the kernel's marker, {ROUNDS} boots each\n"
    );
    println!("{:<36} {:>10} {:>10} {:>10}", "server", "median s", "min s", "max s");
    for (name, times) in
        [("bootfleet up (full DHCP, rules)", &ours), ("dnsmasq + python http.server", &theirs)]
    {
        let (min, max) = times.iter().fold((f64::MAX, 0.0f64), |(lo, hi), t| (lo.min(*t), hi.max(*t)));
        println!("{name:<36} {:>10.2} {:>10.2} {:>10.2}", median(times.clone()), min, max);
    }
}
