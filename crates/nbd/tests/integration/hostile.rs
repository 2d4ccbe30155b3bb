//! What real clients never send: garbage, lies about lengths, requests
//! outside the export, more connections than allowed, silence; and a
//! server stop with a session open. Each answer is an error or a closed
//! connection, and the server goes on serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use std::sync::Arc;

use bootfleet_nbd::export::{Client, Export, Exports};
use bootfleet_nbd::options::ExportInfo;
use bootfleet_nbd::session::{Listing, Refusal};
use bootfleet_nbd::static_exports::StaticExports;
use bootfleet_nbd::wire::{OPTION_MAGIC, RequestHeader, command, option, reply};

use crate::{Fixture, GOLDEN_SIZE, run_ok};

/// A client speaking raw NBD over a blocking socket.
struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    /// Connected, greeting read.
    fn connect(fx: &Fixture) -> Self {
        let stream = TcpStream::connect(fx.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut client = Self { stream };
        let greeting = client.read(18);
        assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
        client
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn read(&mut self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf).unwrap();
        buf
    }

    /// Whether the server closed the connection (reads end, or fail
    /// because it reset it) rather than leaving it open.
    fn closed_by_server(&mut self) -> bool {
        let mut buf = [0u8; 1];
        match self.stream.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }

    fn option(&mut self, option: u32, data: &[u8]) {
        let mut bytes = OPTION_MAGIC.to_be_bytes().to_vec();
        bytes.extend_from_slice(&option.to_be_bytes());
        bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
        bytes.extend_from_slice(data);
        self.send(&bytes);
    }

    /// One option reply: (type, data).
    fn option_reply(&mut self) -> (u32, Vec<u8>) {
        let header = self.read(20);
        let kind = u32::from_be_bytes(header[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(header[16..20].try_into().unwrap()) as usize;
        (kind, self.read(len))
    }

    /// Fixed newstyle, GO on `name` with simple replies; the export size.
    fn go(&mut self, name: &str) -> u64 {
        self.send(&1u32.to_be_bytes());
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        self.option(option::GO, &data);
        let mut size = None;
        loop {
            match self.option_reply() {
                (reply::INFO, info) if info[..2] == [0, 0] => {
                    size = Some(u64::from_be_bytes(info[2..10].try_into().unwrap()));
                }
                (reply::INFO, _) => {}
                (reply::ACK, _) => return size.expect("NBD_INFO_EXPORT before ACK"),
                other => panic!("GO failed: {other:?}"),
            }
        }
    }

    fn request(&mut self, kind: u16, cookie: u64, offset: u64, length: u32) {
        self.send(&RequestHeader { flags: 0, kind, cookie, offset, length }.encode());
    }

    /// A simple reply: (error, cookie).
    fn simple_reply(&mut self) -> (u32, u64) {
        let reply = self.read(16);
        assert_eq!(reply[..4], [0x67, 0x44, 0x66, 0x98], "simple reply magic");
        (
            u32::from_be_bytes(reply[4..8].try_into().unwrap()),
            u64::from_be_bytes(reply[8..16].try_into().unwrap()),
        )
    }

    /// A read that must succeed; its data.
    fn read_ok(&mut self, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
        self.request(command::READ, cookie, offset, length);
        assert_eq!(self.simple_reply(), (0, cookie));
        self.read(length as usize)
    }
}

/// The server answers a well-behaved client after whatever came before.
fn still_serves(fx: &Fixture) {
    run_ok(Command::new("nbdinfo").arg(fx.uri("small.img")));
}

#[test]
fn garbage_in_the_handshake_closes_only_that_connection() {
    let fx = Fixture::start();
    let mut flags = RawClient::connect(&fx);
    flags.send(&0xffff_ffffu32.to_be_bytes());
    assert!(flags.closed_by_server(), "unknown client flags");

    let mut magic = RawClient::connect(&fx);
    magic.send(&1u32.to_be_bytes());
    magic.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(magic.closed_by_server(), "no IHAVEOPT");

    let mut unknown = RawClient::connect(&fx);
    unknown.send(&1u32.to_be_bytes());
    unknown.option(0x7777, b"whatever");
    assert_eq!(unknown.option_reply().0, reply::ERR_UNSUP);
    // The connection goes on: a later GO works.
    assert_eq!(unknown.go_after_flags("golden"), GOLDEN_SIZE as u64);
    still_serves(&fx);
}

impl RawClient {
    /// GO when the client flags were sent already.
    fn go_after_flags(&mut self, name: &str) -> u64 {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        self.option(option::GO, &data);
        let mut size = 0;
        loop {
            match self.option_reply() {
                (reply::INFO, info) if info[..2] == [0, 0] => {
                    size = u64::from_be_bytes(info[2..10].try_into().unwrap());
                }
                (reply::INFO, _) => {}
                (reply::ACK, _) => return size,
                other => panic!("GO failed: {other:?}"),
            }
        }
    }
}

#[test]
fn oversized_lengths_get_errors_not_buffers() {
    let fx = Fixture::start();
    // Option data longer than the server buffers: read, dropped, refused.
    let mut client = RawClient::connect(&fx);
    client.send(&1u32.to_be_bytes());
    client.option(option::GO, &vec![b'x'; 64 * 1024]);
    assert_eq!(client.option_reply().0, reply::ERR_TOO_BIG);
    assert_eq!(client.go_after_flags("cache/hostile"), GOLDEN_SIZE as u64);

    // A read longer than the maximum payload, then a write with such a
    // payload (33 MiB, sent in full): EINVAL each, and the session goes on.
    client.request(command::READ, 1, 0, 64 << 20);
    assert_eq!(client.simple_reply(), (22, 1));
    let length = (32 << 20) + (1 << 20);
    client.request(command::WRITE, 2, 0, length);
    client.send(&vec![0u8; length as usize]);
    assert_eq!(client.simple_reply(), (22, 2));
    // A write past the end: ENOSPC.
    client.request(command::WRITE, 3, GOLDEN_SIZE as u64 - 2, 4);
    client.send(b"tail");
    assert_eq!(client.simple_reply(), (28, 3));
    assert_eq!(client.read_ok(4, 0, 512).len(), 512);
    assert_eq!(fx.metrics.snapshot().overlay_bytes, 0, "nothing was written");

    // An EXPORT_NAME longer than any name cannot be answered: closed.
    let mut export_name = RawClient::connect(&fx);
    export_name.send(&1u32.to_be_bytes());
    let mut header = OPTION_MAGIC.to_be_bytes().to_vec();
    header.extend_from_slice(&option::EXPORT_NAME.to_be_bytes());
    header.extend_from_slice(&u32::MAX.to_be_bytes());
    export_name.send(&header);
    assert!(export_name.closed_by_server());
    still_serves(&fx);
}

#[test]
fn requests_outside_the_export_or_its_permissions_get_errors() {
    let fx = Fixture::start();
    let golden_sha = crate::sha256_file(&fx.golden);
    let mut client = RawClient::connect(&fx);
    let size = client.go("golden");
    let golden = std::fs::read(&fx.golden).unwrap();
    client.request(command::READ, 1, size - 10, 100);
    assert_eq!(client.simple_reply(), (22, 1), "EINVAL: read beyond the end");
    client.request(command::READ, 2, u64::MAX - 5, 100);
    assert_eq!(client.simple_reply(), (22, 2), "EINVAL: offset + length overflows");
    client.request(command::WRITE, 3, 0, 4);
    client.send(b"evil");
    assert_eq!(client.simple_reply(), (1, 3), "EPERM: write to a read-only export");
    client.request(command::TRIM, 4, 0, 4096);
    assert_eq!(client.simple_reply(), (1, 4), "EPERM: trim on a read-only export");
    client.request(0x42, 5, 0, 0);
    assert_eq!(client.simple_reply(), (22, 5), "EINVAL: unknown command");
    // Pipelined: several reads in one go, answered with the right data.
    for cookie in 10..20u64 {
        client.request(command::READ, cookie, cookie * 1000, 1000);
    }
    let mut seen = Vec::new();
    for _ in 10..20 {
        let (error, cookie) = client.simple_reply();
        assert_eq!(error, 0);
        let data = client.read(1000);
        assert_eq!(data, golden[cookie as usize * 1000..cookie as usize * 1000 + 1000]);
        seen.push(cookie);
    }
    seen.sort_unstable();
    assert_eq!(seen, (10..20).collect::<Vec<_>>());
    assert_eq!(client.read_ok(30, size - 1, 1), golden[golden.len() - 1..]);
    // A request header with a wrong magic loses framing: closed.
    client.send(&[0x55; 28]);
    assert!(client.closed_by_server());
    assert_eq!(crate::sha256_file(&fx.golden), golden_sha);
    still_serves(&fx);
}

#[test]
fn connections_over_the_cap_and_silent_clients_are_closed() {
    let fx = Fixture::start_with(|config| {
        config.max_connections = 2;
        config.handshake_timeout = Duration::from_secs(1);
    });
    let mut first = RawClient::connect(&fx);
    let second = RawClient::connect(&fx);
    // The third is closed without a greeting.
    let mut third = TcpStream::connect(fx.addr).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 18];
    assert_eq!(third.read(&mut buf).unwrap_or(0), 0);
    assert_eq!(fx.metrics.snapshot().connections_refused, 1);
    // The two that never finish their handshake are closed when its time
    // is up, and their slots free up.
    assert!(first.closed_by_server());
    drop(second);
    crate::wait_until("connections never ended", || fx.server.connections() == 0);
    still_serves(&fx);
}

/// Exports that take their time to open, as a replica hashing a large
/// file it has not verified yet does.
struct SlowToOpen(StaticExports);

#[async_trait::async_trait]
impl Exports for SlowToOpen {
    async fn list(&self, client: &Client) -> Vec<Listing> {
        self.0.list(client).await
    }

    async fn describe(&self, name: &str, client: &Client) -> Result<ExportInfo, Refusal> {
        self.0.describe(name, client).await
    }

    async fn open(&self, name: &str, client: &Client) -> Result<Arc<dyn Export>, Refusal> {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        self.0.open(name, client).await
    }
}

#[test]
fn the_handshake_timeout_counts_the_client_not_the_export_lookup() {
    let fx = Fixture::start_wrapped(
        |config| config.handshake_timeout = Duration::from_secs(1),
        |exports| Arc::new(SlowToOpen(exports)),
    );
    // Opening takes longer than the client is given: it is not the client's time.
    run_ok(Command::new("nbdinfo").arg(fx.uri("small.img")));
}

#[test]
fn a_client_that_stops_taking_replies_is_dropped() {
    let fx = Fixture::start_with(|config| config.reply_timeout = Duration::from_secs(1));
    let mut client = RawClient::connect(&fx);
    client.go("golden");
    // 96 MiB of reads asked for and none of it read: the socket buffers
    // fill, a reply cannot be written, and the connection (with its share
    // of the memory budget) is given up instead of waiting for ever.
    for cookie in 0..12 {
        client.request(command::READ, cookie, 0, 8 << 20);
    }
    crate::wait_until("the stalled connection was never dropped", || fx.server.connections() == 0);
    assert_eq!(fx.metrics.snapshot().sessions_active, 0);
    still_serves(&fx);
}

#[test]
fn a_stop_answers_what_is_in_flight_then_closes_sessions() {
    let fx = Fixture::start();
    let mut client = RawClient::connect(&fx);
    client.go("golden");
    assert_eq!(client.read_ok(1, 0, 4096).len(), 4096);
    assert_eq!(fx.metrics.snapshot().sessions_active, 1);
    fx.stop.cancel();
    assert!(client.closed_by_server());
    fx.tracker.close();
    fx.block_on(async { tokio::time::timeout(Duration::from_secs(10), fx.tracker.wait()).await })
        .expect("every connection task ends after a stop");
    assert_eq!(fx.metrics.snapshot().sessions_active, 0);
    // The listener closes too (the accept loop ends on its own task).
    crate::wait_until("the listener stayed open", || TcpStream::connect(fx.addr).is_err());
}
