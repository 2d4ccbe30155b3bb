//! `bootfleet profiles …`.

use bootfleet_proto::v1 as pb;
use pb::profile_object::Object;

use super::{ClientArgs, Output, describe, explain, print_json, print_table, say};

/// Profile commands.
#[derive(clap::Args)]
pub(crate) struct ProfilesCommand {
    #[command(subcommand)]
    action: ProfilesAction,
    #[command(flatten)]
    client: ClientArgs,
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
    /// List profiles and locations.
    List {
        /// Only this kind.
        #[arg(long, value_enum)]
        kind: Option<Kind>,
    },
    /// Show one.
    Get {
        /// image, host or location.
        #[arg(value_enum)]
        kind: Kind,
        /// Its name.
        name: String,
    },
    /// Delete one (refused while a rule uses it).
    Delete {
        /// image, host or location.
        #[arg(value_enum)]
        kind: Kind,
        /// Its name.
        name: String,
    },
}

fn row(object: &pb::ProfileObject) -> Vec<String> {
    let pairs = |map: &std::collections::HashMap<String, String>| {
        let mut pairs: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.sort();
        pairs.join(" ")
    };
    match &object.object {
        Some(Object::Image(p)) => {
            vec!["image".into(), p.name.clone(), describe::boot(p), object.revision.to_string()]
        }
        Some(Object::Host(p)) => {
            vec!["host".into(), p.name.clone(), pairs(&p.values), object.revision.to_string()]
        }
        Some(Object::Location(l)) => {
            vec!["location".into(), l.name.clone(), pairs(&l.labels), object.revision.to_string()]
        }
        None => vec!["?".into(), String::new(), String::new(), object.revision.to_string()],
    }
}

pub(crate) async fn run(command: ProfilesCommand) -> anyhow::Result<()> {
    let mut client = command.client.connect().await?;
    let json = command.client.output == Output::Json;
    match command.action {
        ProfilesAction::List { kind } => {
            let request = pb::ListProfilesRequest { kind: kind.map_or(0, Kind::wire), active: false };
            let response = client.list_profiles(request).await.map_err(explain)?.into_inner();
            if json {
                return print_json(&response);
            }
            let rows: Vec<Vec<String>> = response.profiles.iter().map(row).collect();
            print_table(&["KIND", "NAME", "CONTENT", "REVISION"], &rows);
        }
        ProfilesAction::Get { kind, name } => {
            let request = pb::GetProfileRequest { kind: kind.wire(), name, active: false };
            let response = client.get_profile(request).await.map_err(explain)?.into_inner();
            if json {
                return print_json(&response);
            }
            print_table(&["KIND", "NAME", "CONTENT", "REVISION"], &[row(&response)]);
        }
        ProfilesAction::Delete { kind, name } => {
            let request = pb::DeleteProfileRequest { kind: kind.wire(), name: name.clone() };
            client.delete_profile(request).await.map_err(explain)?;
            say(&format!("{kind:?} {name} deleted").to_lowercase());
        }
    }
    Ok(())
}
