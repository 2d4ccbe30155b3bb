//! Fuzz entry points, shared by `fuzz/` (cargo-fuzz) and a plain test that
//! replays the seed corpus on stable Rust.

use crate::options::ExportInfo;
use crate::request::Op;
use crate::session::{Limits, Listing, Output, Purpose, Refusal, Session};
use crate::wire::Errno;

/// Marks the start of an event instead of client bytes in the input.
const EVENT: u8 = 0xfe;

/// Interprets `data` as one connection: the first byte picks the limits,
/// the rest is client bytes, split at `0xfe` into pieces; a piece that
/// starts with `0xf0`..`0xf3` is an event instead (complete the oldest
/// request, fail it, shut down, complete everything). Lookups of `ro`
/// find a read-only export, of `rw` a writable one; other names are
/// unknown.
///
/// Checks: no panic; nothing consumed beyond the input; every request
/// handed out lies inside the export and under the payload limit, never
/// more than the in-flight limit at once, and none on a read-only export
/// writes; a read's reply announces exactly the bytes it asked for;
/// nothing is handed out after the connection closes.
pub fn session(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let limits = Limits {
        max_payload: 4096 << (selector & 3),
        max_in_flight: 1 + usize::from(selector >> 4),
        max_in_flight_bytes: 8192 << ((selector >> 2) & 3),
        max_options: 16,
    };
    let mut driver =
        Driver { session: Session::new(limits), limits, pending: Vec::new(), export: None, closed: false };
    // Client bytes the session did not take yet (it waits for an event).
    let mut backlog: Vec<u8> = Vec::new();
    for piece in rest.split(|b| *b == EVENT) {
        match piece.first() {
            Some(0xf0 | 0xf1) if !driver.pending.is_empty() => {
                let (id, op) = driver.pending.remove(0);
                let result = if piece[0] == 0xf0 { Ok(()) } else { Err(Errno::Io) };
                let mut header = Vec::new();
                let data = driver.session.complete(id, result, &mut header);
                let expected = match (op, result) {
                    (Op::Read { length, .. }, Ok(())) => length as usize,
                    _ => 0,
                };
                assert_eq!(data, expected, "reply data length");
                assert!(!header.is_empty(), "every completion is answered");
            }
            Some(0xf2) => driver.session.on_shutdown(),
            Some(0xf3) => {
                for (id, _) in driver.pending.drain(..) {
                    driver.session.complete(id, Ok(()), &mut Vec::new());
                }
            }
            _ => backlog.extend_from_slice(piece),
        }
        let mut offset = 0;
        loop {
            let mut out = Vec::new();
            let consumed = driver.session.receive(&backlog[offset..], &mut out);
            assert!(consumed <= backlog.len() - offset);
            offset += consumed;
            let acted = !out.is_empty();
            driver.handle(out);
            if consumed == 0 && !acted {
                break;
            }
        }
        backlog.drain(..offset);
    }
}

/// The fuzz target's stand-in for the shell.
struct Driver {
    session: Session,
    limits: Limits,
    pending: Vec<(u64, Op)>,
    export: Option<ExportInfo>,
    closed: bool,
}

impl Driver {
    fn handle(&mut self, mut out: Vec<Output>) {
        while let Some(output) = (!out.is_empty()).then(|| out.remove(0)) {
            assert!(!self.closed, "output after close: {output:?}");
            match output {
                Output::Lookup { name, purpose } => {
                    let found = match name.as_str() {
                        "ro" => Ok(ExportInfo::read_only(1 << 20)),
                        "rw" => Ok(ExportInfo {
                            read_only: false,
                            multi_conn: false,
                            trim: true,
                            write_zeroes: true,
                            ..ExportInfo::read_only(3 << 19)
                        }),
                        _ => Err(Refusal::Unknown),
                    };
                    if purpose != Purpose::Info {
                        self.export = found.clone().ok();
                    }
                    self.session.on_lookup(found, &mut out);
                }
                Output::List => {
                    let listing = Listing { name: "ro".into(), description: String::new() };
                    self.session.on_list(&[listing], &mut out);
                }
                Output::Execute(command) => {
                    let export = self.export.as_ref().expect("requests only after an export was chosen");
                    check_op(command.op, export, &self.limits);
                    self.pending.push((command.id, command.op));
                    assert!(self.pending.len() <= self.limits.max_in_flight, "in-flight limit");
                }
                Output::Close(_) => self.closed = true,
                Output::Send(_) => {}
            }
        }
    }
}

fn check_op(op: Op, export: &ExportInfo, limits: &Limits) {
    let (offset, length) = match op {
        Op::Read { offset, length } => (offset, length),
        Op::Write { offset, length }
        | Op::Trim { offset, length }
        | Op::WriteZeroes { offset, length, .. } => {
            assert!(!export.read_only, "write on a read-only export");
            (offset, length)
        }
        Op::Flush => return,
    };
    assert!(offset + u64::from(length) <= export.size, "request beyond the export");
    if matches!(op, Op::Read { .. } | Op::Write { .. }) {
        assert!(length <= limits.max_payload, "payload over the limit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays the committed seed corpus and a deterministic spread of
    /// generated sessions through the fuzz target.
    #[test]
    fn seed_corpus_and_generated_sessions_pass() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/session");
        let mut seeds = 0;
        for entry in std::fs::read_dir(&corpus).expect("seed corpus") {
            session(&std::fs::read(entry.unwrap().path()).unwrap());
            seeds += 1;
        }
        assert!(seeds > 0);
        // Generated inputs mutate the seeds, so they get past the handshake.
        let seeds: Vec<Vec<u8>> =
            std::fs::read_dir(&corpus).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
        let mut x = 0x9e37_79b9_u32;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for round in 0..3000usize {
            let mut input = seeds[round % seeds.len()].clone();
            for _ in 0..1 + next() % 8 {
                let at = next() as usize % (input.len() + 1);
                match next() % 3 {
                    0 if at < input.len() => input[at] = next() as u8,
                    1 => input.insert(at, next() as u8),
                    _ if at < input.len() => {
                        input.remove(at);
                    }
                    _ => {}
                }
            }
            session(&input);
        }
    }
}
