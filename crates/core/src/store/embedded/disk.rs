//! The redb file behind the embedded store: load everything at start, write
//! the final state of what a batch of commits touched in one transaction.

use std::collections::BTreeSet;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::state::State;
use crate::store::{KeyValue, LeaseId, StoreError, StoreResult};

const KV_TABLE: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("kv");
const META_TABLE: TableDefinition<'_, &str, i64> = TableDefinition::new("meta");
const LEASE_TABLE: TableDefinition<'_, i64, i64> = TableDefinition::new("leases");
const META_REVISION: &str = "revision";
const META_NEXT_LEASE: &str = "next_lease";

pub(super) fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("embedded database: {e}"))
}

/// What a batch changed, to be written in one database transaction.
#[derive(Default)]
pub(super) struct Dirty {
    pub(super) keys: BTreeSet<String>,
    pub(super) leases: BTreeSet<LeaseId>,
}

impl Dirty {
    pub(super) fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.leases.is_empty()
    }
}

/// Everything stored: keys, leases (with their TTL), revision, lease counter.
pub(super) struct Loaded {
    pub(super) kvs: Vec<KeyValue>,
    pub(super) leases: Vec<(LeaseId, Duration)>,
    pub(super) revision: i64,
    pub(super) next_lease: LeaseId,
}

/// Creates the tables on first use, then reads the whole file.
pub(super) fn load(db: &Database) -> StoreResult<Loaded> {
    let tx = db.begin_write().map_err(db_err)?;
    tx.open_table(KV_TABLE).map_err(db_err)?;
    tx.open_table(META_TABLE).map_err(db_err)?;
    tx.open_table(LEASE_TABLE).map_err(db_err)?;
    tx.commit().map_err(db_err)?;

    let tx = db.begin_read().map_err(db_err)?;
    let meta = tx.open_table(META_TABLE).map_err(db_err)?;
    let revision = meta.get(META_REVISION).map_err(db_err)?.map_or(1, |v| v.value());
    let next_lease = meta.get(META_NEXT_LEASE).map_err(db_err)?.map_or(1, |v| v.value());
    let mut leases = Vec::new();
    for entry in tx.open_table(LEASE_TABLE).map_err(db_err)?.iter().map_err(db_err)? {
        let (id, ttl_ms) = entry.map_err(db_err)?;
        let ttl = Duration::from_millis(u64::try_from(ttl_ms.value()).unwrap_or(0));
        leases.push((id.value(), ttl));
    }
    let mut kvs = Vec::new();
    for entry in tx.open_table(KV_TABLE).map_err(db_err)?.iter().map_err(db_err)? {
        let (key, record) = entry.map_err(db_err)?;
        kvs.push(decode_record(key.value(), record.value())?);
    }
    Ok(Loaded { kvs, leases, revision, next_lease })
}

/// Writes the current state of every dirty key and lease, and the counters,
/// in one durable transaction.
pub(super) fn persist(db: &Database, state: &State, dirty: &Dirty) -> StoreResult<()> {
    let tx = db.begin_write().map_err(db_err)?;
    {
        let mut kv_table = tx.open_table(KV_TABLE).map_err(db_err)?;
        for key in &dirty.keys {
            match state.kvs.get(key) {
                Some(kv) => {
                    kv_table.insert(key.as_str(), encode_record(kv).as_slice()).map_err(db_err)?;
                }
                None => {
                    kv_table.remove(key.as_str()).map_err(db_err)?;
                }
            }
        }
        let mut lease_table = tx.open_table(LEASE_TABLE).map_err(db_err)?;
        for id in &dirty.leases {
            match state.leases.get(id) {
                Some(lease) => {
                    let ms = i64::try_from(lease.ttl.as_millis()).unwrap_or(i64::MAX);
                    lease_table.insert(*id, ms).map_err(db_err)?;
                }
                None => {
                    lease_table.remove(*id).map_err(db_err)?;
                }
            }
        }
        let mut meta = tx.open_table(META_TABLE).map_err(db_err)?;
        meta.insert(META_REVISION, state.revision).map_err(db_err)?;
        meta.insert(META_NEXT_LEASE, state.next_lease).map_err(db_err)?;
    }
    tx.commit().map_err(db_err)
}

/// Record layout: create, mod revision, version, lease (i64 LE each), value.
fn encode_record(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + kv.value.len());
    for field in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
        out.extend_from_slice(&field.to_le_bytes());
    }
    out.extend_from_slice(&kv.value);
    out
}

fn decode_record(key: &str, record: &[u8]) -> StoreResult<KeyValue> {
    let field = |i: usize| -> StoreResult<i64> {
        let bytes =
            record.get(i * 8..i * 8 + 8).ok_or_else(|| db_err(format!("record for {key:?} is truncated")))?;
        let mut buf = [0u8; 8];
        buf.copy_from_slice(bytes);
        Ok(i64::from_le_bytes(buf))
    };
    Ok(KeyValue {
        key: key.to_owned(),
        create_revision: field(0)?,
        mod_revision: field(1)?,
        version: field(2)?,
        lease: field(3)?,
        value: record[32..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let kv = KeyValue {
            key: "/k".into(),
            value: b"value".to_vec(),
            create_revision: 2,
            mod_revision: 9,
            version: 4,
            lease: 0x7f,
        };
        assert_eq!(decode_record("/k", &encode_record(&kv)).unwrap(), kv);
        assert!(decode_record("/k", &[0; 31]).is_err());
    }
}
