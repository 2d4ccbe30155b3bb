//! The `bootfleet` CLI as a script sees it, against a real `bootfleet up`:
//! global flags before or after the subcommand, environment variables,
//! `-o json|yaml` that parses, distinct exit codes (64 usage, 66 not found,
//! 68 missing vs rejected token, 69 unreachable or TLS against plaintext),
//! `--ignore-not-found`, dynamic shell completion, and `hosts watch`
//! ending with "server went away" when the server stops.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use bootfleet_test_support::process::wait_serving;
use common::{UpPorts, up_command};

const BIN: &str = env!("CARGO_BIN_EXE_bootfleet");
const TOKEN: &str = "cli-flags-token-0123456789";
const HOST: &str = "52:54:00:bb:00:01";

const MANIFEST: &str = r#"
image_profiles:
  - { name: img-a, local: true }
rules:
  - { name: first-rule, match: { mac: "52:54:00:bb:00:01" }, image_profile: img-a }
  - { name: rest, match: { always: true }, image_profile: img-a }
"#;

/// `bootfleet up` on free local ports, killed on drop.
struct Up {
    child: Child,
    admin_port: u16,
    server: String,
    _dir: tempfile::TempDir,
}

impl Up {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (admin_port, rules_port) =
            (bootfleet_test_support::free_port(), bootfleet_test_support::free_port());
        let ports = UpPorts { admin: admin_port, rules: rules_port, ..UpPorts::default() };
        let child = up_command(dir.path(), ports, TOKEN).spawn().unwrap();
        let up = Self { child, admin_port, server: format!("http://127.0.0.1:{rules_port}"), _dir: dir };
        up.wait_healthy();
        up
    }

    fn wait_healthy(&self) {
        wait_serving(self.admin_port, Duration::from_secs(20));
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the CLI with no BOOTFLEET_* variables from the caller's shell, plus `env`.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args).stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("BOOTFLEET_") || key == "COMPLETE" {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied()).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts the exit code, showing the output when it differs.
fn expect(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "stdout: {}\nstderr: {}", stdout(out), stderr(out));
}

#[test]
fn flags_output_and_exit_codes() {
    let up = Up::start();
    let server = up.server.as_str();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("rules.yaml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let wrong_file = dir.path().join("wrong");
    std::fs::write(&wrong_file, "not-the-token-at-all\n").unwrap();
    let token_file = token_file.to_str().unwrap();

    // Global flags before the subcommand, after it, and from the environment.
    expect(
        &run(
            &[
                "--server",
                server,
                "--token-file",
                token_file,
                "apply",
                "-f",
                manifest.to_str().unwrap(),
                "--activate",
            ],
            &[],
        ),
        0,
    );
    let before = run(&["--server", server, "-o", "json", "rules", "list"], &[]);
    expect(&before, 0);
    let after = run(&["rules", "list", "--server", server, "-o", "json"], &[]);
    expect(&after, 0);
    let from_env = run(&["rules", "list"], &[("BOOTFLEET_SERVER", server), ("BOOTFLEET_OUTPUT", "json")]);
    expect(&from_env, 0);
    let listed: serde_json::Value = serde_json::from_slice(&before.stdout).unwrap();
    assert_eq!(listed["rule_set"]["rules"][0]["name"], "first-rule", "{listed}");
    assert_eq!(before.stdout, after.stdout);
    assert_eq!(before.stdout, from_env.stdout);

    // -o json and -o yaml parse for list and get commands (and evaluate).
    expect(&run(&["evaluate", "--mac", HOST, "--server", server, "--token-file", token_file], &[]), 0);
    let env = [("BOOTFLEET_SERVER", server)];
    for args in [
        vec!["rules", "list"],
        vec!["rules", "get", "first-rule"],
        vec!["profiles", "list"],
        vec!["profiles", "get", "image", "img-a"],
        vec!["hosts", "list"],
        vec!["evaluate", "--mac", HOST, "--dry-run"],
    ] {
        let json = run(&[&args[..], &["-o", "json"]].concat(), &env);
        expect(&json, 0);
        let json: serde_json::Value =
            serde_json::from_slice(&json.stdout).unwrap_or_else(|e| panic!("{args:?} -o json: {e}"));
        let yaml = run(&[&args[..], &["-o", "yaml"]].concat(), &env);
        expect(&yaml, 0);
        let yaml: serde_json::Value =
            serde_saphyr::from_slice(&yaml.stdout).unwrap_or_else(|e| panic!("{args:?} -o yaml: {e}"));
        if args[0] != "evaluate" {
            // (evaluate's answer carries the time it was made)
            assert_eq!(json, yaml, "{args:?}: the same document in both formats");
        }
    }
    // Reads come from a snapshot that follows the write: wait for the host.
    let deadline = Instant::now() + Duration::from_secs(10);
    let host = loop {
        let out = run(&["hosts", "get", HOST, "-o", "json"], &env);
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    expect(&host, 0);
    let host: serde_json::Value = serde_json::from_slice(&host.stdout).unwrap();
    assert_eq!(host["mac"], HOST, "{host}");

    // 64: usage, from clap and from a malformed flag value.
    let out = run(&["rules", "no-such-command"], &env);
    expect(&out, 64);
    let out = run(&["evaluate", "--mac", HOST, "--label", "no-equals-sign"], &env);
    expect(&out, 64);
    assert!(stderr(&out).contains("KEY=VALUE"), "{}", stderr(&out));
    expect(&run(&["-o", "xml", "rules", "list"], &env), 64);

    // 66: not found, for a profile, a host and a rule.
    let out = run(&["profiles", "get", "image", "no-such-profile"], &env);
    expect(&out, 66);
    assert!(stderr(&out).starts_with("Error: not found: "), "{}", stderr(&out));
    expect(&run(&["hosts", "get", "52:54:00:ff:ff:ff"], &env), 66);
    expect(&run(&["rules", "get", "no-such-rule"], &env), 66);

    // 66 vs 0 with --ignore-not-found; json mode prints an object.
    let delete = ["profiles", "delete", "host", "no-such-profile", "--token-file", token_file];
    expect(&run(&delete, &env), 66);
    let out = run(&[&delete[..], &["--ignore-not-found", "-o", "json"]].concat(), &env);
    expect(&out, 0);
    let ignored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ignored["not_found"]["name"], "no-such-profile", "{ignored}");

    // 68: no token, then a wrong one; the messages differ.
    let out = run(&["profiles", "delete", "image", "img-a"], &env);
    expect(&out, 68);
    assert!(stderr(&out).contains("this needs the admin token"), "{}", stderr(&out));
    let wrong = wrong_file.to_str().unwrap();
    let out = run(&["profiles", "delete", "image", "img-a", "--token-file", wrong], &env);
    expect(&out, 68);
    assert!(
        stderr(&out).contains(&format!("the server rejected the token from --token-file {wrong}")),
        "{}",
        stderr(&out)
    );
    let out = run(
        &["profiles", "delete", "image", "img-a"],
        &[env[0], ("BOOTFLEET_TOKEN", "not-the-token-at-all")],
    );
    expect(&out, 68);
    assert!(stderr(&out).contains("rejected the token from BOOTFLEET_TOKEN"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("not-the-token-at-all"), "never echo the token: {}", stderr(&out));

    // 69: nobody listens; the address and the flag are named.
    let nobody = format!("http://127.0.0.1:{}", bootfleet_test_support::free_port());
    let out = run(&["rules", "list", "--server", &nobody], &[]);
    expect(&out, 69);
    let err = stderr(&out);
    assert!(err.contains(&nobody) && err.contains("connection refused") && err.contains("--server"), "{err}");
    assert!(!err.contains("ConnectError") && !err.contains("Status {"), "{err}");
    let out = run(&["images", "list", "--images-server", &nobody], &[]);
    expect(&out, 69);
    assert!(stderr(&out).contains("--images-server"), "{}", stderr(&out));

    // https:// against the plaintext server: a TLS failure, never plaintext.
    let https = server.replace("http://", "https://");
    let out = run(&["--server", &https, "rules", "list", "--token-file", token_file], &[]);
    expect(&out, 69);
    assert!(stderr(&out).contains("TLS"), "{}", stderr(&out));
}

/// Runs the binary the way bash's completion function does for the words
/// `bootfleet <words…>` with the cursor on the last word.
fn complete_bash(words: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let index = words.len().to_string();
    let mut all = vec!["--", "bootfleet"];
    all.extend_from_slice(words);
    let env =
        [&[("COMPLETE", "bash"), ("_CLAP_COMPLETE_INDEX", index.as_str()), ("_CLAP_IFS", "\n")][..], env]
            .concat();
    let out = run(&all, &env);
    expect(&out, 0);
    stdout(&out).lines().map(str::to_owned).collect()
}

#[test]
fn completion_offers_names_from_the_server_and_watch_ends_when_it_goes() {
    let up = Up::start();
    let server = up.server.as_str();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("rules.yaml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let env = [("BOOTFLEET_SERVER", server), ("BOOTFLEET_TOKEN", TOKEN)];
    expect(&run(&["apply", "-f", manifest.to_str().unwrap(), "--activate"], &env), 0);
    expect(&run(&["evaluate", "--mac", HOST], &env), 0);

    let rules = complete_bash(&["rules", "get", ""], &[("BOOTFLEET_SERVER", server)]);
    assert!(rules.iter().any(|r| r == "first-rule"), "{rules:?}");
    // The server named on the line being completed wins over the default.
    let rules = complete_bash(&["--server", server, "rules", "delete", "fi"], &[]);
    assert!(rules.iter().any(|r| r == "first-rule"), "{rules:?}");
    let hosts = complete_bash(&["hosts", "get", ""], &[("BOOTFLEET_SERVER", server)]);
    assert!(hosts.iter().any(|h| h == HOST), "{hosts:?}");
    let profiles = complete_bash(&["profiles", "get", "image", ""], &[("BOOTFLEET_SERVER", server)]);
    assert!(profiles.iter().any(|p| p == "img-a"), "{profiles:?}");
    // No server: only the flags, and no hang.
    let nobody = format!("http://127.0.0.1:{}", bootfleet_test_support::free_port());
    let started = Instant::now();
    let offline = complete_bash(&["rules", "get", ""], &[("BOOTFLEET_SERVER", &nobody)]);
    assert!(offline.iter().all(|o| o.starts_with("--")), "{offline:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "completion waited {:?}", started.elapsed());
    // The registration script calls the binary back with COMPLETE.
    let script = run(&["completions", "bash"], &[]);
    expect(&script, 0);
    assert!(stdout(&script).contains("COMPLETE=\"bash\"") || stdout(&script).contains("COMPLETE=bash"));

    // hosts watch: one compact JSON object per line, then "server went away".
    let mut watch = Command::new(BIN)
        .args(["hosts", "watch", "-o", "json", "--server", server])
        .env_remove("BOOTFLEET_OUTPUT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Every line is read, so the watcher never sees a closed pipe.
    let lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines {
            let _ = line_tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        expect(&run(&["evaluate", "--mac", HOST], &env), 0);
        if let Ok(line) = line_rx.recv_timeout(Duration::from_millis(200)) {
            break line.unwrap();
        }
        assert!(Instant::now() < deadline, "hosts watch showed no decision");
    };
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["facts"]["mac"], HOST, "{event}");
    drop(up);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = watch.kill();
            panic!("hosts watch did not exit when the server went away");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut watch.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(69), "{err}");
    assert!(err.contains("the server went away"), "{err}");
}
