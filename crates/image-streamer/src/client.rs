//! Pushing image versions to a streamer over gRPC (the CLI and tests use
//! it): hash each file, ask how much the replica already holds, stream the
//! rest, then commit the version.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bootfleet_proto::v1 as pb;
use bootfleet_proto::v1::image_service_client::ImageServiceClient;
use bootfleet_rules_engine::client::BearerToken;
use sha2::{Digest, Sha256};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::blobs::hex;
use crate::catalog::check_name;

/// An ImageService client.
pub type ImageClient = ImageServiceClient<InterceptedService<Channel, BearerToken>>;

/// Bytes per upload message.
const CHUNK: usize = 1024 * 1024;

/// Connects (within 5 s) to a streamer's gRPC address, sending `token`.
pub async fn connect(url: &str, token: Option<&str>) -> anyhow::Result<ImageClient> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| anyhow::anyhow!("{url:?} is not a valid server URL (like http://127.0.0.1:7072): {e}"))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| {
        let reason = std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
        anyhow::anyhow!("cannot reach the image streamer at {url}: {reason}")
    })?;
    Ok(ImageServiceClient::with_interceptor(channel, BearerToken::new(token)?)
        .max_decoding_message_size(8 << 20))
}

/// A local file to push.
#[derive(Clone, Debug)]
pub struct LocalFile {
    /// Path on disk.
    pub path: PathBuf,
    /// Name in the version.
    pub name: String,
    /// Content digest.
    pub sha256: String,
    /// Length.
    pub size: u64,
}

/// Lists and hashes the regular files directly in `dir` (sorted by name).
pub fn scan_dir(dir: &Path) -> anyhow::Result<Vec<LocalFile>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name().into_string().map_err(|n| anyhow::anyhow!("{n:?} is not UTF-8"))?;
        check_name("file name", &name).map_err(|e| anyhow::anyhow!("{}: {e}", entry.path().display()))?;
        let path = entry.path();
        let (sha256, size) = hash(&path)?;
        files.push(LocalFile { path, name, sha256, size });
    }
    if files.is_empty() {
        bail!("{} holds no regular files to push", dir.display());
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

fn hash(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex(&hasher.finalize()), size))
}

/// A call the streamer refused or could not answer, with its gRPC status
/// (callers branch on the code: the CLI's exit codes).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {}", status.message())]
pub struct CallError {
    /// What was being done ("disk.img", "committing os/3").
    pub what: String,
    /// The server's answer.
    pub status: tonic::Status,
}

fn status_error(status: tonic::Status, what: &str) -> anyhow::Error {
    CallError { what: what.to_owned(), status }.into()
}

/// Uploads one file, resuming after whatever the replica holds; calls
/// `progress(sent, total)` as bytes go out. Returns the bytes sent now.
pub async fn upload(
    client: &mut ImageClient,
    file: &LocalFile,
    progress: impl Fn(u64, u64) + Send + 'static,
) -> anyhow::Result<u64> {
    let offset = client
        .upload_offset(pb::UploadOffsetRequest { sha256: file.sha256.clone(), size: file.size })
        .await
        .map_err(|s| status_error(s, &file.name))?
        .into_inner()
        .offset;
    if offset == file.size && offset > 0 {
        progress(file.size, file.size);
        return Ok(0);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::UploadChunk>(4);
    let path = file.path.clone();
    let header = pb::UploadHeader { sha256: file.sha256.clone(), size: file.size, offset };
    let total = file.size;
    // Read on a blocking thread; the channel keeps a few chunks in flight.
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::File::open(&path)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut sent = offset;
        let mut header = Some(header);
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = f.read(&mut buf)?;
            buf.truncate(n);
            if n == 0 && header.is_none() {
                break;
            }
            sent += n as u64;
            if tx.blocking_send(pb::UploadChunk { header: header.take(), data: buf }).is_err() {
                break;
            }
            progress(sent, total);
            if n == 0 {
                break;
            }
        }
        Ok(sent - offset)
    });
    let answer = client.upload(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
    let sent = reader.await.context("reading the file")??;
    answer.map_err(|s| status_error(s, &file.name))?;
    Ok(sent)
}

/// Commits a version made of `files` (all uploaded).
pub async fn commit(
    client: &mut ImageClient,
    image: &str,
    version: &str,
    description: &str,
    files: &[LocalFile],
) -> anyhow::Result<pb::ImageVersion> {
    let request = pb::CommitVersionRequest {
        image: image.to_owned(),
        version: version.to_owned(),
        description: description.to_owned(),
        files: files
            .iter()
            .map(|f| pb::ImageFile { name: f.name.clone(), sha256: f.sha256.clone(), size: f.size })
            .collect(),
    };
    let label = format!("committing {image}/{version}");
    Ok(client.commit_version(request).await.map_err(|s| status_error(s, &label))?.into_inner())
}
