//! The embedded store's watch history: the events of recent revisions, kept
//! so a watch can start from a past revision. It is bounded both by the
//! number of events and by the bytes they hold; what falls out counts as
//! compacted, exactly as after [`super::EmbeddedStore`]'s `compact`, so a
//! watcher that fell too far behind is told [`StoreError::Compacted`] and
//! lists again.
//!
//! Why a byte bound: with only a count, 100,000 events of large values
//! (host records carrying boot reports, say) held gigabytes. Why constants
//! rather than settings: the bounds only decide how far behind a watcher
//! may fall before it re-lists, and every watcher of this backend lives in
//! the same process, where a re-list is one in-memory range read.

use std::collections::VecDeque;

use crate::store::{Revision, StoreError, StoreResult, WatchEvent};

/// Most events kept.
pub(super) const MAX_EVENTS: usize = 100_000;
/// Most bytes kept, counted by [`event_bytes`].
pub(super) const MAX_BYTES: usize = 32 * 1024 * 1024;

/// What one kept event costs: its key and value plus the fixed size of the
/// entry, so many tiny events are counted too.
pub(super) fn event_bytes(event: &WatchEvent) -> usize {
    event.kv.key.len() + event.kv.value.len() + size_of::<(Revision, WatchEvent)>()
}

/// Recent events in revision order.
pub(super) struct History {
    events: VecDeque<(Revision, WatchEvent)>,
    /// Sum of [`event_bytes`] over `events`.
    bytes: usize,
    /// Every event with a revision >= `floor` is in `events`.
    floor: Revision,
    max_events: usize,
    max_bytes: usize,
}

impl History {
    /// An empty history whose first event will have revision `floor` or later.
    pub(super) fn new(floor: Revision) -> Self {
        Self::with_limits(floor, MAX_EVENTS, MAX_BYTES)
    }

    /// Same with other bounds (tests).
    pub(super) fn with_limits(floor: Revision, max_events: usize, max_bytes: usize) -> Self {
        Self { events: VecDeque::new(), bytes: 0, floor, max_events, max_bytes }
    }

    /// Appends an event; call [`Self::trim`] once the revision is complete.
    pub(super) fn push(&mut self, revision: Revision, event: WatchEvent) {
        self.bytes += event_bytes(&event);
        self.events.push_back((revision, event));
    }

    /// Drops the oldest events until both bounds hold. A revision that
    /// loses any of its events counts as compacted as a whole.
    pub(super) fn trim(&mut self) {
        while self.events.len() > self.max_events || self.bytes > self.max_bytes {
            let Some((dropped, event)) = self.events.pop_front() else { break };
            self.bytes -= event_bytes(&event);
            self.floor = self.floor.max(dropped + 1);
        }
    }

    /// Drops events before `revision`.
    pub(super) fn compact(&mut self, revision: Revision) {
        while self.events.front().is_some_and(|(rev, _)| *rev < revision) {
            if let Some((_, event)) = self.events.pop_front() {
                self.bytes -= event_bytes(&event);
            }
        }
        self.floor = self.floor.max(revision);
    }

    /// Events with revision >= `from` under `prefix`, one batch per
    /// revision; `current` is the store's revision (a watch from beyond it
    /// waits for what comes).
    pub(super) fn since(
        &self,
        prefix: &str,
        from: Revision,
        current: Revision,
    ) -> StoreResult<Vec<Vec<WatchEvent>>> {
        if from < self.floor && from <= current {
            return Err(StoreError::Compacted { requested: from, compact_revision: self.floor });
        }
        let start = self.events.partition_point(|(rev, _)| *rev < from);
        let mut batches: Vec<(Revision, Vec<WatchEvent>)> = Vec::new();
        for (rev, event) in self.events.range(start..) {
            if !event.kv.key.starts_with(prefix) {
                continue;
            }
            match batches.last_mut() {
                Some((batch_rev, batch)) if batch_rev == rev => batch.push(event.clone()),
                _ => batches.push((*rev, vec![event.clone()])),
            }
        }
        Ok(batches.into_iter().map(|(_, batch)| batch).collect())
    }

    /// Whether no event is kept.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Bytes kept, as counted (tests compare it with a recount).
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes kept, counted again from the events.
    #[cfg(test)]
    pub(super) fn recount(&self) -> usize {
        self.events.iter().map(|(_, event)| event_bytes(event)).sum()
    }

    /// Bounds this history keeps to.
    #[cfg(test)]
    pub(super) fn max_bytes(&self) -> usize {
        self.max_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EventKind, KeyValue};

    fn put(key: &str, value_len: usize, revision: Revision) -> WatchEvent {
        WatchEvent {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.to_owned(),
                value: vec![7; value_len],
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: 0,
            },
        }
    }

    #[test]
    fn large_values_are_bounded_by_bytes_and_old_revisions_report_compacted() {
        let value = 100_000;
        let mut history = History::with_limits(2, 1_000, 1_000_000);
        for rev in 2..60 {
            history.push(rev, put("/big", value, rev));
            history.trim();
            assert!(history.bytes() <= history.max_bytes(), "{} bytes kept", history.bytes());
            assert_eq!(history.bytes(), history.recount());
        }
        // Far fewer than the event bound: the byte bound trimmed them.
        let kept = history.since("/", history.floor, 59).unwrap().len();
        assert_eq!(kept, 1_000_000 / event_bytes(&put("/big", value, 0)));
        assert!(matches!(
            history.since("/", 2, 59),
            Err(StoreError::Compacted { requested: 2, compact_revision }) if compact_revision == 60 - kept as i64
        ));
        // The newest revisions are still replayed.
        assert_eq!(history.since("/", 59, 59).unwrap().len(), 1);
        assert!(history.since("/", 60, 59).unwrap().is_empty());
    }

    #[test]
    fn a_revision_that_loses_part_of_its_events_counts_as_compacted() {
        let one = event_bytes(&put("/a", 10, 0));
        let mut history = History::with_limits(2, 100, 3 * one);
        history.push(2, put("/a", 10, 2));
        history.push(2, put("/b", 10, 2));
        history.trim();
        history.push(3, put("/a", 10, 3));
        history.push(3, put("/b", 10, 3));
        history.trim();
        assert!(matches!(history.since("/", 2, 3), Err(StoreError::Compacted { compact_revision: 3, .. })));
        assert_eq!(history.since("/", 3, 3).unwrap(), vec![vec![put("/a", 10, 3), put("/b", 10, 3)]]);
    }

    #[test]
    fn an_event_larger_than_the_bound_is_not_kept() {
        let mut history = History::with_limits(2, 100, 1_000);
        history.push(2, put("/huge", 5_000, 2));
        history.trim();
        assert!(history.is_empty() && history.bytes() == 0);
        // A watcher waiting for revision 2 is told to list again.
        assert!(matches!(history.since("/", 2, 2), Err(StoreError::Compacted { compact_revision: 3, .. })));
    }

    #[test]
    fn compaction_releases_bytes() {
        let mut history = History::with_limits(2, 100, usize::MAX);
        for rev in 2..10 {
            history.push(rev, put("/k", 1_000, rev));
        }
        history.compact(8);
        assert_eq!(history.bytes(), history.recount());
        assert_eq!(history.bytes(), 2 * event_bytes(&put("/k", 1_000, 0)));
    }
}
