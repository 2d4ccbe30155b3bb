//! One connection: the handshake in sequence, then requests read by one
//! loop and answered in the order they finish. Reads of data in memory
//! are answered by the loop itself; everything else runs on the blocking
//! pool, several requests at once. Replies go out whole, one at a time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::NbdServer;
use crate::export::{Client, Export, ExportError};
use crate::metrics::NbdMetrics;
use crate::request::Op;
use crate::session::{Command, DISCARD_PIECE, MAX_OPTION_DATA, Output, Purpose, Session};
use crate::wire::MAX_READ_REPLY_HEADER_LEN;

/// Socket reads are buffered this much: request headers are 28 bytes, and
/// payloads larger than this bypass the buffer.
const READ_BUFFER: usize = 32 * 1024;
/// The longest piece [`Session::needed`] asks for outside a payload: option
/// data, or a piece of bytes being dropped.
const SCRATCH: usize =
    if MAX_OPTION_DATA > DISCARD_PIECE as usize { MAX_OPTION_DATA } else { DISCARD_PIECE as usize };

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

/// What the reader and the request tasks of one connection share.
struct Shared {
    session: Mutex<Session>,
    /// Signalled whenever a request is answered.
    progress: Notify,
    /// Requests handed out and not yet answered on the socket.
    unanswered: AtomicUsize,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    reply_timeout: Duration,
    /// Cancelled when a reply cannot be written: the connection is over.
    writer_gone: CancellationToken,
    metrics: Arc<NbdMetrics>,
}

impl Shared {
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `bytes` as one message; on failure or timeout the
    /// connection is given up.
    async fn send(&self, bytes: &[u8]) {
        let mut writer = self.writer.lock().await;
        // Checked under the lock: a send that timed out while this one
        // waited for the lock has given the connection up.
        if self.writer_gone.is_cancelled() {
            return;
        }
        match tokio::time::timeout(self.reply_timeout, writer.write_all(bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(cause = %e, "writing a reply failed");
                self.writer_gone.cancel();
            }
            Err(_) => {
                tracing::info!(timeout = ?self.reply_timeout, "client took no reply for too long");
                self.writer_gone.cancel();
            }
        }
    }

    /// Completes `command` with `result` and sends its reply; `data` is a
    /// read's buffer, with [`MAX_READ_REPLY_HEADER_LEN`] bytes of room in
    /// front. `permit` (the buffer's share of the budget) is released
    /// once the reply is written.
    async fn answer(
        &self,
        command: Command,
        result: Result<(), ExportError>,
        data: Option<Vec<u8>>,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        match (&result, command.op) {
            (Ok(()), Op::Read { length, .. }) => self.metrics.read(u64::from(length)),
            (Ok(()), Op::Write { length, .. }) => self.metrics.written(u64::from(length)),
            (Ok(()), _) => {}
            (Err(e @ ExportError::Io(_)), op) => {
                self.metrics.request_failed();
                tracing::warn!(cause = %e, ?op, "export I/O failed");
            }
            (Err(e), op) => {
                self.metrics.request_failed();
                tracing::debug!(cause = %e, ?op, "request failed");
            }
        }
        let mut header = Vec::with_capacity(64);
        let data_len = self.session().complete(command.id, result.map_err(|e| e.errno()), &mut header);
        match data {
            Some(mut buf) if data_len > 0 => {
                // The header goes right before the data, in the room left
                // for it, so the reply is one write.
                let start = MAX_READ_REPLY_HEADER_LEN - header.len();
                buf[start..MAX_READ_REPLY_HEADER_LEN].copy_from_slice(&header);
                self.send(&buf[start..]).await;
            }
            _ => self.send(&header).await,
        }
        drop(permit);
        self.unanswered.fetch_sub(1, Ordering::AcqRel);
        self.progress.notify_one();
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
    let mut client_io = ClientIo {
        reader: &mut reader,
        writer: &mut writer,
        deadline: tokio::time::Instant::now() + server.config.handshake_timeout,
        timeout: server.config.handshake_timeout,
    };
    let opened = tokio::select! {
        result = handshake(&mut session, &mut client_io, server, &client) => result?,
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

/// The socket during the handshake: the client must do its part of it by
/// `deadline`. Export lookups, the server's own work, do not count.
struct ClientIo<'a> {
    reader: &'a mut BufReader<OwnedReadHalf>,
    writer: &'a mut OwnedWriteHalf,
    deadline: tokio::time::Instant,
    timeout: Duration,
}

impl ClientIo<'_> {
    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ConnectionError> {
        match tokio::time::timeout_at(self.deadline, self.reader.read_exact(buf)).await {
            Ok(read) => read.map(drop).map_err(ConnectionError::from),
            Err(_) => Err(ConnectionError::HandshakeTimeout(self.timeout)),
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        match tokio::time::timeout_at(self.deadline, self.writer.write_all(bytes)).await {
            Ok(written) => written.map_err(ConnectionError::from),
            Err(_) => Err(ConnectionError::HandshakeTimeout(self.timeout)),
        }
    }
}

/// Options until the transmission phase; the export opened, or `None`
/// when the client leaves first.
async fn handshake(
    session: &mut Session,
    io: &mut ClientIo<'_>,
    server: &NbdServer,
    client: &Client,
) -> Result<Option<(String, Arc<dyn Export>)>, ConnectionError> {
    io.write_all(&session.greeting()).await?;
    let mut buf = vec![0u8; SCRATCH];
    let mut opened = None;
    loop {
        let needed = session.needed();
        if needed == 0 {
            return Ok(None);
        }
        io.read_exact(&mut buf[..needed]).await?;
        let mut out = Vec::new();
        session.receive(&buf[..needed], &mut out);
        while !out.is_empty() {
            match out.remove(0) {
                Output::Send(bytes) => io.write_all(&bytes).await?,
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
    let shared = Arc::new(Shared {
        session: Mutex::new(session),
        progress: Notify::new(),
        unanswered: AtomicUsize::new(0),
        writer: tokio::sync::Mutex::new(writer),
        reply_timeout: server.config.reply_timeout,
        writer_gone: CancellationToken::new(),
        metrics: Arc::clone(&server.metrics),
    });
    let requests = Requests { shared: &shared, server, export: &export, stop, tracker };
    let result = requests.read(reader).await;
    // Everything handed out is answered before the connection closes.
    while shared.unanswered.load(Ordering::Acquire) > 0 && !shared.writer_gone.is_cancelled() {
        tokio::select! {
            () = shared.progress.notified() => {}
            () = shared.writer_gone.cancelled() => {}
        }
    }
    if shared.writer_gone.is_cancelled() {
        return Err(ConnectionError::WriterGone);
    }
    let _ = shared.writer.lock().await.shutdown().await;
    result
}

struct Requests<'a> {
    shared: &'a Arc<Shared>,
    server: &'a Arc<NbdServer>,
    export: &'a Arc<dyn Export>,
    stop: &'a CancellationToken,
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
                // Too much in flight: wait for an answer.
                tokio::select! {
                    () = self.shared.progress.notified() => continue,
                    () = self.stop.cancelled() => return Ok(()),
                    () = self.shared.writer_gone.cancelled() => return Ok(()),
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
                        self.shared.send(&bytes).await;
                    }
                    Output::Execute(command) => {
                        self.shared.unanswered.fetch_add(1, Ordering::AcqRel);
                        if !self.dispatch(command, payload.take()).await {
                            return Ok(());
                        }
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

    /// Runs `command`: a read whose data is in memory right here, anything
    /// else on the blocking pool. `false` when stopping first.
    async fn dispatch(&self, command: Command, payload: Option<(Vec<u8>, OwnedSemaphorePermit)>) -> bool {
        let (data, permit) = match command.op {
            Op::Write { .. } => match payload {
                Some((buf, permit)) => (Some(buf), Some(permit)),
                None => (None, None),
            },
            Op::Read { offset, length } => {
                let len = MAX_READ_REPLY_HEADER_LEN + length as usize;
                let Some(permit) = self.budget(len).await else {
                    self.shared.unanswered.fetch_sub(1, Ordering::AcqRel);
                    return false;
                };
                let mut buf = vec![0u8; len];
                if let Some(result) = self.export.try_read_at(&mut buf[MAX_READ_REPLY_HEADER_LEN..], offset) {
                    self.shared.answer(command, result, Some(buf), Some(permit)).await;
                    return true;
                }
                (Some(buf), Some(permit))
            }
            _ => (None, None),
        };
        let export = Arc::clone(self.export);
        let shared = Arc::clone(self.shared);
        self.tracker.spawn(
            async move {
                let io = tokio::task::spawn_blocking(move || run_op(&*export, command, data)).await;
                let (result, data) =
                    io.unwrap_or_else(|e| (Err(ExportError::Io(std::io::Error::other(e))), None));
                shared.answer(command, result, data, permit).await;
            }
            .in_current_span(),
        );
        true
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
            () = self.shared.writer_gone.cancelled() => Ok(false),
        }
    }

    /// `bytes` of the server's memory budget; `None` when stopping.
    async fn budget(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let bytes = u32::try_from(bytes).ok()?;
        let budget: Arc<Semaphore> = Arc::clone(&self.server.budget);
        tokio::select! {
            permit = budget.acquire_many_owned(bytes) => permit.ok(),
            () = self.stop.cancelled() => None,
            () = self.shared.writer_gone.cancelled() => None,
        }
    }
}

/// Runs one request against the export (blocking). `data` is a write's
/// payload, or a read's buffer with [`MAX_READ_REPLY_HEADER_LEN`] bytes of
/// room in front, returned filled.
fn run_op(
    export: &dyn Export,
    command: Command,
    data: Option<Vec<u8>>,
) -> (Result<(), ExportError>, Option<Vec<u8>>) {
    let fua = command.fua;
    match command.op {
        Op::Read { offset, .. } => {
            let mut buf = data.unwrap_or_default();
            let result = match buf.get_mut(MAX_READ_REPLY_HEADER_LEN..) {
                Some(target) => export.read_at(target, offset),
                None => Err(ExportError::Io(std::io::Error::other("read buffer missing"))),
            };
            (result, Some(buf))
        }
        Op::Write { offset, .. } => {
            let data = data.unwrap_or_default();
            (export.write_at(&data, offset, fua), None)
        }
        Op::Flush => (export.flush(), None),
        Op::Trim { offset, length } => (export.trim(offset, u64::from(length), fua), None),
        Op::WriteZeroes { offset, length, no_hole } => {
            (export.write_zeroes(offset, u64::from(length), fua, no_hole), None)
        }
    }
}
