//! `bootfleet hosts …` and `bootfleet evaluate`.

use bootfleet_proto::v1 as pb;
use clap_complete::ArgValueCandidates;

use super::{
    ClientArgs, Output, WentAway, complete, describe, explain, print_json_line, print_structured,
    print_table, say,
};

/// Host commands.
#[derive(clap::Args)]
pub(crate) struct HostsCommand {
    #[command(subcommand)]
    action: HostsAction,
}

#[derive(clap::Subcommand)]
enum HostsAction {
    /// Every known host with its last decision (fetched page by page).
    List,
    /// One host with its history.
    Get {
        /// The host's MAC.
        #[arg(add = ArgValueCandidates::new(complete::host_macs))]
        mac: String,
    },
    /// Print decisions as they are made, until interrupted (with -o json,
    /// one compact JSON object per line). Exits 69 when the server ends
    /// the stream.
    Watch {
        /// Only this host.
        #[arg(add = ArgValueCandidates::new(complete::host_macs))]
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
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Decide without recording on the host record.
    #[arg(long)]
    dry_run: bool,
}

/// Parses `--label KEY=VALUE`; a clap value parser, so a malformed label is
/// a usage error (exit 64) like any other bad flag.
fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?}: expected KEY=VALUE")),
    }
}

fn event_row(e: &pb::HostEvent) -> Vec<String> {
    vec![
        e.at_unix_ms.to_string(),
        e.facts.as_ref().map(|f| f.mac.clone()).unwrap_or_default(),
        describe::decision(e.decision.as_ref()),
        e.decided_by.clone(),
    ]
}

pub(crate) async fn run_hosts(command: HostsCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let mut client = args.connect().await?;
    let json = args.output != Output::Table;
    match command.action {
        HostsAction::List => {
            let mut response = pb::ListHostsResponse::default();
            loop {
                let page_token = std::mem::take(&mut response.next_page_token);
                let request = pb::ListHostsRequest { page_size: 0, page_token };
                let page = client.list_hosts(request).await.map_err(explain)?.into_inner();
                response.hosts.extend(page.hosts);
                if page.next_page_token.is_empty() {
                    break;
                }
                response.next_page_token = page.next_page_token;
            }
            if json {
                return print_structured(args.output, &response);
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
                return print_structured(args.output, &host);
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
            // Only the operator ends a watch: the stream ending, cleanly or
            // not, means the server went away (shut down, restarted, lost).
            loop {
                let event = match stream.message().await {
                    Ok(Some(event)) => event,
                    Ok(None) => return Err(WentAway("it ended the stream".into()).into()),
                    Err(status) => return Err(WentAway(status.message().to_owned()).into()),
                };
                match args.output {
                    Output::Json => print_json_line(&event)?,
                    // YAML documents in a stream are separated by `---`.
                    Output::Yaml => {
                        say("---");
                        print_structured(Output::Yaml, &event)?;
                    }
                    Output::Table => say(&event_row(&event).join("  ")),
                }
            }
        }
    }
    Ok(())
}

pub(crate) async fn run_evaluate(args: EvaluateArgs, client: &ClientArgs) -> anyhow::Result<()> {
    let labels = args.labels.into_iter().collect();
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
    let output = client.output;
    let mut client = client.connect().await?;
    let response = client
        .evaluate(pb::EvaluateRequest { facts: Some(facts), dry_run: args.dry_run, ..Default::default() })
        .await
        .map_err(explain)?
        .into_inner();
    if output != Output::Table {
        return print_structured(output, &response);
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
