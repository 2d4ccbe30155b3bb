//! TFTP packets on the wire (RFC 1350, with the RFC 2347 option extension).
//!
//! Parsing never panics and never trusts a length: every datagram either
//! becomes a typed [`Packet`] or a [`WireError`] saying what is wrong.

/// Largest datagram we read (65464-byte blocks + 4-byte header).
pub const MAX_DATAGRAM: usize = 65_468;
/// Longest file name accepted.
pub const MAX_FILENAME: usize = 255;

/// TFTP error codes (RFC 1350 + RFC 2347).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// Not defined, see message.
    NotDefined = 0,
    /// File not found.
    FileNotFound = 1,
    /// Access violation.
    AccessViolation = 2,
    /// Disk full or allocation exceeded.
    DiskFull = 3,
    /// Illegal TFTP operation.
    IllegalOperation = 4,
    /// Unknown transfer ID.
    UnknownTid = 5,
    /// File already exists.
    FileExists = 6,
    /// No such user.
    NoSuchUser = 7,
    /// Option negotiation refused (RFC 2347).
    OptionRefused = 8,
}

impl ErrorCode {
    fn from_u16(code: u16) -> Self {
        match code {
            1 => Self::FileNotFound,
            2 => Self::AccessViolation,
            3 => Self::DiskFull,
            4 => Self::IllegalOperation,
            5 => Self::UnknownTid,
            6 => Self::FileExists,
            7 => Self::NoSuchUser,
            8 => Self::OptionRefused,
            _ => Self::NotDefined,
        }
    }
}

/// Transfer mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Bytes as they are.
    Octet,
    /// Text with CR LF line ends (RFC 764).
    Netascii,
}

/// A read or write request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The file asked for, as sent.
    pub filename: String,
    /// Transfer mode.
    pub mode: Mode,
    /// Options in the order sent, names lowercased.
    pub options: Vec<(String, String)>,
}

/// One TFTP packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// Read request.
    Rrq(Request),
    /// Write request.
    Wrq(Request),
    /// Data block.
    Data {
        /// Block number (wraps).
        block: u16,
        /// Payload.
        data: Vec<u8>,
    },
    /// Acknowledgement.
    Ack {
        /// Block number acknowledged.
        block: u16,
    },
    /// Error.
    Error {
        /// Code.
        code: ErrorCode,
        /// Message.
        message: String,
    },
    /// Option acknowledgement (RFC 2347).
    Oack {
        /// Accepted options.
        options: Vec<(String, String)>,
    },
}

/// Why a datagram is not a valid packet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer than the 2 or 4 bytes every packet has.
    #[error("datagram too short ({0} bytes)")]
    TooShort(usize),
    /// Unknown opcode.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// A string field lacks its terminating NUL.
    #[error("unterminated {0}")]
    Unterminated(&'static str),
    /// A string field is not UTF-8 / ASCII.
    #[error("{0} is not text")]
    NotText(&'static str),
    /// Mode is neither octet nor netascii (mail is obsolete).
    #[error("unsupported mode {0:?}")]
    BadMode(String),
    /// The file name is empty or too long.
    #[error("bad file name length {0}")]
    BadFilename(usize),
    /// An option name without a value.
    #[error("option {0:?} has no value")]
    OptionWithoutValue(String),
    /// Too many options.
    #[error("too many options")]
    TooManyOptions,
}

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// Splits NUL-terminated strings off the front of `bytes`.
struct Strings<'a> {
    bytes: &'a [u8],
}

impl<'a> Strings<'a> {
    fn next(&mut self, what: &'static str) -> Result<Option<&'a str>, WireError> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let end = self.bytes.iter().position(|b| *b == 0).ok_or(WireError::Unterminated(what))?;
        let text = std::str::from_utf8(&self.bytes[..end]).map_err(|_| WireError::NotText(what))?;
        self.bytes = &self.bytes[end + 1..];
        Ok(Some(text))
    }
}

fn parse_request(body: &[u8]) -> Result<Request, WireError> {
    let mut strings = Strings { bytes: body };
    let filename = strings.next("file name")?.ok_or(WireError::Unterminated("file name"))?;
    if filename.is_empty() || filename.len() > MAX_FILENAME {
        return Err(WireError::BadFilename(filename.len()));
    }
    let mode = strings.next("mode")?.ok_or(WireError::Unterminated("mode"))?;
    let mode = match mode.to_ascii_lowercase().as_str() {
        "octet" => Mode::Octet,
        "netascii" => Mode::Netascii,
        other => return Err(WireError::BadMode(other.to_owned())),
    };
    let mut options = Vec::new();
    while let Some(name) = strings.next("option name")? {
        let value =
            strings.next("option value")?.ok_or_else(|| WireError::OptionWithoutValue(name.to_owned()))?;
        if options.len() >= 16 {
            return Err(WireError::TooManyOptions);
        }
        options.push((name.to_ascii_lowercase(), value.to_owned()));
    }
    Ok(Request { filename: filename.to_owned(), mode, options })
}

impl Packet {
    /// Parses one datagram.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() < 2 {
            return Err(WireError::TooShort(bytes.len()));
        }
        let opcode = u16::from_be_bytes([bytes[0], bytes[1]]);
        let body = &bytes[2..];
        let number = || -> Result<u16, WireError> {
            body.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or(WireError::TooShort(bytes.len()))
        };
        match opcode {
            RRQ => Ok(Self::Rrq(parse_request(body)?)),
            WRQ => Ok(Self::Wrq(parse_request(body)?)),
            DATA => Ok(Self::Data { block: number()?, data: body[2..].to_vec() }),
            ACK => Ok(Self::Ack { block: number()? }),
            ERROR => {
                let code = ErrorCode::from_u16(number()?);
                let mut strings = Strings { bytes: &body[2..] };
                let message = strings.next("error message").ok().flatten().unwrap_or("").to_owned();
                Ok(Self::Error { code, message })
            }
            OACK => {
                let mut strings = Strings { bytes: body };
                let mut options = Vec::new();
                while let Some(name) = strings.next("option name")? {
                    let value = strings
                        .next("option value")?
                        .ok_or_else(|| WireError::OptionWithoutValue(name.to_owned()))?;
                    options.push((name.to_ascii_lowercase(), value.to_owned()));
                }
                Ok(Self::Oack { options })
            }
            other => Err(WireError::UnknownOpcode(other)),
        }
    }

    /// Encodes the packet.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let request = |out: &mut Vec<u8>, opcode: u16, r: &Request| {
            out.extend_from_slice(&opcode.to_be_bytes());
            out.extend_from_slice(r.filename.as_bytes());
            out.push(0);
            out.extend_from_slice(if r.mode == Mode::Octet { b"octet" } else { b"netascii" });
            out.push(0);
            for (k, v) in &r.options {
                out.extend_from_slice(k.as_bytes());
                out.push(0);
                out.extend_from_slice(v.as_bytes());
                out.push(0);
            }
        };
        match self {
            Self::Rrq(r) => request(&mut out, RRQ, r),
            Self::Wrq(r) => request(&mut out, WRQ, r),
            Self::Data { block, data } => encode_data(&mut out, *block, data),
            Self::Ack { block } => {
                out.extend_from_slice(&ACK.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
            }
            Self::Error { code, message } => encode_error(&mut out, *code, message),
            Self::Oack { options } => {
                out.extend_from_slice(&OACK.to_be_bytes());
                for (k, v) in options {
                    out.extend_from_slice(k.as_bytes());
                    out.push(0);
                    out.extend_from_slice(v.as_bytes());
                    out.push(0);
                }
            }
        }
        out
    }
}

/// Writes a DATA header and payload into `out` (reused buffers on the hot path).
pub fn encode_data(out: &mut Vec<u8>, block: u16, data: &[u8]) {
    out.extend_from_slice(&DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(data);
}

/// Writes an ERROR packet into `out`.
pub fn encode_error(out: &mut Vec<u8>, code: ErrorCode, message: &str) {
    out.extend_from_slice(&ERROR.to_be_bytes());
    out.extend_from_slice(&(code as u16).to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    out.push(0);
}

/// Converts text to netascii: LF → CR LF, a lone CR → CR NUL.
pub fn to_netascii(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 16);
    for &b in bytes {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let rrq = Packet::Rrq(Request {
            filename: "pxelinux.0".into(),
            mode: Mode::Octet,
            options: vec![("blksize".into(), "1468".into()), ("tsize".into(), "0".into())],
        });
        assert_eq!(Packet::parse(&rrq.encode()).unwrap(), rrq);
        for packet in [
            Packet::Data { block: 7, data: vec![1, 2, 3] },
            Packet::Ack { block: 65535 },
            Packet::Error { code: ErrorCode::FileNotFound, message: "not found".into() },
            Packet::Oack { options: vec![("windowsize".into(), "16".into())] },
        ] {
            assert_eq!(Packet::parse(&packet.encode()).unwrap(), packet);
        }
    }

    #[test]
    fn bad_datagrams_are_errors_not_panics() {
        let cases: Vec<(&[u8], WireError)> = vec![
            (b"", WireError::TooShort(0)),
            (b"\x00", WireError::TooShort(1)),
            (b"\x00\x09", WireError::UnknownOpcode(9)),
            (b"\x00\x01file", WireError::Unterminated("file name")),
            (b"\x00\x01file\x00", WireError::Unterminated("mode")),
            (b"\x00\x01file\x00mail\x00", WireError::BadMode("mail".into())),
            (b"\x00\x01\x00octet\x00", WireError::BadFilename(0)),
            (b"\x00\x01f\x00octet\x00blksize\x00", WireError::OptionWithoutValue("blksize".into())),
            (b"\x00\x01\xff\xfe\x00octet\x00", WireError::NotText("file name")),
            (b"\x00\x04\x01", WireError::TooShort(3)),
        ];
        for (bytes, want) in cases {
            assert_eq!(Packet::parse(bytes), Err(want), "{bytes:?}");
        }
        let long = [b"\x00\x01".as_slice(), &[b'a'; 300], b"\x00octet\x00"].concat();
        assert_eq!(Packet::parse(&long), Err(WireError::BadFilename(300)));
    }

    #[test]
    fn netascii_converts_line_ends() {
        assert_eq!(to_netascii(b"a\nb\rc"), b"a\r\nb\r\0c");
    }
}
