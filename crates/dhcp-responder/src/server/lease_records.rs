//! Lease records in the store: the key layout (`/bootfleet/v1/leases/<ip>`)
//! and the protobuf value, read and written only here.

use std::net::Ipv4Addr;

use bootfleet_core::store::{KeyValue, TxnOp};
use bootfleet_proto::v1 as pb;
use prost::Message;

use crate::full::{LeaseEntry, LeaseRecord, LeaseState};

/// Where the leases live.
pub(super) const PREFIX: &str = "/bootfleet/v1/leases/";

/// The key of the lease of `ip`.
pub(super) fn key(ip: Ipv4Addr) -> String {
    format!("{PREFIX}{ip}")
}

/// The address a lease key names.
pub(super) fn address(key: &str) -> Option<Ipv4Addr> {
    key.strip_prefix(PREFIX)?.parse().ok()
}

/// A stored lease as the allocator sees it (`None`: not a lease record).
pub(super) fn decode(kv: &KeyValue) -> Option<(Ipv4Addr, LeaseEntry)> {
    let lease = pb::Lease::decode(kv.value.as_slice()).ok()?;
    let state = match lease.state() {
        pb::lease::State::Offered => LeaseState::Offered,
        pb::lease::State::Bound => LeaseState::Bound,
        pb::lease::State::Declined => LeaseState::Declined,
    };
    Some((
        lease.ip.parse().ok()?,
        LeaseEntry { mac: lease.mac, state, expires_unix_ms: lease.expires_unix_ms },
    ))
}

/// The operation that stores `record` for `ip` (or with `None` deletes it),
/// naming `member_id` as its writer.
pub(super) fn put(ip: Ipv4Addr, record: Option<&LeaseRecord>, member_id: &str) -> TxnOp {
    let Some(record) = record else { return TxnOp::delete(key(ip)) };
    let state = match record.lease.state {
        LeaseState::Offered => pb::lease::State::Offered,
        LeaseState::Bound => pb::lease::State::Bound,
        LeaseState::Declined => pb::lease::State::Declined,
    };
    let value = pb::Lease {
        ip: ip.to_string(),
        mac: record.lease.mac.clone(),
        state: state.into(),
        expires_unix_ms: record.lease.expires_unix_ms,
        hostname: record.hostname.clone(),
        member_id: member_id.to_owned(),
    };
    TxnOp::put(key(ip), value.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_the_store_encoding() {
        let ip = Ipv4Addr::new(198, 18, 0, 9);
        let lease =
            LeaseEntry { mac: "52:54:00:00:00:01".into(), state: LeaseState::Declined, expires_unix_ms: 42 };
        let op = put(ip, Some(&LeaseRecord { lease: lease.clone(), hostname: "h".into() }), "r1");
        let TxnOp::Put { key: stored_key, value, .. } = op else { panic!("a put: {op:?}") };
        assert_eq!(
            (stored_key.as_str(), address(&stored_key)),
            ("/bootfleet/v1/leases/198.18.0.9", Some(ip))
        );
        let kv =
            KeyValue { key: stored_key, value, create_revision: 1, mod_revision: 1, version: 1, lease: 0 };
        assert_eq!(decode(&kv), Some((ip, lease)));
        assert!(matches!(put(ip, None, "r1"), TxnOp::Delete { .. }));
        assert_eq!(address("/bootfleet/v1/hosts/x"), None);
    }
}
