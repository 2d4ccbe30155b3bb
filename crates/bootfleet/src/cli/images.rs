//! `bootfleet images …`: push image versions to a streamer, list the
//! catalog, show replication status per replica, delete versions.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use bootfleet_image_streamer::client::{self, ImageClient};
use bootfleet_proto::v1 as pb;

use super::{Output, print_json, print_table, say};

/// Image commands.
#[derive(clap::Args)]
pub(crate) struct ImagesCommand {
    #[command(subcommand)]
    action: ImagesAction,
    /// Image streamer gRPC URL.
    #[arg(long, env = "BOOTFLEET_IMAGES_SERVER", default_value = "http://127.0.0.1:7072", global = true)]
    server: String,
    /// File holding the admin token (needed for push and rm).
    #[arg(long, env = "BOOTFLEET_TOKEN_FILE", value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Output: table (for people) or json (for programs).
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
}

#[derive(clap::Subcommand)]
enum ImagesAction {
    /// Upload every regular file of DIR as a new image version (resumes interrupted uploads).
    Push {
        /// Directory whose files make the version.
        dir: PathBuf,
        /// Image name.
        #[arg(long)]
        image: String,
        /// Version name.
        #[arg(long)]
        version: String,
        /// Free-form description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Versions in the catalog.
    List {
        /// Only this image.
        image: Option<String>,
    },
    /// Which versions each replica holds: present, pulling, missing or corrupt.
    Status,
    /// Delete a version from the catalog (refused while the active rules use it).
    Rm {
        /// Image name.
        image: String,
        /// Version name.
        version: String,
    },
}

impl ImagesCommand {
    async fn connect(&self) -> anyhow::Result<ImageClient> {
        let token = match &self.token_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("reading the token file {}", file.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        client::connect(&self.server, token.as_deref()).await
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Runs an images command.
pub(crate) async fn run(command: ImagesCommand) -> anyhow::Result<()> {
    let mut client = command.connect().await?;
    match &command.action {
        ImagesAction::Push { dir, image, version, description } => {
            let files = client::scan_dir(dir)?;
            let tty = std::io::stderr().is_terminal();
            for file in &files {
                let name = file.name.clone();
                let sent = client::upload(&mut client, file, move |done, total| {
                    if tty {
                        let pct = (done * 100).checked_div(total).unwrap_or(100);
                        let mut err = std::io::stderr();
                        let _ = write!(err, "\r{name}: {pct:>3}% of {}", mib(total));
                        let _ = err.flush();
                    }
                })
                .await?;
                if tty {
                    eprintln!();
                }
                eprintln!("{}: {} sent ({} already held)", file.name, mib(sent), mib(file.size - sent));
            }
            let committed = client::commit(&mut client, image, version, description, &files).await?;
            match command.output {
                Output::Json => print_json(&committed)?,
                Output::Table => say(&format!("pushed {image}/{version}: {} files", committed.files.len())),
            }
        }
        ImagesAction::List { image } => {
            let request = pb::ListVersionsRequest { image: image.clone().unwrap_or_default() };
            let versions = client.list_versions(request).await.map_err(super::explain)?.into_inner();
            match command.output {
                Output::Json => print_json(&versions)?,
                Output::Table => {
                    let rows: Vec<Vec<String>> = versions
                        .versions
                        .iter()
                        .flat_map(|v| {
                            v.files.iter().map(move |f| {
                                vec![
                                    format!("{}/{}", v.image, v.version),
                                    f.name.clone(),
                                    f.size.to_string(),
                                    f.sha256[..f.sha256.len().min(16)].to_owned(),
                                ]
                            })
                        })
                        .collect();
                    print_table(&["VERSION", "FILE", "BYTES", "SHA256"], &rows);
                }
            }
        }
        ImagesAction::Status => {
            let status = client.status(pb::StatusRequest {}).await.map_err(super::explain)?.into_inner();
            match command.output {
                Output::Json => print_json(&status)?,
                Output::Table => {
                    let rows: Vec<Vec<String>> = status
                        .states
                        .iter()
                        .map(|s| {
                            let label = format!("{}/{}", s.image, s.version);
                            vec![
                                s.member_id.clone(),
                                s.http_url.clone(),
                                label.clone(),
                                s.state.clone(),
                                format!("{}/{}", s.files_present, s.files_total),
                                if status.needed.contains(&label) { "yes" } else { "no" }.to_owned(),
                            ]
                        })
                        .collect();
                    print_table(&["REPLICA", "URL", "VERSION", "STATE", "FILES", "NEEDED"], &rows);
                }
            }
        }
        ImagesAction::Rm { image, version } => {
            let request = pb::DeleteVersionRequest { image: image.clone(), version: version.clone() };
            client.delete_version(request).await.map_err(super::explain)?;
            say(&format!("deleted {image}/{version}"));
        }
    }
    Ok(())
}
