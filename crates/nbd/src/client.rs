//! The client side of the fixed newstyle handshake, sans IO: what a
//! client that hands its socket to the kernel (`bootfleet-nbd-attach`)
//! must learn before the transmission phase.
//!
//! The machine sends `NBD_OPT_GO` for one export, asking for
//! `NBD_INFO_BLOCK_SIZE`, and finishes with the export's size,
//! transmission flags and block sizes once the server acknowledges.
//! Bytes in ([`ClientHandshake::receive`]), bytes out
//! ([`ClientHandshake::take_output`]); the caller owns the socket.
//!
//! Choices worth knowing: no `NBD_OPT_STRUCTURED_REPLY` (the kernel's
//! client reads simple replies only); no fallback to
//! `NBD_OPT_EXPORT_NAME` for servers without `NBD_OPT_GO` (the streamer
//! and every maintained server have it, and `EXPORT_NAME` cannot say why
//! it refuses); replies are bounded in size, so a hostile server cannot
//! make the client buffer without end.

use crate::wire::{self, CLIENT_FIXED_NEWSTYLE, CLIENT_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES};

/// The server's greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
const GREETING_LEN: usize = 18;
/// An option reply's header: magic, option, type, length.
const REPLY_HEADER_LEN: usize = 20;
/// The largest option reply payload accepted (an error message or a
/// description at most [`wire::MAX_STRING_LEN`], plus room).
const MAX_REPLY_PAYLOAD: usize = wire::MAX_STRING_LEN + 64;

/// What the server said about the export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportDetails {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags (`wire::transmission`).
    pub transmission_flags: u16,
    /// Minimum block size (1 when the server did not say).
    pub min_block: u32,
    /// Preferred block size (4096 when the server did not say).
    pub preferred_block: u32,
    /// Maximum payload (32 MiB when the server did not say, as the
    /// protocol assumes).
    pub max_payload: u32,
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer does not greet as an NBD server.
    #[error("not an NBD server (greeting magic {magic:#018x})")]
    NotNbd {
        /// The first eight bytes received.
        magic: u64,
    },
    /// The server speaks oldstyle or plain newstyle only.
    #[error("the server does not speak fixed newstyle (handshake flags {flags:#06x})")]
    NotFixedNewstyle {
        /// The handshake flags it sent.
        flags: u16,
    },
    /// The export name cannot be sent.
    #[error("export name of {len} bytes (at most {max})")]
    NameTooLong {
        /// Its length.
        len: usize,
        /// The protocol's limit.
        max: usize,
    },
    /// The server refused the export.
    #[error("the server refused export {export:?}: error {code:#x} {message:?}")]
    Refused {
        /// The export asked for.
        export: String,
        /// `NBD_REP_ERR_*`.
        code: u32,
        /// The server's explanation, if any.
        message: String,
    },
    /// The server broke the protocol.
    #[error("malformed handshake reply: {0}")]
    Malformed(&'static str),
}

/// Where the handshake stands after some input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// More bytes from the server are needed (send
    /// [`ClientHandshake::take_output`] first).
    NeedInput,
    /// The transmission phase begins: nothing more to read for the
    /// handshake, and the bytes after the acknowledgement (none, from a
    /// correct server) belong to it.
    Done(ExportDetails),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Greeting,
    Replies,
    Done,
}

/// One handshake for one export.
#[derive(Debug)]
pub struct ClientHandshake {
    export: String,
    state: State,
    input: Vec<u8>,
    output: Vec<u8>,
    size_and_flags: Option<(u64, u16)>,
    block_sizes: Option<(u32, u32, u32)>,
}

impl ClientHandshake {
    /// A handshake that will ask for `export`.
    pub fn new(export: &str) -> Result<Self, HandshakeError> {
        if export.len() > wire::MAX_STRING_LEN {
            return Err(HandshakeError::NameTooLong { len: export.len(), max: wire::MAX_STRING_LEN });
        }
        Ok(Self {
            export: export.to_owned(),
            state: State::Greeting,
            input: Vec::new(),
            output: Vec::new(),
            size_and_flags: None,
            block_sizes: None,
        })
    }

    /// Bytes to send to the server now (empty when none).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Takes `bytes` from the server. After `Done` or an error the
    /// machine takes nothing more.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<Progress, HandshakeError> {
        if self.state == State::Done {
            return Err(HandshakeError::Malformed("input after the handshake ended"));
        }
        self.input.extend_from_slice(bytes);
        if self.state == State::Greeting {
            if self.input.len() < GREETING_LEN {
                return Ok(Progress::NeedInput);
            }
            self.greeting()?;
            self.input.drain(..GREETING_LEN);
            self.state = State::Replies;
        }
        while self.input.len() >= REPLY_HEADER_LEN {
            let header = &self.input[..REPLY_HEADER_LEN];
            if wire::be_u64(&header[0..8]) != wire::OPTION_REPLY_MAGIC {
                return Err(HandshakeError::Malformed("option reply magic"));
            }
            if wire::be_u32(&header[8..12]) != wire::option::GO {
                return Err(HandshakeError::Malformed("a reply to an option not sent"));
            }
            let kind = wire::be_u32(&header[12..16]);
            let len = wire::be_u32(&header[16..20]) as usize;
            if len > MAX_REPLY_PAYLOAD {
                return Err(HandshakeError::Malformed("option reply longer than any valid one"));
            }
            if self.input.len() < REPLY_HEADER_LEN + len {
                break;
            }
            let payload: Vec<u8> = self.input[REPLY_HEADER_LEN..REPLY_HEADER_LEN + len].to_vec();
            self.input.drain(..REPLY_HEADER_LEN + len);
            if let Some(details) = self.reply(kind, &payload)? {
                self.state = State::Done;
                return Ok(Progress::Done(details));
            }
        }
        Ok(Progress::NeedInput)
    }

    /// Checks the greeting and queues the client flags and `NBD_OPT_GO`.
    fn greeting(&mut self) -> Result<(), HandshakeError> {
        let magic = wire::be_u64(&self.input[0..8]);
        if magic != wire::INIT_MAGIC || wire::be_u64(&self.input[8..16]) != wire::OPTION_MAGIC {
            return Err(HandshakeError::NotNbd { magic });
        }
        let flags = wire::be_u16(&self.input[16..18]);
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(HandshakeError::NotFixedNewstyle { flags });
        }
        let mut client_flags = CLIENT_FIXED_NEWSTYLE;
        if flags & FLAG_NO_ZEROES != 0 {
            client_flags |= CLIENT_NO_ZEROES;
        }
        self.output.extend_from_slice(&client_flags.to_be_bytes());
        // NBD_OPT_GO: name length, name, one information request.
        let name = self.export.as_bytes();
        let data_len = 4 + name.len() + 2 + 2;
        self.output.extend_from_slice(&wire::OPTION_MAGIC.to_be_bytes());
        self.output.extend_from_slice(&wire::option::GO.to_be_bytes());
        self.output.extend_from_slice(&(data_len as u32).to_be_bytes());
        self.output.extend_from_slice(&(name.len() as u32).to_be_bytes());
        self.output.extend_from_slice(name);
        self.output.extend_from_slice(&1u16.to_be_bytes());
        self.output.extend_from_slice(&wire::info::BLOCK_SIZE.to_be_bytes());
        Ok(())
    }

    /// Handles one reply to `NBD_OPT_GO`; the details once acknowledged.
    fn reply(&mut self, kind: u32, payload: &[u8]) -> Result<Option<ExportDetails>, HandshakeError> {
        match kind {
            wire::reply::INFO => {
                if payload.len() < 2 {
                    return Err(HandshakeError::Malformed("NBD_REP_INFO without a type"));
                }
                match wire::be_u16(&payload[0..2]) {
                    wire::info::EXPORT => {
                        if payload.len() != 12 {
                            return Err(HandshakeError::Malformed("NBD_INFO_EXPORT length"));
                        }
                        self.size_and_flags =
                            Some((wire::be_u64(&payload[2..10]), wire::be_u16(&payload[10..12])));
                    }
                    wire::info::BLOCK_SIZE => {
                        if payload.len() != 14 {
                            return Err(HandshakeError::Malformed("NBD_INFO_BLOCK_SIZE length"));
                        }
                        let min = wire::be_u32(&payload[2..6]);
                        let preferred = wire::be_u32(&payload[6..10]);
                        let max = wire::be_u32(&payload[10..14]);
                        if !min.is_power_of_two() || !preferred.is_power_of_two() || min > preferred {
                            return Err(HandshakeError::Malformed("NBD_INFO_BLOCK_SIZE values"));
                        }
                        self.block_sizes = Some((min, preferred, max));
                    }
                    // Name, description, or a type from a newer server.
                    _ => {}
                }
                Ok(None)
            }
            wire::reply::ACK => {
                let Some((size, transmission_flags)) = self.size_and_flags else {
                    return Err(HandshakeError::Malformed("NBD_REP_ACK before NBD_INFO_EXPORT"));
                };
                let (min_block, preferred_block, max_payload) =
                    self.block_sizes.unwrap_or((1, 4096, 32 << 20));
                Ok(Some(ExportDetails { size, transmission_flags, min_block, preferred_block, max_payload }))
            }
            code if code & (1 << 31) != 0 => Err(HandshakeError::Refused {
                export: self.export.clone(),
                code,
                message: String::from_utf8_lossy(payload).into_owned(),
            }),
            _ => Err(HandshakeError::Malformed("unexpected reply type to NBD_OPT_GO")),
        }
    }
}

#[cfg(test)]
mod tests;
