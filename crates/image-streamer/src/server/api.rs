//! The `ImageService` gRPC API: resumable uploads, catalog writes and
//! reads, and per-replica replication status.

use std::sync::Arc;
use std::time::SystemTime;

use bootfleet_core::store::{Compare, TxnOp, TxnRequest};
use bootfleet_proto::v1 as pb;
use bootfleet_proto::v1::image_service_server::ImageService;
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::Streamer;
use crate::blobs::{BlobError, BlobStore, Lookup, Resume, check_digest};
use crate::catalog::{check_name, needs, version_key, version_state};

/// The gRPC handler.
pub(crate) struct ImageApi {
    streamer: Arc<Streamer>,
}

impl ImageApi {
    pub(crate) fn new(streamer: Arc<Streamer>) -> Self {
        Self { streamer }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        bootfleet_core::auth::authorize(
            request,
            self.streamer.admin_token.as_deref(),
            "streamer.admin_token_file",
        )
    }
}

fn blob_status(e: BlobError) -> Status {
    match e {
        BlobError::BadDigest(_) | BlobError::SizeMismatch { .. } => Status::invalid_argument(e.to_string()),
        BlobError::HashMismatch { .. } => Status::data_loss(e.to_string()),
        BlobError::OffsetMismatch { .. } => Status::failed_precondition(e.to_string()),
        BlobError::InProgress(_) | BlobError::ChangedWhileVerifying(_) => Status::aborted(e.to_string()),
        BlobError::Io { .. } => {
            tracing::error!(error = %e, "image store I/O failed");
            Status::internal("the replica could not write the file; see its log")
        }
    }
}

fn join_error(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("worker failed: {e}"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[tonic::async_trait]
impl ImageService for ImageApi {
    async fn upload_offset(
        &self,
        request: Request<pb::UploadOffsetRequest>,
    ) -> Result<Response<pb::UploadOffsetResponse>, Status> {
        // Writers only: it may discard a partial file, and it tells what is held.
        self.authorize(&request)?;
        let r = request.into_inner();
        check_digest(&r.sha256).map_err(blob_status)?;
        let blobs = Arc::clone(&self.streamer.blobs);
        let claim = match BlobStore::claim(&blobs, &r.sha256) {
            Ok(claim) => claim,
            // Its writer is still at it (perhaps this client's previous
            // stream, not yet noticed as gone): report, change nothing.
            Err(BlobError::InProgress(_)) => {
                let offset = blobs.held_bytes(&r.sha256).map_err(blob_status)?.min(r.size);
                return Ok(Response::new(pb::UploadOffsetResponse { offset }));
            }
            Err(e) => return Err(blob_status(e)),
        };
        // A partial file that holds every byte is moved into place now: a
        // client told "all held" commits next, and a file left in partial/
        // (its upload was killed after the last byte) would fail that for ever.
        let resume = tokio::task::spawn_blocking(move || blobs.resume(&claim, r.size))
            .await
            .map_err(join_error)?
            .map_err(blob_status)?;
        let offset = match resume {
            Resume::Whole => r.size,
            Resume::From(offset) => offset,
        };
        Ok(Response::new(pb::UploadOffsetResponse { offset }))
    }

    async fn upload(
        &self,
        request: Request<Streaming<pb::UploadChunk>>,
    ) -> Result<Response<pb::UploadResponse>, Status> {
        self.authorize(&request)?;
        let mut chunks = request.into_inner();
        let first = chunks.message().await?.ok_or_else(|| Status::invalid_argument("empty upload"))?;
        let header =
            first.header.ok_or_else(|| Status::invalid_argument("header: missing on the first chunk"))?;
        check_digest(&header.sha256).map_err(blob_status)?;
        let sha = header.sha256.clone();
        let blobs = Arc::clone(&self.streamer.blobs);
        // One writer per file: a second upload (or a pull) of it waits its turn.
        let claim = BlobStore::claim(&blobs, &sha).map_err(blob_status)?;
        // Already in place means verified in place: a file left torn by a
        // crash is dropped by the check and written again.
        let (b, size) = (Arc::clone(&blobs), header.size);
        let (_claim, resume) = tokio::task::spawn_blocking(move || {
            let resume = b.resume(&claim, size);
            (claim, resume)
        })
        .await
        .map_err(join_error)?;
        if resume.map_err(blob_status)? == Resume::Whole {
            return Ok(Response::new(pb::UploadResponse { sha256: sha, size: header.size }));
        }
        let (b, s, offset) = (Arc::clone(&blobs), sha.clone(), header.offset);
        let mut file = tokio::task::spawn_blocking(move || b.append_at(&s, offset))
            .await
            .map_err(join_error)?
            .map_err(blob_status)?;
        let mut written = header.offset;
        let mut data = first.data;
        loop {
            if !data.is_empty() {
                written += data.len() as u64;
                if written > header.size {
                    blobs.discard_partial(&sha);
                    return Err(Status::invalid_argument(format!(
                        "more than the announced {} bytes; discarded",
                        header.size
                    )));
                }
                let s = sha.clone();
                file = tokio::task::spawn_blocking(move || {
                    BlobStore::write(&mut file, &s, &data).map(|()| file)
                })
                .await
                .map_err(join_error)?
                .map_err(blob_status)?;
            }
            match chunks.message().await? {
                Some(chunk) => {
                    if chunk.header.is_some() {
                        return Err(Status::invalid_argument("header: only the first chunk carries one"));
                    }
                    data = chunk.data;
                }
                None => break,
            }
        }
        drop(file);
        if written < header.size {
            // Kept: the client resumes from UploadOffset.
            return Err(Status::aborted(format!(
                "stream ended after {written} of {} bytes; resume from UploadOffset",
                header.size
            )));
        }
        let (b, s, size) = (Arc::clone(&blobs), sha.clone(), header.size);
        tokio::task::spawn_blocking(move || b.finish(&s, size))
            .await
            .map_err(join_error)?
            .map_err(blob_status)?;
        tracing::info!(sha256 = %sha, bytes = header.size, "upload stored");
        self.streamer.replication_wake.notify_one();
        Ok(Response::new(pb::UploadResponse { sha256: sha, size: header.size }))
    }

    async fn commit_version(
        &self,
        request: Request<pb::CommitVersionRequest>,
    ) -> Result<Response<pb::ImageVersion>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        check_name("image", &r.image).map_err(Status::invalid_argument)?;
        check_name("version", &r.version).map_err(Status::invalid_argument)?;
        if r.files.is_empty() {
            return Err(Status::invalid_argument("files: a version needs at least one file"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, file) in r.files.iter().enumerate() {
            check_name(&format!("files[{i}].name"), &file.name).map_err(Status::invalid_argument)?;
            if !names.insert(file.name.as_str()) {
                return Err(Status::invalid_argument(format!(
                    "files[{i}].name: {:?} appears twice",
                    file.name
                )));
            }
            let (blobs, sha) = (Arc::clone(&self.streamer.blobs), file.sha256.clone());
            let found = tokio::task::spawn_blocking(move || blobs.lookup(&sha))
                .await
                .map_err(join_error)?
                .map_err(|e| Status::invalid_argument(format!("files[{i}].sha256: {e}")))?;
            match found {
                Lookup::Ready(blob) if blob.len == file.size => {}
                Lookup::Ready(blob) => {
                    return Err(Status::invalid_argument(format!(
                        "files[{i}]: {} is {} bytes, not {}",
                        file.name, blob.len, file.size
                    )));
                }
                Lookup::Absent | Lookup::Corrupt => {
                    return Err(Status::failed_precondition(format!(
                        "files[{i}]: {} ({}) is not on this replica: upload it first",
                        file.name, file.sha256
                    )));
                }
            }
        }
        let version = pb::ImageVersion {
            image: r.image.clone(),
            version: r.version.clone(),
            files: r.files,
            description: r.description,
            created_at_unix_ms: now_ms(),
            pushed_to: self.streamer.member_id.clone(),
            last_named_unix_ms: 0,
        };
        let key = version_key(&r.image, &r.version);
        let txn = TxnRequest {
            compares: vec![Compare::absent(&key)],
            then: vec![TxnOp::put(&key, version.encode_to_vec())],
            otherwise: vec![TxnOp::get(&key)],
        };
        let result = self.streamer.store.txn(txn).await.map_err(|e| Status::unavailable(e.to_string()))?;
        if !result.succeeded {
            // Versions are immutable; committing the same files again is fine.
            let existing =
                self.streamer.store.get(&key).await.map_err(|e| Status::unavailable(e.to_string()))?;
            let existing = existing
                .and_then(|kv| pb::ImageVersion::decode(kv.value.as_slice()).ok())
                .ok_or_else(|| Status::aborted("the version changed meanwhile; try again"))?;
            if existing.files == version.files {
                return Ok(Response::new(existing));
            }
            return Err(Status::already_exists(format!(
                "{}/{} exists with other files: versions are immutable, push a new version",
                r.image, r.version
            )));
        }
        tracing::info!(image = %r.image, version = %r.version, files = version.files.len(), "image version committed");
        self.streamer.images.caught_up(result.revision).await;
        Ok(Response::new(version))
    }

    async fn list_versions(
        &self,
        request: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let image = request.into_inner().image;
        let catalog = self.streamer.catalog();
        let versions = catalog
            .versions()
            .filter(|v| image.is_empty() || v.image == image)
            .map(|v| (**v).clone())
            .collect();
        Ok(Response::new(pb::ListVersionsResponse { versions }))
    }

    async fn delete_version(
        &self,
        request: Request<pb::DeleteVersionRequest>,
    ) -> Result<Response<pb::DeleteVersionResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let label = format!("{}/{}", r.image, r.version);
        let needed = needs(&self.streamer.rules.engine(), &self.streamer.catalog());
        if needed.versions.contains(&label) {
            return Err(Status::failed_precondition(format!(
                "{label} is used by the active rules; change the rules first"
            )));
        }
        let existed = self
            .streamer
            .store
            .delete(&version_key(&r.image, &r.version))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if !existed {
            return Err(Status::not_found(format!("{label} is not in the catalog")));
        }
        Ok(Response::new(pb::DeleteVersionResponse {}))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let catalog = self.streamer.catalog();
        let replicas = self.streamer.replicas();
        let mut states = Vec::new();
        for replica in replicas.iter() {
            for version in catalog.versions() {
                let (state, present) = version_state(version, replica);
                states.push(pb::ReplicaVersionState {
                    member_id: replica.id.clone(),
                    http_url: replica.url.clone(),
                    image: version.image.clone(),
                    version: version.version.clone(),
                    state: state.as_str().to_owned(),
                    files_present: present,
                    files_total: u32::try_from(version.files.len()).unwrap_or(u32::MAX),
                });
            }
        }
        let needed = needs(&self.streamer.rules.engine(), &catalog).versions;
        let mut nbd: Vec<pb::ReplicaNbd> = replicas
            .iter()
            .filter(|r| r.id != self.streamer.member_id)
            .filter_map(|r| r.nbd.as_ref().map(|n| replica_nbd(&r.id, n)))
            .collect();
        // This replica's own figures are current, not as last published.
        if let Some(own) = &self.streamer.nbd {
            nbd.push(replica_nbd(&self.streamer.member_id, &own.published()));
        }
        nbd.sort_by(|a, b| a.member_id.cmp(&b.member_id));
        Ok(Response::new(pb::StatusResponse { states, needed, nbd }))
    }

    async fn collect_garbage(
        &self,
        request: Request<pb::CollectGarbageRequest>,
    ) -> Result<Response<pb::CollectGarbageResponse>, Status> {
        self.authorize(&request)?;
        super::gc::collect(&self.streamer, request.into_inner()).await.map(Response::new)
    }

    async fn list_write_caches(
        &self,
        _request: Request<pb::ListWriteCachesRequest>,
    ) -> Result<Response<pb::ListWriteCachesResponse>, Status> {
        let caches = self
            .streamer
            .nbd
            .as_ref()
            .map(|nbd| nbd.hosts.usage())
            .unwrap_or_default()
            .into_iter()
            .map(|(mac, boot, bytes)| pb::WriteCacheState { mac, boot, bytes })
            .collect();
        Ok(Response::new(pb::ListWriteCachesResponse { member_id: self.streamer.member_id.clone(), caches }))
    }
}

fn replica_nbd(member_id: &str, n: &crate::catalog::NbdPublished) -> pb::ReplicaNbd {
    pb::ReplicaNbd {
        member_id: member_id.to_owned(),
        address: n.address.clone(),
        sessions: n.sessions,
        bytes_read: n.bytes_read,
        bytes_written: n.bytes_written,
        write_cache_bytes: n.cache_bytes,
        write_caches: n.caches,
    }
}
