//! Host records kept as encoded pieces, so that recording one more decision
//! encodes only that decision.
//!
//! A protobuf message on the wire is its fields one after another, and a
//! repeated field is its entries one after another. So the recorder keeps
//! each history entry already encoded and builds a record by concatenation,
//! instead of decoding, cloning and re-encoding the whole bounded history
//! for every Evaluate (which was a third of the server's CPU under load).
//! `HostRecord::decode` of the result equals the record built field by
//! field (tested below).

use std::collections::VecDeque;
use std::sync::Arc;

use bootfleet_proto::v1::{Decision, HostEvent, HostFacts, HostRecord};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, int64};

// Field numbers of `HostRecord` and `HostEvent` (proto/bootfleet/v1/rules.proto).
const RECORD_MAC: u32 = 1;
const RECORD_FACTS: u32 = 2;
const RECORD_LAST_DECISION: u32 = 3;
const RECORD_HISTORY: u32 = 4;
const EVENT_AT: u32 = 1;
const EVENT_FACTS: u32 = 2;
const EVENT_DECISION: u32 = 3;
const EVENT_DECIDED_BY: u32 = 4;

/// Appends a length-delimited field (a string, bytes or a nested message).
fn put_field(tag: u32, value: &[u8], wire: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, wire);
    encode_varint(value.len() as u64, wire);
    wire.extend_from_slice(value);
}

/// One history entry, encoded once: the whole `HostEvent`, plus its facts
/// and decision alone (a record repeats the newest ones at the top).
#[derive(Debug, PartialEq)]
pub struct EncodedEvent {
    facts: Option<Vec<u8>>,
    decision: Option<Vec<u8>>,
    event: Vec<u8>,
}

impl EncodedEvent {
    /// Encodes `event`.
    pub fn new(event: &HostEvent) -> Self {
        Self::from_parts(event.at_unix_ms, event.facts.as_ref(), event.decision.as_ref(), &event.decided_by)
    }

    /// Encodes the event these fields make, without building it.
    pub fn from_parts(
        at_unix_ms: i64,
        facts: Option<&HostFacts>,
        decision: Option<&Decision>,
        decided_by: &str,
    ) -> Self {
        let facts = facts.map(Message::encode_to_vec);
        let decision = decision.map(Message::encode_to_vec);
        let mut wire = Vec::with_capacity(
            24 + decided_by.len()
                + facts.as_ref().map_or(0, |f| f.len() + 4)
                + decision.as_ref().map_or(0, |d| d.len() + 4),
        );
        if at_unix_ms != 0 {
            int64::encode(EVENT_AT, &at_unix_ms, &mut wire);
        }
        if let Some(facts) = &facts {
            put_field(EVENT_FACTS, facts, &mut wire);
        }
        if let Some(decision) = &decision {
            put_field(EVENT_DECISION, decision, &mut wire);
        }
        if !decided_by.is_empty() {
            put_field(EVENT_DECIDED_BY, decided_by.as_bytes(), &mut wire);
        }
        Self { facts, decision, event: wire }
    }
}

/// A host record as encoded pieces.
#[derive(Clone, Debug)]
pub struct EncodedRecord {
    mac: String,
    facts: Option<Arc<EncodedEvent>>,
    last_decision: Option<Arc<EncodedEvent>>,
    history: VecDeque<Arc<EncodedEvent>>,
    /// Fields the recorder does not touch (`boot_status`), as found.
    rest: Vec<u8>,
}

impl EncodedRecord {
    /// A record with no history yet.
    pub fn empty(mac: &str) -> Self {
        Self {
            mac: mac.to_owned(),
            facts: None,
            last_decision: None,
            history: VecDeque::new(),
            rest: Vec::new(),
        }
    }

    /// Takes a stored record apart (when this recorder has not written it).
    pub fn from_record(record: &HostRecord) -> Self {
        let history: VecDeque<_> = record.history.iter().map(|e| Arc::new(EncodedEvent::new(e))).collect();
        // The top-level facts and decision as they are, even if they are not
        // the newest entry's; they are replaced by the next event anyway.
        let top = Arc::new(EncodedEvent::new(&HostEvent {
            facts: record.facts.clone(),
            decision: record.last_decision.clone(),
            ..HostEvent::default()
        }));
        let rest =
            HostRecord { boot_status: record.boot_status.clone(), ..HostRecord::default() }.encode_to_vec();
        Self {
            mac: record.mac.clone(),
            facts: top.facts.is_some().then(|| Arc::clone(&top)),
            last_decision: top.decision.is_some().then_some(top),
            history,
            rest,
        }
    }

    /// Appends `event` as the newest entry, keeping at most `limit`; the
    /// record's facts and decision become the event's.
    pub fn push(&mut self, event: Arc<EncodedEvent>, limit: usize) {
        self.facts = Some(Arc::clone(&event));
        self.last_decision = Some(Arc::clone(&event));
        self.history.push_back(event);
        while self.history.len() > limit.max(1) {
            self.history.pop_front();
        }
    }

    /// The record's wire form.
    pub fn encode(&self) -> Vec<u8> {
        let len = self.mac.len()
            + self.rest.len()
            + self.history.iter().map(|e| e.event.len() + 4).sum::<usize>()
            + self.facts.as_ref().and_then(|e| e.facts.as_ref()).map_or(0, |f| f.len() + 4)
            + self.last_decision.as_ref().and_then(|e| e.decision.as_ref()).map_or(0, |d| d.len() + 4)
            + 8;
        let mut wire = Vec::with_capacity(len);
        if !self.mac.is_empty() {
            put_field(RECORD_MAC, self.mac.as_bytes(), &mut wire);
        }
        if let Some(facts) = self.facts.as_ref().and_then(|e| e.facts.as_ref()) {
            put_field(RECORD_FACTS, facts, &mut wire);
        }
        if let Some(decision) = self.last_decision.as_ref().and_then(|e| e.decision.as_ref()) {
            put_field(RECORD_LAST_DECISION, decision, &mut wire);
        }
        for entry in &self.history {
            put_field(RECORD_HISTORY, &entry.event, &mut wire);
        }
        wire.extend_from_slice(&self.rest);
        wire
    }
}

#[cfg(test)]
mod tests {
    use bootfleet_proto::v1::{BootStatus, ImageProfile};

    use super::*;

    fn event(i: i64, decided: bool) -> HostEvent {
        HostEvent {
            at_unix_ms: 1_700_000_000_000 + i,
            facts: Some(HostFacts {
                mac: "52:54:00:00:00:01".into(),
                serial: format!("serial-{i}"),
                ..HostFacts::default()
            }),
            decision: decided.then(|| Decision {
                image_profile: Some(ImageProfile { name: format!("img-{i}"), ..ImageProfile::default() }),
                matched_rules: vec!["a".into(), format!("rule-{i}")],
                rule_set_version: u64::try_from(i).unwrap(),
                decided_at_unix_ms: i,
                ..Decision::default()
            }),
            decided_by: if i % 3 == 0 { String::new() } else { format!("replica-{i}") },
        }
    }

    /// What the recorder used to build: the decoded record, changed field
    /// by field.
    fn merged(mut record: HostRecord, events: &[HostEvent], limit: usize) -> HostRecord {
        for e in events {
            record.facts = e.facts.clone();
            record.last_decision = e.decision.clone();
            record.history.push(e.clone());
        }
        let excess = record.history.len().saturating_sub(limit);
        record.history.drain(..excess);
        record
    }

    #[test]
    fn appending_encoded_events_equals_rebuilding_the_record() {
        let events: Vec<HostEvent> = (0..9).map(|i| event(i, i % 4 != 1)).collect();
        for limit in [1, 3, 5, 20] {
            let mut encoded = EncodedRecord::empty("52:54:00:00:00:01");
            let mut expected = HostRecord { mac: "52:54:00:00:00:01".into(), ..HostRecord::default() };
            for e in &events {
                encoded.push(Arc::new(EncodedEvent::new(e)), limit);
                expected = merged(expected, std::slice::from_ref(e), limit);
                assert_eq!(
                    HostRecord::decode(encoded.encode().as_slice()).unwrap(),
                    expected,
                    "limit {limit}"
                );
            }
        }
    }

    #[test]
    fn a_stored_record_keeps_its_history_and_boot_status() {
        let stored = HostRecord {
            mac: "52:54:00:00:00:02".into(),
            facts: event(1, true).facts,
            last_decision: event(1, true).decision,
            history: (0..4).map(|i| event(i, true)).collect(),
            boot_status: Some(BootStatus { not_booted_stateless: true, ..BootStatus::default() }),
        };
        let unchanged = EncodedRecord::from_record(&stored);
        assert_eq!(HostRecord::decode(unchanged.encode().as_slice()).unwrap(), stored);

        let mut grown = unchanged.clone();
        let next = event(7, false);
        grown.push(Arc::new(EncodedEvent::new(&next)), 4);
        let expected = merged(stored, &[next], 4);
        assert_eq!(HostRecord::decode(grown.encode().as_slice()).unwrap(), expected);
    }

    #[test]
    fn an_event_encodes_as_prost_does() {
        for i in 0..6 {
            let e = event(i, i % 2 == 0);
            assert_eq!(EncodedEvent::new(&e).event, e.encode_to_vec());
        }
    }
}
