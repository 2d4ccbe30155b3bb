//! Garbage collection on two replicas: three versions pushed to both, the
//! third named by the active rules. A dry run lists the first two versions
//! and their own files on both replicas and removes nothing; the real run
//! removes them from the catalog and from both replicas' disks, and keeps
//! the file the third version shares with them.

use std::sync::Arc;
use std::time::Duration;

use bootfleet_core::store::SharedStore;
use bootfleet_core::store::etcd::{EtcdOptions, EtcdStore};
use bootfleet_image_streamer::client;
use bootfleet_proto::v1 as pb;
use bootfleet_test_support::etcd::EtcdCluster;
use tokio_util::sync::CancellationToken;

use crate::replication::{apply_rules, rules_engine, wait_until};
use crate::{Replica, pseudo_random, start_replica};

const RULES: &str = r#"
image_profiles:
  - { name: os, kernel: { kernel: os/3/vmlinuz, initrds: [os/3/initrd.img] } }
rules:
  - { name: all, match: { mac: "52:54:00:*" }, image_profile: os }
"#;

/// Uploads `files` to every replica, then commits `os/<version>` once.
async fn push_everywhere(
    replicas: &[&Replica],
    dir: &std::path::Path,
    version: &str,
    files: &[(&str, Vec<u8>)],
) {
    let src = dir.join(format!("src-os-{version}"));
    std::fs::create_dir_all(&src).unwrap();
    for (name, data) in files {
        std::fs::write(src.join(name), data).unwrap();
    }
    let local = client::scan_dir(&src).unwrap();
    for replica in replicas {
        let mut c = replica.client().await;
        for f in &local {
            client::upload(&mut c, f, |_, _| {}).await.unwrap();
        }
    }
    let mut c = replicas[0].client().await;
    client::commit(&mut c, "os", version, "", &local).await.unwrap();
}

fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn unused_versions_and_their_own_files_go_from_every_replica_and_shared_files_stay() {
    let etcd = EtcdCluster::start(1).unwrap();
    let endpoint = etcd.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let store_flags = ["--store", "etcd", "--etcd-endpoints", &endpoint];
    let a = start_replica(&store_flags, dir.path(), "a", "");
    let b = start_replica(&store_flags, dir.path(), "b", "");
    let initrd = pseudo_random(8192, 50);
    let kernels: Vec<Vec<u8>> = [11, 21, 31].into_iter().map(|seed| pseudo_random(4096, seed)).collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stop = CancellationToken::new();
    let mut c = runtime.block_on(async {
        let store: SharedStore =
            Arc::new(EtcdStore::connect(EtcdOptions::new(etcd.endpoints())).await.unwrap());
        let url = rules_engine(store, &stop).await;
        for (i, kernel) in kernels.iter().enumerate() {
            let files = [("vmlinuz", kernel.clone()), ("initrd.img", initrd.clone())];
            push_everywhere(&[&a, &b], dir.path(), &(i + 1).to_string(), &files).await;
        }
        apply_rules(&url, RULES).await;
        a.client().await
    });
    let on_disk = |replica: &Replica, data: &[u8]| replica.data.join("blobs").join(sha(data)).exists();
    let request = |dry_run: bool| pb::CollectGarbageRequest {
        dry_run,
        remove_versions: true,
        versions_unused_for_seconds: 0,
        min_file_age_seconds: 0,
        any_file_age: true,
    };
    // B's holdings reach A through B's member record.
    wait_until("A sees B's files", Duration::from_secs(20), || {
        let answer = runtime.block_on(c.collect_garbage(request(true))).unwrap().into_inner();
        answer.files.iter().all(|f| f.replicas == ["a", "b"]) && answer.files.len() == 2
    });

    let dry = runtime.block_on(c.collect_garbage(request(true))).unwrap().into_inner();
    assert_eq!(dry.versions, ["os/1", "os/2"]);
    let mut expected = vec![sha(&kernels[0]), sha(&kernels[1])];
    expected.sort();
    assert_eq!(dry.files.iter().map(|f| f.sha256.clone()).collect::<Vec<_>>(), expected);
    std::thread::sleep(Duration::from_secs(3));
    for replica in [&a, &b] {
        assert!(on_disk(replica, &kernels[0]) && on_disk(replica, &kernels[1]), "a dry run removed files");
    }

    let done = runtime.block_on(c.collect_garbage(request(false))).unwrap().into_inner();
    assert_eq!((done.versions, done.files.len()), (dry.versions, 2));
    for replica in [&a, &b] {
        wait_until("the unused files are gone", Duration::from_secs(20), || {
            !on_disk(replica, &kernels[0]) && !on_disk(replica, &kernels[1])
        });
        assert!(on_disk(replica, &kernels[2]) && on_disk(replica, &initrd), "a used file went");
    }
    let listed = runtime.block_on(c.list_versions(pb::ListVersionsRequest::default())).unwrap().into_inner();
    let versions: Vec<&str> = listed.versions.iter().map(|v| v.version.as_str()).collect();
    assert_eq!(versions, ["3"]);
    stop.cancel();
}
