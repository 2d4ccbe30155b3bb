//! The rules engine's gRPC port over TLS, with client certificates
//! required, configured through `[rules] tls_*` as an operator would, and
//! called with the crate's own client.

use std::sync::Arc;

use bootfleet_core::admin::Health;
use bootfleet_core::auth::Credentials;
use bootfleet_core::config::{CommonArgs, CoreConfig, Defaults, parse_file};
use bootfleet_core::store::embedded::EmbeddedStore;
use bootfleet_proto::v1 as pb;
use bootfleet_proto::v1::rules_service_client::RulesServiceClient;
use bootfleet_rules_engine::client::connect_channel_with_identity;
use bootfleet_rules_engine::server::{RulesArgs, RulesConfig, serve_secured};
use bootfleet_rules_engine::store::{HostLimits, RulesState, StateOptions};
use bootfleet_test_support::pki::TestPki;
use tokio_util::sync::CancellationToken;

const DEFAULTS: Defaults = Defaults { admin_listen: "127.0.0.1:0", store: "memory" };

/// Starts a rules engine with `[rules]` TLS keys from `pki`, client
/// certificates `client_auth`; its https:// URL and a guard stopping it.
async fn start(pki: &TestPki, client_auth: &str) -> (String, tokio_util::sync::DropGuard) {
    bootfleet_test_support::init_tracing();
    let server = pki.server();
    let text = format!(
        "[rules]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_client_ca_file = \"{}\"\ntls_client_auth = \"{client_auth}\"\n",
        server.cert.display(),
        server.key.display(),
        pki.ca().display()
    );
    let core = CoreConfig::from_parts(&CommonArgs::default(), parse_file(&text).unwrap(), &DEFAULTS).unwrap();
    let config = RulesConfig::load(&RulesArgs::default(), &core).expect("valid [rules]");
    let stop = CancellationToken::new();
    let options = StateOptions { member_id: "test".into(), history_limit: 5 };
    let store = Arc::new(EmbeddedStore::in_memory().unwrap());
    let state = RulesState::start_with(store, options, HostLimits::default(), &stop);
    state.ready().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let serve_stop = stop.clone();
    tokio::spawn(async move {
        serve_secured(listener, state, &Health::new(), Credentials::new(), config.tls.as_ref(), serve_stop)
            .await
    });
    (url, stop.drop_guard())
}

async fn list_hosts(channel: tonic::transport::Channel) -> Result<pb::ListHostsResponse, tonic::Status> {
    RulesServiceClient::new(channel).list_hosts(pb::ListHostsRequest::default()).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_when_configured() {
    let pki = TestPki::new("bootfleet-test-ca").unwrap();
    let client = pki.issue("operator", "operator-1", false).unwrap();
    let (url, _stop) = start(&pki, "required").await;
    let ca = pki.ca();

    let with_cert = connect_channel_with_identity(&url, Some(&ca), Some((&client.cert, &client.key)))
        .await
        .expect("TLS with a client certificate");
    list_hosts(with_cert).await.expect("a call with a client certificate");

    // Without one the handshake fails: at connect, or at the first call
    // (TLS 1.3 reports the missing certificate after the client's finish).
    if let Ok(channel) = connect_channel_with_identity(&url, Some(&ca), None).await {
        list_hosts(channel).await.expect_err("a call without a client certificate");
    }
    // A certificate from another CA is no better.
    let other = TestPki::new("someone-else").unwrap();
    let stranger = other.issue("stranger", "stranger", false).unwrap();
    if let Ok(channel) =
        connect_channel_with_identity(&url, Some(&ca), Some((&stranger.cert, &stranger.key))).await
    {
        list_hosts(channel).await.expect_err("a call with a certificate from another CA");
    }
    // Plaintext to the TLS port.
    let plaintext = url.replace("https://", "http://");
    if let Ok(channel) = connect_channel_with_identity(&plaintext, None, None).await {
        list_hosts(channel).await.expect_err("a plaintext call");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_certificates_let_clients_without_one_in() {
    let pki = TestPki::new("bootfleet-test-ca").unwrap();
    let (url, _stop) = start(&pki, "optional").await;
    let channel =
        connect_channel_with_identity(&url, Some(&pki.ca()), None).await.expect("TLS without a certificate");
    list_hosts(channel).await.expect("a call without a client certificate");
    // The server's certificate is checked against the CA given.
    let other = TestPki::new("someone-else").unwrap();
    if let Ok(channel) = connect_channel_with_identity(&url, Some(&other.ca()), None).await {
        list_hosts(channel).await.expect_err("a server from an untrusted CA");
    }
}
