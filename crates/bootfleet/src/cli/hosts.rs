//! `bootfleet hosts …` and `bootfleet evaluate`.

use std::collections::HashMap;

use bootfleet_proto::v1 as pb;

use super::{ClientArgs, Output, describe, explain, print_json, print_table, say};

/// Host commands.
#[derive(clap::Args)]
pub(crate) struct HostsCommand {
    #[command(subcommand)]
    action: HostsAction,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(clap::Subcommand)]
enum HostsAction {
    /// Every known host with its last decision.
    List,
    /// One host with its history.
    Get {
        /// The host's MAC.
        mac: String,
    },
    /// Print decisions as they are made, until interrupted.
    Watch {
        /// Only this host.
        mac: Option<String>,
    },
}

/// Arguments of `bootfleet evaluate`.
#[derive(clap::Args)]
pub(crate) struct EvaluateArgs {
    /// The host's MAC.
    #[arg(long)]
    mac: String,
    /// Firmware architecture (bios, efi-x64, …).
    #[arg(long, default_value = "")]
    arch: String,
    /// Client UUID.
    #[arg(long, default_value = "")]
    uuid: String,
    /// Serial number.
    #[arg(long, default_value = "")]
    serial: String,
    /// Manufacturer.
    #[arg(long, default_value = "")]
    vendor: String,
    /// Product.
    #[arg(long, default_value = "")]
    model: String,
    /// IPv4 address.
    #[arg(long, default_value = "")]
    ipv4: String,
    /// A label, KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Decide without recording on the host record.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    client: ClientArgs,
}

fn event_row(e: &pb::HostEvent) -> Vec<String> {
    vec![
        e.at_unix_ms.to_string(),
        e.facts.as_ref().map(|f| f.mac.clone()).unwrap_or_default(),
        describe::decision(e.decision.as_ref()),
        e.decided_by.clone(),
    ]
}

pub(crate) async fn run_hosts(command: HostsCommand) -> anyhow::Result<()> {
    let mut client = command.client.connect().await?;
    let json = command.client.output == Output::Json;
    match command.action {
        HostsAction::List => {
            let response = client.list_hosts(pb::ListHostsRequest {}).await.map_err(explain)?.into_inner();
            if json {
                return print_json(&response);
            }
            let rows: Vec<Vec<String>> = response
                .hosts
                .iter()
                .map(|h| {
                    let arch = h.facts.as_ref().map(|f| f.arch.clone()).unwrap_or_default();
                    vec![h.mac.clone(), arch, describe::decision(h.last_decision.as_ref())]
                })
                .collect();
            print_table(&["MAC", "ARCH", "LAST DECISION"], &rows);
        }
        HostsAction::Get { mac } => {
            let host = client.get_host(pb::GetHostRequest { mac }).await.map_err(explain)?.into_inner();
            if json {
                return print_json(&host);
            }
            say(&format!("host {}: {}", host.mac, describe::decision(host.last_decision.as_ref())));
            let rows: Vec<Vec<String>> = host.history.iter().map(event_row).collect();
            print_table(&["AT (unix ms)", "MAC", "DECISION", "BY"], &rows);
            if let Some(boot) = &host.boot_status {
                if boot.not_booted_stateless {
                    say("NOT BOOTED STATELESS: the host last came up from its cached disk");
                }
                let rows: Vec<Vec<String>> = boot
                    .reports
                    .iter()
                    .map(|r| {
                        vec![
                            r.at_unix_ms.to_string(),
                            r.stage.clone(),
                            r.source.clone(),
                            r.replica.clone(),
                            r.client.clone(),
                        ]
                    })
                    .collect();
                print_table(&["AT (unix ms)", "STAGE", "SOURCE", "REPLICA", "CLIENT"], &rows);
            }
        }
        HostsAction::Watch { mac } => {
            let request = pb::WatchDecisionsRequest { mac: mac.unwrap_or_default() };
            let mut stream = client.watch_decisions(request).await.map_err(explain)?.into_inner();
            while let Some(event) = stream.message().await.map_err(explain)? {
                if json {
                    print_json(&event)?;
                } else {
                    say(&event_row(&event).join("  "));
                }
            }
        }
    }
    Ok(())
}

pub(crate) async fn run_evaluate(args: EvaluateArgs) -> anyhow::Result<()> {
    let mut labels = HashMap::new();
    for label in &args.labels {
        let (k, v) =
            label.split_once('=').ok_or_else(|| anyhow::anyhow!("--label {label:?}: expected KEY=VALUE"))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    let facts = pb::HostFacts {
        mac: args.mac,
        arch: args.arch,
        uuid: args.uuid,
        serial: args.serial,
        vendor: args.vendor,
        model: args.model,
        ipv4: args.ipv4,
        labels,
        ..Default::default()
    };
    let mut client = args.client.connect().await?;
    let response = client
        .evaluate(pb::EvaluateRequest { facts: Some(facts), dry_run: args.dry_run })
        .await
        .map_err(explain)?
        .into_inner();
    if args.client.output == Output::Json {
        return print_json(&response);
    }
    let decision = response.decision.unwrap_or_default();
    say(&describe::decision(Some(&decision)));
    if let Some(image) = &decision.image_profile {
        say(&format!("boots: {}", describe::boot(image)));
    }
    say(&format!("matched rules: {}", decision.matched_rules.join(", ")));
    if response.degraded {
        say("(answered from a snapshot: the rules engine cannot reach its store)");
    }
    Ok(())
}
