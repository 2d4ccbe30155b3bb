//! The recorder's queue: decisions waiting to be written to host records,
//! bounded whatever the store does and whatever callers send.
//!
//! Events are kept per host, newest last, at most `per_host` of them (the
//! history limit). A record keeps only its newest `per_host` entries, so a
//! queued event with `per_host` newer ones behind it would be trimmed when
//! written anyway: replacing it loses nothing (counted as coalesced). The
//! queue holds at most [`QueueLimits::max_hosts`] hosts and about
//! [`QueueLimits::max_bytes`] of encoded events: past them a new host's
//! event is refused, and a queued host keeps only its newest events (both
//! counted as dropped). A store outage of any length therefore holds a
//! bounded amount of memory, and what is kept is the newest of each host.
//!
//! Each event gets a sequence number. The writer copies a batch out,
//! writes it without holding the queue, then removes what it wrote by
//! number, so events queued meanwhile stay for the next write.

use std::collections::{BTreeMap, VecDeque};

use super::host_wire::EncodedEvent;

/// Bounds of the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Hosts with unwritten events at most.
    pub max_hosts: usize,
    /// Encoded bytes of unwritten events (and their MACs) at most.
    pub max_bytes: usize,
}

impl Default for QueueLimits {
    /// A burst of every host of a large site booting during an outage fits
    /// (a few KiB per decision); a flood of forged ones is cut off at the
    /// bytes before it costs the process much memory.
    fn default() -> Self {
        Self { max_hosts: 100_000, max_bytes: 64 << 20 }
    }
}

/// What the queue holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Hosts with unwritten events.
    pub hosts: usize,
    /// Unwritten events.
    pub events: usize,
    /// Bytes counted against [`QueueLimits::max_bytes`].
    pub bytes: usize,
}

/// What became of one pushed event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pushed {
    /// False when the event itself was refused (a new host past a bound).
    pub(crate) queued: bool,
    /// Older events of the host superseded by `per_host` newer ones.
    pub(crate) coalesced: usize,
    /// Events lost to the bounds (this one, or older ones of the host).
    pub(crate) dropped: usize,
}

/// One host's events copied out for writing.
#[derive(Clone, Debug)]
pub(crate) struct HostBatch {
    pub(crate) mac: String,
    pub(crate) events: Vec<EncodedEvent>,
    /// Sequence number of the newest event copied.
    pub(crate) up_to: u64,
}

#[derive(Debug)]
pub(crate) struct PendingEvents {
    hosts: BTreeMap<String, VecDeque<(u64, EncodedEvent)>>,
    events: usize,
    bytes: usize,
    next_seq: u64,
    per_host: usize,
    limits: QueueLimits,
}

impl PendingEvents {
    /// An empty queue keeping at most `per_host` events per host.
    pub(crate) fn new(per_host: usize, limits: QueueLimits) -> Self {
        Self { hosts: BTreeMap::new(), events: 0, bytes: 0, next_seq: 1, per_host: per_host.max(1), limits }
    }

    pub(crate) fn stats(&self) -> QueueStats {
        QueueStats { hosts: self.hosts.len(), events: self.events, bytes: self.bytes }
    }

    /// Queues `event` for `mac` within the bounds.
    pub(crate) fn push(&mut self, mac: &str, event: EncodedEvent) -> Pushed {
        let size = event.encoded_len();
        let seq = self.next_seq;
        let Some(queue) = self.hosts.get_mut(mac) else {
            let full = self.hosts.len() >= self.limits.max_hosts
                || self.bytes + size + mac.len() > self.limits.max_bytes;
            if full {
                return Pushed { queued: false, coalesced: 0, dropped: 1 };
            }
            self.next_seq += 1;
            self.hosts.insert(mac.to_owned(), VecDeque::from([(seq, event)]));
            self.events += 1;
            self.bytes += size + mac.len();
            return Pushed { queued: true, ..Pushed::default() };
        };
        self.next_seq += 1;
        queue.push_back((seq, event));
        self.events += 1;
        self.bytes += size;
        let mut pushed = Pushed { queued: true, ..Pushed::default() };
        while queue.len() > self.per_host {
            pushed.coalesced += 1;
            Self::pop_oldest(queue, &mut self.events, &mut self.bytes);
        }
        while self.bytes > self.limits.max_bytes && queue.len() > 1 {
            pushed.dropped += 1;
            Self::pop_oldest(queue, &mut self.events, &mut self.bytes);
        }
        pushed
    }

    fn pop_oldest(queue: &mut VecDeque<(u64, EncodedEvent)>, events: &mut usize, bytes: &mut usize) {
        if let Some((_, old)) = queue.pop_front() {
            *events -= 1;
            *bytes -= old.encoded_len();
        }
    }

    /// Copies the events of up to `max_hosts` hosts, in MAC order.
    pub(crate) fn batch(&self, max_hosts: usize) -> Vec<HostBatch> {
        self.hosts
            .iter()
            .take(max_hosts)
            .map(|(mac, queue)| HostBatch {
                mac: mac.clone(),
                events: queue.iter().map(|(_, e)| e.clone()).collect(),
                up_to: queue.back().map_or(0, |(seq, _)| *seq),
            })
            .collect()
    }

    /// Removes `mac`'s events numbered up to `up_to` (written, or given up
    /// on); returns how many were removed.
    pub(crate) fn remove(&mut self, mac: &str, up_to: u64) -> usize {
        let Some(queue) = self.hosts.get_mut(mac) else { return 0 };
        let mut removed = 0;
        while queue.front().is_some_and(|(seq, _)| *seq <= up_to) {
            Self::pop_oldest(queue, &mut self.events, &mut self.bytes);
            removed += 1;
        }
        if queue.is_empty() {
            self.hosts.remove(mac);
            self.bytes -= mac.len();
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at: i64, pad: usize) -> EncodedEvent {
        EncodedEvent::from_parts(at, None, None, &"x".repeat(pad))
    }

    fn ats(batch: &HostBatch) -> Vec<i64> {
        use prost::Message;
        // An event with only `at` and `decided_by` decodes as a HostEvent.
        batch
            .events
            .iter()
            .map(|e| {
                let mut record = super::super::host_wire::EncodedRecord::empty("m");
                record.push(e, 100);
                bootfleet_proto::v1::HostRecord::decode(record.encode().as_slice()).unwrap().history[0]
                    .at_unix_ms
            })
            .collect()
    }

    #[test]
    fn a_host_keeps_only_its_newest_events() {
        let mut queue = PendingEvents::new(3, QueueLimits::default());
        let mut coalesced = 0;
        for at in 1..=1000 {
            let pushed = queue.push("aa", event(at, 10));
            assert!(pushed.queued);
            assert_eq!(pushed.dropped, 0);
            coalesced += pushed.coalesced;
        }
        assert_eq!(coalesced, 997);
        assert_eq!(queue.stats().hosts, 1);
        assert_eq!(queue.stats().events, 3);
        let batch = queue.batch(10);
        assert_eq!(ats(&batch[0]), [998, 999, 1000]);
    }

    #[test]
    fn new_hosts_past_the_host_bound_are_refused_known_ones_still_queue() {
        let limits = QueueLimits { max_hosts: 2, max_bytes: 1 << 20 };
        let mut queue = PendingEvents::new(5, limits);
        assert!(queue.push("a", event(1, 1)).queued);
        assert!(queue.push("b", event(1, 1)).queued);
        let refused = queue.push("c", event(1, 1));
        assert_eq!(refused, Pushed { queued: false, coalesced: 0, dropped: 1 });
        assert!(queue.push("a", event(2, 1)).queued);
        assert_eq!(queue.stats().hosts, 2);
        assert_eq!(queue.stats().events, 3);
    }

    #[test]
    fn bytes_are_bounded_by_refusing_new_hosts_and_keeping_the_newest() {
        let size = event(1, 100).encoded_len();
        let limits = QueueLimits { max_hosts: 1000, max_bytes: 10 * (size + 2) };
        let mut queue = PendingEvents::new(20, limits);
        let mut refused = 0;
        for host in 0..50 {
            if !queue.push(&format!("{host:02}"), event(1, 100)).queued {
                refused += 1;
            }
        }
        assert_eq!(queue.stats().hosts, 10);
        assert_eq!(refused, 40);
        // A queued host under pressure keeps only its newest event.
        let pushed = queue.push("00", event(2, 100));
        assert_eq!((pushed.queued, pushed.dropped), (true, 1));
        assert!(queue.stats().bytes <= limits.max_bytes);
        assert_eq!(ats(&queue.batch(1)[0]), [2]);
    }

    #[test]
    fn removing_what_was_written_keeps_what_came_meanwhile() {
        let mut queue = PendingEvents::new(5, QueueLimits::default());
        queue.push("a", event(1, 1));
        queue.push("a", event(2, 1));
        queue.push("b", event(1, 1));
        let batch = queue.batch(10);
        assert_eq!(batch.len(), 2);
        queue.push("a", event(3, 1));
        assert_eq!(queue.remove("a", batch[0].up_to), 2);
        assert_eq!(queue.remove("b", batch[1].up_to), 1);
        assert_eq!(queue.stats(), QueueStats { hosts: 1, events: 1, bytes: event(3, 1).encoded_len() + 1 });
        assert_eq!(ats(&queue.batch(10)[0]), [3]);
        assert_eq!(queue.remove("a", u64::MAX), 1);
        assert_eq!(queue.stats(), QueueStats::default());
    }
}
