//! The tokio shell around the protocol core: the request socket, one task
//! and one ephemeral socket (TID) per transfer, files and the hot-file
//! cache, limits, metrics, and configuration.

mod config;
mod content;
mod history;
mod metrics;
mod receive;
mod rendered;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::config::{RenderConfig, TftpArgs, TftpConfig};
use self::content::{Content, ContentError, Files};
pub use self::receive::receive_settling;
use crate::options::{Limits, negotiate};
use crate::transfer::{Action, Outcome, ReadTransfer};
use crate::wire::{self, ErrorCode, Packet, Request};

/// Shared state of one server.
pub struct TftpServer {
    config: TftpConfig,
    limits: Limits,
    files: Files,
    renderer: Option<rendered::Renderer>,
    /// Reports sent files on the hosts' records, once `run` has a store.
    history: std::sync::OnceLock<history::BootHistory>,
    active: AtomicUsize,
    clients: Mutex<Clients>,
}

impl std::fmt::Debug for TftpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TftpServer").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Who is being served: transfers per address, and the peers (address and
/// port) with a transfer open, so a retransmitted request joins nothing.
#[derive(Default)]
struct Clients {
    per_address: HashMap<IpAddr, Counts>,
    peers: HashSet<SocketAddr>,
}

#[derive(Default)]
struct Counts {
    transfers: usize,
    /// Transfers that have not received an ACK yet.
    unacknowledged: usize,
}

/// Why a request gets no transfer. None of these is answered: the client
/// retransmits its request and is served once a slot frees, where an error
/// packet would end its boot (and would be sent to a forged address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// The same peer (address and port) already has a transfer: its
    /// request was retransmitted. The transfer resends on its own timer.
    InProgress,
    /// `max_transfers` reached.
    Busy,
    /// `max_transfers_per_client` reached for this address.
    ClientBusy,
    /// `max_unacknowledged_per_client` reached for this address.
    Unacknowledged,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Busy => "busy",
            Self::ClientBusy => "client_busy",
            Self::Unacknowledged => "unacknowledged",
        }
    }
}

/// A transfer slot, released when the transfer ends, however it ends.
struct Slot {
    server: Arc<TftpServer>,
    peer: SocketAddr,
    acknowledged: bool,
}

impl Slot {
    /// The peer acknowledged something: it is the one that asked.
    fn acknowledged(&mut self) {
        if self.acknowledged {
            return;
        }
        self.acknowledged = true;
        let mut clients = self.server.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(counts) = clients.per_address.get_mut(&self.peer.ip()) {
            counts.unacknowledged -= 1;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.server.active.fetch_sub(1, Ordering::SeqCst);
        metrics::ACTIVE.dec();
        let mut clients = self.server.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients.peers.remove(&self.peer);
        if let Some(counts) = clients.per_address.get_mut(&self.peer.ip()) {
            counts.transfers -= 1;
            if !self.acknowledged {
                counts.unacknowledged -= 1;
            }
            if counts.transfers == 0 {
                clients.per_address.remove(&self.peer.ip());
            }
        }
    }
}

impl TftpServer {
    /// A server for `config`; the root must exist.
    pub fn new(config: TftpConfig) -> anyhow::Result<Arc<Self>> {
        let files = Files::new(&config.root, config.cache_bytes, config.cache_file_limit)?;
        let limits = Limits::for_mtu(config.mtu, config.max_windowsize, config.timeout);
        let renderer = config
            .render
            .as_ref()
            .map(|render| rendered::Renderer::new(render, config.rendered_cache_entries))
            .transpose()?;
        Ok(Arc::new(Self {
            config,
            limits,
            files,
            renderer,
            history: std::sync::OnceLock::new(),
            active: AtomicUsize::new(0),
            clients: Mutex::default(),
        }))
    }

    /// Transfers in progress.
    pub fn active_transfers(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Takes a transfer slot, or says why not.
    fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Slot, Refusal> {
        let mut guard = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        let clients = &mut *guard;
        if clients.peers.contains(&peer) {
            return Err(Refusal::InProgress);
        }
        if self.active.load(Ordering::SeqCst) >= self.config.max_transfers {
            return Err(Refusal::Busy);
        }
        let counts = clients.per_address.entry(peer.ip()).or_default();
        let refusal = if counts.transfers >= self.config.max_per_client {
            Some(Refusal::ClientBusy)
        } else if counts.unacknowledged >= self.config.max_unacknowledged_per_client {
            Some(Refusal::Unacknowledged)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            if counts.transfers == 0 {
                clients.per_address.remove(&peer.ip());
            }
            return Err(refusal);
        }
        counts.transfers += 1;
        counts.unacknowledged += 1;
        clients.peers.insert(peer);
        self.active.fetch_add(1, Ordering::SeqCst);
        metrics::ACTIVE.inc();
        Ok(Slot { server: Arc::clone(self), peer, acknowledged: false })
    }
}

async fn send_error(socket: &UdpSocket, peer: SocketAddr, code: ErrorCode, message: &str) {
    let mut buf = Vec::with_capacity(message.len() + 5);
    wire::encode_error(&mut buf, code, message);
    let _ = socket.send_to(&buf, peer).await;
}

/// Serves requests arriving on `socket` until `stop`. Transfers run on
/// `tracker` and are left to finish (the caller drains them).
///
/// CANCEL-SAFETY: stops between datagrams; nothing is half-handled.
pub async fn serve(
    socket: UdpSocket,
    server: Arc<TftpServer>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let mut buf = vec![0u8; wire::MAX_DATAGRAM];
    loop {
        let (len, peer) = tokio::select! {
            () = stop.cancelled() => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(e) => {
                    tracing::warn!(error = %e, "receive failed");
                    continue;
                }
            },
        };
        match Packet::parse(&buf[..len]) {
            Ok(Packet::Rrq(request)) => match server.admit(peer) {
                Ok(slot) => {
                    tracker.spawn(transfer(Arc::clone(&server), slot, request, peer));
                }
                Err(refusal) => {
                    metrics::REFUSED.with_label_values(&[refusal.label()]).inc();
                    tracing::debug!(%peer, ?refusal, "request not answered");
                }
            },
            Ok(Packet::Wrq(request)) => {
                metrics::REFUSED.with_label_values(&["write"]).inc();
                tracing::debug!(%peer, file = %request.filename, "write request refused");
                send_error(&socket, peer, ErrorCode::AccessViolation, "this server is read-only").await;
            }
            Ok(other) => {
                metrics::MALFORMED.inc();
                tracing::debug!(%peer, ?other, "not a request; dropped");
            }
            Err(e) => {
                metrics::MALFORMED.inc();
                tracing::debug!(%peer, error = %e, "malformed datagram dropped");
            }
        }
    }
    tracing::info!(active = server.active_transfers(), "no longer accepting requests");
}

/// Runs one read transfer on its own socket.
async fn transfer(server: Arc<TftpServer>, mut slot: Slot, request: Request, peer: SocketAddr) {
    let local = SocketAddr::new(server.config.listen.ip(), 0);
    let socket = match UdpSocket::bind(local).await {
        Ok(socket) => socket,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot open a transfer socket");
            return;
        }
    };
    // Connected: datagrams from anyone but this client never reach us.
    if let Err(e) = socket.connect(peer).await {
        tracing::warn!(%peer, error = %e, "cannot reach the client");
        return;
    }
    let opened = match server.files.open(&request.filename, request.mode).await {
        // Not a file on disk: maybe a loader config rendered for this host.
        Err(ContentError::NotFound) => match &server.renderer {
            Some(renderer) => match renderer.render(&request.filename, peer.ip()).await {
                Some(bytes) => Content::memory(bytes, request.mode).await,
                None => Err(ContentError::NotFound),
            },
            None => Err(ContentError::NotFound),
        },
        other => other,
    };
    let mut content = match opened {
        Ok(content) => content,
        Err(e) => {
            let (code, label) = match &e {
                ContentError::NotFound => (ErrorCode::FileNotFound, "not_found"),
                ContentError::Refused(_) => (ErrorCode::AccessViolation, "access"),
                ContentError::Io => (ErrorCode::NotDefined, "error"),
            };
            metrics::REFUSED.with_label_values(&[label]).inc();
            tracing::info!(%peer, file = %request.filename, reason = %e, "request refused");
            // Free first: a client may ask again from the same port as soon
            // as it reads the error, and must not look like a retransmission.
            drop(slot);
            let mut buf = Vec::new();
            wire::encode_error(&mut buf, code, &e.to_string());
            let _ = socket.send(&buf).await;
            return;
        }
    };
    let (negotiated, used) = negotiate(&request.options, content.len(), &server.limits);
    metrics::record_options(used);
    content.set_windowsize(negotiated.windowsize);
    let mut machine = ReadTransfer::new(content.len(), &negotiated, server.config.max_retries)
        .with_unacknowledged_retries(server.config.unacknowledged_retries);
    let started = Instant::now();
    let mut runner = Runner {
        socket: &socket,
        content,
        packet: Vec::with_capacity(usize::from(negotiated.blksize) + 4),
        sent: 0,
    };
    // The retransmission timer is re-armed on every block; moving a tokio
    // timer that often costs a timer-wheel update per block. So only
    // `deadline` moves; the sleep fires at the old time at most once per
    // timeout, and is pushed on to `deadline` if that has moved since.
    let mut deadline = Instant::now() + negotiated.timeout;
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    let mut pending = machine.start();
    let mut buf = vec![0u8; wire::MAX_DATAGRAM];
    let outcome = 'run: loop {
        for action in pending.drain(..) {
            match runner.execute(action).await {
                Step::Continue => {}
                Step::Timer(after) => deadline = Instant::now() + after,
                Step::Finished(outcome) => break 'run outcome,
            }
        }
        if timer.is_elapsed() {
            if deadline <= Instant::now() {
                // Fired, and nothing moved the deadline since: a timeout.
                pending = machine.on_timeout();
                if pending.is_empty() {
                    deadline = Instant::now() + negotiated.timeout;
                }
                continue;
            }
            // Fired early for a deadline that has moved on: wait until it.
            timer.as_mut().reset(deadline);
        } else if deadline < timer.deadline() {
            timer.as_mut().reset(deadline);
        }
        tokio::select! {
            // Handled at the top of the loop: a timeout, or re-armed.
            () = &mut timer => {}
            ready = socket.readable() => {
                // An ACK that confirms everything sent is the last datagram
                // until our next window: no receive is spent learning that.
                let settles = |datagram: &[u8]| match datagram {
                    [0, 4, high, low, ..] => machine.ack_settles(u16::from_be_bytes([*high, *low])),
                    _ => false,
                };
                let received = match ready.and_then(|()| receive_settling(&socket, &mut buf, settles)) {
                    Ok(Some(len)) => Ok(len),
                    Ok(None) => continue,
                    Err(e) => Err(e),
                };
                pending = match received.map(|len| Packet::parse(&buf[..len])) {
                    Ok(Ok(Packet::Ack { block })) => {
                        let actions = machine.on_ack(block);
                        if machine.acknowledged() {
                            slot.acknowledged();
                        }
                        actions
                    }
                    Ok(Ok(Packet::Error { code, message })) => {
                        tracing::debug!(%peer, ?code, message, "client ended the transfer");
                        machine.on_error()
                    }
                    Ok(Ok(_)) => machine.on_illegal(),
                    Ok(Err(_)) => {
                        metrics::MALFORMED.inc();
                        Vec::new()
                    }
                    // ICMP port unreachable and friends: the client is gone.
                    Err(_) => machine.on_error(),
                };
            }
        }
    };
    drop(slot);
    metrics::finished(outcome, runner.sent, machine.retransmitted);
    let elapsed = started.elapsed();
    if outcome == Outcome::Complete
        && let Some(history) = server.history.get()
    {
        history.sent(peer.ip(), &request.filename);
    }
    match outcome {
        Outcome::Complete => tracing::info!(
            %peer, file = %request.filename, bytes = runner.sent, ms = elapsed.as_millis() as u64,
            blksize = negotiated.blksize, windowsize = negotiated.windowsize, retransmitted = machine.retransmitted,
            "transfer complete"
        ),
        other => tracing::info!(%peer, file = %request.filename, outcome = ?other, "transfer ended"),
    }
}

enum Step {
    Continue,
    Timer(std::time::Duration),
    Finished(Outcome),
}

struct Runner<'a> {
    socket: &'a UdpSocket,
    content: Content,
    packet: Vec<u8>,
    sent: u64,
}

impl Runner<'_> {
    async fn execute(&mut self, action: Action) -> Step {
        match action {
            Action::SendData { block, offset, len } => {
                self.packet.clear();
                match self.content.block(offset, len).await {
                    Ok(data) => wire::encode_data(&mut self.packet, block, data),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading file failed mid-transfer");
                        self.packet.clear();
                        wire::encode_error(&mut self.packet, ErrorCode::NotDefined, "read error");
                        let _ = self.socket.send(&self.packet).await;
                        return Step::Finished(Outcome::ProtocolError);
                    }
                }
                match self.socket.send(&self.packet).await {
                    Ok(_) => self.sent += len as u64,
                    // An ICMP port unreachable from an earlier datagram: the
                    // client is gone (it wakes no receive, only this send).
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        tracing::debug!("client port unreachable");
                        return Step::Finished(Outcome::ClientAborted);
                    }
                    Err(_) => {}
                }
                Step::Continue
            }
            Action::SendOack(options) => {
                let packet = Packet::Oack { options }.encode();
                let _ = self.socket.send(&packet).await;
                Step::Continue
            }
            Action::SendError(code, message) => {
                self.packet.clear();
                wire::encode_error(&mut self.packet, code, &message);
                let _ = self.socket.send(&self.packet).await;
                Step::Continue
            }
            Action::ArmTimer(after) => Step::Timer(after),
            Action::Finish(outcome) => Step::Finished(outcome),
        }
    }
}

/// Binds the TFTP port and serves until shutdown, registering the replica
/// with its load (active transfers).
pub async fn run(
    ctx: Arc<bootfleet_core::process::ServiceContext>,
    config: TftpConfig,
) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(&config.root).with_context(|| format!("creating {}", config.root.display()))?;
    let socket =
        UdpSocket::bind(config.listen).await.with_context(|| format!("binding TFTP on {}", config.listen))?;
    let addr = socket.local_addr()?;
    let server =
        TftpServer::new(config.clone()).with_context(|| format!("serving from {}", config.root.display()))?;
    let registration = Arc::new(ctx.register("tftp-server", vec![addr.to_string()]));
    let _ = server.history.set(history::BootHistory::start(
        ctx.store.clone(),
        ctx.config.member_id.clone(),
        &ctx.shutdown.token(),
    ));
    ctx.health.set("tftp", bootfleet_core::admin::ComponentHealth::Serving).await;
    tracing::info!(%addr, root = %config.root.display(), "TFTP listening");
    let tracker = TaskTracker::new();
    let load_server = Arc::clone(&server);
    let load_stop = ctx.shutdown.token();
    let load_registration = Arc::clone(&registration);
    let load_task = tokio::spawn(async move {
        let mut published = usize::MAX;
        loop {
            let active = load_server.active_transfers();
            if active != published {
                load_registration.update(|m| m.load = active as u64);
                published = active;
            }
            tokio::select! {
                () = load_stop.cancelled() => return,
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    });
    serve(socket, Arc::clone(&server), ctx.shutdown.token(), tracker.clone()).await;
    tracker.close();
    if tokio::time::timeout(ctx.config.shutdown_grace, tracker.wait()).await.is_err() {
        tracing::warn!(active = server.active_transfers(), "grace period over; abandoning transfers");
    }
    let _ = load_task.await;
    if let Ok(registration) = Arc::try_unwrap(registration)
        && let Err(e) = registration.deregister().await
    {
        tracing::warn!(error = %e, "deregistering failed; the record lapses with its lease");
    }
    Ok(())
}
