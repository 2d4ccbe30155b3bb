//! The HTTP side: routes, file responses with ranges, boot scripts and
//! reports. Protocol decisions come from [`crate::conditional`] and
//! [`crate::script`]; this module turns them into hyper responses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bootfleet_core::http_limits::{Admission, ConnectionSlots, HttpLimits};
use bootfleet_core::log_limit::LogLimit;
use bootfleet_proto::v1::{BootReport, Recording};
use bootfleet_rules_engine::facts::Field;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Streamer;
use crate::blobs::{Blob, Lookup};
use crate::conditional::{ByteRange, Entity, Multipart, Plan, plan};
use crate::{metrics, query, script};

/// Response body.
pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

/// Bytes read from disk per chunk when streaming.
const CHUNK: usize = 256 * 1024;
/// Responses up to this size are read from disk without leaving the
/// request's task.
const INLINE_READ: u64 = 128 * 1024;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never: Infallible| match never {}).boxed()
}

fn empty() -> Body {
    Empty::new().map_err(|never: Infallible| match never {}).boxed()
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut body = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Serves HTTP on `listener` until `stop`, then lets responses in flight
/// finish within `grace`. Connections are held to `limits` (see
/// `bootfleet_core::http_limits`).
pub(crate) async fn serve(
    listener: TcpListener,
    streamer: Arc<Streamer>,
    stop: CancellationToken,
    grace: Duration,
    limits: HttpLimits,
) {
    let graceful = GracefulShutdown::new();
    let builder = bootfleet_core::http_limits::builder(limits);
    let slots = ConnectionSlots::new(limits);
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Admission::Admitted(permit, stream) = slots.admit(stream) else {
            metrics::HTTP_CONNECTIONS_REFUSED.inc();
            static REFUSED: LogLimit = LogLimit::default_limit();
            if let Some(left_out) = REFUSED.admit() {
                tracing::warn!(%peer, limit = limits.max_connections, similar_left_out = left_out, "too many HTTP connections; refused one with 503");
            }
            continue;
        };
        metrics::HTTP_CONNECTIONS_OPEN.set(i64::try_from(slots.open()).unwrap_or(i64::MAX));
        let activity = stream.activity();
        let streamer = Arc::clone(&streamer);
        let service = hyper::service::service_fn(move |req| {
            let streamer = Arc::clone(&streamer);
            async move { Ok::<_, Infallible>(handle(&streamer, req, peer).await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
        let slots = slots.clone();
        tokio::spawn(async move {
            if !slots.serve(activity, connection).await {
                metrics::HTTP_CONNECTIONS_TIMED_OUT.inc();
                tracing::debug!(%peer, "HTTP connection idle too long; closed");
            }
            drop(permit);
            metrics::HTTP_CONNECTIONS_OPEN.set(i64::try_from(slots.open()).unwrap_or(i64::MAX));
        });
    }
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("HTTP responses still running after the grace period were cut off");
    }
}

/// Routes one request.
async fn handle(streamer: &Arc<Streamer>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().clone();
    let (route, response) = if path == "/report" || path.starts_with("/report/") {
        ("report", report(streamer, &method, &path, &query, peer))
    } else if !matches!(method, Method::GET | Method::HEAD) {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use GET or HEAD");
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        ("other", r)
    } else if path == "/boot.ipxe" {
        ("boot", boot_script(streamer, &query, peer))
    } else if let Some(mac) = path.strip_prefix("/boot/").and_then(|m| m.strip_suffix(".ipxe")) {
        // The MAC goes into the query as it came (still percent-encoded).
        let query = if query.is_empty() { format!("mac={mac}") } else { format!("mac={mac}&{query}") };
        ("boot", boot_script(streamer, &query, peer))
    } else if let Some(rest) = path.strip_prefix("/images/") {
        ("images", image_file(streamer, &req, rest, &query).await)
    } else if let Some(sha) = path.strip_prefix("/blobs/") {
        ("blobs", blob_file(streamer, &req, sha).await)
    } else if let Some(name) = path.strip_prefix("/loaders/") {
        ("loaders", loader_file(streamer, &req, name).await)
    } else {
        ("other", text(StatusCode::NOT_FOUND, "not found: try /boot.ipxe?mac=…, /images/IMAGE/VERSION/FILE"))
    };
    metrics::REQUESTS.with_label_values(&[route, response.status().as_str()]).inc();
    response
}

fn client_ip(peer: SocketAddr) -> Option<String> {
    match peer.ip() {
        std::net::IpAddr::V4(v4) => Some(v4.to_string()),
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(|v4| v4.to_string()),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn boot_script(streamer: &Arc<Streamer>, query: &str, peer: SocketAddr) -> Response<Body> {
    let facts = match query::facts_from_query(query, client_ip(peer).as_deref()) {
        Ok(facts) => facts,
        Err(reason) => return text(StatusCode::BAD_REQUEST, format!("bad boot-script request: {reason}")),
    };
    let now = now_ms();
    // The MAC alone (the URL a DHCP server hands iPXE) may not decide:
    // ask iPXE for the rest first.
    if !query::carries_host_facts(query)
        && streamer.rules.engine().rules.image_undecided(&facts, &Field::known_to_dhcp)
    {
        let mut r = Response::new(full(script::facts_chain(&streamer.public_url, &facts.mac)));
        let headers = r.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return r;
    }
    // Only hosts Bootfleet boots leave a record: a query for any MAC must
    // not grow the store.
    let decision = streamer.rules.evaluate(&facts, now, true);
    let request = script::Request { decision: &decision, facts: &facts, self_url: &streamer.public_url };
    match script::render(&streamer.templates, &request, streamer.as_ref()) {
        script::Answer::Script(body) => {
            let recording = if streamer.record_decisions {
                streamer.rules.record(&facts, &decision, now)
            } else {
                Recording::NotBooted
            };
            // A status only for a host with a record, or one on its way:
            // anyone can ask for the script of any MAC.
            if recording == Recording::Queued || streamer.rules.has_host(&facts.mac) {
                streamer.reporter.report(
                    facts.mac.clone(),
                    BootReport {
                        at_unix_ms: now,
                        stage: "script".into(),
                        replica: streamer.member_id.clone(),
                        source: query::boot_source(query),
                        client: client_ip(peer).unwrap_or_default(),
                    },
                );
            }
            let mut r = Response::new(full(body));
            let headers = r.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        script::Answer::Silent => text(
            StatusCode::NOT_FOUND,
            format!("no boot profile for {}: Bootfleet does not boot this host", facts.mac),
        ),
    }
}

fn report(
    streamer: &Arc<Streamer>,
    method: &Method,
    path: &str,
    query: &str,
    peer: SocketAddr,
) -> Response<Body> {
    if !matches!(*method, Method::GET | Method::POST) {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST");
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
        return r;
    }
    let parsed = match path.strip_prefix("/report/") {
        Some(rest) => {
            // iPXE percent-encodes the colons of a MAC in a path.
            let rest = percent_encoding::percent_decode_str(rest).decode_utf8_lossy();
            let parts: Vec<&str> = rest.split('/').collect();
            match parts.as_slice() {
                [mac, stage] => query::report(mac, stage, ""),
                [mac, stage, source] => query::report(mac, stage, source),
                _ => Err("use /report/MAC/STAGE[/SOURCE]".to_owned()),
            }
        }
        None => query::report_from_query(query),
    };
    let report = match parsed {
        Ok(report) => report,
        Err(reason) => return text(StatusCode::BAD_REQUEST, format!("bad report: {reason}")),
    };
    // Reports are kept for hosts Bootfleet knows (they have a host record),
    // so reports for made-up MACs cannot grow the store.
    if !matches!(streamer.rules.host(&report.mac), Ok(Some(_))) {
        return text(StatusCode::NOT_FOUND, format!("unknown host {}: not recorded", report.mac));
    }
    let accepted = streamer.reporter.report(
        report.mac.clone(),
        BootReport {
            at_unix_ms: now_ms(),
            stage: report.stage.clone(),
            replica: streamer.member_id.clone(),
            source: report.source,
            client: client_ip(peer).unwrap_or_default(),
        },
    );
    if accepted {
        tracing::debug!(mac = %report.mac, stage = %report.stage, "boot report");
        text(StatusCode::OK, "recorded")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "too many reports pending; try again")
    }
}

/// Looks a blob up: from what was verified before when nothing changed
/// (one `stat`), else off the async threads (the file is hashed first).
async fn lookup(streamer: &Arc<Streamer>, sha: &str) -> Result<Lookup, String> {
    match streamer.blobs.lookup_verified(sha) {
        Ok(Some(found)) => return Ok(found),
        Ok(None) => {}
        Err(e) => return Err(e.to_string()),
    }
    let blobs = Arc::clone(&streamer.blobs);
    let sha = sha.to_owned();
    match tokio::task::spawn_blocking(move || blobs.lookup(&sha)).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("lookup task failed: {e}")),
    }
}

async fn image_file(
    streamer: &Arc<Streamer>,
    req: &Request<Incoming>,
    rest: &str,
    query: &str,
) -> Response<Body> {
    let parts: Vec<&str> = rest.split('/').collect();
    let [image, version, file] = parts.as_slice() else {
        return text(StatusCode::NOT_FOUND, "use /images/IMAGE/VERSION/FILE");
    };
    let Some(entry) = streamer.catalog().resolve(image, version, file).cloned() else {
        return text(StatusCode::NOT_FOUND, format!("{image}/{version}/{file} is not in the catalog"));
    };
    let found = match lookup(streamer, &entry.sha256).await {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(error = %e, "serving a catalog file failed");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "could not read the file; see the server log");
        }
    };
    match found {
        Lookup::Ready(blob) => {
            let response = send_blob(req, &blob, "application/octet-stream", true);
            // A download is a whole-file answer or a range from the start
            // (sanboot's thousands of block reads are not downloads).
            let whole = response.status() == StatusCode::OK
                || response
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"bytes 0-"));
            if req.method() == Method::GET && whole {
                metrics::IMAGE_DOWNLOADS.with_label_values(&[*image, *version]).inc();
            }
            response
        }
        Lookup::Absent | Lookup::Corrupt => {
            // Send the client to a replica that has it, once (no redirect loops).
            let peer = (!query.split('&').any(|p| p == "hop=1"))
                .then(|| streamer.peer_with(&entry.sha256))
                .flatten();
            match peer {
                Some(url) => {
                    let location = format!("{url}/images/{image}/{version}/{file}?hop=1");
                    let mut r = text(StatusCode::TEMPORARY_REDIRECT, format!("held by {url}"));
                    if let Ok(v) = HeaderValue::from_str(&location) {
                        r.headers_mut().insert(header::LOCATION, v);
                    }
                    r
                }
                None => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{image}/{version}/{file} is not on this replica yet (replicating)"),
                ),
            }
        }
    }
}

async fn blob_file(streamer: &Arc<Streamer>, req: &Request<Incoming>, sha: &str) -> Response<Body> {
    match lookup(streamer, sha).await {
        Ok(Lookup::Ready(blob)) => send_blob(req, &blob, "application/octet-stream", true),
        Ok(Lookup::Absent | Lookup::Corrupt) => text(StatusCode::NOT_FOUND, "not held here"),
        Err(e) => text(StatusCode::BAD_REQUEST, e),
    }
}

async fn loader_file(streamer: &Arc<Streamer>, req: &Request<Incoming>, name: &str) -> Response<Body> {
    let Some(loaders) = streamer.loaders.as_ref() else {
        return text(StatusCode::NOT_FOUND, "no loaders directory is configured");
    };
    let loaders = Arc::clone(loaders);
    let name = name.to_owned();
    match tokio::task::spawn_blocking(move || loaders.load(&name)).await {
        Ok(Some(blob)) => send_blob(req, &blob, "application/efi", false),
        _ => text(StatusCode::NOT_FOUND, "no such loader"),
    }
}

static BOUNDARY_COUNTER: AtomicU64 = AtomicU64::new(1);

/// Answers GET/HEAD for a verified blob: preconditions, ranges, body.
fn send_blob(
    req: &Request<Incoming>,
    blob: &Blob,
    content_type: &'static str,
    immutable: bool,
) -> Response<Body> {
    let etag = format!("\"{}\"", blob.sha256);
    let entity = Entity { len: blob.len, etag: &etag, last_modified: blob.modified };
    let head = req.method() == Method::HEAD;
    let decided = plan(req.method(), req.headers(), &entity);
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::LAST_MODIFIED, httpdate::fmt_http_date(blob.modified))
        .header(header::ACCEPT_RANGES, "bytes");
    if immutable {
        builder = builder.header(header::CACHE_CONTROL, "public, max-age=31536000, immutable");
    }
    let (status, length, body_plan) = match decided {
        Plan::NotModified => (StatusCode::NOT_MODIFIED, None, Vec::new()),
        Plan::PreconditionFailed => (StatusCode::PRECONDITION_FAILED, Some(0), Vec::new()),
        Plan::Unsatisfiable => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes */{}", blob.len));
            (StatusCode::RANGE_NOT_SATISFIABLE, Some(0), Vec::new())
        }
        Plan::Full => {
            builder = builder.header(header::CONTENT_TYPE, content_type);
            let all = ByteRange { start: 0, end: blob.len };
            let parts = if blob.len == 0 { Vec::new() } else { vec![Segment::File(all)] };
            (StatusCode::OK, Some(blob.len), parts)
        }
        Plan::Single(range) => {
            builder = builder
                .header(header::CONTENT_TYPE, content_type)
                .header(header::CONTENT_RANGE, range.content_range(blob.len));
            (StatusCode::PARTIAL_CONTENT, Some(range.len()), vec![Segment::File(range)])
        }
        Plan::Multi(ranges) => {
            let boundary = format!(
                "bootfleet-{}-{}",
                &blob.sha256[..16],
                BOUNDARY_COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let multipart = Multipart { boundary: &boundary, content_type, total: blob.len };
            builder = builder.header(header::CONTENT_TYPE, multipart.response_content_type());
            let mut parts = Vec::with_capacity(ranges.len() * 2 + 1);
            for (i, range) in ranges.iter().enumerate() {
                parts.push(Segment::Literal(Bytes::from(multipart.part_header(range, i == 0))));
                parts.push(Segment::File(*range));
            }
            parts.push(Segment::Literal(Bytes::from(multipart.trailer())));
            (StatusCode::PARTIAL_CONTENT, Some(multipart.body_len(&ranges)), parts)
        }
    };
    if let Some(length) = length {
        builder = builder.header(header::CONTENT_LENGTH, length);
    }
    let body = if head || body_plan.is_empty() { empty() } else { body_of(blob, body_plan) };
    builder.status(status).body(body).unwrap_or_else(|e| {
        tracing::error!(error = %e, "building a response failed");
        text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    })
}

/// A piece of a response body.
enum Segment {
    Literal(Bytes),
    File(ByteRange),
}

fn body_of(blob: &Blob, segments: Vec<Segment>) -> Body {
    let total: u64 = segments
        .iter()
        .map(|s| match s {
            Segment::Literal(b) => b.len() as u64,
            Segment::File(r) => r.len(),
        })
        .sum();
    if let Some(cached) = &blob.cached {
        // Handed to hyper whole: counted as sent.
        metrics::BYTES_SERVED.inc_by(total);
        // In memory: zero-copy slices of the verified content. One piece
        // goes as a `Full` body, which hyper writes together with the
        // headers and ends without polling again.
        if let [Segment::File(r)] = segments.as_slice() {
            return full(cached.slice(to_usize(r.start)..to_usize(r.end)));
        }
        let frames: Frames = segments
            .into_iter()
            .map(|s| match s {
                Segment::Literal(b) => Ok(Frame::data(b)),
                Segment::File(r) => Ok(Frame::data(cached.slice(to_usize(r.start)..to_usize(r.end)))),
            })
            .collect();
        return StreamBody::new(futures_util::stream::iter(frames)).boxed();
    }
    if total <= INLINE_READ {
        metrics::BYTES_SERVED.inc_by(total);
        // Small reads (sanboot's block reads, say) come from the page cache
        // in microseconds: read them here, as nginx does, rather than pay
        // for a hop to the blocking pool.
        return match read_inline(&blob.file, segments, total) {
            Ok(bytes) => full(bytes),
            Err(e) => StreamBody::new(futures_util::stream::iter(vec![Err(e)])).boxed(),
        };
    }
    // On disk: chunks are read one at a time on the blocking pool and fed
    // through a small channel, so memory per stream stays at a few chunks
    // however large the file, and a slow reader holds no thread.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let file = Arc::clone(&blob.file);
    tokio::spawn(async move {
        metrics::ACTIVE_STREAMS.inc();
        stream_segments(file, segments, tx).await;
        metrics::ACTIVE_STREAMS.dec();
    });
    StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed()
}

type Frames = Vec<Result<Frame<Bytes>, std::io::Error>>;

/// Reads every segment into one buffer.
fn read_inline(file: &std::fs::File, segments: Vec<Segment>, total: u64) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let mut out = Vec::with_capacity(to_usize(total));
    for segment in segments {
        match segment {
            Segment::Literal(b) => out.extend_from_slice(&b),
            Segment::File(r) => {
                let at = out.len();
                out.resize(at + to_usize(r.len()), 0);
                file.read_exact_at(&mut out[at..], r.start)?;
            }
        }
    }
    Ok(Bytes::from(out))
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

async fn stream_segments(
    file: Arc<std::fs::File>,
    segments: Vec<Segment>,
    tx: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
) {
    for segment in segments {
        match segment {
            Segment::Literal(b) => {
                let len = b.len() as u64;
                if tx.send(Ok(Frame::data(b))).await.is_err() {
                    return;
                }
                metrics::BYTES_SERVED.inc_by(len);
            }
            Segment::File(range) => {
                let mut at = range.start;
                while at < range.end {
                    let n = to_usize((range.end - at).min(CHUNK as u64));
                    let reader = Arc::clone(&file);
                    let read = tokio::task::spawn_blocking(move || {
                        use std::os::unix::fs::FileExt;
                        let mut data = vec![0u8; n];
                        reader.read_exact_at(&mut data, at).map(|()| Bytes::from(data))
                    })
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                    let failed = read.is_err();
                    if tx.send(read.map(Frame::data)).await.is_err() || failed {
                        return;
                    }
                    // Counted as it goes: a client that leaves halfway
                    // was not served the rest.
                    metrics::BYTES_SERVED.inc_by(n as u64);
                    at += n as u64;
                }
            }
        }
    }
}
