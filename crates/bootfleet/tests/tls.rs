//! `bootfleet up` with TLS on the rules engine's and the image service's ports and client
//! certificates required (`[rules] tls_*`), and the CLI against it:
//! https:// with --ca-file and --cert/--key works; without a certificate,
//! or over http://, it fails and says so.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bootfleet_test_support::pki::TestPki;
use bootfleet_test_support::{free_port, healthz};

const BIN: &str = env!("CARGO_BIN_EXE_bootfleet");

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `up` reports serving on its admin port; its log (`log`)
/// in the failure otherwise.
fn wait_serving(up: &mut KillOnDrop, port: u16, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthz(port).starts_with("serving") {
        let exited = up.0.try_wait().unwrap();
        if exited.is_some() || Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("bootfleet up never reported serving ({exited:?}); its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cli(url: &str, args: &[&str]) -> Output {
    Command::new(BIN).arg("--server").arg(url).args(args).env_remove("BOOTFLEET_TOKEN").output().unwrap()
}

#[test]
fn the_cli_reaches_tls_services_with_a_client_certificate_only() {
    let pki = TestPki::new("bootfleet-test-ca").unwrap();
    let client = pki.issue("operator", "operator-1", false).unwrap();
    let server = pki.server();
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("bootfleet.toml");
    std::fs::write(
        &config,
        format!(
            "[rules]\ntls_cert_file = \"{cert}\"\ntls_key_file = \"{key}\"\ntls_client_ca_file = \"{ca}\"\n\
             tls_client_auth = \"required\"\n\
             [streamer]\ngrpc_tls_cert_file = \"{cert}\"\ngrpc_tls_key_file = \"{key}\"\n\
             grpc_tls_client_ca_file = \"{ca}\"\ngrpc_tls_client_auth = \"required\"\n",
            cert = server.cert.display(),
            key = server.key.display(),
            ca = pki.ca().display()
        ),
    )
    .unwrap();
    let (admin_port, rules_port, images_port) = (free_port(), free_port(), free_port());
    let log = data.path().join("up.log");
    let child = Command::new(BIN)
        .args(["up", "--store", "memory", "--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .args(["--rules-listen", &format!("127.0.0.1:{rules_port}")])
        .args(["--tftp-listen", "127.0.0.1:0"])
        .args([
            "--streamer-listen",
            "127.0.0.1:0",
            "--streamer-grpc-listen",
            &format!("127.0.0.1:{images_port}"),
        ])
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(data.path())
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut up = KillOnDrop(child);
    wait_serving(&mut up, admin_port, &log);
    let https = format!("https://127.0.0.1:{rules_port}");
    let ca = pki.ca().display().to_string();
    let (cert, key) = (client.cert.display().to_string(), client.key.display().to_string());

    let ok = cli(&https, &["--ca-file", &ca, "--cert", &cert, "--key", &key, "hosts", "list"]);
    assert!(ok.status.success(), "with a client certificate: {}", String::from_utf8_lossy(&ok.stderr));

    let refused = cli(&https, &["--ca-file", &ca, "hosts", "list"]);
    assert!(!refused.status.success(), "without a client certificate");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    // The cause is the server's "certificate required" alert or, when the
    // client writes before reading it, a broken pipe: the hint covers both.
    assert!(stderr.contains("--cert and --key"), "the error suggests a certificate: {stderr}");

    let plaintext = format!("http://127.0.0.1:{rules_port}");
    let refused = cli(&plaintext, &["hosts", "list"]);
    assert!(!refused.status.success(), "plaintext to the TLS port");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("use https://"), "the error suggests TLS: {stderr}");

    let half = cli(&https, &["--ca-file", &ca, "--cert", &cert, "hosts", "list"]);
    assert!(!half.status.success(), "--cert without --key");
    assert!(
        String::from_utf8_lossy(&half.stderr).contains("--key"),
        "{}",
        String::from_utf8_lossy(&half.stderr)
    );

    // The image service takes the same keys under [streamer] grpc_tls_*.
    let images = format!("https://127.0.0.1:{images_port}");
    let images_cli = |args: &[&str]| {
        Command::new(BIN)
            .arg("--images-server")
            .arg(&images)
            .args(args)
            .env_remove("BOOTFLEET_TOKEN")
            .output()
            .unwrap()
    };
    let ok = images_cli(&["--ca-file", &ca, "--cert", &cert, "--key", &key, "images", "list"]);
    assert!(ok.status.success(), "images with a client certificate: {}", String::from_utf8_lossy(&ok.stderr));
    let refused = images_cli(&["--ca-file", &ca, "images", "list"]);
    assert!(!refused.status.success(), "images without a client certificate");
}
