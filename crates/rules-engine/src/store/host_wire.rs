//! Host records kept as encoded pieces, so that recording one more decision
//! encodes only that decision.
//!
//! A protobuf message on the wire is its fields one after another, and a
//! repeated field is its entries one after another. So the recorder keeps
//! each history entry already encoded and builds a record by concatenation,
//! instead of decoding, cloning and re-encoding the whole bounded history
//! for every Evaluate (which was a third of the server's CPU under load).
//! A stored record is taken apart at the wire level, field by field: its
//! history entries stay as they were stored, and fields this version does
//! not know (written by a newer replica) are kept as found. `HostRecord::
//! decode` of the result equals the record built field by field (tested
//! below).

use std::collections::VecDeque;
use std::ops::Range;

use bootfleet_proto::v1::{Decision, HostEvent, HostFacts};
use bytes::{Buf, Bytes};
use prost::Message;
use prost::encoding::{
    WireType, decode_key, decode_varint, encode_key, encode_varint, encoded_len_varint, int64,
};

// Field numbers of `HostRecord` and `HostEvent` (proto/bootfleet/v1/rules.proto).
const RECORD_MAC: u32 = 1;
const RECORD_FACTS: u32 = 2;
const RECORD_LAST_DECISION: u32 = 3;
const RECORD_HISTORY: u32 = 4;
const EVENT_AT: u32 = 1;
const EVENT_FACTS: u32 = 2;
const EVENT_DECISION: u32 = 3;
const EVENT_DECIDED_BY: u32 = 4;

/// A stored host record that is not valid protobuf.
#[derive(Debug, thiserror::Error)]
#[error("host record is not valid protobuf: {0}")]
pub struct Malformed(&'static str);

/// Appends a length-delimited field (a string, bytes or a nested message).
fn put_field(tag: u32, value: &[u8], wire: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, wire);
    encode_varint(value.len() as u64, wire);
    wire.extend_from_slice(value);
}

/// Appends a nested message field whose encoded length is `len`; returns
/// where its body lies in `wire`.
fn put_message(tag: u32, message: &impl Message, len: usize, wire: &mut Vec<u8>) -> Range<usize> {
    encode_key(tag, WireType::LengthDelimited, wire);
    encode_varint(len as u64, wire);
    let start = wire.len();
    // A Vec grows as needed, so encoding into it cannot run out of room.
    let _ = message.encode(wire);
    start..wire.len()
}

/// One history entry, encoded once: the whole `HostEvent`, and views of its
/// facts and decision (a record repeats the newest ones at the top).
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedEvent {
    event: Bytes,
    facts: Option<Bytes>,
    decision: Option<Bytes>,
}

impl EncodedEvent {
    /// Encodes the event these fields make, without building it.
    pub fn from_parts(
        at_unix_ms: i64,
        facts: Option<&HostFacts>,
        decision: Option<&Decision>,
        decided_by: &str,
    ) -> Self {
        // Each encoded_len walks the whole message: once per part.
        let facts = facts.map(|f| (f, f.encoded_len()));
        let decision = decision.map(|d| (d, d.encoded_len()));
        let parts_len = facts.map_or(0, |(_, len)| len + 6) + decision.map_or(0, |(_, len)| len + 6);
        let mut wire = Vec::with_capacity(24 + decided_by.len() + parts_len);
        if at_unix_ms != 0 {
            int64::encode(EVENT_AT, &at_unix_ms, &mut wire);
        }
        let facts_at = facts.map(|(f, len)| put_message(EVENT_FACTS, f, len, &mut wire));
        let decision_at = decision.map(|(d, len)| put_message(EVENT_DECISION, d, len, &mut wire));
        if !decided_by.is_empty() {
            put_field(EVENT_DECIDED_BY, decided_by.as_bytes(), &mut wire);
        }
        let event = Bytes::from(wire);
        Self { facts: facts_at.map(|r| event.slice(r)), decision: decision_at.map(|r| event.slice(r)), event }
    }

    /// Encodes `event`.
    pub fn new(event: &HostEvent) -> Self {
        Self::from_parts(event.at_unix_ms, event.facts.as_ref(), event.decision.as_ref(), &event.decided_by)
    }

    /// Bytes the encoded event holds.
    pub fn encoded_len(&self) -> usize {
        self.event.len()
    }
}

/// A host record as encoded pieces.
#[derive(Clone, Debug, Default)]
pub struct EncodedRecord {
    mac: String,
    facts: Option<Bytes>,
    last_decision: Option<Bytes>,
    history: VecDeque<Bytes>,
    /// Fields the recorder does not touch (`boot_status`, and any this
    /// version does not know), as found.
    rest: Vec<u8>,
}

impl EncodedRecord {
    /// A record with no history yet.
    pub fn empty(mac: &str) -> Self {
        Self { mac: mac.to_owned(), ..Self::default() }
    }

    /// Takes a stored record apart, field by field.
    pub fn from_stored(stored: &[u8]) -> Result<Self, Malformed> {
        let whole = Bytes::copy_from_slice(stored);
        let mut buf = whole.clone();
        let mut record = Self::default();
        while buf.has_remaining() {
            let field_start = whole.len() - buf.remaining();
            let (tag, wire_type) = decode_key(&mut buf).map_err(|_| Malformed("bad field key"))?;
            let value = match wire_type {
                WireType::Varint => {
                    decode_varint(&mut buf).map_err(|_| Malformed("bad varint"))?;
                    None
                }
                WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                    let width = if wire_type == WireType::SixtyFourBit { 8 } else { 4 };
                    if buf.remaining() < width {
                        return Err(Malformed("truncated fixed-width field"));
                    }
                    buf.advance(width);
                    None
                }
                WireType::LengthDelimited => {
                    let len = decode_varint(&mut buf).map_err(|_| Malformed("bad length"))?;
                    let len = usize::try_from(len).map_err(|_| Malformed("bad length"))?;
                    if buf.remaining() < len {
                        return Err(Malformed("truncated field"));
                    }
                    Some(buf.split_to(len))
                }
                WireType::StartGroup | WireType::EndGroup => return Err(Malformed("groups are not used")),
            };
            match (tag, value) {
                (RECORD_MAC, Some(mac)) => {
                    record.mac =
                        String::from_utf8(mac.to_vec()).map_err(|_| Malformed("mac is not UTF-8"))?;
                }
                (RECORD_FACTS, Some(facts)) => record.facts = Some(facts),
                (RECORD_LAST_DECISION, Some(decision)) => record.last_decision = Some(decision),
                (RECORD_HISTORY, Some(entry)) => record.history.push_back(entry),
                _ => record.rest.extend_from_slice(&whole[field_start..whole.len() - buf.remaining()]),
            }
        }
        Ok(record)
    }

    /// Appends `event` as the newest entry, keeping at most `limit`; the
    /// record's facts and decision become the event's.
    pub fn push(&mut self, event: &EncodedEvent, limit: usize) {
        self.facts.clone_from(&event.facts);
        self.last_decision.clone_from(&event.decision);
        self.history.push_back(event.event.clone());
        while self.history.len() > limit.max(1) {
            self.history.pop_front();
        }
    }

    /// Drops the oldest history entries (keeping the newest) until the
    /// record encodes to at most `max` bytes; false if even that is too big.
    pub fn fit(&mut self, max: usize) -> bool {
        while self.encoded_len() > max && self.history.len() > 1 {
            self.history.pop_front();
        }
        self.encoded_len() <= max
    }

    /// The record's encoded size.
    pub fn encoded_len(&self) -> usize {
        let field = |len: usize| 1 + encoded_len_varint(len as u64) + len;
        let optional = |b: &Option<Bytes>| b.as_ref().map_or(0, |b| field(b.len()));
        (if self.mac.is_empty() { 0 } else { field(self.mac.len()) })
            + optional(&self.facts)
            + optional(&self.last_decision)
            + self.history.iter().map(|e| field(e.len())).sum::<usize>()
            + self.rest.len()
    }

    /// The record's wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut wire = Vec::with_capacity(self.encoded_len());
        if !self.mac.is_empty() {
            put_field(RECORD_MAC, self.mac.as_bytes(), &mut wire);
        }
        if let Some(facts) = &self.facts {
            put_field(RECORD_FACTS, facts, &mut wire);
        }
        if let Some(decision) = &self.last_decision {
            put_field(RECORD_LAST_DECISION, decision, &mut wire);
        }
        for entry in &self.history {
            put_field(RECORD_HISTORY, entry, &mut wire);
        }
        wire.extend_from_slice(&self.rest);
        wire
    }
}

#[cfg(test)]
mod tests {
    use bootfleet_proto::v1::{BootStatus, HostRecord, ImageProfile};

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

    fn decoded(record: &EncodedRecord) -> HostRecord {
        let wire = record.encode();
        assert_eq!(wire.len(), record.encoded_len());
        HostRecord::decode(wire.as_slice()).unwrap()
    }

    #[test]
    fn appending_encoded_events_equals_rebuilding_the_record() {
        let events: Vec<HostEvent> = (0..9).map(|i| event(i, i % 4 != 1)).collect();
        for limit in [1, 3, 5, 20] {
            let mut encoded = EncodedRecord::empty("52:54:00:00:00:01");
            let mut expected = HostRecord { mac: "52:54:00:00:00:01".into(), ..HostRecord::default() };
            for e in &events {
                encoded.push(&EncodedEvent::new(e), limit);
                expected = merged(expected, std::slice::from_ref(e), limit);
                assert_eq!(decoded(&encoded), expected, "limit {limit}");
            }
        }
    }

    #[test]
    fn a_stored_record_keeps_its_history_boot_status_and_unknown_fields() {
        let stored = HostRecord {
            mac: "52:54:00:00:00:02".into(),
            facts: event(1, true).facts,
            last_decision: event(1, true).decision,
            history: (0..4).map(|i| event(i, true)).collect(),
            boot_status: Some(BootStatus { not_booted_stateless: true, ..BootStatus::default() }),
        };
        let mut wire = stored.encode_to_vec();
        // A field a newer version might add (number 99, a string).
        put_field(99, b"from a newer replica", &mut wire);
        let unchanged = EncodedRecord::from_stored(&wire).unwrap();
        assert_eq!(unchanged.encode(), wire, "taken apart and put together: the same bytes");

        let mut grown = unchanged.clone();
        let next = event(7, false);
        grown.push(&EncodedEvent::new(&next), 4);
        assert_eq!(decoded(&grown), merged(stored, &[next], 4));
        assert!(grown.encode().ends_with(b"from a newer replica"), "the unknown field survives");
    }

    #[test]
    fn malformed_records_are_refused_not_misread() {
        let good = HostRecord { mac: "52:54:00:00:00:03".into(), ..HostRecord::default() }.encode_to_vec();
        for bad in [&good[..good.len() - 1], &[0x0a, 0xff][..], &[0x0b][..], &[0xff][..]] {
            assert!(EncodedRecord::from_stored(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fit_drops_the_oldest_entries_first() {
        let mut record = EncodedRecord::empty("52:54:00:00:00:04");
        for i in 0..10 {
            record.push(&EncodedEvent::new(&event(i, true)), 20);
        }
        let full = record.encoded_len();
        assert!(record.fit(full / 2));
        let kept = decoded(&record);
        assert!(kept.history.len() < 10 && !kept.history.is_empty());
        assert_eq!(kept.history.last().unwrap().at_unix_ms, event(9, true).at_unix_ms, "the newest stays");
        assert!(!record.fit(10), "one entry alone is larger than 10 bytes");
    }

    #[test]
    fn an_event_encodes_as_prost_does() {
        for i in 0..6 {
            let e = event(i, i % 2 == 0);
            let encoded = EncodedEvent::new(&e);
            assert_eq!(encoded.event, e.encode_to_vec());
            assert_eq!(encoded.facts.as_deref(), e.facts.map(|f| f.encode_to_vec()).as_deref());
            assert_eq!(encoded.decision.as_deref(), e.decision.map(|d| d.encode_to_vec()).as_deref());
        }
    }
}
