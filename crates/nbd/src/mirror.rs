//! A write cache mirrored to a second replica, the core of the
//! `server-persistent` write cache: every change a client makes is applied
//! here and on the mirror before the client hears it succeeded, so the
//! death of either replica loses no acknowledged write, and the client can
//! carry on from the mirror.
//!
//! [`MirroredExport`] wraps the local export (the host's overlay) and a
//! [`MirrorLink`]: an NBD connection to the same host's overlay on the
//! mirror replica, negotiated with [`crate::client`]. Writes, trims,
//! write-zeroes and flushes go to the local export, then to the mirror
//! (with the client's FUA flag), and return once both answered; reads are
//! local.
//!
//! Choices worth knowing:
//! - Every write is mirrored before it is acknowledged, FUA or not
//!   (stronger than "before the next flush"; simpler, and no write is ever
//!   acknowledged on one replica only).
//! - Writes are applied in one order on both sides: one at a time, under
//!   a lock. Concurrent writes to one block would otherwise be free to
//!   land in different orders on the two replicas.
//! - When the mirror fails, the export goes on alone (degraded) rather
//!   than failing the client's writes: [`MirroredExport::mirroring`] says
//!   so, and the caller reports it. Writes acknowledged from then on live
//!   on this replica only until a new mirror is synced (not built yet).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::client::{ClientHandshake, ExportDetails, HandshakeError, Progress};
use crate::export::{Export, ExportError};
use crate::options::ExportInfo;
use crate::wire::{RequestHeader, SIMPLE_REPLY_LEN, SimpleReply, command, command_flag, transmission};

/// Why a mirror cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MirrorError {
    /// The mirror replica did not answer.
    #[error("connecting to the mirror {peer}")]
    Connect {
        /// Its address.
        peer: SocketAddr,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The handshake failed (a refusal included).
    #[error("negotiating with the mirror")]
    Handshake(#[from] HandshakeError),
    /// The mirror's export cannot take writes.
    #[error("the mirror's export is read-only")]
    ReadOnly,
    /// The mirror cannot do what clients of the local export may ask.
    #[error("the mirror's export does not take {0}")]
    Unsupported(&'static str),
    /// The two sides are not the same disk.
    #[error("the mirror has {mirror} bytes, the local export {local}")]
    SizeMismatch {
        /// The local export's size.
        local: u64,
        /// The mirror's.
        mirror: u64,
    },
    /// The connection broke.
    #[error("the mirror connection failed")]
    Io(#[from] std::io::Error),
    /// The mirror answered a request with an error.
    #[error("the mirror refused a request: NBD error {0}")]
    Refused(u32),
    /// The mirror's reply did not match the request.
    #[error("the mirror's reply could not be framed")]
    Framing,
}

/// An NBD connection to the mirror's copy of the overlay, one request at a
/// time (simple replies: no structured replies are negotiated).
#[derive(Debug)]
pub struct MirrorLink {
    stream: TcpStream,
    details: ExportDetails,
    next_cookie: u64,
}

impl MirrorLink {
    /// Connects to `peer` and opens `export` (within `timeout` for each
    /// step; requests later wait as long as the mirror takes).
    pub fn connect(peer: SocketAddr, export: &str, timeout: Duration) -> Result<Self, MirrorError> {
        let connect_error = |source| MirrorError::Connect { peer, source };
        let mut stream = TcpStream::connect_timeout(&peer, timeout).map_err(connect_error)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut handshake = ClientHandshake::new(export)?;
        let mut buffer = [0u8; 4096];
        let details = loop {
            let output = handshake.take_output();
            stream.write_all(&output)?;
            let len = stream.read(&mut buffer)?;
            if len == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            if let Progress::Done(details) = handshake.receive(&buffer[..len])? {
                break details;
            }
        };
        if details.transmission_flags & transmission::READ_ONLY != 0 {
            return Err(MirrorError::ReadOnly);
        }
        stream.set_read_timeout(None)?;
        stream.set_write_timeout(None)?;
        Ok(Self { stream, details, next_cookie: 1 })
    }

    /// What the mirror said about its export.
    pub fn details(&self) -> &ExportDetails {
        &self.details
    }

    /// Sends one request (with `payload` for a write) and waits for its
    /// reply. A FUA the mirror does not take becomes a flush after it.
    fn request(&mut self, header: RequestHeader, payload: &[u8]) -> Result<(), MirrorError> {
        let fua = header.flags & command_flag::FUA != 0;
        if fua && self.details.transmission_flags & transmission::SEND_FUA == 0 {
            self.send(RequestHeader { flags: header.flags & !command_flag::FUA, ..header }, payload)?;
            return self.send(
                RequestHeader { flags: 0, kind: command::FLUSH, cookie: 0, offset: 0, length: 0 },
                &[],
            );
        }
        self.send(header, payload)
    }

    fn send(&mut self, header: RequestHeader, payload: &[u8]) -> Result<(), MirrorError> {
        let header = RequestHeader { cookie: self.next_cookie, ..header };
        self.next_cookie += 1;
        self.stream.write_all(&header.encode())?;
        self.stream.write_all(payload)?;
        let mut reply = [0u8; SIMPLE_REPLY_LEN];
        self.stream.read_exact(&mut reply)?;
        let reply = SimpleReply::parse(&reply).ok_or(MirrorError::Framing)?;
        if reply.cookie != header.cookie {
            return Err(MirrorError::Framing);
        }
        if reply.error != 0 {
            return Err(MirrorError::Refused(reply.error));
        }
        Ok(())
    }
}

/// A local export whose changes are mirrored (see the module docs).
#[derive(Debug)]
pub struct MirroredExport {
    local: std::sync::Arc<dyn Export>,
    /// `None` once the mirror failed.
    link: Mutex<Option<MirrorLink>>,
    mirrored: AtomicU64,
}

impl MirroredExport {
    /// Mirrors `local`'s changes over `link`; both must be the same size.
    pub fn new(local: std::sync::Arc<dyn Export>, link: MirrorLink) -> Result<Self, MirrorError> {
        let info = local.info();
        if link.details.size != info.size {
            return Err(MirrorError::SizeMismatch { local: info.size, mirror: link.details.size });
        }
        let offers = |flag| link.details.transmission_flags & flag != 0;
        if info.trim && !offers(transmission::SEND_TRIM) {
            return Err(MirrorError::Unsupported("NBD_CMD_TRIM"));
        }
        if info.write_zeroes && !offers(transmission::SEND_WRITE_ZEROES) {
            return Err(MirrorError::Unsupported("NBD_CMD_WRITE_ZEROES"));
        }
        Ok(Self { local, link: Mutex::new(Some(link)), mirrored: AtomicU64::new(0) })
    }

    /// Whether changes still reach the mirror.
    pub fn mirroring(&self) -> bool {
        self.link.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_some()
    }

    /// Changes the mirror acknowledged so far.
    pub fn mirrored_requests(&self) -> u64 {
        self.mirrored.load(Ordering::Relaxed)
    }

    /// Applies `change` locally, then sends `header` (and `payload`) to
    /// the mirror, holding the lock across both so both sides see one
    /// order.
    fn change(
        &self,
        header: RequestHeader,
        payload: &[u8],
        change: impl FnOnce(&dyn Export) -> Result<(), ExportError>,
    ) -> Result<(), ExportError> {
        let mut link = self.link.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        change(self.local.as_ref())?;
        if let Some(mirror) = link.as_mut() {
            match mirror.request(header, payload) {
                Ok(()) => {
                    self.mirrored.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::warn!(cause = %error, "the write cache's mirror failed; going on without it");
                    *link = None;
                }
            }
        }
        Ok(())
    }
}

fn header(kind: u16, fua: bool, offset: u64, length: u64) -> RequestHeader {
    let flags = if fua { command_flag::FUA } else { 0 };
    // Lengths are bounded by the session's maximum payload (a u32).
    RequestHeader { flags, kind, cookie: 0, offset, length: u32::try_from(length).unwrap_or(u32::MAX) }
}

impl Export for MirroredExport {
    fn info(&self) -> ExportInfo {
        // One writer at a time keeps the two sides in one order.
        ExportInfo { multi_conn: false, ..self.local.info() }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ExportError> {
        self.local.read_at(buf, offset)
    }

    fn try_read_at(&self, buf: &mut [u8], offset: u64) -> Option<Result<(), ExportError>> {
        self.local.try_read_at(buf, offset)
    }

    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> Result<(), ExportError> {
        let request = header(command::WRITE, fua, offset, data.len() as u64);
        self.change(request, data, |local| local.write_at(data, offset, fua))
    }

    fn flush(&self) -> Result<(), ExportError> {
        self.change(header(command::FLUSH, false, 0, 0), &[], |local| local.flush())
    }

    fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<(), ExportError> {
        self.change(header(command::TRIM, fua, offset, length), &[], |local| local.trim(offset, length, fua))
    }

    fn write_zeroes(&self, offset: u64, length: u64, fua: bool, no_hole: bool) -> Result<(), ExportError> {
        let mut request = header(command::WRITE_ZEROES, fua, offset, length);
        if no_hole {
            request.flags |= command_flag::NO_HOLE;
        }
        self.change(request, &[], |local| local.write_zeroes(offset, length, fua, no_hole))
    }
}
