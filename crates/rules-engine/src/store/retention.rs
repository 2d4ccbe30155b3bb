//! Removes the records of hosts not seen for the retention.
//!
//! A host is seen when a decision is recorded for it: its record's newest
//! history entry says when (a record without history counts as never
//! seen). Every rules-engine replica sweeps on its own, at a jittered
//! interval; there is no leader to agree on. Each removal is a transaction
//! that compares the record's revision with the one the sweep judged, so a
//! host recorded again meanwhile — by a boot, on any replica — keeps its
//! record, and replicas sweeping at once remove each record at most once
//! (the later compare fails on the missing key). The host's boot status
//! goes with its record.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bootfleet_core::snapshot::SnapshotCache;
use bootfleet_core::store::{Compare, CompareOp, KeyValue, SharedStore, TxnOp, TxnRequest};
use bootfleet_proto::v1::HostRecord;
use tokio_util::sync::CancellationToken;

use super::limits::HostCap;
use super::writes::store_err;
use super::{BOOTS_PREFIX, HOSTS_PREFIX, decode};
use crate::error::RulesError;
use crate::metrics;

/// Records judged per page of the snapshot (one copy of the page at a time).
const PAGE: usize = 256;
/// Records removed per transaction (etcd allows 128 operations; each host
/// takes two).
const CHUNK: usize = 50;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// When the host was last seen (unix ms), from its stored record.
fn last_seen(kv: &KeyValue) -> Result<i64, RulesError> {
    let record: HostRecord = decode(kv)?;
    Ok(record.history.iter().map(|e| e.at_unix_ms).max().unwrap_or(0))
}

/// Sweeps every `interval` (jittered by up to a tenth) until `stop`.
pub(crate) async fn sweep_forever(
    store: SharedStore,
    hosts: SnapshotCache,
    cap: std::sync::Arc<HostCap>,
    (retention, interval): (Duration, Duration),
    stop: CancellationToken,
) {
    hosts.loaded().await;
    loop {
        match sweep(&store, &hosts, retention, now_ms()).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, ?retention, "host records of absent hosts removed"),
            Err(e) => tracing::warn!(error = %e, "sweeping expired host records failed; next sweep retries"),
        }
        cap.observe(hosts.len());
        let jitter =
            interval.mul_f64(f64::from(u32::try_from(now_ms().rem_euclid(1000)).unwrap_or(0)) / 10_000.0);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval + jitter) => {}
        }
    }
}

/// Removes the records (and boot statuses) of hosts last seen more than
/// `retention` before `now_unix_ms`; returns how many this call removed.
pub async fn sweep(
    store: &SharedStore,
    hosts: &SnapshotCache,
    retention: Duration,
    now_unix_ms: i64,
) -> Result<usize, RulesError> {
    let cutoff = now_unix_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    let mut after = String::new();
    let mut removed = 0;
    loop {
        let page = hosts.list_after(HOSTS_PREFIX, &after, PAGE);
        let Some(last) = page.last() else { break };
        after = last.key.clone();
        let mut expired = Vec::new();
        for kv in &page {
            match last_seen(kv) {
                Ok(seen) if seen < cutoff => expired.push((kv.key.clone(), kv.mod_revision)),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "host record unreadable; not judged for retention"),
            }
        }
        for chunk in expired.chunks(CHUNK) {
            removed += remove(store, chunk).await?;
        }
        // Other tasks of this runtime go on between pages.
        tokio::task::yield_now().await;
    }
    Ok(removed)
}

/// Removes `records` (key, revision judged) in one transaction, or one at
/// a time when any of them changed meanwhile.
async fn remove(store: &SharedStore, records: &[(String, i64)]) -> Result<usize, RulesError> {
    let txn = |records: &[(String, i64)]| {
        let compares =
            records.iter().map(|(key, rev)| Compare::mod_revision(key.clone(), CompareOp::Equal, *rev));
        let ops = records.iter().flat_map(|(key, _)| {
            let mac = key.strip_prefix(HOSTS_PREFIX).unwrap_or(key);
            [TxnOp::delete(key.clone()), TxnOp::delete(format!("{BOOTS_PREFIX}{mac}"))]
        });
        TxnRequest::new().when(compares).and_then(ops)
    };
    if store.txn(txn(records)).await.map_err(store_err)?.succeeded {
        metrics::HOST_RECORDS_EXPIRED.inc_by(records.len() as u64);
        return Ok(records.len());
    }
    let mut removed = 0;
    for record in records {
        if store.txn(txn(std::slice::from_ref(record))).await.map_err(store_err)?.succeeded {
            metrics::HOST_RECORDS_EXPIRED.inc();
            removed += 1;
        }
    }
    Ok(removed)
}
