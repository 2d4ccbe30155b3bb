//! The compose stack (deploy/compose/compose.yaml) under podman-compose,
//! inside a test network namespace: 3 etcd, 2 rules engines, 2 DHCP in hot
//! standby, 2 TFTP, 2 streamers and a DNS server, all containers. A client
//! resolving the round-robin TFTP name reaches both replicas; then VMs boot
//! through the stack while the DHCP leader, one TFTP and one streamer
//! container are killed with `podman kill`, and every VM still boots.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bootfleet_test_support::netns::{Netns, link};
use common::{Firmware, Vm, assets, bridge, dhcp_leader, wait_serving_in};

const BIN: &str = env!("CARGO_BIN_EXE_bootfleet");
const TOKEN: &str = "compose-lab-token-0123456789";
const PROJECT: &str = "bfcompose";
const SERVER_IF: &str = "bfcA-cB";
const BOOT_WITHIN: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The stack's containers, brought down (with their volumes) however the
/// test ends.
struct Stack {
    ns: String,
    env: PathBuf,
    conf: PathBuf,
}

impl Stack {
    fn compose(&self, args: &[&str]) -> Output {
        let compose = repo().join("target/venv/bin/podman-compose");
        assert!(compose.is_file(), "{} missing: run scripts/test.sh", compose.display());
        let file = repo().join("deploy/compose/compose.yaml");
        // network_mode: host, run from inside the test namespace, puts every
        // container there, never on the machine's interfaces. nsenter only
        // switches the network namespace (`ip netns exec` would also remount
        // /sys and hide the cgroup mounts runc needs).
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg(&compose)
            .args(["-p", PROJECT, "-f", file.to_str().unwrap(), "--env-file", self.env.to_str().unwrap()])
            .args(args)
            .env("CONTAINERS_CONF", &self.conf)
            .output()
            .unwrap()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "-t", "2"]);
    }
}

fn podman_kill(service: &str) {
    let name = format!("{PROJECT}_{service}_1");
    let out = Command::new("podman").args(["kill", &name]).output().unwrap();
    assert!(out.status.success(), "podman kill {name}: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("podman kill {name}");
}

fn tftp_transfers(server: &Netns, admin: u16) -> u64 {
    let metrics = server.run("curl", &["-s", &format!("127.0.0.1:{admin}/metrics")]).unwrap_or_default();
    metrics
        .lines()
        .filter(|l| l.starts_with("bootfleet_tftp_transfers_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn compose_stack_round_robins_and_boots_vms_while_containers_die() {
    let assets = assets();
    let out = Command::new(repo().join("scripts/build-images.sh"))
        .args(["--bin-dir", Path::new(BIN).parent().unwrap().to_str().unwrap(), "--tag", "test", "--peers"])
        .output()
        .unwrap();
    assert!(out.status.success(), "building images: {}", String::from_utf8_lossy(&out.stderr));

    let server = Netns::create("bfcA").unwrap();
    let client = Netns::create("bfcB").unwrap();
    link(&server, "198.18.66.1/24", &client, "198.18.66.2/24").unwrap();
    for ip in ["198.18.66.10", "198.18.66.11", "198.18.66.12"] {
        server.ip(&["addr", "add", &format!("{ip}/24"), "dev", SERVER_IF]).unwrap();
    }
    bridge(&client, "bfcB-cA");
    client.ip(&["addr", "add", "198.18.66.2/24", "dev", "br0"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tftp = dir.path().join("tftp");
    std::fs::create_dir(&tftp).unwrap();
    for loader in ["undionly.kpxe", "ipxe.efi", "snponly.efi"] {
        std::fs::copy(assets.join(loader), tftp.join(loader)).unwrap();
    }
    let dhcp = dir.path().join("dhcp.toml");
    std::fs::write(
        &dhcp,
        format!(
            "[dhcp]\nmode = \"full\"\ninterfaces = [\"{SERVER_IF}\"]\nserver_ip = \"198.18.66.1\"\n\
             tftp_server = \"198.18.66.11\"\nhttp_base = \"http://198.18.66.11:8080\"\n\
             rules_url = \"http://127.0.0.1:7101\"\nrouter_advertisements = true\n\
             service_token_file = \"/run/secrets/bootfleet-service-token\"\n\
             tftp_from_members = true\nstreamers_from_members = true\n\
             [[dhcp.pools]]\nsubnet = \"198.18.66.0/24\"\nstart = \"198.18.66.100\"\n\
             end = \"198.18.66.150\"\nlease_time = \"10m\"\n"
        ),
    )
    .unwrap();
    let service_token = dir.path().join("service.token");
    std::fs::write(&service_token, "compose-lab-service-token-0123456789").unwrap();
    let env = dir.path().join("lab.env");
    std::fs::write(
        &env,
        format!(
            "REPLICA_A_IP=198.18.66.11\nREPLICA_B_IP=198.18.66.12\nDNS_IP=198.18.66.10\nDOMAIN=lab.test\n\
             LOADERS_DIR={}\nDHCP_CONFIG={}\nADMIN_TOKEN={TOKEN}\nSERVICE_TOKEN_FILE={}\nTAG=test\n\
             ETCD_IMAGE=localhost/bootfleet/etcd:test\nDNS_IMAGE=localhost/bootfleet/dnsmasq:test\n",
            tftp.display(),
            dhcp.display(),
            service_token.display()
        ),
    )
    .unwrap();
    // This machine's podman needs runc and explicit limits (LAB.md).
    let conf = dir.path().join("containers.conf");
    std::fs::write(
        &conf,
        "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
         [engine]\nruntime = \"runc\"\n",
    )
    .unwrap();
    let stack = Stack { ns: "bfcA".into(), env, conf };
    let _ = stack.compose(&["down", "-v", "-t", "1"]);
    let started = Instant::now();
    let up = stack.compose(&["up", "-d"]);
    assert!(up.status.success(), "compose up: {}", String::from_utf8_lossy(&up.stderr));
    for port in [9201, 9202, 9211, 9212, 9221, 9222, 9231, 9232] {
        wait_serving_in(&server, port, "", Duration::from_secs(90));
    }
    eprintln!("stack serving {:.1} s after `compose up`", started.elapsed().as_secs_f64());

    // Round-robin DNS: the client resolves tftp.lab.test through the stack's
    // DNS server and its downloads reach both TFTP replicas.
    std::fs::create_dir_all("/etc/netns/bfcB").unwrap();
    std::fs::write("/etc/netns/bfcB/resolv.conf", "nameserver 198.18.66.10\n").unwrap();
    let before = (tftp_transfers(&server, 9211), tftp_transfers(&server, 9212));
    for _ in 0..8 {
        let out = client
            .command("curl")
            .args(["-s", "-o", "/dev/null", "tftp://tftp.lab.test/undionly.kpxe"])
            .output();
        assert!(out.is_ok_and(|o| o.status.success()), "a TFTP download by name failed");
    }
    let _ = std::fs::remove_dir_all("/etc/netns/bfcB");
    let after = (tftp_transfers(&server, 9211), tftp_transfers(&server, 9212));
    let per_replica = (after.0 - before.0, after.1 - before.1);
    eprintln!("round-robin downloads per TFTP replica: a {}, b {}", per_replica.0, per_replica.1);
    assert!(per_replica.0 > 0 && per_replica.1 > 0, "one replica got every download: {per_replica:?}");

    // The image and the rules, through the stack's own services.
    let image = dir.path().join("image");
    std::fs::create_dir(&image).unwrap();
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(assets.join(f), image.join(f)).unwrap();
    }
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let push = server
        .command(BIN)
        .args(["images", "push", image.to_str().unwrap(), "--image", "tiny", "--version", "1"])
        .args(["--images-server", "http://127.0.0.1:7071", "--token-file", token.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(push.status.success(), "push: {}", String::from_utf8_lossy(&push.stderr));
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        "image_profiles:\n  - name: tiny\n    kernel:\n      kernel: tiny/1/vmlinuz\n      \
         initrds: [tiny/1/initrd.img]\n      cmdline: \"console=ttyS0 quiet bootfleet.marker=composed\"\n\
         rules:\n  - { name: lab, match: { mac: \"52:54:00:00:66:*\" }, image_profile: tiny }\n",
    )
    .unwrap();
    let apply = server
        .command(BIN)
        .args(["apply", "-f", rules.to_str().unwrap(), "--activate", "--server", "http://127.0.0.1:7101"])
        .args(["--token", TOKEN])
        .output()
        .unwrap();
    assert!(apply.status.success(), "apply: {}", String::from_utf8_lossy(&apply.stderr));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = server
            .command(BIN)
            .args(["images", "status", "--images-server", "http://127.0.0.1:7072", "-o", "json"])
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let present =
            status["states"].as_array().map_or(0, |s| s.iter().filter(|s| s["state"] == "present").count());
        if present == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "streamer-b never held the image: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // VMs boot while the DHCP leader, a TFTP and a streamer container die.
    let firmwares = [Firmware::Bios, Firmware::UefiPxe, Firmware::Bios];
    let mut vms = Vec::new();
    for (i, firmware) in firmwares.into_iter().enumerate() {
        let mac = format!("52:54:00:00:66:{:02x}", i + 1);
        vms.push(Vm::start(&client, dir.path(), &format!("vm{}", i + 1), &mac, firmware));
        std::thread::sleep(Duration::from_millis(1500));
        if i == 0 {
            let leader = dhcp_leader(&server, "http://127.0.0.1:2379");
            assert!(leader == "dhcp-a" || leader == "dhcp-b", "no DHCP leader: {leader:?}");
            podman_kill(&leader);
        }
        if i == 1 {
            podman_kill("tftp-a");
            podman_kill("streamer-a");
        }
    }
    for vm in vms {
        let serial = vm.wait_marker(&client, BOOT_WITHIN);
        assert!(serial.contains("BOOTFLEET-MARKER composed"), "{serial}");
    }
    drop(stack);
}
