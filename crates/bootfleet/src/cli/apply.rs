//! `bootfleet apply -f FILE`: profiles first, then the working rule set.

use std::path::PathBuf;

use anyhow::Context;
use bootfleet_rules_engine::client::{Applied, apply_manifest};
use bootfleet_rules_engine::manifest::{self, Format};

use super::{ClientArgs, explain, say};

/// Arguments of `bootfleet apply`.
#[derive(clap::Args)]
pub(crate) struct ApplyArgs {
    /// The manifest (YAML, or TOML when it ends in .toml).
    #[arg(long, short = 'f', value_name = "FILE")]
    file: PathBuf,
    /// Activate the working set afterwards.
    #[arg(long)]
    activate: bool,
}

pub(crate) async fn run(args: ApplyArgs, client: &ClientArgs) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let manifest = manifest::parse(&text, Format::from_path(&args.file))
        .with_context(|| format!("in {}", args.file.display()))?;
    let mut client = client.connect().await?;
    let printed = apply_manifest(&mut client, manifest, args.activate, |step| {
        say(&match step {
            Applied::Object { kind, name } => format!("{kind} {name} applied"),
            Applied::Rules { count, revision } => {
                format!("working rule set applied: {count} rules (revision {revision})")
            }
            Applied::Activated { version, .. } => format!("activated version {version}"),
        });
    })
    .await;
    printed.map_err(|e| explain(e.status).context(e.what))?;
    Ok(())
}
