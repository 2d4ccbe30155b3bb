//! Rules engine tests with real clients: in-process servers on the embedded
//! store, and separate replica processes on a real etcd.

mod api;
mod hosts;
mod replicas;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use bootfleet_core::admin::Health;
use bootfleet_core::auth::{Credentials, Role, Token};
use bootfleet_core::store::SharedStore;
use bootfleet_core::store::embedded::EmbeddedStore;
use bootfleet_proto::v1 as pb;
use bootfleet_rules_engine::client::{Client, connect};
use bootfleet_rules_engine::store::{HostLimits, RulesState, StateOptions};
use tokio_util::sync::CancellationToken;

pub(crate) const TOKEN: &str = "test-admin-token-0123456789";
/// The boot services' token: Evaluate records with it, writes are refused.
pub(crate) const SERVICE_TOKEN: &str = "test-service-token-0123456789";

/// An in-process rules engine, stopped on drop.
pub(crate) struct Server {
    pub(crate) url: String,
    pub(crate) state: Arc<RulesState>,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub(crate) async fn start(store: SharedStore) -> Server {
    start_with(store, HostLimits::default()).await
}

/// A server keeping host records within `limits`, accepting the admin
/// token and the service token.
pub(crate) async fn start_with(store: SharedStore, limits: HostLimits) -> Server {
    bootfleet_test_support::init_tracing();
    let stop = CancellationToken::new();
    let options = StateOptions { member_id: "test".into(), history_limit: 5 };
    let state = RulesState::start_with(store, options, limits, &stop);
    state.ready().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let serve_state = Arc::clone(&state);
    let serve_stop = stop.clone();
    let credentials = Credentials::new()
        .grant(Role::Admin, Some(Token::new(TOKEN)), "rules.admin_token_file")
        .grant(Role::Service, Some(Token::new(SERVICE_TOKEN)), "rules.service_token_file");
    tokio::spawn(async move {
        let health = Health::new();
        bootfleet_rules_engine::server::serve_with(listener, serve_state, &health, credentials, serve_stop)
            .await
    });
    Server { url, state, stop }
}

pub(crate) async fn embedded() -> Server {
    start(Arc::new(EmbeddedStore::in_memory().unwrap())).await
}

pub(crate) async fn admin(url: &str) -> Client {
    connect(url, Some(TOKEN)).await.unwrap()
}

pub(crate) async fn service(url: &str) -> Client {
    connect(url, Some(SERVICE_TOKEN)).await.unwrap()
}

pub(crate) async fn anonymous(url: &str) -> Client {
    connect(url, None).await.unwrap()
}

pub(crate) async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), fut).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

pub(crate) fn facts(mac: &str) -> pb::HostFacts {
    pb::HostFacts { mac: mac.into(), arch: "bios".into(), ..Default::default() }
}

pub(crate) fn kernel_profile(name: &str, marker: &str) -> pb::ProfileObject {
    let file = |f: &str| pb::FileRef { image: "tiny".into(), version: "1".into(), file: f.into() };
    pb::ProfileObject {
        object: Some(pb::profile_object::Object::Image(pb::ImageProfile {
            name: name.into(),
            boot: Some(pb::image_profile::Boot::Kernel(pb::KernelBoot {
                kernel: Some(file("vmlinuz")),
                initrds: vec![file("initrd")],
                cmdline: format!("console=ttyS0 marker={marker} role={{{{host.role}}}}"),
            })),
            ..Default::default()
        })),
        revision: 0,
    }
}

pub(crate) fn rule(name: &str, m: serde_json::Value, image: &str) -> pb::Rule {
    pb::Rule {
        name: name.into(),
        r#match: Some(bootfleet_rules_engine::manifest::match_expr(&m, "match").unwrap()),
        image_profile: image.into(),
        ..Default::default()
    }
}

pub(crate) fn image_name(decision: &pb::Decision) -> Option<&str> {
    decision.image_profile.as_ref().map(|p| p.name.as_str())
}

pub(crate) async fn evaluate(client: &mut Client, mac: &str) -> pb::EvaluateResponse {
    client
        .evaluate(pb::EvaluateRequest { facts: Some(facts(mac)), dry_run: false, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
}
