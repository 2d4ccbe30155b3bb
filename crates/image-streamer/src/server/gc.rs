//! Garbage collection's I/O (the decisions are [`crate::gc`]'s): the
//! `CollectGarbage` call plans on this replica, deletes the versions and
//! leaves an order in the store; every replica's replication round
//! carries the latest order out on its own files, and keeps the catalog's
//! `last_named_unix_ms` current for the versions profiles name.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bootfleet_core::store::{Compare, CompareOp, KEY_ROOT, TxnOp, TxnRequest};
use bootfleet_proto::v1 as pb;
use prost::Message;
use tonic::Status;

use super::Streamer;
use crate::catalog::{FileState, version_key};
use crate::gc::{self, Named};

/// Where the latest collection's order is kept.
pub(crate) fn order_key() -> String {
    format!("{KEY_ROOT}gc/order")
}

/// How long a file stays after it arrived unless the call says otherwise:
/// an upload is committed within minutes of its last byte.
const DEFAULT_MIN_FILE_AGE: Duration = Duration::from_secs(3600);
/// A named version's `last_named_unix_ms` is rewritten when older than
/// this: garbage collection measures disuse in days, not minutes.
const NAMED_REFRESH: Duration = Duration::from_secs(600);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What the active and the working profiles name.
fn named(streamer: &Streamer, catalog: &crate::catalog::Catalog) -> Named {
    let engine = streamer.rules.engine();
    let working = streamer.rules.working_state().map(|(state, _)| state.image).unwrap_or_default();
    let active = engine.catalog.image.values().map(AsRef::as_ref);
    Named::of(active.chain(working.values()), catalog)
}

/// Plans a collection, and unless it is a dry run deletes the versions
/// and publishes the order.
pub(crate) async fn collect(
    streamer: &Arc<Streamer>,
    request: pb::CollectGarbageRequest,
) -> Result<pb::CollectGarbageResponse, Status> {
    let catalog = streamer.catalog();
    let named = named(streamer, &catalog);
    // Every replica's holdings, as published (this one's from disk).
    let mut holdings: Vec<(String, Vec<String>)> = streamer
        .replicas()
        .iter()
        .filter(|r| r.id != streamer.member_id)
        .map(|r| {
            let present = r.files.iter().filter(|(_, state)| **state == FileState::Present);
            (r.id.clone(), present.map(|(sha, _)| sha.clone()).collect())
        })
        .collect();
    holdings.push((streamer.member_id.clone(), streamer.blobs.on_disk()));
    let unused_for =
        request.remove_versions.then(|| Duration::from_secs(request.versions_unused_for_seconds));
    let plan = gc::plan(&catalog, &named, &holdings, unused_for, now_ms());
    let response = pb::CollectGarbageResponse {
        versions: plan.versions.iter().map(|(image, version)| format!("{image}/{version}")).collect(),
        files: plan
            .files
            .iter()
            .map(|(sha, replicas)| pb::GarbageFile { sha256: sha.clone(), replicas: replicas.clone() })
            .collect(),
        dry_run: request.dry_run,
    };
    if request.dry_run {
        return Ok(response);
    }
    for (image, version) in &plan.versions {
        let key = version_key(image, version);
        let Some(kv) = streamer.images.get(&key) else { continue };
        // Only as planned: a version named or rewritten meanwhile stays.
        let txn = TxnRequest {
            compares: vec![Compare::mod_revision(&key, CompareOp::Equal, kv.mod_revision)],
            then: vec![TxnOp::delete(&key)],
            otherwise: vec![],
        };
        let result = streamer.store.txn(txn).await.map_err(|e| Status::unavailable(e.to_string()))?;
        if result.succeeded {
            tracing::info!(image = %image, version = %version, "garbage collection removed a version");
        }
    }
    let min_age = match (request.min_file_age_seconds, request.any_file_age) {
        (0, false) => DEFAULT_MIN_FILE_AGE.as_secs(),
        (seconds, _) => seconds,
    };
    let order = pb::GcOrder {
        issued_at_unix_ms: now_ms(),
        files: plan.files.keys().cloned().collect(),
        min_file_age_seconds: min_age,
    };
    let revision = streamer
        .store
        .put(&order_key(), order.encode_to_vec(), None)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    streamer.gc_orders.caught_up(revision).await;
    streamer.replication_wake.notify_one();
    Ok(response)
}

/// Carries out the latest order on this replica's files, once per order;
/// each file is checked again (still unreferenced, not open, not being
/// written, old enough). `applied`: the order last carried out.
pub(crate) fn apply_order(streamer: &Streamer, applied: &mut i64) {
    let Some(kv) = streamer.gc_orders.get(&order_key()) else { return };
    let Ok(order) = pb::GcOrder::decode(kv.value.as_slice()) else { return };
    if order.issued_at_unix_ms == *applied {
        return;
    }
    *applied = order.issued_at_unix_ms;
    let catalog = streamer.catalog();
    let referenced: HashSet<String> = gc::referenced(&catalog, &named(streamer, &catalog));
    let min_age = Duration::from_secs(order.min_file_age_seconds);
    let mut removed = 0usize;
    for sha in order.files.iter().filter(|sha| !referenced.contains(*sha)) {
        if streamer.blobs.collect(sha, min_age) {
            removed += 1;
            tracing::info!(sha256 = %sha, "garbage collection removed a file");
        }
    }
    if removed > 0 {
        crate::metrics::GC_FILES_REMOVED.inc_by(removed as u64);
    }
}

/// Versions profiles name whose `last_named_unix_ms` is stale: written
/// again (compare-and-swap, so replicas racing write once).
pub(crate) async fn refresh_last_named(streamer: &Streamer) {
    let catalog = streamer.catalog();
    let named = named(streamer, &catalog);
    let now = now_ms();
    let stale = now.saturating_sub(i64::try_from(NAMED_REFRESH.as_millis()).unwrap_or(i64::MAX));
    for version in catalog.versions() {
        if !named.names_version(&version.image, &version.version) || version.last_named_unix_ms > stale {
            continue;
        }
        let key = version_key(&version.image, &version.version);
        let Some(kv) = streamer.images.get(&key) else { continue };
        let mut updated = (**version).clone();
        updated.last_named_unix_ms = now;
        let txn = TxnRequest {
            compares: vec![Compare::mod_revision(&key, CompareOp::Equal, kv.mod_revision)],
            then: vec![TxnOp::put(&key, updated.encode_to_vec())],
            otherwise: vec![],
        };
        if let Err(e) = streamer.store.txn(txn).await {
            tracing::debug!(key = %key, error = %e, "last-named time not written; next round");
            return;
        }
    }
}
