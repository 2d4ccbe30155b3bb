//! The embedded store's in-memory state and the pure logic of every write:
//! transactions, lease grants and revocations, with etcd's revision rules.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::disk::{Dirty, Loaded};
use super::history::History;
use crate::store::{
    EventKind, KeyValue, LeaseId, Revision, StoreError, StoreResult, TxnOp, TxnOpResult, TxnRequest,
    TxnResult, WatchEvent, check_key,
};

pub(super) struct Lease {
    pub(super) ttl: Duration,
    pub(super) expires: Instant,
    pub(super) keys: BTreeSet<String>,
}

pub(super) struct State {
    pub(super) kvs: BTreeMap<String, KeyValue>,
    pub(super) revision: Revision,
    /// Recent events, for watches that start in the past.
    pub(super) history: History,
    pub(super) leases: HashMap<LeaseId, Lease>,
    pub(super) next_lease: LeaseId,
}

impl State {
    /// State from the file. Every lease gets its full TTL from now — what
    /// etcd does when a new leader takes over — so a restart loses no lease.
    pub(super) fn from_loaded(loaded: Loaded) -> Self {
        let now = Instant::now();
        let mut leases: HashMap<LeaseId, Lease> = loaded
            .leases
            .into_iter()
            .map(|(id, ttl)| (id, Lease { ttl, expires: now + ttl, keys: BTreeSet::new() }))
            .collect();
        let mut kvs = BTreeMap::new();
        for kv in loaded.kvs {
            if let Some(lease) = leases.get_mut(&kv.lease) {
                lease.keys.insert(kv.key.clone());
            }
            kvs.insert(kv.key.clone(), kv);
        }
        Self {
            kvs,
            revision: loaded.revision,
            history: History::new(loaded.revision + 1),
            leases,
            next_lease: loaded.next_lease,
        }
    }

    /// Runs a transaction; its writes share one new revision.
    pub(super) fn txn(&mut self, txn: &TxnRequest, dirty: &mut Dirty) -> StoreResult<TxnResult> {
        let succeeded = txn.compares.iter().all(|c| c.holds(self.kvs.get(&c.key)));
        let ops = if succeeded { &txn.then } else { &txn.otherwise };
        self.validate(ops)?;
        let revision = self.revision + 1;
        let mut wrote = false;
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                TxnOp::Get { key } => results.push(TxnOpResult::Get(self.kvs.get(key).cloned())),
                TxnOp::Put { key, value, lease } => {
                    let previous = self.kvs.get(key);
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: previous.map_or(revision, |p| p.create_revision),
                        mod_revision: revision,
                        version: previous.map_or(1, |p| p.version + 1),
                        lease: lease.unwrap_or(0),
                    };
                    self.set(kv, revision, dirty);
                    wrote = true;
                    results.push(TxnOpResult::Put);
                }
                TxnOp::Delete { key } => {
                    let existed = self.remove(key, revision, dirty);
                    wrote |= existed;
                    results.push(TxnOpResult::Delete(existed));
                }
            }
        }
        if wrote {
            self.revision = revision;
            self.history.trim();
        }
        Ok(TxnResult { succeeded, revision: self.revision, results })
    }

    /// Rejects a branch before any of it applies, so a transaction is all or
    /// nothing: bad keys, unknown leases, a key written twice (as etcd does).
    fn validate(&self, ops: &[TxnOp]) -> StoreResult<()> {
        let mut written = BTreeSet::new();
        for op in ops {
            check_key(op.key())?;
            if let TxnOp::Put { lease: Some(lease), .. } = op
                && *lease != 0
                && !self.leases.contains_key(lease)
            {
                return Err(StoreError::LeaseNotFound(*lease));
            }
            if !matches!(op, TxnOp::Get { .. }) && !written.insert(op.key()) {
                return Err(StoreError::InvalidArgument(format!(
                    "key {:?} written twice in one transaction",
                    op.key()
                )));
            }
        }
        Ok(())
    }

    fn set(&mut self, kv: KeyValue, revision: Revision, dirty: &mut Dirty) {
        let key = kv.key.clone();
        if let Some(old) = self.kvs.get(&key).map(|p| p.lease)
            && let Some(lease) = self.leases.get_mut(&old)
        {
            lease.keys.remove(&key);
        }
        if let Some(lease) = self.leases.get_mut(&kv.lease) {
            lease.keys.insert(key.clone());
        }
        self.history.push(revision, WatchEvent { kind: EventKind::Put, kv: kv.clone() });
        self.kvs.insert(key.clone(), kv);
        dirty.keys.insert(key);
    }

    fn remove(&mut self, key: &str, revision: Revision, dirty: &mut Dirty) -> bool {
        let Some(old) = self.kvs.remove(key) else {
            return false;
        };
        if let Some(lease) = self.leases.get_mut(&old.lease) {
            lease.keys.remove(key);
        }
        let tombstone = KeyValue {
            key: key.to_owned(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
            lease: 0,
        };
        self.history.push(revision, WatchEvent { kind: EventKind::Delete, kv: tombstone });
        dirty.keys.insert(key.to_owned());
        true
    }

    pub(super) fn grant(&mut self, ttl: Duration, dirty: &mut Dirty) -> LeaseId {
        let id = self.next_lease;
        self.next_lease += 1;
        let lease = Lease { ttl, expires: Instant::now() + ttl, keys: BTreeSet::new() };
        self.leases.insert(id, lease);
        dirty.leases.insert(id);
        id
    }

    /// Revokes a lease and deletes its keys in one revision. With
    /// `only_if_expired`, a lease renewed in the meantime is kept.
    pub(super) fn revoke(
        &mut self,
        id: LeaseId,
        only_if_expired: bool,
        dirty: &mut Dirty,
    ) -> StoreResult<()> {
        let lease = self.leases.get(&id).ok_or(StoreError::LeaseNotFound(id))?;
        if only_if_expired && lease.expires > Instant::now() {
            return Ok(());
        }
        let keys: Vec<String> = lease.keys.iter().cloned().collect();
        let revision = self.revision + 1;
        let mut wrote = false;
        for key in keys {
            wrote |= self.remove(&key, revision, dirty);
        }
        if wrote {
            self.revision = revision;
            self.history.trim();
        }
        self.leases.remove(&id);
        dirty.leases.insert(id);
        Ok(())
    }

    /// Events with revision >= `from` under `prefix`, one batch per revision.
    pub(super) fn events_since(&self, prefix: &str, from: Revision) -> StoreResult<Vec<Vec<WatchEvent>>> {
        self.history.since(prefix, from, self.revision)
    }

    /// Drops history before `revision`.
    pub(super) fn compact(&mut self, revision: Revision) -> StoreResult<()> {
        if revision > self.revision {
            return Err(StoreError::InvalidArgument(format!(
                "cannot compact to future revision {revision} (current {})",
                self.revision
            )));
        }
        self.history.compact(revision);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::store::Compare;

    fn empty() -> State {
        State::from_loaded(Loaded { kvs: Vec::new(), leases: Vec::new(), revision: 1, next_lease: 1 })
    }

    #[test]
    fn a_failing_branch_applies_nothing() {
        let mut state = empty();
        let mut dirty = Dirty::default();
        let txn = TxnRequest::new().and_then([
            TxnOp::put("/a", b"1".to_vec()),
            TxnOp::Put { key: "/b".into(), value: vec![], lease: Some(99) },
        ]);
        assert!(matches!(state.txn(&txn, &mut dirty), Err(StoreError::LeaseNotFound(99))));
        let dup = TxnRequest::new().and_then([TxnOp::put("/a", vec![]), TxnOp::delete("/a")]);
        assert!(matches!(state.txn(&dup, &mut dirty), Err(StoreError::InvalidArgument(_))));
        assert!(state.kvs.is_empty() && dirty.is_empty() && state.history.is_empty());
        assert_eq!(state.revision, 1);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Put(u8, u8),
        Delete(u8),
        CasPut(u8, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
            (0u8..6).prop_map(Op::Delete),
            (0u8..6, any::<u8>()).prop_map(|(k, v)| Op::CasPut(k, v)),
        ]
    }

    proptest! {
        /// Against a plain map: same contents; each effective write bumps the
        /// revision by one; versions count writes; replaying the history
        /// rebuilds the contents.
        #[test]
        fn behaves_like_a_versioned_map(ops in proptest::collection::vec(op(), 1..60)) {
            let mut state = empty();
            let mut model: BTreeMap<String, (Vec<u8>, i64)> = BTreeMap::new();
            for op in ops {
                let before = state.revision;
                let mut dirty = Dirty::default();
                let wrote = match op {
                    Op::Put(k, v) => {
                        let key = format!("/k{k}");
                        state.txn(&TxnRequest::new().and_then([TxnOp::put(key.clone(), vec![v])]), &mut dirty).unwrap();
                        let version = model.get(&key).map_or(0, |e| e.1) + 1;
                        model.insert(key, (vec![v], version));
                        true
                    }
                    Op::Delete(k) => {
                        let key = format!("/k{k}");
                        state.txn(&TxnRequest::new().and_then([TxnOp::delete(key.clone())]), &mut dirty).unwrap();
                        model.remove(&key).is_some()
                    }
                    Op::CasPut(k, v) => {
                        // Swap only if absent.
                        let key = format!("/k{k}");
                        let txn = TxnRequest::new()
                            .when([Compare::absent(key.clone())])
                            .and_then([TxnOp::put(key.clone(), vec![v])]);
                        let result = state.txn(&txn, &mut dirty).unwrap();
                        prop_assert_eq!(result.succeeded, !model.contains_key(&key));
                        if result.succeeded {
                            model.insert(key, (vec![v], 1));
                        }
                        result.succeeded
                    }
                };
                prop_assert_eq!(state.revision, before + i64::from(wrote));
            }
            let contents: BTreeMap<String, (Vec<u8>, i64)> =
                state.kvs.iter().map(|(k, kv)| (k.clone(), (kv.value.clone(), kv.version))).collect();
            prop_assert_eq!(&contents, &model);
            let mut replayed: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            for batch in state.events_since("/", 2).unwrap() {
                for event in batch {
                    match event.kind {
                        EventKind::Put => { replayed.insert(event.kv.key, event.kv.value); }
                        EventKind::Delete => { replayed.remove(&event.kv.key); }
                    }
                }
            }
            let values: BTreeMap<String, Vec<u8>> = model.into_iter().map(|(k, (v, _))| (k, v)).collect();
            prop_assert_eq!(replayed, values);
        }
    }
}
