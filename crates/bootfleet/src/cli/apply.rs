//! `bootfleet apply -f FILE`: stage a whole manifest — profiles, locations,
//! rules — in one transaction or not at all, print the plan, activate if
//! asked. With `--dry-run` it prints the plan and writes nothing.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use bootfleet_proto::v1 as pb;
use bootfleet_rules_engine::client::{ApplyOptions, apply_manifest};
use bootfleet_rules_engine::manifest::{self, Format};

use super::rules::print_changes;
use super::{ClientArgs, Output, PendingChanges, explain, print_structured, say};

/// Arguments of `bootfleet apply`.
#[derive(clap::Args)]
pub(crate) struct ApplyArgs {
    /// The manifest: YAML, or TOML when it ends in .toml; `-` reads standard input.
    #[arg(long, short = 'f', value_name = "FILE")]
    file: PathBuf,
    /// The manifest's format (default: from the file name; YAML for `-`).
    #[arg(long, value_enum)]
    format: Option<ManifestFormat>,
    /// Print the plan and write nothing; exit 2 when there are changes, 0 when none.
    #[arg(long)]
    dry_run: bool,
    /// Also remove staged profiles, locations and rules that the file does not name.
    #[arg(long)]
    prune: bool,
    /// Activate afterwards (publishes everything staged).
    #[arg(long)]
    activate: bool,
    /// Stage image profiles naming image versions that were not pushed yet.
    #[arg(long)]
    allow_missing_images: bool,
}

/// A manifest format on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ManifestFormat {
    /// YAML.
    Yaml,
    /// TOML.
    Toml,
}

fn read_manifest(args: &ApplyArgs) -> anyhow::Result<(manifest::Manifest, String)> {
    let stdin = args.file.as_os_str() == "-";
    let (text, source) = if stdin {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading the manifest from standard input")?;
        (text, "<stdin>".to_owned())
    } else {
        let text = std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?;
        (text, args.file.display().to_string())
    };
    let format = match args.format {
        Some(ManifestFormat::Yaml) => Format::Yaml,
        Some(ManifestFormat::Toml) => Format::Toml,
        None if stdin => Format::Yaml,
        None => Format::from_path(&args.file),
    };
    let manifest = manifest::parse(&text, format).with_context(|| format!("in {source}"))?;
    Ok((manifest, source))
}

pub(crate) async fn run(args: ApplyArgs, client: &ClientArgs) -> anyhow::Result<()> {
    let (manifest, source) = read_manifest(&args)?;
    let output = client.output;
    let mut client = client.connect().await?;
    let options = ApplyOptions {
        activate: args.activate,
        dry_run: args.dry_run,
        prune: args.prune,
        allow_missing_images: args.allow_missing_images,
        source,
    };
    let response = apply_manifest(&mut client, manifest, options).await.map_err(explain)?;
    let pending = args.dry_run && !response.unchanged;
    if output == Output::Table {
        print_applied(&response, args.dry_run);
    } else {
        print_structured(output, &response)?;
    }
    if pending {
        return Err(PendingChanges.into());
    }
    Ok(())
}

fn print_applied(response: &pb::ApplyResponse, dry_run: bool) {
    let plan = response.plan.clone().unwrap_or_default();
    let count = plan.changes.len() + plan.profile_changes.len();
    if response.unchanged {
        say(&format!("working state unchanged (revision {})", response.revision));
    } else {
        print_changes(&plan);
        if dry_run {
            say(&format!("plan: {count} changes to the working state (dry run: nothing written)"));
        } else {
            say(&format!("working state: {count} changes staged (revision {})", response.revision));
        }
    }
    if let Some(activation) = &response.activation {
        if activation.unchanged {
            say(&format!("activation: unchanged, version {} is active", activation.version));
        } else {
            say(&format!("activated version {} (revision {})", activation.version, activation.revision));
        }
    }
}
