//! The embedded store through its API: large writes keep the watch history
//! within its byte bound, and a watcher left behind is told to list again.

use super::EmbeddedStore;
use super::history::MAX_BYTES;
use crate::store::{StateStore, StoreError};

#[tokio::test]
async fn large_values_keep_history_within_its_bytes_and_a_watcher_left_behind_lists_again() {
    let store = EmbeddedStore::in_memory().unwrap();
    let before = store.put("/bootfleet/v1/rules/a", b"first".to_vec(), None).await.unwrap();
    // Twice the byte bound in 1 MiB values, far fewer events than the count
    // bound: only the byte bound can drop anything.
    let value = vec![0x5a; 1024 * 1024];
    for i in 0..2 * MAX_BYTES / value.len() {
        store.put(&format!("/bootfleet/v1/hosts/{}", i % 4), value.clone(), None).await.unwrap();
        let state = store.shared.lock();
        assert!(state.history.bytes() <= MAX_BYTES, "history holds {} bytes", state.history.bytes());
        assert_eq!(state.history.bytes(), state.history.recount());
    }
    store.put("/bootfleet/v1/rules/a", b"second".to_vec(), None).await.unwrap();

    // A watcher from before the large writes is told its history is gone...
    let mut behind = store.watch("/bootfleet/v1/rules/", before + 1).await.unwrap();
    let compact_revision = match behind.next().await {
        Some(Err(StoreError::Compacted { requested, compact_revision })) => {
            assert_eq!(requested, before + 1);
            compact_revision
        }
        other => panic!("expected Compacted, got {other:?}"),
    };
    assert!(compact_revision > before + 1);
    // ...and recovers as `SnapshotCache` does: list, then watch from there.
    let listed = store.range("/bootfleet/v1/rules/").await.unwrap();
    assert_eq!(listed.kvs.len(), 1);
    assert_eq!(listed.kvs[0].value, b"second");
    let mut resumed = store.watch("/bootfleet/v1/rules/", listed.revision + 1).await.unwrap();
    store.put("/bootfleet/v1/rules/a", b"third".to_vec(), None).await.unwrap();
    let batch = resumed.next().await.expect("watch open").expect("no error");
    assert_eq!(batch[0].kv.value, b"third");
}
