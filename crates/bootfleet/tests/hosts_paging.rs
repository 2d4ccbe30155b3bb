//! `bootfleet hosts list` and `bootfleet rules test-compliance` against
//! `bootfleet up` holding more host records than one page, and more bytes
//! than one gRPC message may carry (4 MiB): the CLI pages through them and
//! shows every host once.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bootfleet_proto::v1 as pb;
use bootfleet_test_support::process::wait_serving;
use common::{UpPorts, up_command};

const BIN: &str = env!("CARGO_BIN_EXE_bootfleet");
const TOKEN: &str = "paging-test-token-0123456789";
/// Past the server's 500 per page, and at 12 KiB of facts each about
/// 13 MiB in all.
const HOSTS: u32 = 1_100;

fn cli(server: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("BOOTFLEET_SERVER", server)
        .env("BOOTFLEET_TOKEN", TOKEN)
        .output()
        .unwrap()
}

fn json(server: &str, args: &[&str]) -> serde_json::Value {
    let out = cli(server, args);
    assert!(out.status.success(), "bootfleet {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn mac(i: u32) -> String {
    let [_, a, b, c] = i.to_be_bytes();
    format!("52:54:02:{a:02x}:{b:02x}:{c:02x}")
}

fn manifest(dir: &std::path::Path, image: &str) -> String {
    let path = dir.join(format!("{image}.yaml"));
    std::fs::write(
        &path,
        format!(
            "image_profiles:\n  - {{ name: img-a, local: true }}\n  - {{ name: img-b, local: true }}\n\
             rules:\n  - {{ name: everyone, match: {{ always: true }}, image_profile: {image} }}\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn the_cli_pages_through_more_hosts_than_one_message_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, rules) = (bootfleet_test_support::free_port(), bootfleet_test_support::free_port());
    let images = bootfleet_test_support::free_port();
    let ports = UpPorts { admin, rules, images, ..UpPorts::default() };
    let _up =
        bootfleet_test_support::process::ChildGuard(up_command(dir.path(), ports, TOKEN).spawn().unwrap());
    wait_serving(admin, Duration::from_secs(20));
    let server = format!("http://127.0.0.1:{rules}");
    let applied = cli(&server, &["apply", "-f", &manifest(dir.path(), "img-a"), "--activate"]);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));

    // Every host evaluated (and so recorded) with 12 KiB of facts.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = bootfleet_rules_engine::client::connect(&server, Some(TOKEN)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let probe = pb::EvaluateRequest { facts: Some(facts(&mac(0))), dry_run: true, ..Default::default() };
        while client
            .evaluate(probe.clone())
            .await
            .unwrap()
            .into_inner()
            .decision
            .unwrap()
            .image_profile
            .is_none()
        {
            assert!(Instant::now() < deadline, "the rules never became active");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for i in 0..HOSTS {
            let request =
                pb::EvaluateRequest { facts: Some(facts(&mac(i))), dry_run: false, ..Default::default() };
            let answer = client.evaluate(request).await.unwrap().into_inner();
            assert_eq!(answer.recording(), pb::Recording::Queued, "{}", mac(i));
        }
    });

    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let listed = json(&server, &["hosts", "list", "-o", "json"]);
        let count = listed["hosts"].as_array().map_or(0, Vec::len);
        if count == HOSTS as usize {
            break listed;
        }
        assert!(Instant::now() < deadline, "hosts list shows {count} of {HOSTS} hosts");
        std::thread::sleep(Duration::from_millis(200));
    };
    let macs: Vec<&str> =
        listed["hosts"].as_array().unwrap().iter().map(|h| h["mac"].as_str().unwrap()).collect();
    assert_eq!(macs, (0..HOSTS).map(mac).collect::<Vec<_>>());

    // Staged, not active: every host would change.
    let staged = cli(&server, &["apply", "-f", &manifest(dir.path(), "img-b")]);
    assert!(staged.status.success(), "{}", String::from_utf8_lossy(&staged.stderr));
    let compliance = json(&server, &["rules", "test-compliance", "-o", "json"]);
    assert_eq!(compliance["hosts_checked"], HOSTS, "{}", compliance["hosts_checked"]);
    assert_eq!(compliance["non_compliant"].as_array().map(Vec::len), Some(HOSTS as usize));
}

fn facts(mac: &str) -> pb::HostFacts {
    pb::HostFacts {
        mac: mac.into(),
        arch: "bios".into(),
        labels: [("inventory".to_owned(), "x".repeat(12 * 1024))].into(),
        ..Default::default()
    }
}
