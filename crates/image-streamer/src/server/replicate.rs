//! Replication: every replica holds every file the active rules need. A
//! missing file is pulled from a peer that has it (resuming a partial
//! pull), verified against its digest, and published in this replica's
//! member record; a periodic scrub hashes everything again and drops what
//! fails, which the next round fetches again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bootfleet_core::membership::Registration;
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

use super::Streamer;
use crate::blobs::{BlobStore, Resume};
use crate::catalog::{BLOB_ATTRIBUTE, FileState, needs};
use crate::metrics;

/// Files pulled at once.
const MAX_PULLS: usize = 2;
/// Longest a round waits for a wake-up.
const ROUND: Duration = Duration::from_secs(2);
/// A partial file nobody wrote for this long is dropped at the next scrub:
/// a retry within a day resumes, an upload given up on does not stay.
const ABANDONED_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Longest wait for a peer's response headers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the next piece of a peer's response body.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Runs replication until `stop`, then removes the member record.
pub(super) async fn run(
    streamer: Arc<Streamer>,
    registration: Registration,
    scrub_interval: Duration,
    stop: CancellationToken,
) {
    let pulling: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(connector);
    // Verify what an earlier run left on disk before announcing it.
    let blobs = Arc::clone(&streamer.blobs);
    let corrupt = tokio::task::spawn_blocking(move || blobs.scrub()).await.unwrap_or_default();
    report_corrupt(&corrupt);
    let mut published: BTreeMap<String, String> = BTreeMap::new();
    let mut next_scrub = tokio::time::Instant::now() + scrub_interval;
    let mut gc_applied = 0;
    loop {
        super::gc::apply_order(&streamer, &mut gc_applied);
        super::gc::refresh_last_named(&streamer).await;
        let states = round(&streamer, &pulling, &client, &stop);
        let mut attributes: BTreeMap<String, String> =
            states.iter().map(|(sha, s)| (format!("{BLOB_ATTRIBUTE}{sha}"), s.as_str().to_owned())).collect();
        // Boot scripts on every replica list NBD replicas least-loaded
        // first, and `images status` shows each replica's NBD service:
        // published at most once a round, when it changed.
        if let Some(nbd) = &streamer.nbd {
            attributes.extend(nbd.published().attributes().map(|(k, v)| (k.to_owned(), v)));
        }
        if attributes != published {
            registration.update(|m| {
                m.attributes.retain(|k, _| !k.starts_with(BLOB_ATTRIBUTE));
                m.attributes.extend(attributes.clone());
                m.load = pulling.lock().unwrap_or_else(PoisonError::into_inner).len() as u64;
            });
            published = attributes;
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = streamer.replication_wake.notified() => {}
            () = tokio::time::sleep(ROUND) => {}
            () = tokio::time::sleep_until(next_scrub) => {
                next_scrub = tokio::time::Instant::now() + scrub_interval;
                let blobs = Arc::clone(&streamer.blobs);
                let corrupt = tokio::task::spawn_blocking(move || {
                    blobs.drop_abandoned_partials(ABANDONED_AFTER);
                    blobs.scrub()
                })
                .await
                .unwrap_or_default();
                report_corrupt(&corrupt);
            }
        }
    }
    if let Err(e) = registration.deregister().await {
        tracing::warn!(error = %e, "deregistering failed; the record lapses with its lease");
    }
}

fn report_corrupt(corrupt: &[String]) {
    for sha in corrupt {
        tracing::error!(sha256 = %sha, "scrub found a corrupt file; it is dropped and will be fetched again");
    }
}

/// One pass: what is held, what to pull; returns the state of every file
/// this replica knows about.
fn round(
    streamer: &Arc<Streamer>,
    pulling: &Arc<Mutex<HashSet<String>>>,
    client: &HttpClient,
    stop: &CancellationToken,
) -> BTreeMap<String, FileState> {
    let needed = needs(&streamer.rules.engine(), &streamer.catalog());
    let mut states: BTreeMap<String, FileState> = BTreeMap::new();
    for sha in streamer.blobs.on_disk() {
        states.insert(sha, FileState::Present);
    }
    for sha in streamer.blobs.corrupt() {
        states.entry(sha).or_insert(FileState::Corrupt);
    }
    let mut lag = 0u64;
    let in_flight = pulling.lock().unwrap_or_else(PoisonError::into_inner).clone();
    for (sha, size) in &needed.files {
        if states.get(sha) == Some(&FileState::Present) {
            continue;
        }
        lag += size;
        if in_flight.contains(sha) {
            states.insert(sha.clone(), FileState::Pulling);
            continue;
        }
        let peer = streamer.peer_with(sha);
        let room = pulling.lock().unwrap_or_else(PoisonError::into_inner).len() < MAX_PULLS;
        match peer {
            Some(url) if room => {
                pulling.lock().unwrap_or_else(PoisonError::into_inner).insert(sha.clone());
                states.insert(sha.clone(), FileState::Pulling);
                tokio::spawn(pull_task(
                    Arc::clone(streamer),
                    Arc::clone(pulling),
                    client.clone(),
                    url,
                    sha.clone(),
                    *size,
                    stop.clone(),
                ));
            }
            _ => {
                states.entry(sha.clone()).or_insert(FileState::Missing);
            }
        }
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for sha in needed.files.keys() {
        let state = states.get(sha).copied().unwrap_or(FileState::Missing);
        *counts.entry(state.as_str()).or_default() += 1;
    }
    for state in [FileState::Present, FileState::Pulling, FileState::Missing, FileState::Corrupt] {
        metrics::REPLICATION_FILES
            .with_label_values(&[state.as_str()])
            .set(counts.get(state.as_str()).copied().unwrap_or(0));
    }
    metrics::REPLICATION_LAG_BYTES.set(i64::try_from(lag).unwrap_or(i64::MAX));
    if !needed.unresolved.is_empty() {
        tracing::debug!(unresolved = ?needed.unresolved, "active profiles name files the catalog does not have");
    }
    states
}

async fn pull_task(
    streamer: Arc<Streamer>,
    pulling: Arc<Mutex<HashSet<String>>>,
    client: HttpClient,
    url: String,
    sha: String,
    size: u64,
    stop: CancellationToken,
) {
    let outcome = tokio::select! {
        () = stop.cancelled() => Err("stopped".to_owned()),
        r = pull(&streamer.blobs, &client, &url, &sha, size) => r,
    };
    match &outcome {
        Ok(()) => {
            metrics::PULLS.with_label_values(&["ok"]).inc();
            tracing::info!(sha256 = %sha, from = %url, bytes = size, "pulled a file from a peer");
        }
        Err(e) => {
            metrics::PULLS.with_label_values(&["failed"]).inc();
            tracing::warn!(sha256 = %sha, from = %url, error = %e, "pulling a file failed; will retry");
        }
    }
    pulling.lock().unwrap_or_else(PoisonError::into_inner).remove(&sha);
    streamer.replication_wake.notify_one();
}

/// Fetches `/blobs/<sha>` from `base`, resuming after what a previous pull
/// left, and verifies it.
async fn pull(
    blobs: &Arc<BlobStore>,
    client: &HttpClient,
    base: &str,
    sha: &str,
    size: u64,
) -> Result<(), String> {
    let claim = BlobStore::claim(blobs, sha).map_err(|e| e.to_string())?;
    // What an earlier pull (or upload) left, perhaps every byte of it.
    let (_claim, resume) = {
        let blobs = Arc::clone(blobs);
        tokio::task::spawn_blocking(move || {
            let resume = blobs.resume(&claim, size);
            (claim, resume)
        })
        .await
        .map_err(|e| e.to_string())?
    };
    let held = match resume.map_err(|e| e.to_string())? {
        Resume::Whole => return Ok(()),
        Resume::From(held) => held,
    };
    let uri = format!("{base}/blobs/{sha}");
    let mut request = Request::get(&uri);
    if held > 0 {
        request = request.header(header::RANGE, format!("bytes={held}-"));
    }
    let request = request.body(Empty::new()).map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(REQUEST_TIMEOUT, client.request(request))
        .await
        .map_err(|_| format!("GET {uri}: no answer within {REQUEST_TIMEOUT:?}"))?
        .map_err(|e| format!("GET {uri}: {e}"))?;
    let offset = match response.status() {
        StatusCode::PARTIAL_CONTENT => held,
        StatusCode::OK => 0,
        other => return Err(format!("GET {uri}: {other}")),
    };
    if offset == 0 && held > 0 {
        blobs.discard_partial(sha);
    }
    let mut file = {
        let blobs = Arc::clone(blobs);
        let sha = sha.to_owned();
        tokio::task::spawn_blocking(move || blobs.append_at(&sha, offset))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
    };
    let mut body = response.into_body();
    let mut written = offset;
    // A peer that stalls mid-body is given up on, so the file is tried
    // again (perhaps from another peer) instead of staying "pulling".
    while let Some(frame) = tokio::time::timeout(IDLE_TIMEOUT, body.frame())
        .await
        .map_err(|_| format!("reading {uri}: nothing for {IDLE_TIMEOUT:?}"))?
    {
        let frame = frame.map_err(|e| format!("reading {uri}: {e}"))?;
        let Ok(data) = frame.into_data() else { continue };
        written += data.len() as u64;
        if written > size {
            blobs.discard_partial(sha);
            return Err(format!("{uri} sent more than the {size} bytes the catalog lists"));
        }
        let sha_owned = sha.to_owned();
        file = tokio::task::spawn_blocking(move || {
            BlobStore::write(&mut file, &sha_owned, &data).map(|()| file)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    }
    drop(file);
    finish(blobs, sha, size).await
}

async fn finish(blobs: &Arc<BlobStore>, sha: &str, size: u64) -> Result<(), String> {
    let blobs = Arc::clone(blobs);
    let sha = sha.to_owned();
    tokio::task::spawn_blocking(move || blobs.finish(&sha, size))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}
