//! One connection: the handshake in sequence, then requests read by one
//! loop, run concurrently on the blocking pool, and answered by a writer
//! task in the order they finish.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::NbdServer;
use crate::export::{Client, Export, ExportError};
use crate::request::Op;
use crate::session::{Command, Output, Purpose, Session};
use crate::wire::MAX_READ_REPLY_HEADER_LEN;

/// Socket reads are buffered this much: request headers are 28 bytes, and
/// payloads larger than this bypass the buffer.
const READ_BUFFER: usize = 128 * 1024;
/// The longest piece [`Session::needed`] asks for outside a payload.
const SCRATCH: usize = 64 * 1024;

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("socket I/O failed")]
    Io(#[from] std::io::Error),
    #[error("the handshake took longer than {0:?}")]
    HandshakeTimeout(Duration),
    #[error("replies could not be written")]
    WriterGone,
}

/// The session and what its tasks wait on.
struct Shared {
    session: Mutex<Session>,
    /// Signalled whenever a request completes.
    progress: Notify,
}

impl Shared {
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Bytes to send, holding their share of the memory budget until written.
struct Frame {
    buf: Vec<u8>,
    start: usize,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Frame {
    fn small(buf: Vec<u8>) -> Self {
        Self { buf, start: 0, _permit: None }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

pub(super) async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    server: Arc<NbdServer>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let span = tracing::info_span!("nbd", %peer, export = tracing::field::Empty);
    async move {
        match serve(stream, peer, &server, &stop, &tracker).await {
            Ok(()) => tracing::debug!("connection closed"),
            Err(e) => tracing::info!(cause = %e, "connection ended"),
        }
    }
    .instrument(span)
    .await;
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    server: &Arc<NbdServer>,
    stop: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), ConnectionError> {
    // Replies are whole messages written at once; waiting for more to
    // coalesce them only delays the client.
    stream.set_nodelay(true)?;
    let (read, mut writer) = stream.into_split();
    let mut reader = BufReader::with_capacity(READ_BUFFER, read);
    let mut session = Session::new(server.config.limits);
    let client = Client { peer };
    let handshake = handshake(&mut session, &mut reader, &mut writer, server, &client);
    let timeout = server.config.handshake_timeout;
    let opened = tokio::select! {
        result = tokio::time::timeout(timeout, handshake) => {
            result.map_err(|_| ConnectionError::HandshakeTimeout(timeout))??
        }
        () = stop.cancelled() => return Ok(()),
    };
    let Some((name, export)) = opened else { return Ok(()) };
    tracing::Span::current().record("export", name.as_str());
    server.metrics.session_opened();
    tracing::info!(size = export.info().size, structured = session.structured(), "session opened");
    let result = transmit(session, reader, writer, export, server, stop, tracker).await;
    server.metrics.session_closed();
    result
}

/// Options until the transmission phase; the export opened, or `None`
/// when the client leaves first.
async fn handshake(
    session: &mut Session,
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    server: &NbdServer,
    client: &Client,
) -> Result<Option<(String, Arc<dyn Export>)>, ConnectionError> {
    writer.write_all(&session.greeting()).await?;
    let mut buf = vec![0u8; SCRATCH];
    let mut opened = None;
    loop {
        let needed = session.needed();
        if needed == 0 {
            return Ok(None);
        }
        reader.read_exact(&mut buf[..needed]).await?;
        let mut out = Vec::new();
        session.receive(&buf[..needed], &mut out);
        while !out.is_empty() {
            match out.remove(0) {
                Output::Send(bytes) => writer.write_all(&bytes).await?,
                Output::Lookup { name, purpose: Purpose::Info } => {
                    let described = server.exports.describe(&name, client).await;
                    session.on_lookup(described, &mut out);
                }
                Output::Lookup { name, .. } => {
                    let result = server.exports.open(&name, client).await.map(|export| {
                        let info = export.info();
                        opened = Some((name, export));
                        info
                    });
                    session.on_lookup(result, &mut out);
                }
                Output::List => session.on_list(&server.exports.list(client).await, &mut out),
                Output::Close(reason) => {
                    tracing::debug!(?reason, "closing during the handshake");
                    return Ok(None);
                }
                Output::Execute(_) => {}
            }
        }
        if session.transmitting() {
            return Ok(opened);
        }
    }
}

/// The transmission phase, until the client disconnects, breaks the
/// protocol, stops taking replies, or the server stops.
async fn transmit(
    session: Session,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    export: Arc<dyn Export>,
    server: &Arc<NbdServer>,
    stop: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), ConnectionError> {
    let in_flight = session.limits().max_in_flight;
    let shared = Arc::new(Shared { session: Mutex::new(session), progress: Notify::new() });
    let (replies, queue) = mpsc::channel(in_flight + 16);
    let writer_gone = CancellationToken::new();
    let writer_task =
        tokio::spawn(write_replies(writer, queue, server.config.reply_timeout, writer_gone.clone()));
    let requests = Requests {
        shared: &shared,
        server,
        export: &export,
        replies,
        stop,
        writer_gone: &writer_gone,
        tracker,
    };
    let result = requests.read(reader).await;
    // Everything handed out is answered before the connection closes.
    while shared.session().in_flight() > 0 && !writer_gone.is_cancelled() {
        tokio::select! {
            () = shared.progress.notified() => {}
            () = writer_gone.cancelled() => {}
        }
    }
    drop(requests);
    let _ = writer_task.await;
    if writer_gone.is_cancelled() {
        return Err(ConnectionError::WriterGone);
    }
    result
}

struct Requests<'a> {
    shared: &'a Arc<Shared>,
    server: &'a Arc<NbdServer>,
    export: &'a Arc<dyn Export>,
    replies: mpsc::Sender<Frame>,
    stop: &'a CancellationToken,
    writer_gone: &'a CancellationToken,
    tracker: &'a TaskTracker,
}

impl Requests<'_> {
    /// Reads and dispatches requests until the session closes or the
    /// server stops.
    async fn read(&self, mut reader: BufReader<OwnedReadHalf>) -> Result<(), ConnectionError> {
        let mut scratch = vec![0u8; SCRATCH];
        loop {
            let (needed, payload_due, closed) = {
                let session = self.shared.session();
                (session.needed(), session.payload_due(), session.closed())
            };
            if closed {
                return Ok(());
            }
            if needed == 0 {
                // Too much in flight: wait for a completion.
                tokio::select! {
                    () = self.shared.progress.notified() => continue,
                    () = self.stop.cancelled() => return Ok(()),
                    () = self.writer_gone.cancelled() => return Ok(()),
                }
            }
            let mut out = Vec::new();
            let mut payload = None;
            if let Some(len) = payload_due {
                let Some(permit) = self.budget(len).await else { return Ok(()) };
                let mut buf = vec![0u8; len];
                if !self.read_exact(&mut reader, &mut buf).await? {
                    return Ok(());
                }
                self.shared.session().receive(&buf, &mut out);
                payload = Some((buf, permit));
            } else {
                if !self.read_exact(&mut reader, &mut scratch[..needed]).await? {
                    return Ok(());
                }
                self.shared.session().receive(&scratch[..needed], &mut out);
            }
            for output in out {
                match output {
                    Output::Send(bytes) => {
                        // Requests rejected before they reach the export.
                        self.server.metrics.request_failed();
                        if self.replies.send(Frame::small(bytes)).await.is_err() {
                            return Ok(());
                        }
                    }
                    Output::Execute(command) => {
                        let (data, permit) = match command.op {
                            Op::Write { .. } => match payload.take() {
                                Some((buf, permit)) => (Some(buf), Some(permit)),
                                None => (None, None),
                            },
                            Op::Read { length, .. } => {
                                let len = MAX_READ_REPLY_HEADER_LEN + length as usize;
                                let Some(permit) = self.budget(len).await else { return Ok(()) };
                                (None, Some(permit))
                            }
                            _ => (None, None),
                        };
                        self.spawn(command, data, permit);
                    }
                    Output::Close(reason) => {
                        tracing::debug!(?reason, "client closed the session");
                        return Ok(());
                    }
                    Output::Lookup { .. } | Output::List => {}
                }
            }
        }
    }

    /// Fills `buf`; `false` when the server stops or the writer died first.
    async fn read_exact(
        &self,
        reader: &mut BufReader<OwnedReadHalf>,
        buf: &mut [u8],
    ) -> std::io::Result<bool> {
        tokio::select! {
            read = reader.read_exact(buf) => read.map(|_| true),
            () = self.stop.cancelled() => Ok(false),
            () = self.writer_gone.cancelled() => Ok(false),
        }
    }

    /// `bytes` of the server's memory budget; `None` when stopping.
    async fn budget(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let bytes = u32::try_from(bytes).ok()?;
        let budget: Arc<Semaphore> = Arc::clone(&self.server.budget);
        tokio::select! {
            permit = budget.acquire_many_owned(bytes) => permit.ok(),
            () = self.stop.cancelled() => None,
            () = self.writer_gone.cancelled() => None,
        }
    }

    fn spawn(&self, command: Command, payload: Option<Vec<u8>>, permit: Option<OwnedSemaphorePermit>) {
        let export = Arc::clone(self.export);
        let shared = Arc::clone(self.shared);
        let replies = self.replies.clone();
        let metrics = Arc::clone(&self.server.metrics);
        self.tracker.spawn(
            async move {
                let io = tokio::task::spawn_blocking(move || run_op(&*export, command, payload)).await;
                let (result, data) =
                    io.unwrap_or_else(|e| (Err(ExportError::Io(std::io::Error::other(e))), None));
                match (&result, command.op) {
                    (Ok(()), Op::Read { length, .. }) => metrics.read(u64::from(length)),
                    (Ok(()), Op::Write { length, .. }) => metrics.written(u64::from(length)),
                    (Ok(()), _) => {}
                    (Err(e @ ExportError::Io(_)), op) => {
                        metrics.request_failed();
                        tracing::warn!(cause = %e, ?op, "export I/O failed");
                    }
                    (Err(e), op) => {
                        metrics.request_failed();
                        tracing::debug!(cause = %e, ?op, "request failed");
                    }
                }
                let mut header = Vec::with_capacity(64);
                let data_len =
                    shared.session().complete(command.id, result.map_err(|e| e.errno()), &mut header);
                shared.progress.notify_one();
                let frame = match data {
                    Some(mut buf) if data_len > 0 => {
                        // The header goes right before the data, in the room
                        // left for it, so the reply is one write.
                        let start = MAX_READ_REPLY_HEADER_LEN - header.len();
                        buf[start..MAX_READ_REPLY_HEADER_LEN].copy_from_slice(&header);
                        Frame { buf, start, _permit: permit }
                    }
                    _ => Frame { buf: header, start: 0, _permit: permit },
                };
                let _ = replies.send(frame).await;
            }
            .in_current_span(),
        );
    }
}

/// Runs one request against the export (blocking). A read returns its
/// buffer with [`MAX_READ_REPLY_HEADER_LEN`] bytes of room in front.
fn run_op(
    export: &dyn Export,
    command: Command,
    payload: Option<Vec<u8>>,
) -> (Result<(), ExportError>, Option<Vec<u8>>) {
    let fua = command.fua;
    match command.op {
        Op::Read { offset, length } => {
            let mut buf = vec![0u8; MAX_READ_REPLY_HEADER_LEN + length as usize];
            let result = export.read_at(&mut buf[MAX_READ_REPLY_HEADER_LEN..], offset);
            (result, Some(buf))
        }
        Op::Write { offset, .. } => {
            let data = payload.unwrap_or_default();
            (export.write_at(&data, offset, fua), None)
        }
        Op::Flush => (export.flush(), None),
        Op::Trim { offset, length } => (export.trim(offset, u64::from(length), fua), None),
        Op::WriteZeroes { offset, length, no_hole } => {
            (export.write_zeroes(offset, u64::from(length), fua, no_hole), None)
        }
    }
}

/// Writes replies as they come; cancels `gone` when one cannot be written
/// in time (or at all), so the reader stops too.
async fn write_replies(
    mut writer: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Frame>,
    timeout: Duration,
    gone: CancellationToken,
) {
    while let Some(frame) = queue.recv().await {
        match tokio::time::timeout(timeout, writer.write_all(frame.bytes())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(cause = %e, "writing a reply failed");
                gone.cancel();
                return;
            }
            Err(_) => {
                tracing::info!(?timeout, "client took no reply for too long");
                gone.cancel();
                return;
            }
        }
    }
    let _ = writer.shutdown().await;
}
