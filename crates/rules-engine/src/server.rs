//! The rules-engine service: its settings and the `run` function that both
//! the `bootfleet-rules-engine` binary and `bootfleet up` call.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;

use anyhow::Context;
use bootfleet_core::admin::Health;
use bootfleet_core::auth::{Credentials, Role, Token};
use bootfleet_core::config::{
    ClientAuth, ConfigError, CoreConfig, MIN_TOKEN_LEN, ServerTls, ServerTlsSection, listen_address,
    service_section, token_file,
};
use bootfleet_core::process::ServiceContext;
use bootfleet_proto::v1::rules_service_server::RulesServiceServer;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::host_settings::DEFAULT_HISTORY_LIMIT;
use crate::host_settings::HostRecordSettings;
use crate::service::RulesApi;
use crate::store::{RulesState, StateOptions};

/// Default gRPC address of the rules engine.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

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
    /// File holding the service bearer token: Evaluate calls carrying it
    /// (or the admin token) record decisions on host records; others are
    /// dry runs.
    #[arg(
        id = "rules_service_token_file",
        long = "rules-service-token-file",
        env = "BOOTFLEET_RULES_SERVICE_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub service_token_file: Option<PathBuf>,
}

/// The `[rules]` section of the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesSection {
    listen: Option<String>,
    admin_token_file: Option<PathBuf>,
    admin_token: Option<String>,
    service_token_file: Option<PathBuf>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    tls_client_ca_file: Option<PathBuf>,
    tls_client_auth: Option<ClientAuth>,
    // Read by `HostRecordSettings::load`; declared so that the section's
    // unknown keys are refused and these are not.
    #[expect(dead_code, reason = "read by HostRecordSettings")]
    history_limit: Option<toml::Value>,
    #[expect(dead_code, reason = "read by HostRecordSettings")]
    host_retention: Option<toml::Value>,
    #[expect(dead_code, reason = "read by HostRecordSettings")]
    max_hosts: Option<toml::Value>,
}

/// Validated rules-engine settings.
#[derive(Clone)]
pub struct RulesConfig {
    /// gRPC address.
    pub listen: SocketAddr,
    /// Bearer token for writes; `None` refuses writes.
    pub admin_token: Option<String>,
    /// Token that lets Evaluate record (the boot services'); `None`: only
    /// the admin token records.
    pub service_token: Option<Token>,
    /// History length, retention and cap of host records.
    pub records: HostRecordSettings,
    /// TLS on the gRPC port (`rules.tls_*`); `None`: plaintext.
    pub tls: Option<ServerTls>,
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
            .field("service_token", &self.service_token.as_ref().map(|_| "<set>"))
            .field("records", &self.records)
            .field("tls", &self.tls)
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
        let admin_file = args
            .admin_token_file
            .clone()
            .map(|f| (f, "--rules-admin-token-file / BOOTFLEET_RULES_ADMIN_TOKEN_FILE"));
        let admin_file =
            admin_file.or_else(|| section.admin_token_file.clone().map(|f| (f, "rules.admin_token_file")));
        let admin_token = match (args.admin_token.clone().or(section.admin_token.clone()), admin_file) {
            (Some(token), _) => Some(token),
            (None, Some((file, key))) => {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| ConfigError::new(key, format!("reading {}: {e}", file.display())))?;
                Some(text.trim().to_owned())
            }
            (None, None) => None,
        };
        if let Some(token) = &admin_token
            && token.len() < MIN_TOKEN_LEN
        {
            return Err(ConfigError::new("rules.admin_token", "too short: use at least 16 characters"));
        }
        let service_token = match (&args.service_token_file, &section.service_token_file) {
            (Some(file), _) => {
                Some(token_file(file, "--rules-service-token-file / BOOTFLEET_RULES_SERVICE_TOKEN_FILE")?)
            }
            (None, Some(file)) => Some(token_file(file, "rules.service_token_file")?),
            (None, None) => None,
        };
        if let (Some(service), Some(admin)) = (&service_token, &admin_token)
            && service.expose() == admin
        {
            return Err(ConfigError::new(
                "rules.service_token_file",
                "holds the admin token: give the boot services a token of their own, so that one \
                 leaked from a boot server cannot change rules",
            ));
        }
        let records = HostRecordSettings::load(core)?;
        let tls = ServerTlsSection {
            cert_file: section.tls_cert_file,
            key_file: section.tls_key_file,
            client_ca_file: section.tls_client_ca_file,
            client_auth: section.tls_client_auth,
        }
        .validate("rules.tls_")?;
        Ok(Self { listen, admin_token, service_token, records, tls })
    }

    /// The credentials the gRPC API accepts, each with its role.
    pub fn credentials(&self) -> Credentials {
        Credentials::new()
            .grant(Role::Admin, self.admin_token.clone().map(Token::new), "rules.admin_token_file")
            .grant(Role::Service, self.service_token.clone(), "rules.service_token_file")
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
        StateOptions { member_id: ctx.config.member_id.clone(), history_limit: config.records.history_limit };
    let state = RulesState::start_with(ctx.store.clone(), options, config.records.limits(true), &stop);
    crate::metrics::HOST_RECORDS_MAX.set(i64::try_from(config.records.max_hosts).unwrap_or(i64::MAX));
    for (name, cache) in ["rules", "profiles", "locations", "hosts"].into_iter().zip(state.caches()) {
        ctx.health.track_snapshot(&format!("rules.{name}"), cache, stop.clone());
    }
    if config.admin_token.is_none() {
        tracing::warn!("no admin token configured: rule and profile writes are refused");
    }
    if config.service_token.is_none() {
        tracing::warn!(
            "no service token configured (rules.service_token_file): only Evaluate calls with the admin \
             token record host records; the boot services' calls are dry runs"
        );
    }
    // Bound, and its snapshots registered: ready as soon as they load.
    ctx.health.set("rules", bootfleet_core::admin::ComponentHealth::Serving).await;
    tracing::info!(%addr, "rules engine listening");
    let served = serve_secured(
        listener,
        state,
        &ctx.health,
        config.credentials(),
        config.tls.as_ref(),
        ctx.shutdown.token(),
    )
    .await;
    if let Err(e) = registration.deregister().await {
        tracing::warn!(error = %e, "deregistering failed; the record lapses with its lease");
    }
    served
}

/// Serves the gRPC API (RulesService, health, reflection) on `listener`
/// until `stop`, with `admin_token` as the only credential (it records
/// and writes).
pub async fn serve(
    listener: TcpListener,
    state: Arc<RulesState>,
    health: &Health,
    admin_token: Option<String>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let credentials =
        Credentials::new().grant(Role::Admin, admin_token.map(Token::new), "rules.admin_token_file");
    serve_with(listener, state, health, credentials, stop).await
}

/// Serves the gRPC API (RulesService, health, reflection) on `listener`
/// until `stop`, accepting `credentials`.
pub async fn serve_with(
    listener: TcpListener,
    state: Arc<RulesState>,
    health: &Health,
    credentials: Credentials,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    serve_secured(listener, state, health, credentials, None, stop).await
}

/// As [`serve_with`], over TLS when `tls` is given.
pub async fn serve_secured(
    listener: TcpListener,
    state: Arc<RulesState>,
    health: &Health,
    credentials: Credentials,
    tls: Option<&ServerTls>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (reflection_v1, reflection_v1alpha) =
        bootfleet_core::grpc::reflection(&[bootfleet_proto::v1::rules_service_server::SERVICE_NAME])
            .context("building gRPC reflection")?;
    let incoming = bootfleet_core::grpc::incoming_nodelay(listener);
    // Every call but WatchDecisions is answered from memory or one store
    // transaction: 30 s is far past any healthy answer.
    bootfleet_core::grpc::server_with_tls(Some(Duration::from_secs(30)), tls)
        .context("setting up TLS (rules.tls_cert_file, rules.tls_key_file)")?
        .add_service(health.grpc_service())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(RulesServiceServer::new(RulesApi::new(state, credentials, stop.clone())))
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
        .context("serving the rules engine")
}

#[cfg(test)]
mod tests {
    use bootfleet_core::config::{CommonArgs, Defaults, parse_file};

    use super::*;

    fn load(args: &RulesArgs, file: &str) -> Result<RulesConfig, ConfigError> {
        let defaults = Defaults { admin_listen: "127.0.0.1:9100", store: "memory" };
        RulesConfig::load(
            args,
            &CoreConfig::from_parts(&CommonArgs::default(), parse_file(file)?, &defaults)?,
        )
    }

    fn token_in(dir: &std::path::Path, name: &str, token: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("{token}\n")).unwrap();
        path
    }

    #[test]
    fn host_record_settings_have_defaults_and_limits() {
        let config = load(&RulesArgs::default(), "").unwrap();
        assert_eq!(config.records, HostRecordSettings::default());
        assert!(config.service_token.is_none());
        let config =
            load(&RulesArgs::default(), "[rules]\nhost_retention = \"168h\"\nmax_hosts = 10").unwrap();
        assert_eq!(
            (config.records.host_retention, config.records.max_hosts),
            (Duration::from_secs(7 * 24 * 3600), 10)
        );
        for (file, key) in [
            ("[rules]\nhost_retention = \"10m\"", "rules.host_retention"),
            ("[rules]\nhost_retention = \"soon\"", "rules.host_retention"),
            ("[rules]\nmax_hosts = 0", "rules.max_hosts"),
            ("[rules]\nmax_host = 10", "rules.max_host"),
        ] {
            assert_eq!(load(&RulesArgs::default(), file).unwrap_err().key, key, "{file}");
        }
    }

    #[test]
    fn the_service_token_comes_from_its_file_and_differs_from_the_admin_token() {
        let dir = std::env::temp_dir().join(format!("bootfleet-rules-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let service = token_in(&dir, "service", "service-token-0123456789");
        let file = format!("[rules]\nservice_token_file = {:?}", service.display().to_string());
        let config = load(&RulesArgs::default(), &file).unwrap();
        assert_eq!(config.service_token.as_ref().map(Token::expose), Some("service-token-0123456789"));
        let role = |token: &str| {
            let mut request = tonic::Request::new(());
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            config.credentials().caller(&request)
        };
        assert_eq!(
            role("service-token-0123456789"),
            bootfleet_core::auth::Caller::Authenticated(Role::Service)
        );

        let flag = RulesArgs { service_token_file: Some(dir.join("missing")), ..RulesArgs::default() };
        let err = load(&flag, &file).unwrap_err();
        assert_eq!(err.key, "--rules-service-token-file / BOOTFLEET_RULES_SERVICE_TOKEN_FILE", "{err}");
        let short = token_in(&dir, "short", "short");
        let err =
            load(&RulesArgs { service_token_file: Some(short), ..RulesArgs::default() }, "").unwrap_err();
        assert!(err.message.contains("too short"), "{err}");
        let same = RulesArgs { admin_token: Some("service-token-0123456789".into()), ..RulesArgs::default() };
        assert_eq!(load(&same, &file).unwrap_err().key, "rules.service_token_file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
