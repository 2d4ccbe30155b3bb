//! Value types shared by both store backends, with etcd's meaning.

/// A store revision: bumped by one on every committed write (etcd semantics).
pub type Revision = i64;

/// A lease identifier; `0` means "no lease".
pub type LeaseId = i64;

/// One stored key with its version metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value bytes (empty for a delete event).
    pub value: Vec<u8>,
    /// Revision of the write that created the key (0 when deleted).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// Number of writes since creation (1 after the first put).
    pub version: i64,
    /// Lease the key is attached to, `0` for none.
    pub lease: LeaseId,
}

/// The answer to a prefix read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Range {
    /// Matching keys, sorted by key.
    pub kvs: Vec<KeyValue>,
    /// The store revision the read saw.
    pub revision: Revision,
}

/// What a [`Compare`] looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's create revision (0 when the key is absent).
    CreateRevision(Revision),
    /// The key's last modification revision (0 when absent).
    ModRevision(Revision),
    /// The key's version (0 when absent).
    Version(i64),
    /// The key's value (a compare on an absent key's value is false).
    Value(Vec<u8>),
}

/// How a [`Compare`] relates the stored field to the given one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// Stored == given.
    Equal,
    /// Stored != given.
    NotEqual,
    /// Stored < given.
    Less,
    /// Stored > given.
    Greater,
}

/// One condition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// The key compared.
    pub key: String,
    /// The relation.
    pub op: CompareOp,
    /// The field and the value it is compared with.
    pub target: CompareTarget,
}

impl Compare {
    /// True when `key` does not exist.
    pub fn absent(key: impl Into<String>) -> Self {
        Self { key: key.into(), op: CompareOp::Equal, target: CompareTarget::CreateRevision(0) }
    }

    /// Compares the key's last modification revision (0 = absent).
    pub fn mod_revision(key: impl Into<String>, op: CompareOp, revision: Revision) -> Self {
        Self { key: key.into(), op, target: CompareTarget::ModRevision(revision) }
    }

    /// Compares the key's create revision (0 = absent).
    pub fn create_revision(key: impl Into<String>, op: CompareOp, revision: Revision) -> Self {
        Self { key: key.into(), op, target: CompareTarget::CreateRevision(revision) }
    }

    /// Compares the key's value.
    pub fn value(key: impl Into<String>, op: CompareOp, value: Vec<u8>) -> Self {
        Self { key: key.into(), op, target: CompareTarget::Value(value) }
    }

    /// Evaluates the condition against the key's current state, exactly as
    /// etcd does (absent keys have revisions and version 0; value compares on
    /// absent keys are false).
    pub fn holds(&self, current: Option<&KeyValue>) -> bool {
        use std::cmp::Ordering;
        let ordering = match (&self.target, current) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(want), Some(kv)) => kv.value.as_slice().cmp(want.as_slice()),
            (CompareTarget::CreateRevision(want), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(want),
            (CompareTarget::ModRevision(want), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(want),
            (CompareTarget::Version(want), kv) => kv.map_or(0, |kv| kv.version).cmp(want),
        };
        match self.op {
            CompareOp::Equal => ordering == Ordering::Equal,
            CompareOp::NotEqual => ordering != Ordering::Equal,
            CompareOp::Less => ordering == Ordering::Less,
            CompareOp::Greater => ordering == Ordering::Greater,
        }
    }
}

/// One operation inside a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// Write a key (optionally under a lease).
    Put {
        /// Key written.
        key: String,
        /// Value written.
        value: Vec<u8>,
        /// Lease to attach, if any.
        lease: Option<LeaseId>,
    },
    /// Delete a key.
    Delete {
        /// Key deleted.
        key: String,
    },
    /// Read a key.
    Get {
        /// Key read.
        key: String,
    },
}

impl TxnOp {
    /// A put without a lease.
    pub fn put(key: impl Into<String>, value: Vec<u8>) -> Self {
        Self::Put { key: key.into(), value, lease: None }
    }

    /// A delete.
    pub fn delete(key: impl Into<String>) -> Self {
        Self::Delete { key: key.into() }
    }

    /// A read.
    pub fn get(key: impl Into<String>) -> Self {
        Self::Get { key: key.into() }
    }

    pub(crate) fn key(&self) -> &str {
        match self {
            Self::Put { key, .. } | Self::Delete { key } | Self::Get { key } => key,
        }
    }
}

/// A compare-and-swap transaction: `if compares { then } else { otherwise }`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRequest {
    /// Conditions, all of which must hold.
    pub compares: Vec<Compare>,
    /// Operations run when every condition holds.
    pub then: Vec<TxnOp>,
    /// Operations run otherwise.
    pub otherwise: Vec<TxnOp>,
}

impl TxnRequest {
    /// Starts an empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds conditions.
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compares.extend(compares);
        self
    }

    /// Adds operations for the success branch.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.then.extend(ops);
        self
    }

    /// Adds operations for the failure branch.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.otherwise.extend(ops);
        self
    }
}

/// The result of one transaction operation, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOpResult {
    /// A put committed.
    Put,
    /// A delete ran; whether the key existed.
    Delete(bool),
    /// A read ran.
    Get(Option<KeyValue>),
}

/// The answer to a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every compare held (so `then` ran).
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: Revision,
    /// One result per operation of the branch that ran.
    pub results: Vec<TxnOpResult>,
}

/// Whether a watch event wrote or removed a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted (explicitly or by lease expiry).
    Delete,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete, `mod_revision` is the delete's
    /// revision and the value is empty.
    pub kv: KeyValue,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(create: i64, modr: i64, version: i64, value: &[u8]) -> KeyValue {
        KeyValue {
            key: "k".into(),
            value: value.to_vec(),
            create_revision: create,
            mod_revision: modr,
            version,
            lease: 0,
        }
    }

    #[test]
    fn compares_follow_etcd_semantics() {
        let present = kv(3, 7, 2, b"v");
        let cases: Vec<(Compare, Option<&KeyValue>, bool)> = vec![
            (Compare::absent("k"), None, true),
            (Compare::absent("k"), Some(&present), false),
            (Compare::mod_revision("k", CompareOp::Equal, 7), Some(&present), true),
            (Compare::mod_revision("k", CompareOp::Equal, 6), Some(&present), false),
            (Compare::mod_revision("k", CompareOp::Less, 8), Some(&present), true),
            (Compare::mod_revision("k", CompareOp::Greater, 8), Some(&present), false),
            (Compare::mod_revision("k", CompareOp::Equal, 0), None, true),
            (Compare::create_revision("k", CompareOp::NotEqual, 3), Some(&present), false),
            (Compare::value("k", CompareOp::Equal, b"v".to_vec()), Some(&present), true),
            (Compare::value("k", CompareOp::Equal, b"v".to_vec()), None, false),
            (Compare::value("k", CompareOp::NotEqual, b"v".to_vec()), None, false),
            (Compare::value("k", CompareOp::Less, b"w".to_vec()), Some(&present), true),
        ];
        for (i, (compare, current, want)) in cases.into_iter().enumerate() {
            assert_eq!(compare.holds(current), want, "case {i}: {compare:?}");
        }
    }
}
