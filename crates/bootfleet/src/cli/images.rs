//! `bootfleet images …`: push image versions to a streamer, list the
//! catalog, show replication status and NBD service per replica, list a
//! replica's vDisk write caches, delete versions.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use bootfleet_image_streamer::client;
use bootfleet_proto::v1 as pb;
use clap_complete::ArgValueCandidates;

use super::{ClientArgs, Output, complete, explain, print_structured, print_table, report};

/// Image commands; they talk to the image streamer (`--images-server`).
#[derive(clap::Args)]
pub(crate) struct ImagesCommand {
    #[command(subcommand)]
    action: ImagesAction,
}

#[derive(clap::Subcommand)]
enum ImagesAction {
    /// Upload every regular file of DIR as a new image version (resumes interrupted uploads).
    Push {
        /// Directory whose files make the version.
        dir: PathBuf,
        /// Image name.
        #[arg(long, add = ArgValueCandidates::new(complete::image_names))]
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
        #[arg(add = ArgValueCandidates::new(complete::image_names))]
        image: Option<String>,
    },
    /// Which versions each replica holds, and each replica's NBD service.
    ///
    /// A version is present, pulling, missing or corrupt on a replica (the
    /// worst of its files); the NBD table shows sessions, bytes read and
    /// written, and the hosts' write caches.
    Status,
    /// The hosts' vDisk write caches on the replica asked (`--images-server`).
    Caches,
    /// Remove unused image files (and, opt-in, unused versions) from every replica.
    ///
    /// Files no catalog version references go from every replica; with
    /// --versions-unused-for, versions no active or working profile has
    /// named for that long go first. Never a file a profile names, one being
    /// written, or one a client is reading.
    Gc {
        /// Say what would go; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also remove versions no profile has named for this long (e.g.
        /// 720h); 0s: any version no profile names now.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
        versions_unused_for: Option<std::time::Duration>,
        /// Keep files that arrived on a replica less than this long ago (an
        /// upload not yet committed is referenced by nothing).
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration_arg)]
        min_file_age: std::time::Duration,
    },
    /// Delete a version from the catalog (refused while the active rules use it).
    Rm {
        /// Image name.
        #[arg(add = ArgValueCandidates::new(complete::image_names))]
        image: String,
        /// Version name.
        version: String,
        /// Succeed when there is no such version.
        #[arg(long)]
        ignore_not_found: bool,
    },
}

fn parse_duration_arg(text: &str) -> Result<std::time::Duration, String> {
    bootfleet_core::config::parse_duration(text)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Runs an images command.
pub(crate) async fn run(command: ImagesCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let mut client = args.connect_images().await?;
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
            report(
                args.output,
                &format!("pushed {image}/{version}: {} files", committed.files.len()),
                &serde_json::json!({"pushed": committed}),
            )?;
        }
        ImagesAction::List { image } => {
            let request = pb::ListVersionsRequest { image: image.clone().unwrap_or_default() };
            let versions = client.list_versions(request).await.map_err(explain)?.into_inner();
            match args.output {
                Output::Json | Output::Yaml => print_structured(args.output, &versions)?,
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
            let status = client.status(pb::StatusRequest {}).await.map_err(explain)?.into_inner();
            match args.output {
                Output::Json | Output::Yaml => print_structured(args.output, &status)?,
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
                    if !status.nbd.is_empty() {
                        super::say("");
                        let rows: Vec<Vec<String>> = status
                            .nbd
                            .iter()
                            .map(|n| {
                                vec![
                                    n.member_id.clone(),
                                    n.address.clone(),
                                    n.sessions.to_string(),
                                    mib(n.bytes_read),
                                    mib(n.bytes_written),
                                    n.write_caches.to_string(),
                                    mib(n.write_cache_bytes),
                                ]
                            })
                            .collect();
                        let header =
                            ["REPLICA", "NBD", "SESSIONS", "READ", "WRITTEN", "CACHES", "CACHE BYTES"];
                        print_table(&header, &rows);
                    }
                }
            }
        }
        ImagesAction::Gc { dry_run, versions_unused_for, min_file_age } => {
            let request = pb::CollectGarbageRequest {
                dry_run: *dry_run,
                remove_versions: versions_unused_for.is_some(),
                versions_unused_for_seconds: versions_unused_for.map_or(0, |d| d.as_secs()),
                min_file_age_seconds: min_file_age.as_secs(),
                any_file_age: min_file_age.is_zero(),
            };
            let answer = client.collect_garbage(request).await.map_err(explain)?.into_inner();
            match args.output {
                Output::Json | Output::Yaml => print_structured(args.output, &answer)?,
                Output::Table => {
                    let verb = if answer.dry_run { "would remove" } else { "removed" };
                    let mut rows: Vec<Vec<String>> = answer
                        .versions
                        .iter()
                        .map(|v| vec!["version".into(), v.clone(), String::new()])
                        .collect();
                    rows.extend(
                        answer
                            .files
                            .iter()
                            .map(|f| vec!["file".into(), f.sha256.clone(), f.replicas.join(",")]),
                    );
                    super::say(&format!(
                        "{verb} {} versions and {} files (replicas remove files in their next round; \
                         each checks again that nothing uses it)",
                        answer.versions.len(),
                        answer.files.len()
                    ));
                    if !rows.is_empty() {
                        print_table(&["KIND", "NAME", "REPLICAS"], &rows);
                    }
                }
            }
        }
        ImagesAction::Caches => {
            let caches = client.list_write_caches(pb::ListWriteCachesRequest {}).await.map_err(explain)?;
            let caches = caches.into_inner();
            match args.output {
                Output::Json | Output::Yaml => print_structured(args.output, &caches)?,
                Output::Table => {
                    let rows: Vec<Vec<String>> = caches
                        .caches
                        .iter()
                        .map(|c| vec![caches.member_id.clone(), c.mac.clone(), c.boot.clone(), mib(c.bytes)])
                        .collect();
                    print_table(&["REPLICA", "HOST", "BOOT", "BYTES"], &rows);
                }
            }
        }
        ImagesAction::Rm { image, version, ignore_not_found } => {
            let request = pb::DeleteVersionRequest { image: image.clone(), version: version.clone() };
            let object = serde_json::json!({"kind": "image", "name": image, "version": version});
            match client.delete_version(request).await {
                Ok(_) => report(
                    args.output,
                    &format!("deleted {image}/{version}"),
                    &serde_json::json!({"deleted": object}),
                )?,
                Err(status) if *ignore_not_found && status.code() == tonic::Code::NotFound => report(
                    args.output,
                    &format!("{image}/{version} not found (ignored)"),
                    &serde_json::json!({"deleted": null, "not_found": object}),
                )?,
                Err(status) => return Err(explain(status)),
            }
        }
    }
    Ok(())
}
