//! `bootfleet up` as a process: config errors exit 64 naming the key; it
//! starts, reports healthy, stops cleanly on SIGTERM, and starts again on
//! the same data directory.

use bootfleet_test_support::healthz;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bootfleet");

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_serving(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = healthz(port);
        if body.starts_with("serving") {
            return body;
        }
        assert!(Instant::now() < deadline, "bootfleet up never reported serving");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start(data: &std::path::Path, port: u16) -> KillOnDrop {
    let child = Command::new(BIN)
        .args(["up", "--store", "embedded", "--admin-listen", &format!("127.0.0.1:{port}")])
        .args(["--rules-listen", "127.0.0.1:0", "--tftp-listen", "127.0.0.1:0"])
        .args(["--streamer-listen", "127.0.0.1:0", "--streamer-grpc-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data)
        .env("BOOTFLEET_LOG", "info")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

fn sigterm_and_wait(mut child: KillOnDrop) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.0.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "bootfleet up did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_configuration_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[store]\nbackend = \"etc\"\n").unwrap();
    let out = Command::new(BIN).args(["up", "--validate", "-c"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("store.backend"), "{out:?}");

    let out = Command::new(BIN).args(["up", "--admin-listen", "nowhere"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--admin-listen / BOOTFLEET_ADMIN_LISTEN"),
        "{out:?}"
    );

    let out = Command::new(BIN).args(["up", "--no-such-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));

    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/config/bootfleet.toml");
    // The shipped file names a token file and a TFTP root that exist only
    // after scripts/run.sh; give both here.
    let token = ["--rules-admin-token", "0123456789abcdef0123"];
    let streamer_token = ["--streamer-admin-token", "0123456789abcdef0123"];
    let out = Command::new(BIN)
        .args(["up", "--validate", "-c", shipped])
        .args(token)
        .args(streamer_token)
        .arg("--tftp-root")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn runs_reports_healthy_stops_cleanly_and_reopens_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let port = bootfleet_test_support::free_port();
    let up = start(dir.path(), port);
    let body = wait_serving(port);
    assert!(body.contains("rules.rules: serving"), "{body}");
    let status = sigterm_and_wait(up);
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(dir.path().join("state.redb").exists());
    // The store file is reopened fine by the next run.
    let up = start(dir.path(), port);
    wait_serving(port);
    assert!(sigterm_and_wait(up).success());
}
