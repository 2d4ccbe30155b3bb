//! `bootfleet up`: every service in one process on the embedded store,
//! through the same `run` functions as the service binaries.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use bootfleet_core::auth::Token;
use bootfleet_core::config::{CommonArgs, ConfigError, CoreConfig, Defaults, LogFormat, StoreBackend};
use bootfleet_core::process::ServiceContext;
use bootfleet_dhcp_responder::server::{DhcpArgs, DhcpConfig};
use bootfleet_image_streamer::server::{StreamerArgs, StreamerConfig};
use bootfleet_rules_engine::server::{RulesArgs, RulesConfig};
use bootfleet_tftp_server::server::{TftpArgs, TftpConfig};

/// Defaults of the all-in-one process: local admin port, embedded store.
const DEFAULTS: Defaults = Defaults { admin_listen: "127.0.0.1:9100", store: "embedded" };

/// Arguments of `bootfleet up`.
#[derive(clap::Args)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    rules: RulesArgs,
    #[command(flatten)]
    tftp: TftpArgs,
    #[command(flatten)]
    streamer: StreamerArgs,
    #[command(flatten)]
    dhcp: DhcpArgs,
}

/// Settings of every service `up` runs.
#[derive(Debug)]
struct Services {
    rules: RulesConfig,
    tftp: TftpConfig,
    streamer: StreamerConfig,
    /// Only when `[dhcp]` names interfaces: DHCP is never on by default.
    dhcp: Option<DhcpConfig>,
}

impl bootfleet_core::process::Components for Services {
    fn components(&self) -> Vec<&'static str> {
        let mut all = self.rules.components();
        all.extend(self.tftp.components());
        all.extend(self.streamer.components());
        if let Some(dhcp) = &self.dhcp {
            all.extend(dhcp.components());
        }
        all
    }
}

/// Runs every service until shutdown; the first failure stops them all.
async fn run_all(ctx: Arc<ServiceContext>, services: Services) -> anyhow::Result<()> {
    let stop = ctx.shutdown.clone();
    let on_failure = |result: anyhow::Result<()>| {
        if result.is_err() {
            stop.trigger();
        }
        result
    };
    let (rules, tftp, streamer, dhcp) = tokio::join!(
        async { on_failure(bootfleet_rules_engine::server::run(Arc::clone(&ctx), services.rules).await) },
        async { on_failure(bootfleet_tftp_server::server::run(Arc::clone(&ctx), services.tftp).await) },
        async {
            on_failure(bootfleet_image_streamer::server::run(Arc::clone(&ctx), services.streamer).await)
        },
        async {
            match services.dhcp {
                Some(dhcp) => on_failure(bootfleet_dhcp_responder::server::run(Arc::clone(&ctx), dhcp).await),
                None => Ok(()),
            }
        },
    );
    rules.and(tftp).and(streamer).and(dhcp)
}

/// Validates every service's settings against the shared configuration.
fn load(args: &UpArgs, core: &CoreConfig) -> Result<Services, ConfigError> {
    let mut services = Services {
        rules: RulesConfig::load(&args.rules, core)?,
        tftp: TftpConfig::load(&args.tftp, core)?,
        streamer: StreamerConfig::load_with_default(&args.streamer, core, "127.0.0.1:8080")?,
        dhcp: DhcpConfig::load(&args.dhcp, core)?,
    };
    // The DHCP responder of this process records through its rules engine:
    // both get one service token, the configured one or a fresh one.
    let service_token = match &services.rules.service_token {
        Some(token) => token.clone(),
        None => Token::random().map_err(|e| {
            ConfigError::new("rules.service_token_file", format!("generating a service token: {e}"))
        })?,
    };
    services.rules.service_token = Some(service_token.clone());
    if let Some(dhcp) = &mut services.dhcp {
        dhcp.service_token = Some(service_token);
    }
    Ok(services)
}

/// Runs `up`; returns the process exit status.
pub(crate) fn main(args: UpArgs) -> i32 {
    if args.common.validate {
        return validate(&args);
    }
    bootfleet_core::process::run_service(
        "bootfleet",
        &args.common,
        &DEFAULTS,
        |core| load(&args, core),
        run_all,
    )
}

/// `up --validate`: loads everything as a start would, then prints the
/// effective settings as `key = value` lines under `[section]` headers
/// (secrets as `<set>`), on stdout so they can be saved or compared.
/// Handled here rather than by the shared shell, which prints Debug
/// structs; the loading and exit codes are the same.
fn validate(args: &UpArgs) -> i32 {
    let checked =
        CoreConfig::load(&args.common, &DEFAULTS).and_then(|core| load(args, &core).map(|s| (core, s)));
    match checked {
        Ok((core, services)) => {
            let text = render_settings(&core, &services);
            eprintln!("configuration is valid");
            #[allow(clippy::print_stdout)]
            {
                print!("{text}");
            }
            0
        }
        Err(e) => {
            eprintln!("Error: {e}");
            bootfleet_core::config::EXIT_USAGE
        }
    }
}

/// Aligned `key = value` lines, one section per part.
#[derive(Default)]
struct Settings {
    text: String,
    section: Vec<(&'static str, String)>,
}

impl Settings {
    fn set(&mut self, key: &'static str, value: impl Display) -> &mut Self {
        self.section.push((key, value.to_string()));
        self
    }

    fn end(&mut self, name: &str) {
        let width = self.section.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        if !self.text.is_empty() {
            self.text.push('\n');
        }
        self.text.push_str(&format!("[{name}]\n"));
        for (key, value) in self.section.drain(..) {
            self.text.push_str(&format!("{key:<width$} = {value}\n"));
        }
    }
}

/// `<set>` or `<unset>`: secrets are never printed.
fn secret(value: &Option<String>) -> &'static str {
    if value.is_some() { "<set>" } else { "<unset>" }
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

fn or_none(value: Option<impl Display>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn render_settings(core: &CoreConfig, services: &Services) -> String {
    let mut out = Settings::default();
    let store = match &core.store.backend {
        StoreBackend::Embedded { path } => format!("embedded ({})", path.display()),
        StoreBackend::Memory => "memory".to_owned(),
        StoreBackend::Etcd { endpoints } => format!("etcd ({})", endpoints.join(", ")),
    };
    out.set("member_id", &core.member_id)
        .set("data_dir", core.data_dir.display())
        .set("admin_listen", core.admin_listen)
        .set("log", &core.log_filter)
        .set("log_format", if core.log_format == LogFormat::Json { "json" } else { "plain" })
        .set("store", store)
        .set("store_request_timeout", seconds(core.store.request_timeout))
        .set("election_ttl", seconds(core.store.election_ttl))
        .set("member_ttl", seconds(core.store.member_ttl))
        .set("shutdown_grace", seconds(core.shutdown_grace))
        .end("core");
    let rules = &services.rules;
    out.set("listen", rules.listen)
        .set("admin_token", secret(&rules.admin_token))
        .set("service_token", "<set> (shared with the DHCP responder)")
        .set("history_limit", rules.records.history_limit)
        .set("host_retention", seconds(rules.records.host_retention))
        .set("max_hosts", rules.records.max_hosts)
        .end("rules");
    let tftp = &services.tftp;
    out.set("listen", tftp.listen)
        .set("root", tftp.root.display())
        .set("mtu", tftp.mtu)
        .set("max_windowsize", tftp.max_windowsize)
        .set("timeout", seconds(tftp.timeout))
        .set("max_retries", tftp.max_retries)
        .set("max_transfers", tftp.max_transfers)
        .set("max_per_client", tftp.max_per_client)
        .set("cache_bytes", tftp.cache_bytes)
        .set("cache_file_limit", tftp.cache_file_limit)
        .set("render_rules_url", or_none(tftp.render.as_ref().map(|r| &r.rules_url)))
        .set("render_http_base", or_none(tftp.render.as_ref().map(|r| &r.http_base)))
        .end("tftp");
    let streamer = &services.streamer;
    out.set("listen", streamer.listen)
        .set("grpc_listen", streamer.grpc_listen)
        .set("public_url", or_none(streamer.public_url.as_ref()))
        .set("data_dir", streamer.data_dir.display())
        .set("loaders_dir", or_none(streamer.loaders_dir.as_ref().map(|d| d.display())))
        .set("admin_token", secret(&streamer.admin_token))
        .set("cache_bytes", streamer.cache_bytes)
        .set("cache_file_limit", streamer.cache_file_limit)
        .set("scrub_interval", seconds(streamer.scrub_interval))
        .set("record_decisions", streamer.record_decisions)
        .set("nbd_listen", or_none(streamer.nbd_listen.as_ref()))
        .set("nbd_write_cache_mib", streamer.write_caches.bytes_per_host >> 20)
        .set("nbd_max_write_caches", streamer.write_caches.hosts)
        .end("streamer");
    match &services.dhcp {
        None => out.set("enabled", "false (no interfaces)").end("dhcp"),
        Some(dhcp) => {
            let mode = match &dhcp.mode {
                bootfleet_dhcp_responder::server::Mode::Proxy => "proxy".to_owned(),
                bootfleet_dhcp_responder::server::Mode::Full { pools, reservations, ha, .. } => {
                    format!("full ({} pools, {} reservations, {ha:?})", pools.len(), reservations.len())
                }
            };
            out.set("enabled", true)
                .set("mode", mode)
                .set("interfaces", dhcp.interfaces.join(", "))
                .set("server_ip", dhcp.server_ip)
                .set("tftp_server", dhcp.tftp_server)
                .set("http_base", &dhcp.http_base)
                .set("rules_url", &dhcp.rules_url)
                .set(
                    "trusted_relays",
                    if dhcp.trusted_relays.is_empty() {
                        "none (relayed requests are dropped)".to_owned()
                    } else {
                        format!("{:?}", dhcp.trusted_relays)
                    },
                )
                .set("boot_unknown", dhcp.boot_unknown)
                .set("requests_per_mac_per_second", dhcp.requests_per_mac_per_second)
                .set("router_advertisements", dhcp.router_advertisements)
                .set("tftp_from_members", dhcp.tftp_from_members)
                .set("streamers_from_members", dhcp.streamers_from_members)
                .set("rules_cache", seconds(dhcp.rules_cache))
                .end("dhcp");
        }
    }
    out.text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up_args() -> UpArgs {
        let dir = std::env::temp_dir();
        UpArgs {
            common: CommonArgs::default(),
            rules: RulesArgs::default(),
            tftp: TftpArgs { root: Some(dir), ..TftpArgs::default() },
            streamer: StreamerArgs::default(),
            dhcp: DhcpArgs::default(),
        }
    }

    #[test]
    fn the_dhcp_responder_gets_the_rules_engines_service_token() {
        let file = "[dhcp]\ninterfaces = [\"lo\"]\nserver_ip = \"198.18.0.1\"\n\
                    http_base = \"http://198.18.0.1:8080\"\nrules_url = \"http://127.0.0.1:7070\"\n";
        let core = CoreConfig::from_parts(
            &CommonArgs::default(),
            bootfleet_core::config::parse_file(file).unwrap(),
            &DEFAULTS,
        )
        .unwrap();
        let services = load(&up_args(), &core).unwrap();
        let dhcp = services.dhcp.expect("[dhcp] configured");
        let token = services.rules.service_token.expect("a generated service token");
        assert_eq!(dhcp.service_token.as_ref(), Some(&token));
        // Each start generates its own.
        let again = load(&up_args(), &core).unwrap().rules.service_token.unwrap();
        assert_ne!(again, token);
    }
}
