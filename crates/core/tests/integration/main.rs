//! Integration tests of bootfleet-core against real backends: the embedded
//! store and a real etcd started by the harness.

mod admin;
mod conformance;
mod etcd_tls;
mod offline;
mod persistence;

use std::sync::Arc;
use std::time::Duration;

use bootfleet_core::store::embedded::EmbeddedStore;
use bootfleet_core::store::etcd::{EtcdOptions, EtcdStore};
use bootfleet_core::store::{SharedStore, WatchEvent, WatchStream};
use bootfleet_test_support::etcd::EtcdCluster;

/// A store under test plus whatever must live as long as it.
pub(crate) struct Backend {
    pub(crate) store: SharedStore,
    /// Keeps the etcd process alive for the test.
    pub(crate) _etcd: Option<EtcdCluster>,
}

pub(crate) async fn embedded() -> Backend {
    bootfleet_test_support::init_tracing();
    Backend { store: Arc::new(EmbeddedStore::in_memory().expect("in-memory store")), _etcd: None }
}

pub(crate) async fn etcd() -> Backend {
    bootfleet_test_support::init_tracing();
    let cluster = EtcdCluster::start(1).expect("start etcd");
    let store = connect(cluster.endpoints()).await;
    Backend { store, _etcd: Some(cluster) }
}

pub(crate) async fn connect(endpoints: Vec<String>) -> SharedStore {
    Arc::new(EtcdStore::connect(EtcdOptions::new(endpoints)).await.expect("connect to etcd"))
}

/// Bounds every wait in tests so a bug fails the test instead of hanging it.
pub(crate) async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Next watch batch, failing the test on error or end.
pub(crate) async fn next_batch(watch: &mut WatchStream) -> Vec<WatchEvent> {
    within("watch batch", watch.next()).await.expect("watch ended").expect("watch error")
}
