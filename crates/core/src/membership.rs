//! Live replica registration: each replica keeps a [`Member`] record under
//! `/bootfleet/v1/members/<service>/<id>`, attached to its own lease, so the
//! record vanishes by itself when the replica dies. Peers and the CLI list
//! the live replicas from there.

use std::time::Duration;

use bootfleet_proto::v1::Member;
use prost::Message;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::backoff::Backoff;
use crate::metrics;
use crate::store::{KEY_ROOT, LeaseId, SharedStore, StoreError, StoreResult};

/// Default TTL of a member record: long enough to ride out a short store
/// hiccup, short enough that a dead replica leaves lists quickly.
pub const DEFAULT_MEMBER_TTL: Duration = Duration::from_secs(10);

/// Key prefix of a service's members.
pub fn service_prefix(service: &str) -> String {
    format!("{KEY_ROOT}members/{service}/")
}

/// Key of one member record.
pub fn member_key(service: &str, id: &str) -> String {
    format!("{}{id}", service_prefix(service))
}

/// Lists the live members of `service`. Records that do not decode are
/// skipped with a warning (a newer replica may write fields we ignore, but
/// garbage must not break the list).
pub async fn list_members(store: &SharedStore, service: &str) -> StoreResult<Vec<Member>> {
    let range = store.range(&service_prefix(service)).await?;
    Ok(range
        .kvs
        .iter()
        .filter_map(|kv| match Member::decode(kv.value.as_slice()) {
            Ok(member) => Some(member),
            Err(e) => {
                tracing::warn!(key = %kv.key, error = %e, "skipping undecodable member record");
                None
            }
        })
        .collect())
}

/// A running registration; keeps the record alive until dropped or
/// [`Registration::deregister`]ed.
pub struct Registration {
    record: watch::Sender<Member>,
    stop: CancellationToken,
    /// Stops the task when the registration is dropped without deregistering.
    _stop_on_drop: DropGuard,
    task: JoinHandle<Option<LeaseId>>,
    store: SharedStore,
}

impl Registration {
    /// Starts registering `member` with the given TTL. Never fails: while the
    /// store is unreachable it retries in the background, and re-registers
    /// under a new lease if the old one expired.
    pub fn start(store: SharedStore, member: Member, ttl: Duration) -> Self {
        let (record, updates) = watch::channel(member);
        let stop = CancellationToken::new();
        let task = tokio::spawn(keep_registered(store.clone(), updates, ttl, stop.clone()));
        Self { record, _stop_on_drop: stop.clone().drop_guard(), stop, task, store }
    }

    /// Changes the published record (load, addresses…); written promptly.
    pub fn update(&self, change: impl FnOnce(&mut Member)) {
        self.record.send_modify(change);
    }

    /// Removes the record now (revokes its lease), for a clean shutdown.
    pub async fn deregister(self) -> StoreResult<()> {
        self.stop.cancel();
        let lease = self.task.await.ok().flatten();
        let service = self.record.borrow().service.clone();
        metrics::MEMBER_REGISTERED.with_label_values(&[&service]).set(0);
        match lease {
            Some(lease) => match self.store.lease_revoke(lease).await {
                Ok(()) | Err(StoreError::LeaseNotFound(_)) => Ok(()),
                Err(e) => Err(e),
            },
            None => Ok(()),
        }
    }
}

/// Returns the lease in use when stopped, so `deregister` can revoke it.
async fn keep_registered(
    store: SharedStore,
    mut updates: watch::Receiver<Member>,
    ttl: Duration,
    stop: CancellationToken,
) -> Option<LeaseId> {
    let mut lease: Option<LeaseId> = None;
    let mut dirty = true;
    // When the lease was last granted or renewed. Writing the record does
    // not renew it, so a record that changes more often than every ttl/3
    // must still be renewed on time.
    let mut renewed = tokio::time::Instant::now();
    let mut backoff = Backoff::default();
    loop {
        let member = updates.borrow_and_update().clone();
        let key = member_key(&member.service, &member.id);
        let step: StoreResult<()> = async {
            let id = match lease {
                Some(id) => id,
                None => {
                    let id = store.lease_grant(ttl).await?;
                    lease = Some(id);
                    renewed = tokio::time::Instant::now();
                    dirty = true;
                    id
                }
            };
            if dirty {
                store.put(&key, member.encode_to_vec(), Some(id)).await?;
                dirty = false;
            }
            if renewed.elapsed() >= ttl / 3 {
                store.lease_keep_alive(id).await?;
                renewed = tokio::time::Instant::now();
            }
            Ok(())
        }
        .await;
        let registered = i64::from(step.is_ok() && lease.is_some());
        metrics::MEMBER_REGISTERED.with_label_values(&[&member.service]).set(registered);
        let delay = match step {
            Ok(()) => {
                backoff.reset();
                ttl / 3
            }
            Err(e) => {
                if matches!(e, StoreError::LeaseNotFound(_)) {
                    lease = None;
                }
                dirty = true;
                tracing::warn!(key = %key, error = %e, "member registration failed; retrying");
                backoff.next_delay()
            }
        };
        tokio::select! {
            () = stop.cancelled() => return lease,
            () = tokio::time::sleep(delay) => {}
            changed = updates.changed() => {
                if changed.is_err() {
                    return lease;
                }
                dirty = true;
            }
        }
    }
}
