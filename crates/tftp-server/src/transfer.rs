//! One read transfer as a state machine: packets and timer expiries in,
//! actions out. No sockets, no files, no clocks — the shell owns those.
//!
//! Blocks are numbered from 1 in absolute terms (u64) and put on the wire
//! modulo 2^16, so files larger than 65535 blocks roll over (block 0 follows
//! 65535, as tftp-hpa does). With RFC 7440 windowsize W the server sends W
//! blocks, then waits for the ACK of the last; an ACK of an earlier block
//! means the client lost what followed, so sending resumes right after it.
//! An ACK for a block already acknowledged is ignored — answering it would
//! start the Sorcerer's Apprentice cascade of duplicate blocks.
//!
//! Until the peer acknowledges something, it has not shown that it asked:
//! a request's source address can be forged, and then everything sent goes
//! to a victim. So the first packet is resent at most
//! [`ReadTransfer::with_unacknowledged_retries`] times, and a transfer that
//! never heard an ACK ends silently (no error packet either).

use std::time::Duration;

use crate::options::Negotiated;
use crate::wire::ErrorCode;

/// Something the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send an OACK with these options.
    SendOack(Vec<(String, String)>),
    /// Send DATA for absolute block `index`: bytes `offset..offset + len`.
    SendData {
        /// Block number on the wire.
        block: u16,
        /// Byte offset in the content.
        offset: u64,
        /// Payload length (may be 0 for the final block).
        len: usize,
    },
    /// Send an ERROR and end.
    SendError(ErrorCode, String),
    /// (Re)arm the retransmission timer.
    ArmTimer(Duration),
    /// The transfer is over.
    Finish(Outcome),
}

/// How a transfer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every block acknowledged.
    Complete,
    /// The client stopped answering.
    TimedOut,
    /// The client sent an ERROR (e.g. UEFI's tsize probe aborts with 8).
    ClientAborted,
    /// The client sent something that makes no sense here.
    ProtocolError,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// OACK sent, waiting for ACK 0.
    AwaitOackAck,
    /// DATA flowing.
    Sending,
    /// Over.
    Done,
}

/// A read transfer of `size` bytes.
#[derive(Debug)]
pub struct ReadTransfer {
    size: u64,
    blksize: u64,
    windowsize: u64,
    timeout: Duration,
    max_retries: u32,
    /// Retry limit while nothing has been acknowledged.
    unacknowledged_retries: u32,
    /// Whether the peer has acknowledged anything (an OACK or a block).
    acknowledged: bool,
    oack: Vec<(String, String)>,
    state: State,
    /// First block not yet acknowledged.
    base: u64,
    /// Next block to send in the current window.
    next: u64,
    /// Absolute number of the final (short) block.
    last: u64,
    retries: u32,
    /// Blocks sent again after a timeout or a partial ACK.
    pub retransmitted: u64,
}

impl ReadTransfer {
    /// A transfer of `size` bytes with negotiated parameters.
    pub fn new(size: u64, negotiated: &Negotiated, max_retries: u32) -> Self {
        let blksize = u64::from(negotiated.blksize);
        Self {
            size,
            blksize,
            windowsize: u64::from(negotiated.windowsize),
            timeout: negotiated.timeout,
            max_retries,
            unacknowledged_retries: max_retries,
            acknowledged: false,
            oack: negotiated.oack.clone(),
            state: State::Sending,
            base: 1,
            next: 1,
            last: size / blksize + 1,
            retries: 0,
            retransmitted: 0,
        }
    }

    /// Resends of the first packet (OACK or first window) allowed before
    /// the peer has acknowledged anything; capped by the overall retry
    /// limit. Bounds what a forged request makes us send to its victim.
    #[must_use]
    pub fn with_unacknowledged_retries(mut self, retries: u32) -> Self {
        self.unacknowledged_retries = retries;
        self
    }

    /// Whether the peer has acknowledged anything yet: only then is it
    /// known to be the one that asked.
    pub fn acknowledged(&self) -> bool {
        self.acknowledged
    }

    /// Number of blocks in the transfer.
    pub fn blocks(&self) -> u64 {
        self.last
    }

    /// First actions: the OACK if options were accepted, else the first window.
    pub fn start(&mut self) -> Vec<Action> {
        if self.oack.is_empty() {
            self.state = State::Sending;
            let mut actions = self.window();
            actions.push(Action::ArmTimer(self.timeout));
            actions
        } else {
            self.state = State::AwaitOackAck;
            vec![Action::SendOack(self.oack.clone()), Action::ArmTimer(self.timeout)]
        }
    }

    fn data(&self, index: u64) -> Action {
        let offset = (index - 1) * self.blksize;
        let len = self.size.saturating_sub(offset).min(self.blksize);
        // Truncation is the point: block numbers wrap at 2^16.
        #[allow(clippy::cast_possible_truncation)]
        let block = (index & 0xffff) as u16;
        Action::SendData { block, offset, len: usize::try_from(len).unwrap_or(usize::MAX) }
    }

    /// Sends from `base` up to a full window.
    fn window(&mut self) -> Vec<Action> {
        let end = (self.base + self.windowsize - 1).min(self.last);
        let actions = (self.base..=end).map(|i| self.data(i)).collect();
        self.next = end + 1;
        actions
    }

    /// Maps a wire block number onto the absolute block it acknowledges,
    /// if it lies within what is outstanding (`base - 1 ..= next - 1`).
    fn acked(&self, wire: u16) -> Option<u64> {
        let low = self.base - 1;
        let high = self.next - 1;
        let delta = u64::from(wire.wrapping_sub((low & 0xffff) as u16));
        let candidate = low + delta;
        (candidate <= high).then_some(candidate)
    }

    /// Whether ACK `wire` confirms everything sent so far: once it is
    /// handled, the client has nothing more to send until new data (or the
    /// end of the transfer) reaches it. Lets the I/O shell stop listening
    /// without first asking the socket for a datagram that cannot be there.
    pub fn ack_settles(&self, wire: u16) -> bool {
        match self.state {
            State::AwaitOackAck => wire == 0,
            State::Sending => self.acked(wire).is_some_and(|index| index + 1 == self.next),
            State::Done => false,
        }
    }

    /// Handles an ACK from the client.
    pub fn on_ack(&mut self, wire: u16) -> Vec<Action> {
        match self.state {
            State::Done => Vec::new(),
            State::AwaitOackAck => {
                if wire != 0 {
                    return Vec::new();
                }
                self.state = State::Sending;
                self.retries = 0;
                self.acknowledged = true;
                let mut actions = self.window();
                actions.push(Action::ArmTimer(self.timeout));
                actions
            }
            State::Sending => {
                let Some(index) = self.acked(wire) else { return Vec::new() };
                if index < self.base {
                    // Duplicate of an ACK already handled: ignore.
                    return Vec::new();
                }
                self.acknowledged = true;
                if index == self.last {
                    self.state = State::Done;
                    return vec![Action::Finish(Outcome::Complete)];
                }
                self.retries = 0;
                let partial = index + 1 < self.next;
                self.base = index + 1;
                if partial {
                    self.retransmitted += self.next - self.base;
                }
                if partial || self.base == self.next {
                    let mut actions = self.window();
                    actions.push(Action::ArmTimer(self.timeout));
                    actions
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// Handles an ERROR from the client.
    pub fn on_error(&mut self) -> Vec<Action> {
        if self.state == State::Done {
            return Vec::new();
        }
        self.state = State::Done;
        vec![Action::Finish(Outcome::ClientAborted)]
    }

    /// Handles a packet that has no place in a read transfer (DATA, a new
    /// request, an OACK on the transfer port).
    pub fn on_illegal(&mut self) -> Vec<Action> {
        if self.state == State::Done {
            return Vec::new();
        }
        self.state = State::Done;
        vec![
            Action::SendError(ErrorCode::IllegalOperation, "illegal operation during a read".into()),
            Action::Finish(Outcome::ProtocolError),
        ]
    }

    /// Handles the retransmission timer firing.
    pub fn on_timeout(&mut self) -> Vec<Action> {
        match self.state {
            State::Done => Vec::new(),
            _ if !self.acknowledged && self.retries >= self.unacknowledged_retries.min(self.max_retries) => {
                // Maybe a forged request: nothing more to its address.
                self.state = State::Done;
                vec![Action::Finish(Outcome::TimedOut)]
            }
            _ if self.retries >= self.max_retries => {
                self.state = State::Done;
                vec![
                    Action::SendError(
                        ErrorCode::NotDefined,
                        "timed out waiting for an acknowledgement".into(),
                    ),
                    Action::Finish(Outcome::TimedOut),
                ]
            }
            State::AwaitOackAck => {
                self.retries += 1;
                vec![Action::SendOack(self.oack.clone()), Action::ArmTimer(self.timeout)]
            }
            State::Sending => {
                self.retries += 1;
                self.retransmitted += self.next - self.base;
                let mut actions = self.window();
                actions.push(Action::ArmTimer(self.timeout));
                actions
            }
        }
    }

    /// Whether the transfer is over.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn negotiated(blksize: u16, windowsize: u16, oack: bool) -> Negotiated {
        Negotiated {
            blksize,
            windowsize,
            timeout: Duration::from_secs(1),
            tsize: None,
            oack: if oack { vec![("blksize".into(), blksize.to_string())] } else { Vec::new() },
        }
    }

    fn blocks(actions: &[Action]) -> Vec<u16> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::SendData { block, .. } => Some(*block),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn lockstep_transfer_with_a_final_empty_block() {
        // 1024 bytes at 512: blocks 1, 2 and an empty block 3.
        let mut t = ReadTransfer::new(1024, &negotiated(512, 1, false), 5);
        assert_eq!(blocks(&t.start()), [1]);
        assert_eq!(blocks(&t.on_ack(1)), [2]);
        let last = t.on_ack(2);
        assert_eq!(last[0], Action::SendData { block: 3, offset: 1024, len: 0 });
        assert_eq!(t.on_ack(3), [Action::Finish(Outcome::Complete)]);
        assert!(t.is_done());
    }

    #[test]
    fn an_ack_settles_only_when_it_confirms_everything_sent() {
        // 10 blocks of 8 bytes (and an empty 11th), windows of 4.
        let mut t = ReadTransfer::new(80, &negotiated(8, 4, true), 5);
        t.start();
        assert!(!t.ack_settles(1), "no data sent yet: only the OACK's ACK 0 counts");
        assert!(t.ack_settles(0));
        assert_eq!(blocks(&t.on_ack(0)), [1, 2, 3, 4]);
        assert!(!t.ack_settles(0), "a duplicate of ACK 0");
        assert!(!t.ack_settles(2), "blocks 3 and 4 are still in flight");
        assert!(!t.ack_settles(5), "never sent");
        assert!(t.ack_settles(4));
        assert_eq!(blocks(&t.on_ack(2)), [3, 4, 5, 6], "a partial ACK resends from block 3");
        assert!(!t.ack_settles(4));
        assert!(t.ack_settles(6));
        t.on_ack(6);
        t.on_ack(10);
        assert!(t.ack_settles(11), "the final empty block");
        t.on_ack(11);
        assert!(t.is_done());
        assert!(!t.ack_settles(11), "nothing is awaited once done");
    }

    #[test]
    fn oack_first_then_data() {
        let mut t = ReadTransfer::new(10, &negotiated(8, 1, true), 5);
        assert!(matches!(t.start()[0], Action::SendOack(_)));
        assert!(t.on_ack(1).is_empty(), "only ACK 0 answers an OACK");
        assert_eq!(t.on_ack(0)[0], Action::SendData { block: 1, offset: 0, len: 8 });
    }

    #[test]
    fn duplicate_acks_do_not_cause_duplicate_data() {
        let mut t = ReadTransfer::new(5000, &negotiated(512, 1, false), 5);
        t.start();
        assert_eq!(blocks(&t.on_ack(1)), [2]);
        assert!(t.on_ack(1).is_empty(), "Sorcerer's Apprentice: a late duplicate ACK must be ignored");
        assert_eq!(blocks(&t.on_ack(2)), [3]);
    }

    #[test]
    fn windows_and_partial_acks() {
        let mut t = ReadTransfer::new(512 * 10, &negotiated(512, 4, false), 5);
        assert_eq!(blocks(&t.start()), [1, 2, 3, 4]);
        assert!(t.on_ack(2).len() == 4 + 1, "partial ACK resends from block 3");
        assert_eq!(t.retransmitted, 2);
        // Window now 3..=6; full ACK of 6 sends 7..=10.
        assert_eq!(blocks(&t.on_ack(6)), [7, 8, 9, 10]);
        assert_eq!(blocks(&t.on_ack(10)), [11]);
        assert_eq!(t.on_ack(11), [Action::Finish(Outcome::Complete)]);
    }

    #[test]
    fn timeouts_resend_then_give_up() {
        let mut t = ReadTransfer::new(1000, &negotiated(512, 1, false), 2);
        t.start();
        assert_eq!(blocks(&t.on_ack(1)), [2]);
        assert_eq!(blocks(&t.on_timeout()), [2]);
        assert_eq!(blocks(&t.on_timeout()), [2]);
        let last = t.on_timeout();
        assert!(matches!(last[..], [Action::SendError(..), Action::Finish(Outcome::TimedOut)]));
        assert!(t.on_ack(2).is_empty());
    }

    #[test]
    fn an_unacknowledged_first_packet_is_resent_a_bounded_number_of_times_then_dropped_silently() {
        for oack in [false, true] {
            let mut t = ReadTransfer::new(5000, &negotiated(512, 4, oack), 5).with_unacknowledged_retries(1);
            let mut sent = t.start();
            sent.extend(t.on_timeout());
            assert_eq!(t.on_timeout(), [Action::Finish(Outcome::TimedOut)], "no error packet either");
            let packets = sent.iter().filter(|a| !matches!(a, Action::ArmTimer(_))).count();
            assert_eq!(packets, if oack { 2 } else { 8 }, "{sent:?}");
            assert!(!t.acknowledged());
        }
        // Once acknowledged, the full retry count applies.
        let mut t = ReadTransfer::new(5000, &negotiated(512, 1, false), 3).with_unacknowledged_retries(0);
        t.start();
        t.on_ack(1);
        assert!(t.acknowledged());
        for _ in 0..3 {
            assert_eq!(blocks(&t.on_timeout()), [2]);
        }
        assert!(matches!(t.on_timeout()[..], [Action::SendError(..), Action::Finish(Outcome::TimedOut)]));
    }

    #[test]
    fn block_numbers_roll_over() {
        // 70,000 blocks of 8 bytes.
        let size = 8 * 70_000;
        let mut t = ReadTransfer::new(size, &negotiated(8, 1, false), 5);
        t.start();
        for i in 1..=70_000u64 {
            let actions = t.on_ack((i & 0xffff) as u16);
            if i == 70_000 {
                assert_eq!(blocks(&actions), [(70_001 & 0xffff) as u16]);
            } else {
                assert_eq!(blocks(&actions), [((i + 1) & 0xffff) as u16], "after ack {i}");
            }
        }
        assert_eq!(t.on_ack((70_001 & 0xffff) as u16), [Action::Finish(Outcome::Complete)]);
    }

    proptest! {
        /// Whatever the client sends, in any order, the machine never panics,
        /// never sends a block outside the file, and finishes at most once.
        #[test]
        fn any_event_sequence_is_safe(
            size in 0u64..5000,
            blksize in 8u16..600,
            windowsize in 1u16..8,
            events in proptest::collection::vec((0u8..4, any::<u16>()), 0..200),
        ) {
            let mut t = ReadTransfer::new(size, &negotiated(blksize, windowsize, size % 2 == 0), 3);
            let mut all = t.start();
            for (kind, block) in events {
                all.extend(match kind {
                    0 => t.on_ack(block),
                    1 => t.on_timeout(),
                    2 => t.on_error(),
                    _ => t.on_illegal(),
                });
            }
            let mut finishes = 0;
            for action in &all {
                match action {
                    Action::SendData { offset, len, .. } => prop_assert!(offset + *len as u64 <= size),
                    Action::Finish(_) => finishes += 1,
                    _ => {}
                }
            }
            prop_assert!(finishes <= 1);
        }

        /// A perfect client always completes, receiving each byte once.
        #[test]
        fn a_perfect_client_receives_everything(size in 0u64..20_000, blksize in 8u16..1500, windowsize in 1u16..16) {
            let mut t = ReadTransfer::new(size, &negotiated(blksize, windowsize, true), 3);
            let mut pending = t.start();
            let mut received = 0u64;
            let mut done = false;
            for _ in 0..100_000 {
                let mut last_block = None;
                for action in std::mem::take(&mut pending) {
                    match action {
                        Action::SendOack(_) => last_block = Some(0),
                        Action::SendData { block, len, .. } => {
                            received += len as u64;
                            last_block = Some(block);
                        }
                        Action::Finish(outcome) => {
                            prop_assert_eq!(outcome, Outcome::Complete);
                            done = true;
                        }
                        _ => {}
                    }
                }
                if done {
                    break;
                }
                let block = last_block.expect("the machine always sends something until done");
                pending = t.on_ack(block);
            }
            prop_assert!(done);
            prop_assert_eq!(received, size);
        }
    }
}
