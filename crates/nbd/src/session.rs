//! One NBD connection as a state machine: bytes and events in, bytes to
//! send and things to do out. No sockets, no files, no clocks.
//!
//! The shell reads exactly [`Session::needed`] bytes and hands them to
//! [`Session::receive`]; when a write's payload is due,
//! [`Session::payload_due`] says how long it is, so the shell can read it
//! into a buffer of its own and pass that buffer in (the machine only
//! counts payload bytes; it never copies them). Everything the server
//! sends is produced here: the shell only adds read data after the header
//! [`Session::complete`] encodes.
//!
//! Limits the machine enforces on its own: option data is buffered only
//! up to [`MAX_OPTION_DATA`] (longer options are read and dropped), the
//! number of options per handshake is capped, and no new request header
//! is read while [`Limits::max_in_flight`] requests or
//! [`Limits::max_in_flight_bytes`] bytes are outstanding, so a client that
//! pipelines faster than the export answers is slowed by TCP, not by
//! memory.

use std::collections::HashMap;

use crate::options::{ExportInfo, InfoRequest};
use crate::request::{self, Checked, Negotiated, Op, Rejection};
use crate::wire::{self, Errno, OPTION_HEADER_LEN, REQUEST_HEADER_LEN, RequestHeader, be_u32, chunk};

/// Option data longer than this is not buffered: enough for the longest
/// export name and every information type.
pub const MAX_OPTION_DATA: usize = wire::MAX_STRING_LEN + 1024;

/// Payload and option bytes dropped are read in pieces of at most this.
pub const DISCARD_PIECE: u64 = 16 * 1024;

/// Per-connection bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest read or write payload (advertised in `NBD_INFO_BLOCK_SIZE`).
    pub max_payload: u32,
    /// Requests outstanding before the machine stops reading.
    pub max_in_flight: usize,
    /// Read and write bytes outstanding before the machine stops reading.
    pub max_in_flight_bytes: u64,
    /// Options a client may send before it is cut off.
    pub max_options: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload: 32 * 1024 * 1024,
            max_in_flight: 64,
            max_in_flight_bytes: 64 * 1024 * 1024,
            max_options: 256,
        }
    }
}

/// Why the shell is asked for an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// `NBD_OPT_INFO`: describe it; nothing is opened.
    Info,
    /// `NBD_OPT_GO`: open it for this session.
    Go,
    /// `NBD_OPT_EXPORT_NAME`: open it; a refusal ends the connection.
    ExportName,
}

/// Why an export lookup failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No such export (`NBD_REP_ERR_UNKNOWN`).
    Unknown,
    /// It exists, but not for this client (`NBD_REP_ERR_POLICY`).
    Policy(String),
    /// The server is stopping (`NBD_REP_ERR_SHUTDOWN`).
    Shutdown,
}

/// One entry of `NBD_OPT_LIST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    /// Name as clients ask for it.
    pub name: String,
    /// Text for humans (may be empty).
    pub description: String,
}

/// A checked request for the shell to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// The machine's handle for it; pass it back to [`Session::complete`].
    pub id: u64,
    /// What to do.
    pub op: Op,
    /// Make the effect durable before answering (`NBD_CMD_FLAG_FUA`).
    pub fua: bool,
}

/// Why a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// `NBD_OPT_ABORT` or `NBD_CMD_DISC`.
    ClientDone,
    /// The client broke the protocol in a way that ends framing.
    Protocol(&'static str),
    /// `NBD_OPT_EXPORT_NAME` for an export that cannot be served.
    ExportRefused,
    /// More options than [`Limits::max_options`].
    TooManyOptions,
}

/// Something the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send these bytes.
    Send(Vec<u8>),
    /// Look up an export, then call [`Session::on_lookup`].
    Lookup {
        /// Name the client gave.
        name: String,
        /// What the answer is for.
        purpose: Purpose,
    },
    /// List the exports, then call [`Session::on_list`].
    List,
    /// Run a request, then call [`Session::complete`].
    Execute(Command),
    /// Stop reading; finish what is in flight, send what is queued, close.
    Close(CloseReason),
}

#[derive(Clone, Debug)]
enum State {
    ClientFlags,
    OptionHeader,
    OptionData {
        option: u32,
        length: usize,
    },
    /// Dropping option data that is too long, then answering `reply`.
    OptionDiscard {
        option: u32,
        remaining: u64,
        reply: u32,
    },
    AwaitLookup {
        option: u32,
        purpose: Purpose,
        request: InfoRequest,
    },
    AwaitList,
    RequestHeader,
    Payload {
        command: Command,
        remaining: u64,
    },
    /// Dropping a rejected write's payload, then answering `rejection`.
    PayloadDiscard {
        cookie: u64,
        remaining: u64,
        rejection: Rejection,
    },
    Closed,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    cookie: u64,
    op: Op,
}

/// One connection, from greeting to close.
#[derive(Debug)]
pub struct Session {
    limits: Limits,
    state: State,
    /// Bytes of the current header or option data.
    frame: Vec<u8>,
    no_zeroes: bool,
    structured: bool,
    options_seen: u32,
    shutting_down: bool,
    export: Option<ExportInfo>,
    next_id: u64,
    in_flight: HashMap<u64, InFlight>,
    in_flight_bytes: u64,
}

impl Session {
    /// A session under `limits`; send [`Self::greeting`] first.
    pub fn new(mut limits: Limits) -> Self {
        // Read replies carry `length + 8` in a u32, and the preferred block
        // size (at least 512, usually 4096) must fit under the maximum.
        limits.max_payload = limits.max_payload.clamp(4096, 1 << 30);
        // With no room for one request the session could never progress.
        limits.max_in_flight = limits.max_in_flight.max(1);
        Self {
            limits,
            state: State::ClientFlags,
            frame: Vec::with_capacity(REQUEST_HEADER_LEN),
            no_zeroes: false,
            structured: false,
            options_seen: 0,
            shutting_down: false,
            export: None,
            next_id: 0,
            in_flight: HashMap::new(),
            in_flight_bytes: 0,
        }
    }

    /// The server's opening bytes.
    pub fn greeting(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(18);
        wire::encode_greeting(&mut out);
        out
    }

    /// The limits this session enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The export of the transmission phase, once it began.
    pub fn export(&self) -> Option<&ExportInfo> {
        self.export.as_ref()
    }

    /// Whether structured replies were negotiated.
    pub fn structured(&self) -> bool {
        self.structured
    }

    /// Whether the handshake is over and requests flow.
    pub fn transmitting(&self) -> bool {
        matches!(self.state, State::RequestHeader | State::Payload { .. } | State::PayloadDiscard { .. })
    }

    /// Whether the connection is over (nothing more will be read).
    pub fn closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Requests handed out and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// How many bytes to read next; 0 while waiting for the shell (a
    /// lookup, or completions to bring the in-flight load down) or closed.
    pub fn needed(&self) -> usize {
        let frame = |len: usize| len - self.frame.len();
        match &self.state {
            State::ClientFlags => frame(4),
            State::OptionHeader => frame(OPTION_HEADER_LEN),
            State::OptionData { length, .. } => frame(*length),
            State::OptionDiscard { remaining, .. } | State::PayloadDiscard { remaining, .. } => {
                usize::try_from((*remaining).min(DISCARD_PIECE)).unwrap_or(0)
            }
            State::Payload { remaining, .. } => usize::try_from(*remaining).unwrap_or(usize::MAX),
            State::RequestHeader if self.saturated() => 0,
            State::RequestHeader => frame(REQUEST_HEADER_LEN),
            State::AwaitLookup { .. } | State::AwaitList | State::Closed => 0,
        }
    }

    /// The length of a write payload due next (with nothing of it read
    /// yet): the shell may read it into a buffer of its own and pass that
    /// whole buffer to [`Self::receive`].
    pub fn payload_due(&self) -> Option<usize> {
        match &self.state {
            State::Payload { command: Command { op: Op::Write { length, .. }, .. }, remaining }
                if *remaining == u64::from(*length) =>
            {
                usize::try_from(*length).ok()
            }
            _ => None,
        }
    }

    fn saturated(&self) -> bool {
        self.in_flight.len() >= self.limits.max_in_flight
            || self.in_flight_bytes >= self.limits.max_in_flight_bytes
    }

    /// Feeds bytes from the client; returns how many were consumed (fewer
    /// than given when the machine waits for the shell) and appends what
    /// to do to `out`.
    pub fn receive(&mut self, input: &[u8], out: &mut Vec<Output>) -> usize {
        let mut consumed = 0;
        while consumed < input.len() {
            let needed = self.needed();
            if needed == 0 {
                break;
            }
            let take = needed.min(input.len() - consumed);
            let piece = &input[consumed..consumed + take];
            consumed += take;
            match &mut self.state {
                State::Payload { remaining, .. }
                | State::PayloadDiscard { remaining, .. }
                | State::OptionDiscard { remaining, .. } => {
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        self.finish_skip(out);
                    }
                }
                _ => {
                    self.frame.extend_from_slice(piece);
                    if take == needed {
                        let frame = std::mem::take(&mut self.frame);
                        self.on_frame(&frame, out);
                        self.frame = frame;
                        self.frame.clear();
                    }
                }
            }
        }
        consumed
    }

    /// A payload, or bytes being dropped, ran out.
    fn finish_skip(&mut self, out: &mut Vec<Output>) {
        match std::mem::replace(&mut self.state, State::RequestHeader) {
            State::Payload { command, .. } => out.push(Output::Execute(command)),
            State::PayloadDiscard { cookie, rejection, .. } => {
                out.push(Output::Send(self.error_reply(cookie, rejection)));
            }
            State::OptionDiscard { option, reply, .. } => {
                self.state = State::OptionHeader;
                let mut bytes = Vec::new();
                wire::encode_option_reply(&mut bytes, option, reply, &[]);
                out.push(Output::Send(bytes));
            }
            other => self.state = other,
        }
    }

    fn on_frame(&mut self, frame: &[u8], out: &mut Vec<Output>) {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::ClientFlags => self.on_client_flags(be_u32(frame), out),
            State::OptionHeader => self.on_option_header(frame, out),
            State::OptionData { option, .. } => self.on_option(option, frame, out),
            State::RequestHeader => {
                let header: &[u8; REQUEST_HEADER_LEN] = frame.try_into().expect("frame is a request header");
                self.on_request(header, out);
            }
            other => self.state = other,
        }
    }

    pub(super) fn close(&mut self, reason: CloseReason, out: &mut Vec<Output>) {
        self.state = State::Closed;
        out.push(Output::Close(reason));
    }

    /// The server is stopping: options from now on get
    /// `NBD_REP_ERR_SHUTDOWN`, requests `NBD_ESHUTDOWN`.
    pub fn on_shutdown(&mut self) {
        self.shutting_down = true;
    }

    fn negotiated(&self) -> Negotiated {
        let export = self.export.as_ref();
        Negotiated {
            size: export.map_or(0, |e| e.size),
            read_only: export.is_none_or(|e| e.read_only),
            trim: export.is_some_and(|e| e.trim),
            write_zeroes: export.is_some_and(|e| e.write_zeroes),
            structured: self.structured,
            max_payload: self.limits.max_payload,
        }
    }

    fn on_request(&mut self, header: &[u8; REQUEST_HEADER_LEN], out: &mut Vec<Output>) {
        self.state = State::RequestHeader;
        let Some(header) = RequestHeader::parse(header) else {
            return self.close(CloseReason::Protocol("request without NBD_REQUEST_MAGIC"), out);
        };
        let mut checked = request::check(&header, &self.negotiated());
        if self.shutting_down && checked != Checked::Disconnect {
            checked =
                Checked::Reject(Rejection { errno: Errno::Shutdown, message: "the server is shutting down" });
        }
        let payload = if header.kind == wire::command::WRITE { u64::from(header.length) } else { 0 };
        match checked {
            Checked::Disconnect => self.close(CloseReason::ClientDone, out),
            Checked::Reject(rejection) if payload > 0 => {
                self.state = State::PayloadDiscard { cookie: header.cookie, remaining: payload, rejection };
            }
            Checked::Reject(rejection) => {
                out.push(Output::Send(self.error_reply(header.cookie, rejection)));
            }
            Checked::Run { op, fua } => {
                let id = self.next_id;
                self.next_id += 1;
                self.in_flight.insert(id, InFlight { cookie: header.cookie, op });
                self.in_flight_bytes += op.buffered_bytes();
                let command = Command { id, op, fua };
                if payload > 0 {
                    self.state = State::Payload { command, remaining: payload };
                } else {
                    out.push(Output::Execute(command));
                }
            }
        }
    }

    /// An error answer; structured when negotiated (a read must get one
    /// then, and others may carry the message for humans).
    fn error_reply(&self, cookie: u64, rejection: Rejection) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(32 + rejection.message.len());
        if self.structured {
            wire::encode_error_chunk(&mut bytes, cookie, rejection.errno, rejection.message);
        } else {
            wire::encode_simple_reply(&mut bytes, rejection.errno.code(), cookie);
        }
        bytes
    }

    /// Request `id` finished with `result`: appends its reply header to
    /// `out` and returns the number of read bytes that must follow it
    /// (the data the shell read, exactly as long as the request asked).
    /// An unknown `id` adds nothing.
    pub fn complete(&mut self, id: u64, result: Result<(), Errno>, out: &mut Vec<u8>) -> usize {
        let Some(InFlight { cookie, op }) = self.in_flight.remove(&id) else { return 0 };
        self.in_flight_bytes -= op.buffered_bytes();
        match (result, op) {
            (Err(errno), _) if self.structured => {
                wire::encode_error_chunk(out, cookie, errno, "");
                0
            }
            (Err(errno), _) => {
                wire::encode_simple_reply(out, errno.code(), cookie);
                0
            }
            (Ok(()), Op::Read { offset, length }) if self.structured && length > 0 => {
                wire::encode_chunk_header(out, chunk::FLAG_DONE, chunk::OFFSET_DATA, cookie, length + 8);
                out.extend_from_slice(&offset.to_be_bytes());
                length as usize
            }
            (Ok(()), _) if self.structured => {
                wire::encode_chunk_header(out, chunk::FLAG_DONE, chunk::NONE, cookie, 0);
                0
            }
            (Ok(()), Op::Read { length, .. }) => {
                wire::encode_simple_reply(out, 0, cookie);
                length as usize
            }
            (Ok(()), _) => {
                wire::encode_simple_reply(out, 0, cookie);
                0
            }
        }
    }
}

mod handshake;
#[cfg(test)]
mod tests;
