//! NBD wire format: magic numbers, flags, option and command codes, and the
//! encoders for everything the server sends. Values and layouts follow
//! `doc/proto.md` of the NetworkBlockDevice/nbd repository; section names
//! below refer to it. All integers are big-endian.

/// `NBDMAGIC`, the first 8 bytes the server sends.
pub const INIT_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation, and the prefix of every option.
pub const OPTION_MAGIC: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply (fixed newstyle).
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// `NBD_REQUEST_MAGIC`.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_SIMPLE_REPLY_MAGIC`.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// `NBD_STRUCTURED_REPLY_MAGIC`.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag `NBD_FLAG_FIXED_NEWSTYLE`.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag `NBD_FLAG_NO_ZEROES`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag `NBD_FLAG_C_FIXED_NEWSTYLE`.
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag `NBD_FLAG_C_NO_ZEROES`.
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags ("Transmission flags" section).
pub mod transmission {
    /// `NBD_FLAG_HAS_FLAGS`, always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// `NBD_FLAG_READ_ONLY`.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_FLAG_SEND_FLUSH`.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_FLAG_SEND_FUA`.
    pub const SEND_FUA: u16 = 1 << 3;
    /// `NBD_FLAG_SEND_TRIM`.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_FLAG_SEND_WRITE_ZEROES`.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// `NBD_FLAG_SEND_DF`.
    pub const SEND_DF: u16 = 1 << 7;
    /// `NBD_FLAG_CAN_MULTI_CONN`.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
}

/// Option codes ("Option types" section).
pub mod option {
    /// `NBD_OPT_EXPORT_NAME`.
    pub const EXPORT_NAME: u32 = 1;
    /// `NBD_OPT_ABORT`.
    pub const ABORT: u32 = 2;
    /// `NBD_OPT_LIST`.
    pub const LIST: u32 = 3;
    /// `NBD_OPT_INFO`.
    pub const INFO: u32 = 6;
    /// `NBD_OPT_GO`.
    pub const GO: u32 = 7;
    /// `NBD_OPT_STRUCTURED_REPLY`.
    pub const STRUCTURED_REPLY: u32 = 8;
}

/// Option reply types ("Option reply types" section).
pub mod reply {
    /// `NBD_REP_ACK`.
    pub const ACK: u32 = 1;
    /// `NBD_REP_SERVER`.
    pub const SERVER: u32 = 2;
    /// `NBD_REP_INFO`.
    pub const INFO: u32 = 3;
    /// `NBD_REP_ERR_UNSUP`.
    pub const ERR_UNSUP: u32 = (1 << 31) + 1;
    /// `NBD_REP_ERR_POLICY`.
    pub const ERR_POLICY: u32 = (1 << 31) + 2;
    /// `NBD_REP_ERR_INVALID`.
    pub const ERR_INVALID: u32 = (1 << 31) + 3;
    /// `NBD_REP_ERR_UNKNOWN`.
    pub const ERR_UNKNOWN: u32 = (1 << 31) + 6;
    /// `NBD_REP_ERR_SHUTDOWN`.
    pub const ERR_SHUTDOWN: u32 = (1 << 31) + 7;
    /// `NBD_REP_ERR_TOO_BIG`.
    pub const ERR_TOO_BIG: u32 = (1 << 31) + 9;
}

/// Information types in `NBD_REP_INFO`.
pub mod info {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// `NBD_INFO_NAME`: canonical name.
    pub const NAME: u16 = 1;
    /// `NBD_INFO_DESCRIPTION`: text for humans.
    pub const DESCRIPTION: u16 = 2;
    /// `NBD_INFO_BLOCK_SIZE`: minimum, preferred, maximum payload.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Request types ("Request types" section).
pub mod command {
    /// `NBD_CMD_READ`.
    pub const READ: u16 = 0;
    /// `NBD_CMD_WRITE`.
    pub const WRITE: u16 = 1;
    /// `NBD_CMD_DISC`.
    pub const DISC: u16 = 2;
    /// `NBD_CMD_FLUSH`.
    pub const FLUSH: u16 = 3;
    /// `NBD_CMD_TRIM`.
    pub const TRIM: u16 = 4;
    /// `NBD_CMD_WRITE_ZEROES`.
    pub const WRITE_ZEROES: u16 = 6;
}

/// Command flags ("Command flags" section).
pub mod command_flag {
    /// `NBD_CMD_FLAG_FUA`.
    pub const FUA: u16 = 1 << 0;
    /// `NBD_CMD_FLAG_NO_HOLE`.
    pub const NO_HOLE: u16 = 1 << 1;
    /// `NBD_CMD_FLAG_DF`.
    pub const DF: u16 = 1 << 2;
}

/// Structured reply chunk types and flags.
pub mod chunk {
    /// `NBD_REPLY_FLAG_DONE`.
    pub const FLAG_DONE: u16 = 1 << 0;
    /// `NBD_REPLY_TYPE_NONE`.
    pub const NONE: u16 = 0;
    /// `NBD_REPLY_TYPE_OFFSET_DATA`.
    pub const OFFSET_DATA: u16 = 1;
    /// `NBD_REPLY_TYPE_ERROR`.
    pub const ERROR: u16 = (1 << 15) + 1;
}

/// Length of the fixed part of an option a client sends: magic, option, length.
pub const OPTION_HEADER_LEN: usize = 16;
/// Length of a transmission request header.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of a structured `OFFSET_DATA` chunk up to its data: chunk header
/// (20 bytes) and the offset.
pub const OFFSET_DATA_HEADER_LEN: usize = 28;
/// The longest header that precedes read data in a reply; the shell
/// reserves this much in front of each read buffer so header and data go
/// out in one write.
pub const MAX_READ_REPLY_HEADER_LEN: usize = OFFSET_DATA_HEADER_LEN;
/// Longest string the protocol allows ("Conventions" section).
pub const MAX_STRING_LEN: usize = 4096;

/// Error values of the transmission phase ("Error values" section).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Errno {
    /// `NBD_EPERM`: write or trim on a read-only export.
    Perm,
    /// `NBD_EIO`: the storage failed.
    Io,
    /// `NBD_ENOMEM`.
    NoMem,
    /// `NBD_EINVAL`: bad flags, unknown command, read or trim out of range.
    Inval,
    /// `NBD_ENOSPC`: write beyond the end, or the write cache is full.
    NoSpc,
    /// `NBD_EOVERFLOW`: a read larger than the maximum payload.
    Overflow,
    /// `NBD_ENOTSUP`.
    NotSup,
    /// `NBD_ESHUTDOWN`: the server is stopping.
    Shutdown,
}

impl Errno {
    /// The value on the wire.
    pub fn code(self) -> u32 {
        match self {
            Self::Perm => 1,
            Self::Io => 5,
            Self::NoMem => 12,
            Self::Inval => 22,
            Self::NoSpc => 28,
            Self::Overflow => 75,
            Self::NotSup => 95,
            Self::Shutdown => 108,
        }
    }
}

/// A transmission request header, as sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub kind: u16,
    /// Opaque client value echoed in the reply.
    pub cookie: u64,
    /// Byte offset in the export.
    pub offset: u64,
    /// Length in bytes (of the payload for writes).
    pub length: u32,
}

impl RequestHeader {
    /// Parses the 28-byte header; `None` when the magic is wrong (the
    /// stream can no longer be framed).
    pub fn parse(bytes: &[u8; REQUEST_HEADER_LEN]) -> Option<Self> {
        if be_u32(&bytes[0..4]) != REQUEST_MAGIC {
            return None;
        }
        Some(Self {
            flags: be_u16(&bytes[4..6]),
            kind: be_u16(&bytes[6..8]),
            cookie: be_u64(&bytes[8..16]),
            offset: be_u64(&bytes[16..24]),
            length: be_u32(&bytes[24..28]),
        })
    }

    /// Encodes the header (clients and tests).
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut out = [0u8; REQUEST_HEADER_LEN];
        out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.kind.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..28].copy_from_slice(&self.length.to_be_bytes());
        out
    }
}

pub(crate) fn be_u16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

pub(crate) fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

pub(crate) fn be_u64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(array)
}

/// The server's first bytes: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn encode_greeting(out: &mut Vec<u8>) {
    out.extend_from_slice(&INIT_MAGIC.to_be_bytes());
    out.extend_from_slice(&OPTION_MAGIC.to_be_bytes());
    out.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
}

/// An option reply: header and `data`.
pub fn encode_option_reply(out: &mut Vec<u8>, option: u32, kind: u32, data: &[u8]) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&len_u32(data.len()).to_be_bytes());
    out.extend_from_slice(data);
}

/// `NBD_REP_SERVER` for one export: name, then a description if any.
pub fn encode_server_reply(out: &mut Vec<u8>, option: u32, name: &str, description: &str) {
    let mut data = Vec::with_capacity(4 + name.len() + description.len());
    data.extend_from_slice(&len_u32(name.len()).to_be_bytes());
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(description.as_bytes());
    encode_option_reply(out, option, reply::SERVER, &data);
}

/// `NBD_REP_INFO` of type `info` with `payload` after the type.
pub fn encode_info_reply(out: &mut Vec<u8>, option: u32, info: u16, payload: &[u8]) {
    let mut data = Vec::with_capacity(2 + payload.len());
    data.extend_from_slice(&info.to_be_bytes());
    data.extend_from_slice(payload);
    encode_option_reply(out, option, reply::INFO, &data);
}

/// A simple reply header; read data, if any, follows it.
pub fn encode_simple_reply(out: &mut Vec<u8>, error: u32, cookie: u64) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// A simple reply header as a client reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimpleReply {
    /// 0, or the request's `NBD_E*` error.
    pub error: u32,
    /// The request's cookie.
    pub cookie: u64,
}

impl SimpleReply {
    /// Parses the 16-byte header; `None` when the magic is wrong (a
    /// structured reply, or a stream that can no longer be framed).
    pub fn parse(bytes: &[u8; SIMPLE_REPLY_LEN]) -> Option<Self> {
        if be_u32(&bytes[0..4]) != SIMPLE_REPLY_MAGIC {
            return None;
        }
        Some(Self { error: be_u32(&bytes[4..8]), cookie: be_u64(&bytes[8..16]) })
    }
}

/// A structured reply chunk header; `length` bytes of payload follow.
pub fn encode_chunk_header(out: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, length: u32) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
}

/// A final `NBD_REPLY_TYPE_ERROR` chunk with a message for humans.
pub fn encode_error_chunk(out: &mut Vec<u8>, cookie: u64, error: Errno, message: &str) {
    let message = &message.as_bytes()[..message.len().min(MAX_STRING_LEN)];
    let length = len_u32(6 + message.len());
    encode_chunk_header(out, chunk::FLAG_DONE, chunk::ERROR, cookie, length);
    out.extend_from_slice(&error.code().to_be_bytes());
    out.extend_from_slice(&len_u16(message.len()).to_be_bytes());
    out.extend_from_slice(message);
}

/// Lengths the server puts on the wire are of things it built, all far
/// below 4 GiB; saturating keeps the encoders total anyway.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn len_u16(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_round_trips_and_rejects_a_bad_magic() {
        let header = RequestHeader { flags: 1, kind: command::WRITE, cookie: 7, offset: 4096, length: 512 };
        let bytes = header.encode();
        assert_eq!(RequestHeader::parse(&bytes), Some(header));
        let mut bad = bytes;
        bad[0] ^= 1;
        assert_eq!(RequestHeader::parse(&bad), None);
    }

    #[test]
    fn encoders_lay_out_the_documented_bytes() {
        let mut out = Vec::new();
        encode_greeting(&mut out);
        assert_eq!(&out[..8], b"NBDMAGIC");
        assert_eq!(&out[8..16], b"IHAVEOPT");
        assert_eq!(out[16..], [0, 3]);

        out.clear();
        encode_simple_reply(&mut out, 22, 0x0102_0304_0506_0708);
        assert_eq!(out, [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 1, 2, 3, 4, 5, 6, 7, 8]);

        let reply: [u8; SIMPLE_REPLY_LEN] = out.as_slice().try_into().unwrap();
        assert_eq!(
            SimpleReply::parse(&reply),
            Some(SimpleReply { error: 22, cookie: 0x0102_0304_0506_0708 })
        );
        let mut bad = reply;
        bad[0] ^= 1;
        assert_eq!(SimpleReply::parse(&bad), None);

        out.clear();
        encode_error_chunk(&mut out, 9, Errno::Perm, "ro");
        assert_eq!(out.len(), 20 + 8);
        assert_eq!(&out[4..8], &[0, 1, 0x80, 1]); // DONE, NBD_REPLY_TYPE_ERROR
        assert_eq!(&out[16..20], &[0, 0, 0, 8]);
        assert_eq!(&out[20..], &[0, 0, 0, 1, 0, 2, b'r', b'o']);

        out.clear();
        encode_server_reply(&mut out, option::LIST, "a", "d");
        assert_eq!(&out[12..16], &reply::SERVER.to_be_bytes());
        assert_eq!(&out[16..20], &[0, 0, 0, 6]);
        assert_eq!(&out[20..], &[0, 0, 0, 1, b'a', b'd']);
    }
}
