//! Checks one transmission request against what was negotiated and turns
//! it into an [`Op`] the shell can run, or into the error the client gets.
//! Pure: no state beyond what it is given.
//!
//! Choices worth knowing (the spec leaves them open or says SHOULD):
//! - A flag the export did not advertise, or one that does not apply to
//!   the command, is `EINVAL` ("Error values"); so is an unknown command,
//!   `NBD_CMD_CACHE` and `NBD_CMD_BLOCK_STATUS` included (neither is
//!   advertised).
//! - Out of range: reads and trims get `EINVAL`, writes and write-zeroes
//!   `ENOSPC`, as "Error values" recommends.
//! - A read longer than the maximum payload gets `EOVERFLOW` with
//!   structured replies (allowed under `NBD_CMD_READ`) and `EINVAL` with
//!   simple ones; a write that long gets `EINVAL` after its payload has
//!   been read and dropped.
//! - Write and trim on a read-only export get `EPERM`, checked first.

use crate::wire::{Errno, RequestHeader, command, command_flag};

/// What a request asks for, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read `length` bytes at `offset`.
    Read {
        /// Byte offset in the export.
        offset: u64,
        /// Bytes to read.
        length: u32,
    },
    /// Write the `length`-byte payload that follows the header at `offset`.
    Write {
        /// Byte offset in the export.
        offset: u64,
        /// Payload length.
        length: u32,
    },
    /// Make every completed write durable.
    Flush,
    /// The client no longer needs this range (a hint).
    Trim {
        /// Byte offset in the export.
        offset: u64,
        /// Length of the range.
        length: u32,
    },
    /// Make the range read as zeroes.
    WriteZeroes {
        /// Byte offset in the export.
        offset: u64,
        /// Length of the range.
        length: u32,
        /// The client asked for the range to stay allocated.
        no_hole: bool,
    },
}

impl Op {
    /// Bytes of payload the request carries or its reply will carry: what
    /// it costs in buffers while in flight.
    pub fn buffered_bytes(&self) -> u64 {
        match *self {
            Self::Read { length, .. } | Self::Write { length, .. } => u64::from(length),
            _ => 0,
        }
    }
}

/// What was negotiated for the session, as the checks need it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Negotiated {
    pub(crate) size: u64,
    pub(crate) read_only: bool,
    pub(crate) trim: bool,
    pub(crate) write_zeroes: bool,
    pub(crate) structured: bool,
    pub(crate) max_payload: u32,
}

/// Why a request fails before it reaches the export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) errno: Errno,
    pub(crate) message: &'static str,
}

/// The outcome of checking a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Checked {
    /// Run it.
    Run { op: Op, fua: bool },
    /// `NBD_CMD_DISC`.
    Disconnect,
    /// Answer with an error (after dropping the payload of a write).
    Reject(Rejection),
}

const fn reject(errno: Errno, message: &'static str) -> Checked {
    Checked::Reject(Rejection { errno, message })
}

/// Checks `header` against the session.
pub(crate) fn check(header: &RequestHeader, session: &Negotiated) -> Checked {
    let fua_allowed = !session.read_only;
    let mut allowed = if fua_allowed { command_flag::FUA } else { 0 };
    match header.kind {
        command::READ if session.structured => allowed |= command_flag::DF,
        command::WRITE_ZEROES => allowed |= command_flag::NO_HOLE,
        _ => {}
    }
    if header.kind == command::DISC {
        return Checked::Disconnect;
    }
    if header.flags & !allowed != 0 {
        return reject(Errno::Inval, "command flag not advertised or not valid for this command");
    }
    let fua = header.flags & command_flag::FUA != 0;
    let (offset, length) = (header.offset, header.length);
    let end = offset.checked_add(u64::from(length));
    let in_range = end.is_some_and(|end| end <= session.size);
    let op = match header.kind {
        command::READ => {
            if length > session.max_payload {
                return if session.structured {
                    reject(Errno::Overflow, "read longer than the maximum payload")
                } else {
                    reject(Errno::Inval, "read longer than the maximum payload")
                };
            }
            if !in_range {
                return reject(Errno::Inval, "read beyond the end of the export");
            }
            Op::Read { offset, length }
        }
        command::WRITE => {
            if session.read_only {
                return reject(Errno::Perm, "the export is read-only");
            }
            if length > session.max_payload {
                return reject(Errno::Inval, "write longer than the maximum payload");
            }
            if !in_range {
                return reject(Errno::NoSpc, "write beyond the end of the export");
            }
            Op::Write { offset, length }
        }
        command::FLUSH => Op::Flush,
        command::TRIM => {
            if session.read_only {
                return reject(Errno::Perm, "the export is read-only");
            }
            if !session.trim {
                return reject(Errno::Inval, "trim is not supported on this export");
            }
            if !in_range {
                return reject(Errno::Inval, "trim beyond the end of the export");
            }
            Op::Trim { offset, length }
        }
        command::WRITE_ZEROES => {
            if session.read_only {
                return reject(Errno::Perm, "the export is read-only");
            }
            if !session.write_zeroes {
                return reject(Errno::Inval, "write-zeroes is not supported on this export");
            }
            if !in_range {
                return reject(Errno::NoSpc, "write-zeroes beyond the end of the export");
            }
            Op::WriteZeroes { offset, length, no_hole: header.flags & command_flag::NO_HOLE != 0 }
        }
        _ => return reject(Errno::Inval, "unknown or unsupported command"),
    };
    Checked::Run { op, fua }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: Negotiated = Negotiated {
        size: 1 << 20,
        read_only: false,
        trim: true,
        write_zeroes: true,
        structured: true,
        max_payload: 1 << 16,
    };
    const RO: Negotiated = Negotiated { read_only: true, structured: false, ..RW };

    fn header(kind: u16, flags: u16, offset: u64, length: u32) -> RequestHeader {
        RequestHeader { flags, kind, cookie: 1, offset, length }
    }

    fn errno(checked: Checked) -> Option<Errno> {
        match checked {
            Checked::Reject(r) => Some(r.errno),
            _ => None,
        }
    }

    #[test]
    fn table_of_requests_and_their_answers() {
        use command::*;
        use command_flag::*;
        let cases: &[(Negotiated, RequestHeader, Option<Errno>)] = &[
            (RW, header(READ, 0, 0, 4096), None),
            (RW, header(READ, 0, (1 << 20) - 1, 1), None),
            (RW, header(READ, 0, (1 << 20) - 1, 2), Some(Errno::Inval)),
            (RW, header(READ, 0, u64::MAX, 1), Some(Errno::Inval)),
            (RW, header(READ, 0, 0, (1 << 16) + 1), Some(Errno::Overflow)),
            (RO, header(READ, 0, 0, (1 << 16) + 1), Some(Errno::Inval)),
            (RW, header(READ, DF, 0, 512), None),
            (RO, header(READ, DF, 0, 512), Some(Errno::Inval)),
            (RO, header(READ, FUA, 0, 512), Some(Errno::Inval)),
            (RW, header(READ, 1 << 9, 0, 512), Some(Errno::Inval)),
            (RW, header(WRITE, FUA, 0, 512), None),
            (RW, header(WRITE, 0, 1 << 20, 1), Some(Errno::NoSpc)),
            (RW, header(WRITE, 0, 0, (1 << 16) + 1), Some(Errno::Inval)),
            (RO, header(WRITE, 0, 0, 512), Some(Errno::Perm)),
            (RO, header(WRITE, 0, 1 << 30, 512), Some(Errno::Perm)),
            (RO, header(FLUSH, 0, 0, 0), None),
            (RW, header(FLUSH, FUA, 0, 0), None),
            (RW, header(TRIM, 0, 0, u32::MAX), Some(Errno::Inval)),
            (RW, header(TRIM, 0, 0, 1 << 20), None),
            (RO, header(TRIM, 0, 0, 512), Some(Errno::Perm)),
            (RW, header(WRITE_ZEROES, NO_HOLE | FUA, 0, 1 << 20), None),
            (RW, header(WRITE_ZEROES, 1 << 4, 0, 512), Some(Errno::Inval)),
            (RW, header(WRITE_ZEROES, 0, 1, 1 << 20), Some(Errno::NoSpc)),
            (RO, header(WRITE_ZEROES, 0, 0, 512), Some(Errno::Perm)),
            (RW, header(5, 0, 0, 512), Some(Errno::Inval)),
            (RW, header(7, 0, 0, 512), Some(Errno::Inval)),
            (RW, header(0xffff, 0, 0, 0), Some(Errno::Inval)),
        ];
        for (i, (session, header, expected)) in cases.iter().enumerate() {
            assert_eq!(errno(check(header, session)), *expected, "case {i}: {header:?}");
        }
        let no_trim = Negotiated { trim: false, write_zeroes: false, ..RW };
        assert_eq!(errno(check(&header(TRIM, 0, 0, 512), &no_trim)), Some(Errno::Inval));
        assert_eq!(errno(check(&header(WRITE_ZEROES, 0, 0, 512), &no_trim)), Some(Errno::Inval));
        assert_eq!(check(&header(DISC, 0xffff, 9, 9), &RO), Checked::Disconnect);
    }
}
