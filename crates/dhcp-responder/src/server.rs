//! The tokio shell for proxyDHCP: one socket per configured interface on
//! port 67 (broadcasts) and 4011 (PXE boot-server requests), bound to the
//! interface with SO_BINDTODEVICE so nothing is ever answered elsewhere;
//! the rules engine asked for each host (last answer remembered for
//! outages); a per-MAC flood limit; metrics.

mod config;
mod fencing;
mod full_shell;
mod history;
mod leadership;
mod lease_records;
mod lease_writer;
mod liveness;
mod router_adverts;
#[cfg(test)]
mod tests;
mod verdicts;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use bootfleet_core::membership::service_prefix;
use bootfleet_core::process::ServiceContext;
use bootfleet_core::snapshot::SnapshotCache;
use bootfleet_proto::v1 as pb;
use bootfleet_rules_engine::client::connect_lazy_with;
use prometheus::{HistogramVec, IntCounterVec, register_histogram_vec, register_int_counter_vec};
use prost::Message;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

pub use self::config::{DhcpArgs, DhcpConfig, Ha, Mode};
use crate::boot_servers::{Candidate, pick};
use crate::client::{Loader, detect};
use crate::full::FullConfig;
use crate::proxy::{ProxyContext, Reply, ReplyType, Silence, Verdict, decide, encode};
use crate::wire::{MessageType, Request};

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("bootfleet_dhcp_requests_total", "DHCP requests by outcome", &["outcome"])
        .expect("metric registers once")
});

/// Time spent per answered request, by phase: asking the rules engine,
/// the lease work (full mode, including the store commit), and in all.
static REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "bootfleet_dhcp_request_seconds",
        "Time to answer a DHCP request, by phase (rules, leases, total)",
        &["phase"],
        vec![0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0]
    )
    .expect("metric registers once")
});

/// The phases' histograms and the answered count, looked up once: a label
/// lookup hashes its strings, and these are counted on every answer.
struct HotMetrics {
    rules: prometheus::Histogram,
    leases: prometheus::Histogram,
    total: prometheus::Histogram,
    answered: prometheus::IntCounter,
}

static HOT: LazyLock<HotMetrics> = LazyLock::new(|| HotMetrics {
    rules: REQUEST_SECONDS.with_label_values(&["rules"]),
    leases: REQUEST_SECONDS.with_label_values(&["leases"]),
    total: REQUEST_SECONDS.with_label_values(&["total"]),
    answered: REQUESTS.with_label_values(&["answered"]),
});

fn observe(phase: &prometheus::Histogram, since: Instant) {
    phase.observe(since.elapsed().as_secs_f64());
}

fn count(outcome: &str) {
    REQUESTS.with_label_values(&[outcome]).inc();
}

/// Per-MAC request counter over one-second windows.
struct FloodGuard {
    limit: u32,
    seen: Mutex<FloodState>,
}

/// The counters, and when they were last swept of stale windows.
struct FloodState {
    counts: HashMap<[u8; 6], (Instant, u32)>,
    swept: Instant,
}

impl Default for FloodState {
    fn default() -> Self {
        Self { counts: HashMap::new(), swept: Instant::now() }
    }
}

impl FloodGuard {
    fn allow(&self, mac: [u8; 6]) -> bool {
        let now = Instant::now();
        let mut state = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        // Sweep at most once a second, so a flood of made-up MACs costs one
        // pass per second rather than one per packet.
        if state.counts.len() > 65_536 && now.duration_since(state.swept) >= Duration::from_secs(1) {
            state.counts.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(1));
            state.swept = now;
        }
        let seen = &mut state.counts;
        let entry = seen.entry(mac).or_insert((now, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(1) {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= self.limit
    }
}

/// A UDP socket on `port`, receiving broadcasts, bound to one interface.
fn bind(interface: &str, port: u16) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket.bind_device(Some(interface.as_bytes()))?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    UdpSocket::from_std(socket.into())
}

struct Responder {
    config: DhcpConfig,
    verdicts: verdicts::Verdicts,
    flood: FloodGuard,
    /// Full mode: the store and a watched copy of the leases.
    leases: Option<full_shell::Leases>,
    /// Live TFTP replicas, when `tftp_from_members` is on.
    tftp_members: Option<SnapshotCache>,
    /// Live image streamers, when `streamers_from_members` is on.
    streamer_members: Option<SnapshotCache>,
    /// Which of those replicas answer their admin endpoint.
    liveness: liveness::Liveness,
    /// Full mode: the addresses acknowledged, on the hosts' records.
    history: Option<history::BootHistory>,
}

/// What a responder needs from its process: the store, its member id, the
/// election's lease time, and the shutdown signal.
struct Site {
    store: bootfleet_core::store::SharedStore,
    member_id: String,
    election_ttl: Duration,
    stop: CancellationToken,
}

impl Responder {
    /// Starts the background parts (lease index, election, member
    /// watches, rules cache); answers once sockets feed [`Self::handle`].
    fn start(site: &Site, config: DhcpConfig) -> anyhow::Result<Self> {
        let leases = match &config.mode {
            Mode::Full { pools, reservations, lease_reuse, ha } => Some(full_shell::Leases::start(
                site.store.clone(),
                site.member_id.clone(),
                site.election_ttl,
                (
                    FullConfig {
                        pools: pools.clone(),
                        reservations: reservations.clone(),
                        lease_reuse: *lease_reuse,
                    },
                    *ha,
                ),
                site.stop.clone(),
            )),
            Mode::Proxy => None,
        };
        let members = |service: &str| {
            SnapshotCache::start(site.store.clone(), &service_prefix(service), site.stop.clone())
        };
        let tftp_members = config.tftp_from_members.then(|| members("tftp-server"));
        let streamer_members = config.streamers_from_members.then(|| members("image-streamer"));
        let liveness = liveness::Liveness::default();
        let probed: Vec<SnapshotCache> =
            tftp_members.iter().chain(streamer_members.iter()).cloned().collect();
        if !probed.is_empty() {
            liveness.start(probed, site.stop.clone());
        }
        let history = leases.is_some().then(|| {
            history::BootHistory::start(site.store.clone(), site.member_id.clone(), site.stop.clone())
        });
        Ok(Self {
            tftp_members,
            streamer_members,
            liveness,
            history,
            leases,
            verdicts: verdicts::Verdicts::new(
                connect_lazy_with(&config.rules_url, config.service_token.as_ref())?,
                config.rules_cache,
                site.store.clone(),
                site.stop.clone(),
            ),
            flood: FloodGuard { limit: config.requests_per_mac_per_second, seen: Mutex::default() },
            config,
        })
    }
}

/// Member records in a watched copy.
fn live_members(members: &SnapshotCache) -> impl Iterator<Item = pb::Member> {
    members.list(members.prefix()).into_iter().filter_map(|kv| pb::Member::decode(kv.value.as_slice()).ok())
}

impl Responder {
    /// The TFTP server for this client: a live replica from the store when
    /// configured and known, else the configured one.
    fn tftp_server(&self, mac: u64) -> Ipv4Addr {
        let Some(members) = &self.tftp_members else { return self.config.tftp_server };
        let candidates: Vec<Candidate<Ipv4Addr>> = live_members(members)
            .filter(|m| self.liveness.is_up(&m.admin_address))
            .filter_map(|m| match m.addresses.first()?.parse::<SocketAddr>().ok()? {
                // PXE firmware asks port 69 only.
                SocketAddr::V4(v4) if v4.port() == 69 && !v4.ip().is_unspecified() => {
                    Some(Candidate { address: *v4.ip(), load: m.load })
                }
                _ => None,
            })
            .collect();
        pick(&candidates, mac).unwrap_or(self.config.tftp_server)
    }

    /// The image streamer for this client's boot script: a live replica's
    /// base URL when configured and known, else `http_base`.
    fn http_base(&self, mac: u64) -> String {
        let Some(members) = &self.streamer_members else { return self.config.http_base.clone() };
        let candidates: Vec<Candidate<String>> = live_members(members)
            .filter(|m| self.liveness.is_up(&m.admin_address))
            .filter_map(|m| {
                let url = m.addresses.first()?.clone();
                url.starts_with("http").then_some(Candidate { address: url, load: m.load })
            })
            .collect();
        pick(&candidates, mac).unwrap_or_else(|| self.config.http_base.clone())
    }

    fn proxy_context(&self, verdict: Verdict, mac: [u8; 6]) -> ProxyContext {
        let mac = mac.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        ProxyContext {
            server_ip: self.config.server_ip,
            tftp_server: self.tftp_server(mac),
            loaders: self.config.loaders.clone(),
            http_base: self.http_base(mac),
            verdict,
            boot_unknown: self.config.boot_unknown,
        }
    }

    /// Handles one datagram; returns the reply and where to send it.
    async fn handle(
        &self,
        bytes: &[u8],
        from: SocketAddr,
        boot_server_port: bool,
    ) -> Option<(Vec<u8>, SocketAddr)> {
        let request = match Request::parse(bytes) {
            Ok(request) => request,
            Err(e) => {
                count("malformed");
                tracing::debug!(%from, error = %e, "dropped");
                return None;
            }
        };
        if !self.flood.allow(request.mac) {
            count("rate_limited");
            return None;
        }
        if !self.config.trusted_relays.admits(request.giaddr, from.ip()) {
            // Anyone can write a giaddr: believed only from a trusted relay.
            count("untrusted_relay");
            tracing::debug!(%from, giaddr = %request.giaddr, "relayed request from an untrusted source dropped");
            return None;
        }
        let client = detect(&request);
        let full = matches!(self.config.mode, Mode::Full { .. });
        if client.loader == Loader::None && !full {
            count("not_boot_client");
            return None;
        }
        if let Some(leases) = &self.leases
            && leases.others(&request, self.config.server_ip)
        {
            // Load-balancing: another member's client. Not even the rules
            // engine is asked: each replica pays for its own share only.
            count("other_member");
            return None;
        }
        let record = request.message_type == MessageType::Discover;
        let started = Instant::now();
        let verdict = self.verdicts.ask(&request, client.arch.map(|a| a.name()), record).await;
        observe(&HOT.rules, started);
        if let Some(leases) = &self.leases {
            let boot = self.proxy_context(verdict, request.mac);
            let leasing = Instant::now();
            let Some(reply) = leases.answer(&request, &client, &boot).await else {
                // Not ours to answer, a standby, a lost race or no store:
                // the reason is in the log at debug/info/warn.
                count("unanswered");
                return None;
            };
            observe(&HOT.leases, leasing);
            observe(&HOT.total, started);
            HOT.answered.inc();
            tracing::info!(mac = %request.mac_text(), yiaddr = %reply.yiaddr, kind = ?reply.kind, "answered");
            if reply.kind == ReplyType::Ack
                && let Some(history) = &self.history
            {
                history.acknowledged(request.mac_text(), reply.yiaddr.to_string());
            }
            let to = destination(&request, &reply, from, false);
            return Some((encode(&request, &reply, self.config.server_ip), to));
        }
        let ctx = self.proxy_context(verdict, request.mac);
        let reply = match decide(&request, &ctx) {
            Ok(reply) => reply,
            Err(silence) => {
                let label = match silence {
                    Silence::Ignored => "ignored",
                    Silence::UnknownHost => "unknown_host",
                    Silence::NoLoader => "no_loader",
                    _ => "not_ours",
                };
                count(label);
                tracing::debug!(mac = %request.mac_text(), ?silence, "not answering");
                return None;
            }
        };
        observe(&HOT.total, started);
        HOT.answered.inc();
        tracing::info!(mac = %request.mac_text(), file = %reply.file, kind = ?reply.kind, "answered");
        let to = destination(&request, &reply, from, boot_server_port);
        Some((encode(&request, &reply, self.config.server_ip), to))
    }
}

/// Where a reply goes (RFC 2131 §4.1): back to the sender on the PXE
/// boot-server port; to the relay if there is one; to the client's address
/// when it has one (renewals, never for a NAK); else broadcast.
fn destination(request: &Request, reply: &Reply, from: SocketAddr, boot_server_port: bool) -> SocketAddr {
    if boot_server_port {
        from
    } else if !request.giaddr.is_unspecified() {
        SocketAddr::from((request.giaddr, 67))
    } else if !request.ciaddr.is_unspecified() && reply.kind != ReplyType::Nak {
        SocketAddr::from((request.ciaddr, 68))
    } else {
        SocketAddr::from((Ipv4Addr::BROADCAST, 68))
    }
}

/// Requests handled at once per socket: each may wait on the rules engine
/// and the store, so they overlap (and their lease writes share commits).
const IN_FLIGHT: usize = 256;

async fn serve_socket(
    socket: UdpSocket,
    responder: Arc<Responder>,
    boot_server_port: bool,
    stop: CancellationToken,
) {
    let socket = Arc::new(socket);
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut buf = vec![0u8; 1500];
    let mut answered_inline = 0u32;
    loop {
        // Answering inline makes each turn of this loop longer than a
        // spawn was: give the timers and the other tasks (the election's
        // lease renewal among them) a turn often enough.
        if answered_inline >= INLINE_BEFORE_YIELD {
            answered_inline = 0;
            tokio::task::yield_now().await;
        }
        let (len, from) = tokio::select! {
            () = stop.cancelled() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(e) => {
                    tracing::warn!(error = %e, "receive failed");
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Overloaded: dropping is what clients expect (they retry).
            count("overloaded");
            continue;
        };
        let datagram = buf[..len].to_vec();
        let (socket, responder) = (Arc::clone(&socket), Arc::clone(&responder));
        let mut answer = Box::pin(async move {
            let reply = responder.handle(&datagram, from, boot_server_port).await;
            (reply, slot)
        });
        // Most answers need nothing to wait for (a cached decision, a lease
        // the leader knows): they are answered here, without a task of
        // their own. The rest (a store write, a rules engine call) go on in
        // a task; its first poll registers its own waker.
        // A panic answering one request must not end this loop (a task of
        // its own would have contained it): it is caught, and the request
        // dropped.
        let polled = std::future::poll_fn(|cx| {
            let poll = std::panic::AssertUnwindSafe(|| answer.as_mut().poll(cx));
            std::task::Poll::Ready(std::panic::catch_unwind(poll))
        })
        .await;
        let Ok(polled) = polled else {
            count("panicked");
            tracing::error!(%from, "answering a request panicked; dropped it");
            continue;
        };
        match polled {
            std::task::Poll::Ready((reply, slot)) => {
                answered_inline += 1;
                if let Some((reply, to)) = reply {
                    match socket.try_send_to(&reply, to) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            tokio::spawn(send_reply(socket, reply, to, slot));
                        }
                        sent => report_send(sent.map(drop), to),
                    }
                }
            }
            std::task::Poll::Pending => {
                tokio::spawn(async move {
                    let (reply, slot) = answer.await;
                    if let Some((reply, to)) = reply {
                        send_reply(socket, reply, to, slot).await;
                    }
                });
            }
        }
    }
}

/// Requests answered inline between two yields of the receive loop.
const INLINE_BEFORE_YIELD: u32 = 16;

/// Sends a reply when the socket has room, then frees its request's slot.
async fn send_reply(
    socket: Arc<UdpSocket>,
    reply: Vec<u8>,
    to: SocketAddr,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    report_send(socket.send_to(&reply, to).await.map(drop), to);
    drop(slot);
}

fn report_send(sent: std::io::Result<()>, to: SocketAddr) {
    if let Err(e) = sent {
        tracing::warn!(%to, error = %e, "sending reply failed");
    }
}

/// Binds every configured interface and answers until shutdown.
pub async fn run(ctx: Arc<ServiceContext>, config: DhcpConfig) -> anyhow::Result<()> {
    let mut sockets = Vec::new();
    let ports: &[(u16, bool)] = match config.mode {
        Mode::Proxy => &[(67, false), (4011, true)],
        Mode::Full { .. } => &[(67, false)],
    };
    for interface in &config.interfaces {
        for &(port, boot_server) in ports {
            let socket = bind(interface, port)
                .with_context(|| format!("binding DHCP port {port} on interface {interface}"))?;
            sockets.push((socket, boot_server));
        }
    }
    // In load-balancing mode this record is also the membership that
    // gives the replica its share and fences its lease writes.
    let registration = ctx.register(fencing::SERVICE, vec![config.server_ip.to_string()]);
    ctx.health.set("dhcp", bootfleet_core::admin::ComponentHealth::Serving).await;
    let (mode, ha) = match config.mode {
        Mode::Full { ha: Ha::LoadBalancing, .. } => ("full", "load-balancing"),
        Mode::Full { .. } => ("full", "hot-standby"),
        Mode::Proxy => ("proxy", "every replica"),
    };
    tracing::info!(interfaces = ?config.interfaces, server_ip = %config.server_ip, mode, ha, "DHCP answering");
    if config.trusted_relays.is_empty() {
        tracing::info!("no dhcp.trusted_relays: relayed requests are dropped");
    }
    let site = Site {
        store: ctx.store.clone(),
        member_id: ctx.config.member_id.clone(),
        election_ttl: ctx.config.store.election_ttl,
        stop: ctx.shutdown.token(),
    };
    let responder = Arc::new(Responder::start(&site, config)?);
    let mut tasks: Vec<_> = sockets
        .into_iter()
        .map(|(socket, boot_server)| {
            tokio::spawn(serve_socket(socket, Arc::clone(&responder), boot_server, ctx.shutdown.token()))
        })
        .collect();
    if responder.config.router_advertisements {
        for interface in responder.config.interfaces.clone() {
            let stop = ctx.shutdown.token();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = router_adverts::serve(interface, stop).await {
                    tracing::error!(error = format!("{e:#}"), "IPv6 router advertisements are off");
                }
            }));
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    if let Err(e) = registration.deregister().await {
        tracing::warn!(error = %e, "deregistering failed; the record lapses with its lease");
    }
    Ok(())
}
