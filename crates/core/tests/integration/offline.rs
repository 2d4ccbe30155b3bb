//! Offline mode against a real etcd: the snapshot cache keeps serving while
//! etcd is unreachable, reports it, and catches up without losing updates.

use std::time::Duration;

use bootfleet_core::admin::Health;
use bootfleet_core::snapshot::{CacheStatus, SnapshotCache};
use bootfleet_core::store::SharedStore;
use bootfleet_test_support::etcd::EtcdCluster;
use bootfleet_test_support::proxy::CuttableProxy;
use tokio_util::sync::CancellationToken;

use crate::{connect, within};

const PREFIX: &str = "/bootfleet/v1/test/offline/";

async fn wait_status(cache: &SnapshotCache, want: CacheStatus) {
    let mut status = cache.status_updates();
    within(&format!("snapshot {want:?}"), status.wait_for(|s| *s == want)).await.unwrap();
}

fn degraded_metric(prefix: &str) -> i64 {
    bootfleet_core::metrics::SNAPSHOT_DEGRADED.with_label_values(&[prefix]).get()
}

/// The cache's only way to etcd is a proxy; severing it drops the
/// connection while another client keeps writing to the healthy cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_connection_drop_without_losing_updates() {
    bootfleet_test_support::init_tracing();
    let cluster = EtcdCluster::start(3).unwrap();
    let proxy = CuttableProxy::start(([127, 0, 0, 1], cluster.client_port(0)).into()).await.unwrap();
    let cache_store = connect(vec![proxy.url()]).await;
    let writer: SharedStore = connect(cluster.endpoints()).await;
    let prefix = format!("{PREFIX}resume/");
    writer.put(&format!("{prefix}before"), b"1".to_vec(), None).await.unwrap();
    let stop = CancellationToken::new();
    let cache = SnapshotCache::start(cache_store, &prefix, stop.clone());
    within("loaded", cache.loaded()).await;

    proxy.sever();
    wait_status(&cache, CacheStatus::Degraded).await;
    assert_eq!(degraded_metric(&prefix), 1);
    // Reads keep being served from the copy.
    assert_eq!(cache.get(&format!("{prefix}before")).unwrap().value, b"1");
    // Meanwhile another client changes things.
    writer.put(&format!("{prefix}during-1"), b"2".to_vec(), None).await.unwrap();
    writer.delete(&format!("{prefix}before")).await.unwrap();
    let last = writer.put(&format!("{prefix}during-2"), b"3".to_vec(), None).await.unwrap();
    assert_eq!(cache.get(&format!("{prefix}during-1")), None, "cut off: cannot know yet");

    proxy.restore();
    wait_status(&cache, CacheStatus::Live).await;
    within("caught up", cache.caught_up(last)).await;
    let keys: Vec<String> = cache.list(&prefix).into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, [format!("{prefix}during-1"), format!("{prefix}during-2")]);
    assert_eq!(degraded_metric(&prefix), 0);
    // It resumed the watch from its revision rather than listing again (the
    // resume counter counts attempts; no re-list is what shows the resume).
    let resyncs =
        |how: &str| bootfleet_core::metrics::SNAPSHOT_RESYNCS.with_label_values(&[&prefix, how]).get();
    assert!(resyncs("resume") >= 1, "the watch must resume");
    assert_eq!(resyncs("relist"), 0, "nothing was compacted: no re-list may have happened");
    stop.cancel();
}

/// History the cache needed was compacted while it was away: it lists again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relists_when_missed_history_was_compacted() {
    bootfleet_test_support::init_tracing();
    let cluster = EtcdCluster::start(1).unwrap();
    let proxy = CuttableProxy::start(([127, 0, 0, 1], cluster.client_port(0)).into()).await.unwrap();
    let cache_store = connect(vec![proxy.url()]).await;
    let writer: SharedStore = connect(cluster.endpoints()).await;
    let prefix = format!("{PREFIX}compact/");
    writer.put(&format!("{prefix}a"), b"1".to_vec(), None).await.unwrap();
    let stop = CancellationToken::new();
    let cache = SnapshotCache::start(cache_store, &prefix, stop.clone());
    within("loaded", cache.loaded()).await;

    proxy.sever();
    wait_status(&cache, CacheStatus::Degraded).await;
    writer.delete(&format!("{prefix}a")).await.unwrap();
    let last = writer.put(&format!("{prefix}b"), b"2".to_vec(), None).await.unwrap();
    writer.compact(last).await.unwrap();
    proxy.restore();

    within("caught up", cache.caught_up(last)).await;
    wait_status(&cache, CacheStatus::Live).await;
    let keys: Vec<String> = cache.list(&prefix).into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, [format!("{prefix}b")]);
    let relists = bootfleet_core::metrics::SNAPSHOT_RESYNCS.with_label_values(&[&prefix, "relist"]).get();
    assert!(relists >= 1, "compaction must force a re-list");
    stop.cancel();
}

/// etcd entirely stopped: reads still answered, degraded reported; after
/// etcd returns the cache follows new writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_while_etcd_is_stopped() {
    bootfleet_test_support::init_tracing();
    let mut cluster = EtcdCluster::start(1).unwrap();
    let store = connect(cluster.endpoints()).await;
    let prefix = format!("{PREFIX}stopped/");
    store.put(&format!("{prefix}host"), b"known".to_vec(), None).await.unwrap();
    let stop = CancellationToken::new();
    let cache = SnapshotCache::start(store.clone(), &prefix, stop.clone());
    within("loaded", cache.loaded()).await;
    let health = Health::new();
    health.track_snapshot("store", &cache, stop.clone());

    cluster.stop_all();
    wait_status(&cache, CacheStatus::Degraded).await;
    within("health degraded", async {
        while !health.summary().1.starts_with("degraded") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    for _ in 0..5 {
        assert_eq!(cache.get(&format!("{prefix}host")).unwrap().value, b"known");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(store.get("/bootfleet/v1/x").await.unwrap_err().is_unavailable());

    cluster.restart_all().unwrap();
    let other = connect(cluster.endpoints()).await;
    let rev = other.put(&format!("{prefix}new"), b"after".to_vec(), None).await.unwrap();
    within("caught up after restart", cache.caught_up(rev)).await;
    assert_eq!(cache.status(), CacheStatus::Live);
    assert_eq!(cache.get(&format!("{prefix}new")).unwrap().value, b"after");
    within("health serving", async {
        while !health.summary().1.starts_with("serving") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    stop.cancel();
}
