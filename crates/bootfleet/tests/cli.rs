//! An operator's session with the `bootfleet` CLI against `bootfleet up`:
//! apply a rules file, activate, evaluate hosts, change the rules (TOML this
//! time), see test-compliance list the hosts whose boot would change, watch
//! decisions, activate and repair; and a generic gRPC client that learns the
//! API by reflection alone.

mod common;

use bootfleet_test_support::process::wait_serving;
use common::{UpPorts, up_command};
use std::io::BufReader;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bootfleet");
const TOKEN: &str = "cli-test-token-0123456789";
const HOST1: &str = "52:54:00:aa:00:01";
const HOST2: &str = "52:54:00:aa:00:02";

struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cli(server: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("BOOTFLEET_SERVER", server)
        .env("BOOTFLEET_TOKEN", TOKEN)
        .output()
        .unwrap()
}

fn ok(server: &str, args: &[&str]) -> String {
    let out = cli(server, args);
    assert!(out.status.success(), "bootfleet {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

const V1: &str = r#"
image_profiles:
  - { name: img-a, kernel: { kernel: tiny/1/vmlinuz, cmdline: "marker=a" } }
  - { name: img-b, kernel: { kernel: tiny/1/vmlinuz, cmdline: "marker=b" } }
host_profiles:
  - { name: lab, values: { role: lab } }
rules:
  - { name: host1, match: { mac: "52:54:00:aa:00:01" }, image_profile: img-a, host_profile: lab }
  - { name: rest, match: { always: true }, image_profile: img-b }
"#;

const V2_TOML: &str = r#"
[[rules]]
name = "host1"
match = { mac = "52:54:00:aa:00:01" }
image_profile = "img-b"
host_profile = "lab"

[[rules]]
name = "rest"
match = { always = true }
image_profile = "img-b"
"#;

/// Polls `attempt` every 50 ms until it gives `Ok`, for at most 10 s; the
/// failure names `what` and shows the last output seen.
fn until<T>(what: &str, mut attempt: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match attempt() {
            Ok(value) => return value,
            Err(last) => assert!(Instant::now() < deadline, "{what}: {last}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The generic client (crates/bootfleet/tests/generic_grpc_client.py) run
/// with the Python that the test command installs grpcio-reflection into.
fn generic_client(rules_port: u16, mac: &str) -> serde_json::Value {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(repo.join("target/venv/bin/python"))
        .arg(repo.join("crates/bootfleet/tests/generic_grpc_client.py"))
        .args([format!("127.0.0.1:{rules_port}"), mac.to_owned()])
        .output()
        .expect("target/venv/bin/python (scripts/test.sh installs it)");
    assert!(out.status.success(), "generic client failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn operator_session() {
    let dir = tempfile::tempdir().unwrap();
    let (admin_port, rules_port) = (bootfleet_test_support::free_port(), bootfleet_test_support::free_port());
    let images_port = bootfleet_test_support::free_port();
    let ports = UpPorts { admin: admin_port, rules: rules_port, images: images_port, ..UpPorts::default() };
    let _up = Up(up_command(dir.path(), ports, TOKEN).spawn().unwrap());
    wait_serving(admin_port, Duration::from_secs(20));
    let server = format!("http://127.0.0.1:{rules_port}");
    // Profiles may name only image versions in the catalog: push tiny/1.
    let image = dir.path().join("tiny");
    std::fs::create_dir(&image).unwrap();
    std::fs::write(image.join("vmlinuz"), b"not really a kernel").unwrap();
    let images = format!("http://127.0.0.1:{images_port}");
    let image_dir = image.to_str().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let token_file = token_file.to_str().unwrap();
    let push = ["images", "push", image_dir, "--image", "tiny", "--version", "1", "--token-file", token_file];
    // With a token it does not accept, the streamer refuses the upload:
    // exit 68, as for rules.
    let refused = Command::new(BIN)
        .args(["images", "push", image_dir, "--image", "tiny", "--version", "1", "--images-server", &images])
        .env("BOOTFLEET_TOKEN", "not-the-token-0123456789")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(68), "{refused:?}");
    let pushed = ok(&server, &[&push[..], &["--images-server", &images]].concat());
    assert!(pushed.contains("tiny"), "{pushed}");
    let v1 = dir.path().join("v1.yaml");
    std::fs::write(&v1, V1).unwrap();
    let out = ok(&server, &["apply", "-f", v1.to_str().unwrap(), "--activate"]);
    assert!(out.contains("img-a") && out.contains("activated version 1"), "{out}");

    // The engine picks the new set up asynchronously; wait for it.
    until("rules never active", || {
        let out = ok(&server, &["evaluate", "--mac", HOST1, "--dry-run"]);
        if out.contains("image=img-a") { Ok(()) } else { Err(out) }
    });
    // Garbage collection: a version no profile names goes, with its own
    // file; the dry run says so first and removes nothing.
    let other = dir.path().join("tiny2");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("vmlinuz"), b"another kernel").unwrap();
    let push2 = ["images", "push", other.to_str().unwrap(), "--image", "tiny", "--version", "2"];
    ok(&server, &[&push2[..], &["--token-file", token_file, "--images-server", &images]].concat());
    let gc =
        ["images", "gc", "--versions-unused-for", "0s", "--min-file-age", "0s", "--images-server", &images];
    let gc = [&gc[..], &["--token-file", token_file]].concat();
    let dry = ok(&server, &[&gc[..], &["--dry-run"]].concat());
    assert!(dry.contains("would remove 1 versions and 1 files") && dry.contains("tiny/2"), "{dry}");
    let done = ok(&server, &gc);
    assert!(done.contains("removed 1 versions and 1 files") && done.contains("tiny/2"), "{done}");
    let listed = ok(&server, &["images", "list", "--images-server", &images, "-o", "json"]);
    assert!(listed.contains("\"1\"") && !listed.contains("\"2\""), "{listed}");
    // A client with no Bootfleet code learns the API by reflection and calls it.
    let generic = generic_client(rules_port, HOST1);
    assert_eq!(
        generic["services"],
        serde_json::json!(["bootfleet.v1.RulesService", "grpc.health.v1.Health"])
    );
    assert!(generic["methods"].as_array().unwrap().iter().any(|m| m == "TestCompliance"), "{generic}");
    assert_eq!(generic["evaluate"]["decision"]["imageProfile"]["name"], "img-a", "{generic}");

    // Decisions stream to a watcher as they are made. The watcher only sees
    // decisions made after it subscribed (and recorded: dry runs are not
    // published), so HOST2 is evaluated until the first event arrives.
    let mut watch = Up(Command::new(BIN)
        .args(["hosts", "watch", HOST2, "-o", "json", "--server", &server])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap());
    let watched = BufReader::new(watch.0.stdout.take().unwrap());
    let (event_tx, event_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let event = serde_json::Deserializer::from_reader(watched).into_iter::<serde_json::Value>().next();
        let _ = event_tx.send(event);
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        ok(&server, &["evaluate", "--mac", HOST1]);
        ok(&server, &["evaluate", "--mac", HOST2, "--arch", "efi-x64"]);
        if let Ok(event) = event_rx.recv_timeout(Duration::from_millis(200)) {
            break event.expect("a watched decision").unwrap();
        }
        assert!(Instant::now() < deadline, "hosts watch showed no decision");
    };
    assert_eq!(event["facts"]["mac"], HOST2, "filtered to HOST2: {event}");
    assert_eq!(event["decision"]["image_profile"]["name"], "img-b", "{event}");
    drop(watch);
    assert!(ok(&server, &["evaluate", "--mac", HOST1]).contains("matched rules: host1"));
    assert!(ok(&server, &["evaluate", "--mac", HOST2, "--arch", "efi-x64"]).contains("image=img-b"));
    let hosts = until("hosts never recorded", || {
        let hosts = ok(&server, &["hosts", "list"]);
        if hosts.contains(HOST1) && hosts.contains(HOST2) { Ok(hosts) } else { Err(hosts) }
    });
    assert!(hosts.contains("efi-x64"), "{hosts}");
    let listed = ok(&server, &["rules", "list", "--active"]);
    assert!(listed.contains("mac=52:54:00:aa:00:01") && listed.contains("image=img-a host=lab"), "{listed}");

    // Change the working set: host1 would now boot img-b.
    let v2 = dir.path().join("v2.toml");
    std::fs::write(&v2, V2_TOML).unwrap();
    ok(&server, &["apply", "-f", v2.to_str().unwrap()]);
    let diff = cli(&server, &["rules", "diff"]);
    assert_eq!(diff.status.code(), Some(2), "changes pending: {diff:?}");
    let diff = String::from_utf8_lossy(&diff.stdout);
    assert!(diff.contains("change") && diff.contains("host1"), "{diff}");
    let compliance = until("test-compliance never saw the change", || {
        let out = ok(&server, &["rules", "test-compliance", "-o", "json"]);
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        if json["non_compliant"].as_array().is_some_and(|a| !a.is_empty()) { Ok(json) } else { Err(out) }
    });
    let changed = compliance["non_compliant"].as_array().unwrap();
    assert_eq!(changed.len(), 1, "{compliance}");
    assert_eq!(changed[0]["mac"], HOST1);
    assert_eq!(changed[0]["changed"][0], "image_profile");
    let table = ok(&server, &["rules", "test-compliance"]);
    assert!(table.contains(HOST1) && table.contains("(1 of 2 hosts would change)"), "{table}");

    // Activate it: host1's recorded decision no longer matches the active set
    // until it is repaired.
    assert!(ok(&server, &["rules", "activate"]).contains("version 2"));
    let out = until("the active set never reached compliance checks", || {
        let out = ok(&server, &["rules", "test-compliance", "--active"]);
        if out.contains("(1 of 2 hosts would change)") { Ok(out) } else { Err(out) }
    });
    assert!(out.contains(HOST1), "{out}");
    let repaired = ok(&server, &["rules", "repair"]);
    assert!(repaired.contains(HOST1) && repaired.contains("(1 hosts repaired)"), "{repaired}");
    // Reads come from the replica's snapshot, which follows the write.
    until("the repair never showed", || {
        let out = ok(&server, &["hosts", "get", HOST1, "-o", "json"]);
        let host: serde_json::Value = serde_json::from_str(&out).unwrap();
        if host["last_decision"]["image_profile"]["name"] == "img-b" { Ok(()) } else { Err(out) }
    });
    assert!(ok(&server, &["rules", "test-compliance", "--active"]).contains("(0 of 2 hosts would change)"));

    // Without the token, changes are refused with a hint.
    let out = Command::new(BIN).args(["rules", "activate", "--server", &server]).output().unwrap();
    assert_eq!(out.status.code(), Some(68));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not allowed"), "{out:?}");
    // A server that is not there is named.
    let out = cli("http://127.0.0.1:1", &["rules", "list"]);
    assert_eq!(out.status.code(), Some(69));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the rules engine at http://127.0.0.1:1"),
        "{out:?}"
    );
    // Profiles in use cannot go; img-a is no longer used by either set.
    assert!(ok(&server, &["profiles", "delete", "image", "img-a"]).contains("img-a deleted"));
    let out = cli(&server, &["profiles", "delete", "image", "img-b"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("conflict"), "{out:?}");
    // Completion scripts call the binary back for candidates, for each shell.
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(&server, &["completions", shell]);
        assert!(script.contains("COMPLETE"), "{shell}: {script}");
    }
}

/// `hosts watch` holds a server stream open; SIGTERM must still stop
/// `bootfleet up` cleanly within its grace period (it used to wait for the
/// stream, past the grace period), and the watcher must say the server went
/// away and exit non-zero.
#[test]
fn an_open_watch_does_not_hold_up_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (admin_port, rules_port) = (bootfleet_test_support::free_port(), bootfleet_test_support::free_port());
    let ports = UpPorts { admin: admin_port, rules: rules_port, ..UpPorts::default() };
    let mut up = up_command(dir.path(), ports, TOKEN);
    let mut up = Up(up.args(["--shutdown-grace", "5s"]).stderr(Stdio::piped()).spawn().unwrap());
    wait_serving(admin_port, Duration::from_secs(20));
    let server = format!("http://127.0.0.1:{rules_port}");
    let manifest = dir.path().join("rules.yaml");
    std::fs::write(
        &manifest,
        "image_profiles:\n  - { name: disk, local: true }\nrules:\n  - { name: all, match: { always: true }, image_profile: disk }\n",
    )
    .unwrap();
    ok(&server, &["apply", "-f", manifest.to_str().unwrap(), "--activate"]);
    let mut watch = Up(Command::new(BIN)
        .args(["hosts", "watch", "-o", "json", "--server", &server])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap());
    // The stream is open once a decision comes through it.
    let watched = BufReader::new(watch.0.stdout.take().unwrap());
    let (event_tx, event_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let event = serde_json::Deserializer::from_reader(watched).into_iter::<serde_json::Value>().next();
        let _ = event_tx.send(event.is_some());
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while event_rx.recv_timeout(Duration::from_millis(200)).is_err() {
        ok(&server, &["evaluate", "--mac", HOST1]);
        assert!(Instant::now() < deadline, "hosts watch showed no decision");
    }

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(up.0.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let status = up.0.wait().unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut up.0.stderr.take().unwrap(), &mut log).unwrap();
    assert!(status.success(), "bootfleet up did not stop cleanly within its grace period: {status}\n{log}");
    assert!(!log.contains("grace period"), "{log}");
    let watcher = watch.0.wait().unwrap();
    let mut said = String::new();
    std::io::Read::read_to_string(&mut watch.0.stderr.take().unwrap(), &mut said).unwrap();
    assert!(!watcher.success(), "the watcher must fail when the server goes away");
    assert!(said.contains("shutting down"), "{said}");
}

const SITE: &str = r#"
image_profiles:
  - { name: img-a, kernel: { kernel: tiny/1/vmlinuz, cmdline: "marker=MARKER" } }
rules:
  - { name: all, match: { always: true }, image_profile: img-a }
"#;

fn site(marker: &str, extra_rules: &str) -> String {
    format!("{}{extra_rules}", SITE.replace("MARKER", marker))
}

/// `bootfleet up` with a known streamer port; the image `tiny/1` pushed.
struct Session {
    _up: Up,
    dir: tempfile::TempDir,
    server: String,
    boot_url: String,
}

impl Session {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = bootfleet_test_support::free_port;
        let (admin, rules, http, images) = (port(), port(), port(), port());
        let up = Up(up_command(dir.path(), UpPorts { admin, rules, http, images }, TOKEN).spawn().unwrap());
        wait_serving(admin, Duration::from_secs(20));
        let image = dir.path().join("tiny");
        std::fs::create_dir(&image).unwrap();
        std::fs::write(image.join("vmlinuz"), b"not really a kernel").unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, TOKEN).unwrap();
        let server = format!("http://127.0.0.1:{rules}");
        let images = format!("http://127.0.0.1:{images}");
        let push = ["images", "push", image.to_str().unwrap(), "--image", "tiny", "--version", "1"];
        ok(
            &server,
            &[&push[..], &["--images-server", &images, "--token-file", token_file.to_str().unwrap()]]
                .concat(),
        );
        Self { _up: up, dir, server, boot_url: format!("http://127.0.0.1:{http}/boot.ipxe?mac={HOST1}") }
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    fn run(&self, args: &[&str]) -> Output {
        cli(&self.server, args)
    }

    /// The boot script HOST1 gets from the streamer.
    fn boot_script(&self) -> String {
        let out = Command::new("curl").args(["-s", &self.boot_url]).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    fn working_revision(&self) -> i64 {
        let out = ok(&self.server, &["rules", "list", "-o", "json"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["revision"].as_i64().unwrap_or(0)
    }
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The operator workflow of issue 22: an apply is staged and all or
/// nothing, a profile edit reaches boot scripts only through activation, a
/// dry run writes nothing, the same apply twice changes nothing, every
/// outcome has its exit code, and every command's `-o json` parses.
#[test]
fn staged_workflow_session() {
    let s = Session::start();
    let v1 = s.file("v1.yaml", &site("one", ""));
    let out = s.run(&["apply", "-f", &v1, "--activate"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    until("the first boot script", || {
        let script = s.boot_script();
        if script.contains("marker=one") { Ok(()) } else { Err(script) }
    });

    // 1. A good profile edit with a bad rule changes nothing, boot scripts
    //    included; every problem is named with the file (exit 65).
    let before = s.working_revision();
    let bad = s.file(
        "bad.yaml",
        &site("two", "  - { name: typo, match: { always: true }, image_profile: img-zz }\n  - { name: all, match: { always: true }, image_profile: img-a }\n"),
    );
    let out = s.run(&["apply", "-f", &bad, "--activate"]);
    assert_eq!(code(&out), Some(65), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("bad.yaml") && said.contains("img-zz") && said.contains("duplicate"), "{said}");
    assert_eq!(s.working_revision(), before, "a refused apply wrote nothing");
    let out = s.run(&["rules", "diff"]);
    assert_eq!(code(&out), Some(0), "nothing staged: {}", text(&out));
    assert!(s.boot_script().contains("marker=one"));

    // 3. A dry run lists the plan, writes nothing, and exits 2.
    let v2 = s.file("v2.yaml", &site("two", ""));
    let out = s.run(&["apply", "-f", &v2, "--dry-run"]);
    assert_eq!(code(&out), Some(2), "{}", text(&out));
    let plan = text(&out);
    assert!(plan.contains("change") && plan.contains("img-a") && plan.contains("marker=two"), "{plan}");
    assert!(plan.contains("dry run"), "{plan}");
    assert_eq!(s.working_revision(), before, "a dry run wrote nothing");

    // 2. Staged, the edit shows in the diff (exit 2) but boot scripts keep
    //    the active profile until activation.
    let out = s.run(&["apply", "-f", &v2]);
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    let staged_at = s.working_revision();
    assert!(staged_at > before);
    let out = s.run(&["rules", "diff"]);
    assert_eq!(code(&out), Some(2), "{}", text(&out));
    assert!(text(&out).contains("image profile") && text(&out).contains("marker=two"), "{}", text(&out));
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.boot_script().contains("marker=one"), "staged edits must not reach machines");
    let active = ok(&s.server, &["profiles", "get", "image", "img-a", "--active", "-o", "json"]);
    assert!(active.contains("marker=one"), "{active}");

    // 4. The same file again: unchanged, same revision.
    let out = s.run(&["apply", "-f", &v2]);
    assert_eq!(code(&out), Some(0));
    assert!(text(&out).contains("unchanged"), "{}", text(&out));
    assert_eq!(s.working_revision(), staged_at);
    let out = s.run(&["apply", "-f", &v2, "--dry-run"]);
    assert_eq!(code(&out), Some(0), "nothing to do: {}", text(&out));

    let out = s.run(&["rules", "activate"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    until("the activated boot script", || {
        let script = s.boot_script();
        if script.contains("marker=two") { Ok(()) } else { Err(script) }
    });
    let out = s.run(&["rules", "activate", "-o", "json"]);
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["unchanged"], true, "{again}");
    assert_eq!(code(&s.run(&["rules", "diff"])), Some(0));

    // A version the catalog lacks is refused at apply.
    let missing = s.file("missing.yaml", &site("three", "").replace("tiny/1/", "tiny/9/"));
    let out = s.run(&["apply", "-f", &missing]);
    assert_eq!(code(&out), Some(65), "{}", text(&out));
    assert!(text(&out).contains("tiny/9 is not in the image catalog"), "{}", text(&out));

    // `-f -` reads standard input.
    let mut child = Command::new(BIN)
        .args(["apply", "-f", "-", "--dry-run", "--server", &s.server])
        .env("BOOTFLEET_TOKEN", TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), site("two", "").as_bytes()).unwrap();
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(0), "stdin holds what is staged");

    // 5. Exit codes: not found, conflict, usage, auth, unreachable.
    assert_eq!(code(&s.run(&["profiles", "get", "image", "nope"])), Some(66));
    assert_eq!(code(&s.run(&["profiles", "delete", "image", "nope", "--ignore-not-found"])), Some(0));
    assert_eq!(code(&s.run(&["profiles", "delete", "image", "img-a"])), Some(67), "a rule uses it");
    assert_eq!(code(&s.run(&["apply"])), Some(64), "no file");
    let out = Command::new(BIN).args(["rules", "activate", "--server", &s.server]).output().unwrap();
    assert_eq!(code(&out), Some(68));
    assert_eq!(code(&cli("http://127.0.0.1:1", &["rules", "list"])), Some(69));

    // 6. Every command's -o json parses.
    ok(&s.server, &["evaluate", "--mac", HOST1]);
    let host = until("host recorded", || {
        let out = s.run(&["hosts", "get", HOST1, "-o", "json"]);
        if code(&out) == Some(0) { Ok(out) } else { Err(text(&out)) }
    });
    serde_json::from_slice::<serde_json::Value>(&host.stdout).unwrap();
    let commands: &[&[&str]] = &[
        &["rules", "list"],
        &["rules", "list", "--active"],
        &["rules", "get", "all"],
        &["rules", "diff"],
        &["rules", "test-compliance"],
        &["rules", "repair"],
        &["rules", "activate"],
        &["profiles", "list"],
        &["profiles", "list", "--active"],
        &["profiles", "get", "image", "img-a"],
        &["hosts", "list"],
        &["evaluate", "--mac", HOST2, "--dry-run"],
        &["apply", "-f", &v2],
        &["apply", "-f", &v1, "--dry-run"],
        &["rules", "delete", "nope", "--ignore-not-found"],
    ];
    for command in commands {
        let out = s.run(&[command, &["-o", "json"][..]].concat());
        assert!(matches!(code(&out), Some(0 | 2)), "{command:?}: {}", text(&out));
        let parsed = serde_json::from_slice::<serde_json::Value>(&out.stdout);
        assert!(parsed.is_ok(), "{command:?} -o json: {}", String::from_utf8_lossy(&out.stdout));
    }
}
