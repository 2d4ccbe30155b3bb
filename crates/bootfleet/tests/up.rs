//! `bootfleet up` as a process: config errors exit 64 naming the key; it
//! starts, reports healthy, stops cleanly on SIGTERM, and starts again on
//! the same data directory with everything it had acknowledged — after a
//! SIGTERM and after a SIGKILL.

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

const TOKEN: &str = "up-test-token-0123456789";
const HOST: &str = "52:54:00:bb:00:01";

fn start(data: &std::path::Path, port: u16, rules_port: u16) -> KillOnDrop {
    let child = Command::new(BIN)
        .args(["up", "--store", "embedded", "--admin-listen", &format!("127.0.0.1:{port}")])
        .args(["--rules-listen", &format!("127.0.0.1:{rules_port}"), "--rules-admin-token", TOKEN])
        .args(["--tftp-listen", "127.0.0.1:0"])
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

/// Runs the CLI against the rules engine on `rules_port`; its stdout.
fn cli(rules_port: u16, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("BOOTFLEET_SERVER", format!("http://127.0.0.1:{rules_port}"))
        .env("BOOTFLEET_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "bootfleet {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Polls the CLI until its output contains `want`.
fn eventually(rules_port: u16, args: &[&str], want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = cli(rules_port, args);
        if out.contains(want) {
            return out;
        }
        assert!(Instant::now() < deadline, "bootfleet {args:?} never showed {want:?}: {out}");
        std::thread::sleep(Duration::from_millis(50));
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

    // A lease reuse past 0.45 would let renewals at T1 shrink leases.
    std::fs::write(
        &file,
        "[dhcp]\nmode = \"full\"\ninterfaces = [\"lo\"]\nserver_ip = \"198.18.0.1\"\nlease_reuse = 0.6\n\
         [[dhcp.pools]]\nsubnet = \"198.18.0.0/24\"\nstart = \"198.18.0.100\"\nend = \"198.18.0.110\"\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["up", "--validate", "-c"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("dhcp.lease_reuse"), "{out:?}");

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
    let (port, rules_port) = (bootfleet_test_support::free_port(), bootfleet_test_support::free_port());
    let up = start(dir.path(), port, rules_port);
    let body = wait_serving(port);
    assert!(body.contains("rules.rules: serving"), "{body}");
    let manifest = dir.path().join("rules.yaml");
    std::fs::write(
        &manifest,
        format!(
            "image_profiles:\n  - {{ name: img, local: true }}\n\
             rules:\n  - {{ name: persisted-rule, match: {{ mac: \"{HOST}\" }}, image_profile: img }}\n"
        ),
    )
    .unwrap();
    cli(rules_port, &["apply", "-f", manifest.to_str().unwrap(), "--activate"]);
    eventually(rules_port, &["evaluate", "--mac", HOST], "image=img");
    eventually(rules_port, &["hosts", "list"], HOST);
    let status = sigterm_and_wait(up);
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(dir.path().join("state.redb").exists());

    // The next run has the rules, the profile and the host record.
    let up = start(dir.path(), port, rules_port);
    wait_serving(port);
    assert!(cli(rules_port, &["rules", "list", "--active"]).contains("persisted-rule"));
    assert!(cli(rules_port, &["hosts", "get", HOST]).contains("img"));

    // What was acknowledged survives a SIGKILL too: the store syncs before
    // it answers.
    cli(rules_port, &["rules", "delete", "persisted-rule"]);
    let mut up = up;
    up.0.kill().unwrap();
    up.0.wait().unwrap();
    let up = start(dir.path(), port, rules_port);
    wait_serving(port);
    assert!(!cli(rules_port, &["rules", "list"]).contains("persisted-rule"), "the deletion was lost");
    assert!(cli(rules_port, &["rules", "list", "--active"]).contains("persisted-rule"));
    assert!(sigterm_and_wait(up).success());
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = bootfleet_test_support::free_port();
    let child = Command::new(BIN)
        .args(["up", "--store", "embedded", "--admin-listen", &format!("127.0.0.1:{port}")])
        .args(["--rules-listen", "127.0.0.1:0", "--tftp-listen", "127.0.0.1:0"])
        .args(["--streamer-listen", "127.0.0.1:0", "--streamer-grpc-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("BOOTFLEET_LOG", "info")
        .env("BOOTFLEET_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = KillOnDrop(child);
    let (stdout, stderr) = (up.0.stdout.take().unwrap(), up.0.stderr.take().unwrap());
    let read = |mut stream: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stream.read_to_string(&mut text);
            text
        })
    };
    let (stdout, stderr) = (read(Box::new(stdout)), read(Box::new(stderr)));
    wait_serving(port);
    assert!(sigterm_and_wait(up).success());
    let logs = stdout.join().unwrap() + &stderr.join().unwrap();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "too few log lines: {logs}");
    for line in &lines {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(entry["level"].is_string() && entry["timestamp"].is_string(), "{line}");
    }
    assert!(logs.contains("rules engine listening"), "{logs}");
}

/// Every answer of `/readyz` that says ready lists each service's
/// components as serving — also the first answers, to requests that
/// queued while the process was starting and are served the moment the
/// admin endpoint begins, before the services have run a line. (Once,
/// `up` said "serving" there with only "process: serving" behind it.)
#[test]
fn ready_only_once_every_component_serves() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let (port, rules_port) = (bootfleet_test_support::free_port(), bootfleet_test_support::free_port());
    let _up = start(dir.path(), port, rules_port);
    let request = b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let ask = |mut stream: std::net::TcpStream| {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    // The admin port is bound before the store opens: connect and send as
    // soon as it is, so requests wait in the listen backlog.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut queued = Vec::new();
    while queued.len() < 32 {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut stream) => {
                stream.write_all(request).unwrap();
                queued.push(stream);
            }
            Err(_) => {
                assert!(Instant::now() < deadline, "the admin port never opened");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    let mut answers: Vec<String> = queued.into_iter().map(ask).collect();
    loop {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.write_all(request).unwrap();
        let answer = ask(stream);
        let ready = answer.starts_with("HTTP/1.1 200");
        answers.push(answer);
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {:?}", answers.last());
        std::thread::sleep(Duration::from_millis(5));
    }
    let components = [
        "rules: serving",
        "rules.rules: serving",
        "streamer: serving",
        "streamer.images: serving",
        "tftp: serving",
    ];
    for answer in answers.iter().filter(|a| a.starts_with("HTTP/1.1 200")) {
        for component in components {
            assert!(answer.contains(component), "ready without {component:?}:\n{answer}");
        }
    }
}
