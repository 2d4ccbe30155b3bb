//! The TFTP server with real clients (tftp-hpa, atftp, curl), a raw client
//! for what real clients never send, and a lossy link.

mod clients;
mod lossy;
mod rendered;
mod safety;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bootfleet_test_support::pseudo_random;
use bootfleet_tftp_server::server::{self, TftpConfig, TftpServer};
use bootfleet_tftp_server::wire::{Mode, Packet, Request};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A server on 127.0.0.1 with a prepared root, stopped on drop.
pub(crate) struct Fixture {
    pub(crate) addr: SocketAddr,
    pub(crate) root: PathBuf,
    pub(crate) stop: CancellationToken,
    pub(crate) tracker: TaskTracker,
    _dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub(crate) fn write_files(root: &Path) {
    std::fs::write(root.join("small.bin"), pseudo_random(1000, 1)).unwrap();
    std::fs::write(root.join("exact.bin"), pseudo_random(1024, 2)).unwrap();
    std::fs::write(root.join("empty.bin"), b"").unwrap();
    std::fs::write(root.join("medium.bin"), pseudo_random(3 * 1024 * 1024 + 17, 3)).unwrap();
    std::fs::write(root.join("text.txt"), b"first line\nsecond\rline\n").unwrap();
    std::fs::create_dir_all(root.join("pxelinux.cfg")).unwrap();
    std::fs::write(root.join("pxelinux.cfg/default"), b"DEFAULT linux\n").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("escape")).unwrap();
    std::os::unix::fs::symlink("small.bin", root.join("alias.bin")).unwrap();
}

pub(crate) async fn start_with(adjust: impl FnOnce(&mut TftpConfig)) -> Fixture {
    bootfleet_test_support::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    write_files(&root);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let mut config = TftpConfig::new(addr, root.clone());
    adjust(&mut config);
    let server: Arc<TftpServer> = TftpServer::new(config).unwrap();
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    tokio::spawn(server::serve(socket, server, stop.clone(), tracker.clone()));
    Fixture { addr, root, stop, tracker, _dir: dir }
}

pub(crate) async fn start() -> Fixture {
    start_with(|_| {}).await
}

/// A minimal lockstep client for requests real clients never make.
pub(crate) struct RawClient {
    pub(crate) socket: UdpSocket,
    pub(crate) server: SocketAddr,
}

impl RawClient {
    pub(crate) async fn new(server: SocketAddr) -> Self {
        Self { socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(), server }
    }

    pub(crate) async fn send_raw(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.server).await.unwrap();
    }

    pub(crate) async fn request(&self, filename: &str, options: &[(&str, &str)]) {
        let request = Request {
            filename: filename.into(),
            mode: Mode::Octet,
            options: options.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        };
        self.send_raw(&Packet::Rrq(request).encode()).await;
    }

    /// Next packet and where it came from, within 5 s.
    pub(crate) async fn recv(&self) -> Option<(Packet, SocketAddr)> {
        self.recv_within(Duration::from_secs(5)).await
    }

    /// Next packet within `limit`.
    pub(crate) async fn recv_within(&self, limit: Duration) -> Option<(Packet, SocketAddr)> {
        let mut buf = vec![0u8; 70_000];
        let (len, from) = tokio::time::timeout(limit, self.socket.recv_from(&mut buf)).await.ok()?.ok()?;
        Some((Packet::parse(&buf[..len]).expect("server sends valid packets"), from))
    }

    /// Downloads a file in lockstep (answering an OACK), returning its bytes.
    /// Like a real client, it sends its request again (every second, five
    /// times at most) until the server answers.
    pub(crate) async fn get(&self, filename: &str, options: &[(&str, &str)]) -> Result<Vec<u8>, Packet> {
        let mut first = None;
        for _ in 0..6 {
            self.request(filename, options).await;
            first = self.recv_within(Duration::from_secs(1)).await;
            if first.is_some() {
                break;
            }
        }
        let mut first = Some(first.expect("server answers"));
        let mut out = Vec::new();
        let mut blksize = 512;
        loop {
            let (packet, from) = match first.take() {
                Some(first) => first,
                None => self.recv().await.expect("server answers"),
            };
            match packet {
                Packet::Oack { options } => {
                    if let Some((_, v)) = options.iter().find(|(k, _)| k == "blksize") {
                        blksize = v.parse().unwrap();
                    }
                    self.socket.send_to(&Packet::Ack { block: 0 }.encode(), from).await.unwrap();
                }
                Packet::Data { block, data } => {
                    let last = data.len() < blksize;
                    out.extend_from_slice(&data);
                    self.socket.send_to(&Packet::Ack { block }.encode(), from).await.unwrap();
                    if last {
                        return Ok(out);
                    }
                }
                other => return Err(other),
            }
        }
    }
}

/// A lockstep download (no options) by a client that retransmits its
/// request every `every` until the server answers, as PXE ROMs do, and
/// pauses `hold` before each ACK (a slow client keeps its slot longer).
/// Returns the bytes and how many times the request went out.
pub(crate) async fn download_retrying(
    server: SocketAddr,
    file: &str,
    every: Duration,
    hold: Duration,
) -> Result<(Vec<u8>, u32), String> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let request =
        Packet::Rrq(Request { filename: file.into(), mode: Mode::Octet, options: Vec::new() }).encode();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut buf = vec![0u8; 70_000];
    let mut sent = 0;
    let mut tid = None;
    let mut out = Vec::new();
    let mut expected = 1u16;
    loop {
        if tid.is_none() {
            if tokio::time::Instant::now() > give_up {
                return Err(format!("no answer to {sent} requests"));
            }
            socket.send_to(&request, server).await.map_err(|e| e.to_string())?;
            sent += 1;
        }
        let limit = if tid.is_none() { every } else { Duration::from_secs(10) };
        let Ok(received) = tokio::time::timeout(limit, socket.recv_from(&mut buf)).await else {
            if tid.is_some() {
                return Err("the transfer stalled".into());
            }
            continue;
        };
        let (len, from) = received.map_err(|e| e.to_string())?;
        if *tid.get_or_insert(from) != from {
            return Err(format!("a second transfer port {from} answered"));
        }
        match Packet::parse(&buf[..len]).map_err(|e| e.to_string())? {
            Packet::Data { block, data } if block == expected => {
                out.extend_from_slice(&data);
                tokio::time::sleep(hold).await;
                socket.send_to(&Packet::Ack { block }.encode(), from).await.map_err(|e| e.to_string())?;
                if data.len() < 512 {
                    return Ok((out, sent));
                }
                expected = expected.wrapping_add(1);
            }
            Packet::Data { .. } => {}
            other => return Err(format!("unexpected {other:?}")),
        }
    }
}
