//! `bootfleet profiles …`.

use bootfleet_proto::v1 as pb;
use clap_complete::ArgValueCandidates;
use pb::profile_object::Object;

use super::{ClientArgs, Output, complete, describe, explain, print_structured, print_table, report};

/// Profile commands.
#[derive(clap::Args)]
pub(crate) struct ProfilesCommand {
    #[command(subcommand)]
    action: ProfilesAction,
}

/// Which kind of object.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Kind {
    /// Image profiles (what to boot).
    Image,
    /// Host profiles (values for the booted host).
    Host,
    /// Locations.
    Location,
}

impl Kind {
    /// The kind's name in messages and JSON.
    fn name(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Host => "host",
            Self::Location => "location",
        }
    }

    fn wire(self) -> i32 {
        match self {
            Self::Image => pb::ProfileKind::Image.into(),
            Self::Host => pb::ProfileKind::Host.into(),
            Self::Location => pb::ProfileKind::Location.into(),
        }
    }
}

#[derive(clap::Subcommand)]
enum ProfilesAction {
    /// List the staged profiles and locations (what the next activation publishes).
    List {
        /// Only this kind.
        #[arg(long, value_enum)]
        kind: Option<Kind>,
        /// The active ones instead: what machines boot with now.
        #[arg(long)]
        active: bool,
    },
    /// Show one staged profile or location.
    Get {
        /// image, host or location.
        #[arg(value_enum)]
        kind: Kind,
        /// Its name.
        #[arg(add = ArgValueCandidates::new(complete::profile_names))]
        name: String,
        /// The active one instead of the staged one.
        #[arg(long)]
        active: bool,
    },
    /// Remove a staged one (refused while a working rule uses it; it stays active until activation).
    Delete {
        /// image, host or location.
        #[arg(value_enum)]
        kind: Kind,
        /// Its name.
        #[arg(add = ArgValueCandidates::new(complete::profile_names))]
        name: String,
        /// Succeed when there is no such profile or location.
        #[arg(long)]
        ignore_not_found: bool,
    },
}

fn row(object: &pb::ProfileObject) -> Vec<String> {
    match &object.object {
        Some(Object::Image(p)) => {
            vec!["image".into(), p.name.clone(), describe::boot(p), object.revision.to_string()]
        }
        Some(Object::Host(p)) => {
            vec!["host".into(), p.name.clone(), describe::pairs(&p.values), object.revision.to_string()]
        }
        Some(Object::Location(l)) => {
            vec!["location".into(), l.name.clone(), describe::pairs(&l.labels), object.revision.to_string()]
        }
        None => vec!["?".into(), String::new(), String::new(), object.revision.to_string()],
    }
}

pub(crate) async fn run(command: ProfilesCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let mut client = args.connect().await?;
    let json = args.output != Output::Table;
    match command.action {
        ProfilesAction::List { kind, active } => {
            let request = pb::ListProfilesRequest { kind: kind.map_or(0, Kind::wire), active };
            let response = client.list_profiles(request).await.map_err(explain)?.into_inner();
            if json {
                return print_structured(args.output, &response);
            }
            let rows: Vec<Vec<String>> = response.profiles.iter().map(row).collect();
            print_table(&["KIND", "NAME", "CONTENT", "REVISION"], &rows);
        }
        ProfilesAction::Get { kind, name, active } => {
            let request = pb::GetProfileRequest { kind: kind.wire(), name, active };
            let response = client.get_profile(request).await.map_err(explain)?.into_inner();
            if json {
                return print_structured(args.output, &response);
            }
            print_table(&["KIND", "NAME", "CONTENT", "REVISION"], &[row(&response)]);
        }
        ProfilesAction::Delete { kind, name, ignore_not_found } => {
            let request = pb::DeleteProfileRequest { kind: kind.wire(), name: name.clone() };
            let object = serde_json::json!({"kind": kind.name(), "name": name});
            match client.delete_profile(request).await {
                Ok(_) => report(
                    args.output,
                    &format!("{} {name} deleted", kind.name()),
                    &serde_json::json!({"deleted": object}),
                )?,
                Err(status) if ignore_not_found && status.code() == tonic::Code::NotFound => report(
                    args.output,
                    &format!("{} {name} not found (ignored)", kind.name()),
                    &serde_json::json!({"deleted": null, "not_found": object}),
                )?,
                Err(status) => return Err(explain(status)),
            }
        }
    }
    Ok(())
}
