//! A vDisk replicates like any catalog file, and a pull cut off halfway
//! resumes: a 1 GiB golden disk pushed to one replica is pulled by the
//! other once a `vdisk` profile needs it; that replica is SIGKILLed a third
//! of the way through, and after a restart it fetches only the rest.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bootfleet_core::store::SharedStore;
use bootfleet_core::store::etcd::{EtcdOptions, EtcdStore};
use bootfleet_image_streamer::client;
use bootfleet_test_support::etcd::EtcdCluster;
use tokio_util::sync::CancellationToken;

use crate::replication::{apply_rules, rules_engine, wait_until};
use crate::{pseudo_random, push, start_replica};

const DISK_SIZE: u64 = 1 << 30;
/// The disk is written in pieces of this size, each its own pseudo-random
/// bytes, so the test never holds it in memory.
const PIECE: usize = 64 << 20;

const RULES: &str = r#"
image_profiles:
  - name: desktops
    vdisk:
      disk: golden/1/root.img
      kernel: boot/1/vmlinuz
      initrds: [boot/1/vdisk-initrd.img]
      write_cache: client-ram
rules:
  - { name: all, match: { mac: "52:54:00:*" }, image_profile: desktops }
"#;

/// `bootfleet_streamer_bytes_served_total` of the replica on `admin`: what
/// it has sent (it once counted whole responses as they began, so a pull
/// cut off by a kill counted as the whole file).
fn bytes_served(admin: u16) -> u64 {
    let metrics = bootfleet_test_support::http_get(admin, "/metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("bootfleet_streamer_bytes_served_total ")?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_one_gib_vdisk_replicates_and_a_cut_pull_resumes() {
    let etcd = EtcdCluster::start(1).unwrap();
    let endpoint = etcd.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let store_flags = ["--store", "etcd", "--etcd-endpoints", &endpoint];
    let a = start_replica(&store_flags, dir.path(), "a", "");
    let mut b = start_replica(&store_flags, dir.path(), "b", "");

    let src = dir.path().join("golden");
    std::fs::create_dir_all(&src).unwrap();
    let mut disk = std::fs::File::create(src.join("root.img")).unwrap();
    for piece in 0..DISK_SIZE / PIECE as u64 {
        disk.write_all(&pseudo_random(PIECE, 100 + piece)).unwrap();
    }
    drop(disk);
    let file = client::scan_dir(&src).unwrap().remove(0);
    assert_eq!(file.size, DISK_SIZE);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stop = CancellationToken::new();
    let rules_url = runtime.block_on(async {
        let store: SharedStore =
            Arc::new(EtcdStore::connect(EtcdOptions::new(etcd.endpoints())).await.unwrap());
        let url = rules_engine(store, &stop).await;
        let boot = [("vmlinuz", pseudo_random(4096, 1)), ("vdisk-initrd.img", pseudo_random(4096, 2))];
        push(&a, dir.path(), "boot", "1", &boot).await;
        let mut c = a.client().await;
        client::upload(&mut c, &file, |_, _| {}).await.unwrap();
        client::commit(&mut c, "golden", "1", "1 GiB golden disk", std::slice::from_ref(&file))
            .await
            .unwrap();
        url
    });
    let served_before = bytes_served(a.admin);
    runtime.block_on(apply_rules(&rules_url, RULES));

    // B pulls the disk (the profile needs it); SIGKILL a third of the way.
    let partial = b.data.join("partial").join(&file.sha256);
    let blob = b.data.join("blobs").join(&file.sha256);
    wait_until("B has pulled a third of the disk", Duration::from_secs(120), || {
        std::fs::metadata(&partial).is_ok_and(|m| m.len() >= DISK_SIZE / 3)
    });
    b.guard.0.kill().unwrap();
    b.guard.0.wait().unwrap();
    let held = std::fs::metadata(&partial).unwrap().len();
    assert!(held < DISK_SIZE && !blob.exists(), "the pull finished before the kill");

    let b = start_replica(&store_flags, dir.path(), "b", "");
    wait_until("B holds the whole disk", Duration::from_secs(180), || blob.exists());
    // The blob is in place only once it matched its hash; B serves it.
    let served = crate::curl(&format!("{}/images/golden/1/root.img", b.url()), &["-r", "0-15"]);
    assert_eq!(served.status, 206);
    let fetched = bytes_served(a.admin) - served_before;
    eprintln!(
        "B kept {} MiB across the kill; A served {} MiB in all for the {} MiB disk",
        held >> 20,
        fetched >> 20,
        DISK_SIZE >> 20
    );
    assert!(fetched < DISK_SIZE + held, "the restarted pull started over: {fetched} bytes fetched");
    assert!(fetched >= DISK_SIZE, "B holds bytes A never served: {fetched}");
    stop.cancel();
}
