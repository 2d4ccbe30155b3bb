//! Fuzz entry points, shared by `fuzz/` (cargo-fuzz) and a plain test that
//! replays the seed corpus on stable Rust.

use std::time::Duration;

use crate::options::{Limits, negotiate};
use crate::transfer::{Action, ReadTransfer};
use crate::wire::Packet;

/// Interprets `data` as a request datagram plus a session of datagrams and
/// timer expiries against one transfer, and checks the invariants: no
/// panic, no block outside the file, at most one finish, nothing after it.
pub fn transfer_session(data: &[u8]) {
    let Some((&header, rest)) = data.split_first() else { return };
    let size = u64::from(header) * 97;
    let mut chunks = rest.split(|b| *b == 0xfe);
    let request = chunks.next().unwrap_or_default();
    let options = match Packet::parse(request) {
        Ok(Packet::Rrq(r)) => r.options,
        _ => Vec::new(),
    };
    let limits = Limits::for_mtu(1500, 16, Duration::from_secs(1));
    let (negotiated, _) = negotiate(&options, size, &limits);
    let mut transfer = ReadTransfer::new(size, &negotiated, 3);
    let mut actions = transfer.start();
    for chunk in chunks {
        actions.extend(match chunk.first() {
            Some(0xff) => transfer.on_timeout(),
            _ => match Packet::parse(chunk) {
                Ok(Packet::Ack { block }) => transfer.on_ack(block),
                Ok(Packet::Error { .. }) => transfer.on_error(),
                Ok(_) => transfer.on_illegal(),
                Err(_) => Vec::new(),
            },
        });
    }
    let mut finished = false;
    for action in actions {
        assert!(!finished, "action after finish");
        match action {
            Action::SendData { offset, len, .. } => {
                assert!(offset + len as u64 <= size, "block outside the file")
            }
            Action::Finish(_) => finished = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays the committed seed corpus and a deterministic spread of
    /// generated sessions through the fuzz target.
    #[test]
    fn seed_corpus_and_generated_sessions_pass() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/transfer");
        let mut seeds = 0;
        for entry in std::fs::read_dir(&corpus).expect("seed corpus") {
            transfer_session(&std::fs::read(entry.unwrap().path()).unwrap());
            seeds += 1;
        }
        assert!(seeds > 0);
        let mut x = 0x9e37_79b9_u32;
        for len in 0..2000usize {
            let input: Vec<u8> = (0..len % 300)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x & 0xff) as u8
                })
                .collect();
            transfer_session(&input);
        }
    }
}
