//! The rules-engine service: its settings and the `run` function that both
//! the `bootfleet-rules-engine` binary and `bootfleet up` call.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bootfleet_core::admin::Health;
use bootfleet_core::config::{ConfigError, CoreConfig, listen_address, service_section};
use bootfleet_core::process::ServiceContext;
use bootfleet_proto::v1::rules_service_server::RulesServiceServer;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::service::RulesApi;
use crate::store::{RulesState, StateOptions};

/// Default gRPC address of the rules engine.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Default number of entries kept in a host's history.
pub const DEFAULT_HISTORY_LIMIT: usize = 20;

/// Rules-engine flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RulesArgs {
    /// Address of the RulesService gRPC endpoint.
    #[arg(id = "rules_listen", long = "rules-listen", env = "BOOTFLEET_RULES_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// File holding the admin bearer token that writes require.
    #[arg(
        id = "rules_admin_token_file",
        long = "rules-admin-token-file",
        env = "BOOTFLEET_RULES_ADMIN_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub admin_token_file: Option<PathBuf>,
    /// The admin bearer token itself (prefer the file).
    #[arg(
        long = "rules-admin-token",
        env = "BOOTFLEET_RULES_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
}

/// The `[rules]` section of the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesSection {
    listen: Option<String>,
    admin_token_file: Option<PathBuf>,
    admin_token: Option<String>,
    history_limit: Option<usize>,
}

/// Validated rules-engine settings.
#[derive(Clone)]
pub struct RulesConfig {
    /// gRPC address.
    pub listen: SocketAddr,
    /// Bearer token for writes; `None` refuses writes.
    pub admin_token: Option<String>,
    /// Host history length.
    pub history_limit: usize,
}

impl bootfleet_core::process::Components for RulesConfig {
    fn components(&self) -> Vec<&'static str> {
        vec!["rules"]
    }
}

impl std::fmt::Debug for RulesConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulesConfig")
            .field("listen", &self.listen)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("history_limit", &self.history_limit)
            .finish()
    }
}

impl RulesConfig {
    /// Merges flags and the `[rules]` file section; errors name the key.
    pub fn load(args: &RulesArgs, core: &CoreConfig) -> Result<Self, ConfigError> {
        let section: RulesSection = service_section(core.file.rules.as_ref(), "rules")?;
        let listen = listen_address(
            args.listen.as_ref(),
            section.listen.as_ref(),
            ("--rules-listen / BOOTFLEET_RULES_LISTEN", "rules.listen"),
            DEFAULT_LISTEN,
        )?;
        let token_file = args
            .admin_token_file
            .clone()
            .map(|f| (f, "--rules-admin-token-file / BOOTFLEET_RULES_ADMIN_TOKEN_FILE"));
        let token_file =
            token_file.or_else(|| section.admin_token_file.clone().map(|f| (f, "rules.admin_token_file")));
        let admin_token = match (args.admin_token.clone().or(section.admin_token.clone()), token_file) {
            (Some(token), _) => Some(token),
            (None, Some((file, key))) => {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| ConfigError::new(key, format!("reading {}: {e}", file.display())))?;
                Some(text.trim().to_owned())
            }
            (None, None) => None,
        };
        if let Some(token) = &admin_token
            && token.len() < 16
        {
            return Err(ConfigError::new("rules.admin_token", "too short: use at least 16 characters"));
        }
        let history_limit = section.history_limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
        if history_limit == 0 || history_limit > 1000 {
            return Err(ConfigError::new("rules.history_limit", "must be between 1 and 1000"));
        }
        Ok(Self { listen, admin_token, history_limit })
    }
}

/// Binds the gRPC port and serves the rules engine until shutdown.
pub async fn run(ctx: Arc<ServiceContext>, config: RulesConfig) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the rules engine on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let registration = ctx.register("rules-engine", vec![addr.to_string()]);
    let stop = ctx.shutdown.token();
    let options =
        StateOptions { member_id: ctx.config.member_id.clone(), history_limit: config.history_limit };
    let state = RulesState::start(ctx.store.clone(), options, &stop);
    for (name, cache) in ["rules", "profiles", "locations", "hosts"].into_iter().zip(state.caches()) {
        ctx.health.track_snapshot(&format!("rules.{name}"), cache, stop.clone());
    }
    if config.admin_token.is_none() {
        tracing::warn!("no admin token configured: rule and profile writes are refused");
    }
    // Bound, and its snapshots registered: ready as soon as they load.
    ctx.health.set("rules", bootfleet_core::admin::ComponentHealth::Serving).await;
    tracing::info!(%addr, "rules engine listening");
    let served = serve(listener, state, &ctx.health, config.admin_token, ctx.shutdown.token()).await;
    if let Err(e) = registration.deregister().await {
        tracing::warn!(error = %e, "deregistering failed; the record lapses with its lease");
    }
    served
}

/// Serves the gRPC API (RulesService, health, reflection) on `listener`
/// until `stop`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<RulesState>,
    health: &Health,
    admin_token: Option<String>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (reflection_v1, reflection_v1alpha) =
        bootfleet_core::grpc::reflection(&[bootfleet_proto::v1::rules_service_server::SERVICE_NAME])
            .context("building gRPC reflection")?;
    let incoming = bootfleet_core::grpc::incoming_nodelay(listener);
    // Every call but WatchDecisions is answered from memory or one store
    // transaction: 30 s is far past any healthy answer.
    bootfleet_core::grpc::server(Some(std::time::Duration::from_secs(30)))
        .add_service(health.grpc_service())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(RulesServiceServer::new(RulesApi::new(state, admin_token, stop.clone())))
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
        .context("serving the rules engine")
}
