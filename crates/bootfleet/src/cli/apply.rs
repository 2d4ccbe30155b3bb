//! `bootfleet apply -f FILE`: profiles first, then the working rule set.

use std::path::PathBuf;

use anyhow::Context;
use bootfleet_proto::v1 as pb;
use bootfleet_rules_engine::manifest::{self, Format};
use pb::profile_object::Object;

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
    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) async fn run(args: ApplyArgs) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let manifest = manifest::parse(&text, Format::from_path(&args.file))
        .with_context(|| format!("in {}", args.file.display()))?;
    let mut client = args.client.connect().await?;
    let objects = manifest
        .image_profiles
        .into_iter()
        .map(Object::Image)
        .chain(manifest.host_profiles.into_iter().map(Object::Host))
        .chain(manifest.locations.into_iter().map(Object::Location));
    for object in objects {
        let (kind, name) = match &object {
            Object::Image(p) => ("image profile", p.name.clone()),
            Object::Host(p) => ("host profile", p.name.clone()),
            Object::Location(l) => ("location", l.name.clone()),
        };
        let request = pb::PutProfileRequest {
            profile: Some(pb::ProfileObject { object: Some(object), revision: 0 }),
            expected_revision: 0,
        };
        client.put_profile(request).await.map_err(explain).with_context(|| format!("{kind} {name:?}"))?;
        say(&format!("{kind} {name} applied"));
    }
    if let Some(rules) = manifest.rules {
        let count = rules.len();
        let request = pb::ReplaceWorkingSetRequest { rules, expected_revision: 0 };
        let response =
            client.replace_working_set(request).await.map_err(explain).context("rules")?.into_inner();
        say(&format!("working rule set applied: {count} rules (revision {})", response.revision));
    }
    if args.activate {
        let response = client
            .activate(pb::ActivateRequest { expected_revision: 0 })
            .await
            .map_err(explain)?
            .into_inner();
        say(&format!("activated version {}", response.version));
    }
    Ok(())
}
