//! netascii (RFC 1350, after RFC 764) converted as it streams: LF becomes
//! CR LF, a lone CR becomes CR NUL. A transfer converts block by block from
//! the file as it goes, keeping no converted copy; an expansion cut by a
//! block boundary leaves its second byte pending for the next block.
//!
//! Blocks are asked for by offset in the converted stream, and a window may
//! be sent again from an earlier block, so [`Checkpoints`] remembers where
//! the last few blocks began in the source. The size (for tsize and for the
//! transfer's last block) is counted by one pass over the source:
//! [`converted_len`] over its pieces.

use std::collections::VecDeque;

/// Length of `bytes` once converted.
pub fn converted_len(bytes: &[u8]) -> u64 {
    let expanded = bytes.iter().filter(|&&b| b == b'\n' || b == b'\r').count();
    (bytes.len() + expanded) as u64
}

/// Where a conversion stands in the source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// Source bytes consumed.
    pub source: u64,
    /// Second byte of an expansion whose first byte ended the last block.
    pub pending: Option<u8>,
}

/// Converts `source` (the source bytes from `position.source` on) onto
/// `out` until `out` holds `want` bytes or `source` is used up, and moves
/// `position` past what was consumed.
pub fn encode(position: &mut Position, source: &[u8], out: &mut Vec<u8>, want: usize) {
    if out.len() < want
        && let Some(second) = position.pending.take()
    {
        out.push(second);
    }
    let mut consumed = 0;
    for &b in source {
        if out.len() >= want {
            break;
        }
        consumed += 1;
        let (first, second) = match b {
            b'\n' => (b'\r', Some(b'\n')),
            b'\r' => (b'\r', Some(0)),
            other => (other, None),
        };
        out.push(first);
        if let Some(second) = second {
            if out.len() < want {
                out.push(second);
            } else {
                position.pending = Some(second);
            }
        }
    }
    position.source += consumed as u64;
}

/// The source positions at which recently converted blocks began or ended,
/// by offset in the converted stream. Holds at most `capacity` entries: a
/// transfer only ever goes back to the first block of its window, so a
/// window's worth (plus one) is enough; the start of the stream is always
/// known.
#[derive(Debug)]
pub struct Checkpoints {
    capacity: usize,
    entries: VecDeque<(u64, Position)>,
}

impl Checkpoints {
    /// Room for `capacity` block boundaries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), entries: VecDeque::new() }
    }

    /// The latest known boundary at or before converted offset `offset`.
    pub fn before(&self, offset: u64) -> (u64, Position) {
        self.entries
            .iter()
            .filter(|(at, _)| *at <= offset)
            .max_by_key(|(at, _)| *at)
            .copied()
            .unwrap_or((0, Position::default()))
    }

    /// Remembers that converted offset `offset` is at `position`.
    pub fn record(&mut self, offset: u64, position: Position) {
        if self.entries.iter().any(|(at, _)| *at == offset) {
            return;
        }
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back((offset, position));
    }

    /// Boundaries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::wire::to_netascii;

    /// Block `offset..offset + len` the way a transfer gets it: from the
    /// nearest checkpoint, skipping what lies before the offset.
    fn block(checkpoints: &mut Checkpoints, source: &[u8], offset: u64, len: usize) -> Vec<u8> {
        let (mut at, mut position) = checkpoints.before(offset);
        let mut out = Vec::new();
        while at < offset {
            out.clear();
            let want = usize::try_from(offset - at).unwrap().min(7);
            let from = usize::try_from(position.source).unwrap();
            encode(&mut position, &source[from..], &mut out, want);
            assert!(!out.is_empty(), "the source ran out while seeking");
            at += out.len() as u64;
        }
        out.clear();
        let from = usize::try_from(position.source).unwrap();
        encode(&mut position, &source[from..], &mut out, len);
        checkpoints.record(offset + out.len() as u64, position);
        out
    }

    #[test]
    fn an_expansion_cut_by_a_block_boundary_continues_in_the_next_block() {
        let mut checkpoints = Checkpoints::new(4);
        // "ab\n": converted "ab\r\n"; blocks of 3 cut the CR LF in two.
        assert_eq!(block(&mut checkpoints, b"ab\ncd\r", 0, 3), b"ab\r");
        assert_eq!(block(&mut checkpoints, b"ab\ncd\r", 3, 3), b"\ncd");
        assert_eq!(block(&mut checkpoints, b"ab\ncd\r", 6, 3), b"\r\0");
        assert_eq!(converted_len(b"ab\ncd\r"), 8);
        // Sent again from the second block, as after a partial ACK.
        assert_eq!(block(&mut checkpoints, b"ab\ncd\r", 3, 3), b"\ncd");
    }

    proptest! {
        /// Converting block by block, with windows sent again from any
        /// block still held, gives the whole conversion, and its length is
        /// what `converted_len` counts.
        #[test]
        fn blocks_match_the_whole_conversion(
            source in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'x'), any::<u8>()], 0..3000),
            blksize in 1usize..40,
            windowsize in 1usize..6,
            resends in proptest::collection::vec(0usize..6, 0..20),
        ) {
            let whole = to_netascii(&source);
            prop_assert_eq!(converted_len(&source), whole.len() as u64);
            let mut checkpoints = Checkpoints::new(windowsize + 1);
            let blocks = whole.len() / blksize + 1;
            let mut resends = resends.into_iter();
            let mut base = 0usize;
            while base < blocks {
                let end = (base + windowsize).min(blocks);
                for i in base..end {
                    let offset = i * blksize;
                    let len = whole.len().saturating_sub(offset).min(blksize);
                    let got = block(&mut checkpoints, &source, offset as u64, len);
                    prop_assert_eq!(&got[..], &whole[offset..offset + len], "block {}", i);
                }
                // The client acknowledges some block of the window.
                let acked = resends.next().unwrap_or(windowsize).min(end - base - 1);
                base += acked + 1;
                prop_assert!(checkpoints.len() <= windowsize + 1);
            }
        }
    }
}
