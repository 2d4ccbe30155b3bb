//! The container images (deploy/containers): every image builds from the
//! workspace's binaries on a base assembled from this machine (no registry
//! is reachable here), starts, reports healthy through its own health check
//! (`--probe` against the service's admin endpoint), and stops cleanly on
//! SIGTERM. Containers run with podman (runc), each in its own network
//! namespace with no outside network.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bootfleet");
const TAG: &str = "test";
/// Settings this machine's podman needs (LAB.md): runc, explicit limits,
/// and no systemd timers for health checks (they are run by hand here).
const RUN: &[&str] = &[
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=32768:32768",
    "--health-interval",
    "disable",
    "--network",
    "none",
    "--sysctl",
    "net.ipv4.ip_unprivileged_port_start=0",
];

fn podman(args: &[&str]) -> Output {
    Command::new("podman").args(args).output().expect("podman is installed (scripts/install-deps.sh test)")
}

/// Removes the container however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.0]);
    }
}

fn check(image: &str, name: &str, extra: &[&str], command: &[&str]) {
    let container = Container(format!("bootfleet-test-{name}"));
    let _ = podman(&["rm", "-f", "-t", "0", &container.0]);
    let mut args = vec!["run", "-d", "--name", container.0.as_str()];
    args.extend_from_slice(RUN);
    args.extend_from_slice(extra);
    args.push(image);
    args.extend_from_slice(command);
    let out = podman(&args);
    assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if podman(&["healthcheck", "run", &container.0]).status.success() {
            break;
        }
        let logs = podman(&["logs", &container.0]);
        assert!(
            Instant::now() < deadline,
            "{name} never reported healthy; logs:\n{}{}",
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let started = Instant::now();
    let out = podman(&["stop", "-t", "20", &container.0]);
    assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    let code = podman(&["inspect", "--format", "{{.State.ExitCode}}", &container.0]);
    let code = String::from_utf8_lossy(&code.stdout).trim().to_owned();
    eprintln!(
        "{name}: healthy, stopped on SIGTERM in {} ms with exit code {code}",
        started.elapsed().as_millis()
    );
    assert_eq!(code, "0", "{name} did not stop cleanly");
}

#[test]
fn every_image_builds_starts_healthy_and_stops_cleanly() {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-images.sh");
    let out =
        Command::new(&script).args(["--bin-dir", bin_dir.to_str().unwrap(), "--tag", TAG]).output().unwrap();
    assert!(out.status.success(), "building images: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let image = |name: &str| format!("localhost/bootfleet/{name}:{TAG}");
    let dir = tempfile::tempdir().unwrap();
    let dhcp = dir.path().join("dhcp.toml");
    std::fs::write(
        &dhcp,
        "[dhcp]\ninterfaces = [\"lo\"]\nserver_ip = \"127.0.0.1\"\nhttp_base = \"http://127.0.0.1:8080\"\n\
         rules_url = \"http://127.0.0.1:7070\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&dhcp, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mount = format!("{}:/etc/bootfleet/bootfleet.toml:ro", dhcp.display());
    let memory = ["-e", "BOOTFLEET_STORE=memory"];
    check(&image("rules-engine"), "rules-engine", &memory, &[]);
    check(&image("tftp-server"), "tftp-server", &memory, &[]);
    let streamer =
        ["-e", "BOOTFLEET_STORE=memory", "-e", "BOOTFLEET_STREAMER_PUBLIC_URL=http://127.0.0.1:8080"];
    check(&image("image-streamer"), "image-streamer", &streamer, &[]);
    let dhcp_args = [
        "-e",
        "BOOTFLEET_STORE=memory",
        "-e",
        "BOOTFLEET_CONFIG=/etc/bootfleet/bootfleet.toml",
        "-v",
        &mount,
    ];
    check(&image("dhcp-responder"), "dhcp-responder", &dhcp_args, &[]);
    // The CLI image running every service: `bootfleet up` on the embedded store.
    check(&image("cli"), "bootfleet-up", &[], &["up"]);
}
