//! The embedded backend keeps everything across a restart of the process
//! (here: closing and reopening the same file).

use std::time::Duration;

use bootfleet_core::store::embedded::EmbeddedStore;
use bootfleet_core::store::{StateStore, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_survives_restart() {
    bootfleet_test_support::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (lease, rev) = {
        let store = EmbeddedStore::open(&path).unwrap();
        store.put("/bootfleet/v1/rules/a", b"rule".to_vec(), None).await.unwrap();
        let lease = store.lease_grant(Duration::from_secs(3)).await.unwrap();
        store.put("/bootfleet/v1/leases/x", b"lease".to_vec(), Some(lease)).await.unwrap();
        store.delete("/bootfleet/v1/rules/a").await.unwrap();
        let rev = store.put("/bootfleet/v1/rules/b", b"rule-b".to_vec(), None).await.unwrap();
        (lease, rev)
    };
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(store.get("/bootfleet/v1/rules/a").await.unwrap(), None);
    let b = store.get("/bootfleet/v1/rules/b").await.unwrap().unwrap();
    assert_eq!((b.value.as_slice(), b.mod_revision), (&b"rule-b"[..], rev));
    let leased = store.get("/bootfleet/v1/leases/x").await.unwrap().unwrap();
    assert_eq!(leased.lease, lease);
    // Revisions continue; lease ids are not reused.
    assert!(store.put("/bootfleet/v1/rules/c", vec![], None).await.unwrap() > rev);
    assert!(store.lease_grant(Duration::from_secs(3)).await.unwrap() > lease);
    // The lease survived with its TTL and can be renewed, then expires.
    assert_eq!(store.lease_keep_alive(lease).await.unwrap(), Duration::from_secs(3));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(store.get("/bootfleet/v1/leases/x").await.unwrap(), None);
    assert!(matches!(store.lease_keep_alive(lease).await, Err(StoreError::LeaseNotFound(_))));
    // A watch after restart from the current revision works; older history
    // is reported compacted.
    let now = store.range("/bootfleet/v1/").await.unwrap().revision;
    let mut old = store.watch("/bootfleet/v1/", rev - 1).await.unwrap();
    assert!(matches!(old.next().await, Some(Err(StoreError::Compacted { .. }))));
    let mut w = store.watch("/bootfleet/v1/", now + 1).await.unwrap();
    store.put("/bootfleet/v1/rules/d", vec![], None).await.unwrap();
    assert_eq!(w.next().await.unwrap().unwrap()[0].kv.key, "/bootfleet/v1/rules/d");
}
