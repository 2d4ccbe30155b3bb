//! Two streamer replicas and a rules engine on a real etcd: an image pushed
//! to one is pulled by the other once the active rules need it; boot
//! scripts list both replicas; a file corrupted on disk is never served and
//! is fetched again; boot reports reach the host record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bootfleet_core::admin::Health;
use bootfleet_core::store::SharedStore;
use bootfleet_core::store::etcd::{EtcdOptions, EtcdStore};
use bootfleet_proto::v1 as pb;
use bootfleet_rules_engine::manifest::{Format, parse};
use bootfleet_rules_engine::store::{RulesState, StateOptions};
use bootfleet_test_support::etcd::EtcdCluster;
use tokio_util::sync::CancellationToken;

use crate::{TOKEN, curl, pseudo_random, push, start_replica};

const RULES: &str = r#"
image_profiles:
  - { name: tiny, kernel: { kernel: tiny/1/vmlinuz, initrds: [tiny/1/initrd.img], cmdline: "console=ttyS0 marker={{host.marker}}" } }
host_profiles:
  - { name: lab, values: { marker: replicated } }
rules:
  - { name: lab, match: { mac: "52:54:00:*" }, image_profile: tiny, host_profile: lab }
"#;

/// A rules engine on the shared store, in this process; returns its URL.
pub(crate) async fn rules_engine(store: SharedStore, stop: &CancellationToken) -> String {
    let state = RulesState::start(store, StateOptions { member_id: "rules".into(), history_limit: 5 }, stop);
    state.ready().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = stop.clone();
    tokio::spawn(async move {
        bootfleet_rules_engine::server::serve(listener, state, &Health::new(), Some(TOKEN.into()), stop).await
    });
    url
}

async fn apply(url: &str) {
    apply_rules(url, RULES).await;
}

/// Applies and activates the manifest `rules` (YAML).
pub(crate) async fn apply_rules(url: &str, rules: &str) {
    let mut admin = bootfleet_rules_engine::client::connect(url, Some(TOKEN)).await.unwrap();
    let manifest = parse(rules, Format::Yaml).unwrap();
    let options = bootfleet_rules_engine::client::ApplyOptions { activate: true, ..Default::default() };
    bootfleet_rules_engine::client::apply_manifest(&mut admin, manifest, options).await.unwrap();
}

pub(crate) fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn replicas_pull_verify_repair_and_fail_over() {
    let etcd = EtcdCluster::start(1).unwrap();
    let endpoint = etcd.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let store_flags = ["--store", "etcd", "--etcd-endpoints", &endpoint];
    let a = start_replica(&store_flags, dir.path(), "a", "scrub_interval = \"1s\"");
    let b = start_replica(&store_flags, dir.path(), "b", "scrub_interval = \"1s\"");
    let kernel = pseudo_random(2 * 1024 * 1024, 7);
    let initrd = pseudo_random(200_000, 8);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stop = CancellationToken::new();
    let rules_url = runtime.block_on(async {
        let store: SharedStore =
            Arc::new(EtcdStore::connect(EtcdOptions::new(etcd.endpoints())).await.unwrap());
        let url = rules_engine(store, &stop).await;
        push(&a, dir.path(), "tiny", "1", &[("vmlinuz", kernel.clone()), ("initrd.img", initrd.clone())])
            .await;
        url
    });
    // Not needed by any rule yet: B does not fetch it.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(curl(&format!("{}/images/tiny/1/vmlinuz?hop=1", b.url()), &[]).status, 503);
    runtime.block_on(apply(&rules_url));

    // B pulls both files from A and reports them present.
    let status = || {
        runtime.block_on(async {
            let mut c = a.client().await;
            c.status(pb::StatusRequest {}).await.unwrap().into_inner()
        })
    };
    wait_until("B holds tiny/1", Duration::from_secs(30), || {
        status().states.iter().any(|s| s.member_id == "b" && s.state == "present")
    });
    let s = status();
    assert_eq!(s.needed, vec!["tiny/1"]);
    assert!(s.states.iter().all(|s| s.state == "present" && s.files_present == 2), "{:?}", s.states);
    let from_b = curl(&format!("{}/images/tiny/1/vmlinuz", b.url()), &[]);
    assert!(from_b.status == 200 && from_b.body == kernel);

    // The boot script from B lists B first, then A, for every file.
    let script = curl(&format!("{}/boot.ipxe?mac=52:54:00:00:00:01", b.url()), &[]);
    let text = String::from_utf8_lossy(&script.body).into_owned();
    assert_eq!(script.status, 200, "{text}");
    let kernel_line = text.lines().find(|l| l.starts_with("kernel ")).unwrap();
    let (b_kernel, a_kernel) =
        (format!("{}/images/tiny/1/vmlinuz", b.url()), format!("{}/images/tiny/1/vmlinuz", a.url()));
    let (at_b, at_a) = (kernel_line.find(&b_kernel).unwrap(), kernel_line.find(&a_kernel).unwrap());
    assert!(at_b < at_a, "{kernel_line}");
    assert!(kernel_line.contains("marker=replicated"), "{kernel_line}");
    assert!(
        text.contains(&format!("|| initrd --name initrd0 {}/images/tiny/1/initrd.img", a.url())),
        "{text}"
    );

    // Corrupt B's copy in place: never served, detected, fetched again.
    let path = std::fs::read_dir(b.data.join("blobs"))
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.metadata().unwrap().len() == kernel.len() as u64)
        .expect("B holds the kernel")
        .path();
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"CORRUPTED", 4096).unwrap();
    }
    let answer = curl(&format!("{}/images/tiny/1/vmlinuz", b.url()), &[]);
    match answer.status {
        307 => assert!(answer.header("location").unwrap().starts_with(&a.url()), "{}", answer.headers),
        200 => assert!(answer.body == kernel, "corrupt bytes were served"),
        other => panic!("unexpected {other}: {}", answer.headers),
    }
    wait_until("B repaired the kernel", Duration::from_secs(30), || {
        let again = curl(&format!("{}/images/tiny/1/vmlinuz", b.url()), &[]);
        again.status == 200 && again.body == kernel
    });
    let metrics = bootfleet_test_support::http_get(b.admin, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bootfleet_streamer_corrupt_files_total") && !l.ends_with(" 0")),
        "corruption not counted"
    );
    assert!(metrics.lines().any(|l| l.starts_with("bootfleet_streamer_pulls_total{outcome=\"ok\"}")));

    // Boot reports reach the host record through the rules engine.
    assert_eq!(curl(&format!("{}/report/52:54:00:00:00:01/booted/disk", b.url()), &[]).status, 200);
    wait_until("the host record shows the disk boot", Duration::from_secs(10), || {
        runtime.block_on(async {
            let mut c = bootfleet_rules_engine::client::connect(&rules_url, None).await.unwrap();
            let host = c.get_host(pb::GetHostRequest { mac: "52:54:00:00:00:01".into() }).await;
            host.is_ok_and(|h| {
                let h = h.into_inner();
                h.boot_status.is_some_and(|b| {
                    b.not_booted_stateless
                        && b.reports.iter().any(|r| r.stage == "script" && r.replica == "b")
                })
            })
        })
    });
    stop.cancel();
    for replica in [a, b] {
        let status = replica.guard.terminate(Duration::from_secs(15));
        assert!(status.is_some_and(|s| s.success()), "a replica did not stop cleanly: {status:?}");
    }
}
