//! The etcd client over TLS, configured as an operator would: a TOML
//! `[store]` section loaded by `CoreConfig`, then `store::open_secured`,
//! against a real etcd serving `https://` with certificates made here.

use bootfleet_core::config::{CommonArgs, CoreConfig, Defaults, parse_file};
use bootfleet_core::store::{Compare, CompareOp, SharedStore, StoreError, TxnOp, TxnRequest, open_secured};
use bootfleet_test_support::etcd::{EtcdCluster, EtcdTls};
use bootfleet_test_support::pki::TestPki;

use crate::{next_batch, within};

const DEFAULTS: Defaults = Defaults { admin_listen: "127.0.0.1:0", store: "embedded" };
const P: &str = "/bootfleet/v1/tls-test/";

fn cluster(pki: &TestPki, client_cert_auth: bool) -> EtcdCluster {
    bootfleet_test_support::init_tracing();
    let tls = EtcdTls { ca: pki.ca(), server: pki.server(), client_cert_auth };
    EtcdCluster::start_tls(1, tls).expect("start etcd with TLS")
}

/// `[store]` for `endpoint` plus `extra` keys, loaded and validated.
fn config(endpoint: &str, extra: &str) -> CoreConfig {
    let text = format!(
        "[store]\nbackend = \"etcd\"\netcd_endpoints = [\"{endpoint}\"]\nrequest_timeout = \"2s\"\n{extra}"
    );
    CoreConfig::from_parts(&CommonArgs::default(), parse_file(&text).unwrap(), &DEFAULTS)
        .expect("valid config")
}

async fn open(config: &CoreConfig) -> Result<SharedStore, StoreError> {
    open_secured(&config.store, &config.etcd_security).await
}

fn tls_keys(pki: &TestPki, client: Option<&str>) -> String {
    let mut keys = format!("etcd_ca_file = \"{}\"\n", pki.ca().display());
    if let Some(name) = client {
        let files = pki.files(name);
        keys += &format!(
            "etcd_cert_file = \"{}\"\netcd_key_file = \"{}\"\n",
            files.cert.display(),
            files.key.display()
        );
    }
    keys
}

/// A few operations of every kind the services use.
async fn exercise(store: &SharedStore) {
    let key = format!("{P}a");
    let written = store.put(&key, b"one".to_vec(), None).await.expect("put over TLS");
    assert_eq!(store.get(&key).await.unwrap().expect("written").value, b"one");
    let mut watch = store.watch(P, written + 1).await.expect("watch over TLS");
    let swap = TxnRequest::new()
        .when([Compare::mod_revision(key.clone(), CompareOp::Equal, written)])
        .and_then([TxnOp::put(key.clone(), b"two".to_vec())]);
    assert!(store.txn(swap).await.unwrap().succeeded);
    let batch = next_batch(&mut watch).await;
    assert_eq!(batch[0].kv.value, b"two");
    assert_eq!(store.range(P).await.unwrap().kvs.len(), 1);
    assert!(store.delete(&key).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_works_over_tls_with_a_client_certificate() {
    let pki = TestPki::new("bootfleet-test-ca").unwrap();
    pki.issue("client", "bootfleet-service", false).unwrap();
    let etcd = cluster(&pki, true);
    let store =
        within("connect", open(&config(&etcd.endpoint(0), &tls_keys(&pki, Some("client"))))).await.unwrap();
    within("store operations", exercise(&store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_requiring_client_certificates_refuses_clients_without_one() {
    let pki = TestPki::new("bootfleet-test-ca").unwrap();
    let etcd = cluster(&pki, true);
    let key = format!("{P}refused");
    // TLS, no client certificate.
    let without_cert = config(&etcd.endpoint(0), &tls_keys(&pki, None));
    let refused = match within("connect", open(&without_cert)).await {
        Err(e) => e,
        Ok(store) => {
            store.put(&key, b"x".to_vec(), None).await.expect_err("write without a client certificate")
        }
    };
    assert!(matches!(refused, StoreError::Unavailable(_)), "{refused}");
    // Plaintext to the TLS port.
    let plaintext = config(&etcd.endpoint(0).replace("https://", "http://"), "");
    let refused = match within("connect", open(&plaintext)).await {
        Err(e) => e,
        Ok(store) => store.put(&key, b"x".to_vec(), None).await.expect_err("plaintext write"),
    };
    assert!(matches!(refused, StoreError::Unavailable(_)), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_is_refused() {
    let pki = TestPki::new("bootfleet-test-ca").unwrap();
    let other = TestPki::new("someone-else").unwrap();
    let etcd = cluster(&pki, false);
    let store = within("connect", open(&config(&etcd.endpoint(0), &tls_keys(&other, None)))).await;
    let refused = match store {
        Err(e) => e,
        Ok(store) => store.get(&format!("{P}a")).await.expect_err("read from an untrusted server"),
    };
    assert!(matches!(refused, StoreError::Unavailable(_)), "{refused}");
}

/// Adds user root and turns etcd's authentication on, with the Rust client
/// (what `etcdctl user add root` and `etcdctl auth enable` do).
async fn enable_auth(pki: &TestPki, endpoint: &str, password: &str) {
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(std::fs::read(pki.ca()).unwrap()));
    let options = etcd_client::ConnectOptions::new().with_tls(tls);
    let mut client = etcd_client::Client::connect([endpoint], Some(options)).await.expect("admin connection");
    client.user_add("root", password, None).await.expect("add user root");
    client.user_grant_role("root", "root").await.expect("grant role root");
    client.auth_enable().await.expect("enable auth");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_user_and_password_come_from_the_config() {
    let pki = TestPki::new("bootfleet-test-ca").unwrap();
    let etcd = cluster(&pki, false);
    let endpoint = etcd.endpoint(0);
    within("enable auth", enable_auth(&pki, &endpoint, "root-password-1")).await;
    let password = pki.dir().join("etcd-password");
    std::fs::write(&password, "root-password-1\n").unwrap();
    let with_user = format!(
        "{}etcd_username = \"root\"\netcd_password_file = \"{}\"\n",
        tls_keys(&pki, None),
        password.display()
    );
    let store = within("connect", open(&config(&endpoint, &with_user))).await.unwrap();
    within("store operations", exercise(&store)).await;

    let anonymous = within("connect", open(&config(&endpoint, &tls_keys(&pki, None)))).await.unwrap();
    let refused = anonymous.put(&format!("{P}b"), b"x".to_vec(), None).await.expect_err("anonymous write");
    assert!(refused.to_string().contains("user name is empty"), "{refused}");
}
