//! The failover pause as a client sees it: two replicas of one server
//! serve the golden file; a client reads 4 KiB blocks from the first, the
//! first is SIGKILLed, and the pause runs from the kill to the first read
//! the second replica answers. The client reconnects the way
//! `bootfleet-nbd-attach` does (the crate's client handshake, `NBD_OPT_GO`,
//! then simple-reply reads), so this is the userspace share of a diskless
//! machine's pause; the kernel's share (requests held, requeued, resent)
//! is measured by the VM test `e2e_vdisk_failover`, which prints it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bootfleet_nbd::client::{ClientHandshake, Progress};
use bootfleet_nbd::wire::{RequestHeader, SIMPLE_REPLY_LEN, SimpleReply, command};

use crate::servers::Server;

const BLOCK: usize = 4096;

/// A client connection in the transmission phase.
struct Connection {
    stream: TcpStream,
    size: u64,
    cookie: u64,
}

impl Connection {
    fn open(port: u16) -> std::io::Result<Self> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut handshake = ClientHandshake::new("golden").map_err(std::io::Error::other)?;
        let mut buffer = [0u8; 4096];
        loop {
            stream.write_all(&handshake.take_output())?;
            let len = stream.read(&mut buffer)?;
            if len == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if let Progress::Done(details) =
                handshake.receive(&buffer[..len]).map_err(std::io::Error::other)?
            {
                return Ok(Self { stream, size: details.size, cookie: 0 });
            }
        }
    }

    /// Reads block `n` (wrapping around the export).
    fn read_block(&mut self, n: u64) -> std::io::Result<()> {
        self.cookie += 1;
        let offset = (n * BLOCK as u64) % (self.size - BLOCK as u64);
        let header = RequestHeader {
            flags: 0,
            kind: command::READ,
            cookie: self.cookie,
            offset,
            length: BLOCK as u32,
        };
        self.stream.write_all(&header.encode())?;
        let mut reply = [0u8; SIMPLE_REPLY_LEN];
        self.stream.read_exact(&mut reply)?;
        match SimpleReply::parse(&reply) {
            Some(SimpleReply { error: 0, cookie }) if cookie == self.cookie => {}
            _ => return Err(std::io::Error::other("bad reply")),
        }
        let mut data = [0u8; BLOCK];
        self.stream.read_exact(&mut data)
    }
}

/// Milliseconds from SIGKILL of the replica serving the client to the
/// first read the other replica answers; `None` (with a note) when a
/// server does not start or the client fails otherwise.
pub(crate) fn pause(start: &dyn Fn(usize) -> Option<Server>) -> Option<f64> {
    let first = start(1)?;
    let second = start(2)?;
    let mut connection = Connection::open(first.port).ok()?;
    for n in 0..256 {
        connection.read_block(n).ok()?;
    }
    let killed = Instant::now();
    // Server's drop: SIGKILL, then reaped.
    drop(first);
    let mut n = 256;
    while connection.read_block(n).is_ok() {
        // Replies already on their way before the kill.
        n += 1;
    }
    let mut connection = Connection::open(second.port).ok()?;
    connection.read_block(n).ok()?;
    Some(killed.elapsed().as_secs_f64() * 1000.0)
}
