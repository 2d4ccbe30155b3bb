//! Leader election on a [`StateStore`], and the guard that keeps a leader
//! from acting once it can no longer be sure it leads.
//!
//! The algorithm is etcd's own (`concurrency.Election`): each candidate writes
//! `<prefix><lease>` under its lease; the key with the lowest create revision
//! leads; the others wait for the deletion of the key just before theirs.
//! Keys are compatible with `etcdctl elect`.
//!
//! [`Leadership`] renews the lease and tracks a deadline: the moment the last
//! successful renewal was *sent*, plus the TTL the server granted, minus a
//! safety margin. The server cannot expire the lease before
//! `sent + TTL`, so a leader that stops at the deadline has stopped before
//! any other candidate can be elected — even when it is cut off from the
//! store. Correctness of leader-only writes must still not rest on timing:
//! put [`Leadership::guard`] into their transactions, so a deposed leader's
//! write fails.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::store::{
    Compare, CompareOp, EventKind, KEY_ROOT, KeyValue, LeaseId, Revision, SharedStore, StoreError,
    StoreResult, TxnOp, TxnOpResult, TxnRequest,
};

/// Default lease TTL for elections: short, so a dead leader is replaced fast.
pub const DEFAULT_ELECTION_TTL: Duration = Duration::from_secs(2);

/// One named election (e.g. `dhcp-responder`).
#[derive(Clone)]
pub struct Election {
    store: SharedStore,
    name: String,
    prefix: String,
}

/// The key a campaign created; proof of candidacy, and of leadership once
/// [`Election::campaign`] returned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderKey {
    /// Full key in the store.
    pub key: String,
    /// Its create revision: orders the candidates.
    pub create_revision: Revision,
    /// The lease it lives under.
    pub lease: LeaseId,
}

impl LeaderKey {
    /// A compare that holds only while this key still leads or waits, i.e.
    /// was not deleted (resigned, expired) and re-created.
    pub fn guard(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.create_revision)
    }
}

impl Election {
    /// The election named `name`, under `/bootfleet/v1/election/<name>/`.
    pub fn new(store: SharedStore, name: &str) -> Self {
        Self { store, name: name.to_owned(), prefix: format!("{KEY_ROOT}election/{name}/") }
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Enters the election with `value` under `lease` and waits until this
    /// candidate leads. Fails with [`StoreError::LeaseNotFound`] if the lease
    /// expired while waiting, or with the store's error if it became
    /// unreachable; the caller re-campaigns.
    ///
    /// CANCEL-SAFETY: dropping the future leaves the candidate key in place
    /// until its lease ends; call [`Election::resign`] or revoke the lease.
    pub async fn campaign(&self, lease: LeaseId, value: Vec<u8>) -> StoreResult<LeaderKey> {
        let key = format!("{}{lease:016x}", self.prefix);
        let put = TxnOp::Put { key: key.clone(), value, lease: Some(lease) };
        let txn = TxnRequest::new()
            .when([Compare::absent(key.clone())])
            .and_then([put])
            .or_else([TxnOp::get(key.clone())]);
        let result = self.store.txn(txn).await?;
        let create_revision = if result.succeeded {
            result.revision
        } else {
            match result.results.first() {
                Some(TxnOpResult::Get(Some(kv))) => kv.create_revision,
                _ => return Err(StoreError::LeaseNotFound(lease)),
            }
        };
        let mine = LeaderKey { key, create_revision, lease };
        loop {
            let range = self.store.range(&self.prefix).await?;
            if !range.kvs.iter().any(|kv| kv.key == mine.key) {
                return Err(StoreError::LeaseNotFound(lease));
            }
            let predecessor = range
                .kvs
                .iter()
                .filter(|kv| kv.create_revision < mine.create_revision)
                .max_by_key(|kv| kv.create_revision);
            let Some(predecessor) = predecessor else {
                return Ok(mine);
            };
            let mut events = self.store.watch(&self.prefix, range.revision + 1).await?;
            'wait: loop {
                match events.next().await {
                    Some(Ok(batch)) => {
                        let gone = batch.iter().any(|e| {
                            e.kind == EventKind::Delete
                                && (e.kv.key == predecessor.key || e.kv.key == mine.key)
                        });
                        if gone {
                            break 'wait;
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Err(StoreError::Unavailable("election watch ended".into())),
                }
            }
        }
    }

    /// The current leader's key and value, if anyone leads.
    pub async fn leader(&self) -> StoreResult<Option<KeyValue>> {
        let range = self.store.range(&self.prefix).await?;
        Ok(range.kvs.into_iter().min_by_key(|kv| kv.create_revision))
    }

    /// Follows the leader: the receiver holds the current leader and changes
    /// whenever leadership moves. Store outages are retried in the background;
    /// the task ends when every receiver is dropped.
    pub fn observe(&self) -> watch::Receiver<Option<KeyValue>> {
        let (tx, rx) = watch::channel(None);
        let election = self.clone();
        tokio::spawn(async move {
            let mut backoff = crate::backoff::Backoff::default();
            loop {
                let result = tokio::select! {
                    () = tx.closed() => return,
                    r = election.follow(&tx) => r,
                };
                if let Err(e) = result {
                    tracing::debug!(election = %election.name, error = %e, "observe retrying");
                }
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        });
        rx
    }

    async fn follow(&self, tx: &watch::Sender<Option<KeyValue>>) -> StoreResult<()> {
        let range = self.store.range(&self.prefix).await?;
        let mut candidates = range.kvs;
        let mut events = self.store.watch(&self.prefix, range.revision + 1).await?;
        loop {
            let leader = candidates.iter().min_by_key(|kv| kv.create_revision).cloned();
            tx.send_if_modified(|current| {
                let changed = *current != leader;
                *current = leader;
                changed
            });
            let batch = match events.next().await {
                Some(batch) => batch?,
                None => return Err(StoreError::Unavailable("election watch ended".into())),
            };
            for event in batch {
                candidates.retain(|kv| kv.key != event.kv.key);
                if event.kind == EventKind::Put {
                    candidates.push(event.kv);
                }
            }
        }
    }

    /// Leaves the election: deletes the key if it is still this candidacy's.
    pub async fn resign(&self, key: &LeaderKey) -> StoreResult<()> {
        let txn = TxnRequest::new().when([key.guard()]).and_then([TxnOp::delete(key.key.clone())]);
        self.store.txn(txn).await.map(drop)
    }
}

/// Lease timing derived from the TTL.
#[derive(Clone, Copy, Debug)]
struct Timing {
    /// How long before the server could expire the lease we stop acting.
    margin: Duration,
    /// How often the lease is renewed.
    renew_every: Duration,
}

impl Timing {
    fn for_ttl(ttl: Duration) -> Self {
        Self { margin: (ttl / 4).max(Duration::from_millis(250)), renew_every: ttl / 5 }
    }
}

/// An acquired leadership. Acting is allowed only while [`Self::is_acting`].
pub struct Leadership {
    election: Election,
    key: LeaderKey,
    acting: watch::Receiver<bool>,
    deadline: watch::Receiver<Instant>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership").field("key", &self.key).finish_non_exhaustive()
    }
}

impl Leadership {
    /// Campaigns in `election` under a fresh lease of `ttl` until this process
    /// leads (returns `Ok(Some)`), `cancel` fires (`Ok(None)`, candidacy
    /// withdrawn), or the store fails (`Err`; call again to retry).
    pub async fn acquire(
        election: &Election,
        value: Vec<u8>,
        ttl: Duration,
        cancel: &CancellationToken,
    ) -> StoreResult<Option<Self>> {
        let store = &election.store;
        let granted_at = Instant::now();
        let lease = store.lease_grant(ttl).await?;
        let (acting_tx, acting) = watch::channel(true);
        // Until the first renewal says what the server granted, assume whole
        // seconds (etcd grants TTLs in seconds, rounded down).
        let granted = Duration::from_secs(ttl.as_secs());
        let (deadline_tx, deadline) =
            watch::channel(granted_at + granted.saturating_sub(Timing::for_ttl(ttl).margin));
        let stop = CancellationToken::new();
        tokio::spawn(keep_lease(
            store.clone(),
            lease,
            ttl,
            Signals { acting: acting_tx, deadline: deadline_tx },
            stop.clone(),
        ));
        let mut lease_alive = acting.clone();
        let outcome = tokio::select! {
            () = cancel.cancelled() => None,
            r = election.campaign(lease, value) => Some(r),
            _ = lease_alive.wait_for(|alive| !alive) => Some(Err(StoreError::LeaseNotFound(lease))),
        };
        match outcome {
            Some(Ok(key)) if *acting.borrow() => {
                metrics::LEADER.with_label_values(&[election.name()]).set(1);
                tracing::info!(election = %election.name(), key = %key.key, "became leader");
                Ok(Some(Self { election: election.clone(), key, acting, deadline, stop }))
            }
            other => {
                stop.cancel();
                // Best effort: the lease would expire by itself anyway.
                let _ = store.lease_revoke(lease).await;
                match other {
                    None => Ok(None),
                    Some(Ok(_)) => Err(StoreError::LeaseNotFound(lease)),
                    Some(Err(e)) => Err(e),
                }
            }
        }
    }

    /// Whether this process may act as leader right now.
    pub fn is_acting(&self) -> bool {
        *self.acting.borrow()
    }

    /// A receiver that turns false when leadership is lost, for code that
    /// checks it without owning the [`Leadership`].
    pub fn acting_updates(&self) -> watch::Receiver<bool> {
        self.acting.clone()
    }

    /// The moment acting ends unless the lease is renewed before it; moves
    /// later with each renewal. [`Self::is_acting`] turns false only once
    /// the renewal task has run past it, which a busy runtime may delay:
    /// a leader that acts on what it alone knows, with no guarded store
    /// write to fence it, checks the clock against this instead.
    pub fn deadline_updates(&self) -> watch::Receiver<Instant> {
        self.deadline.clone()
    }

    /// Resolves once leadership is lost (lease not renewed in time, or gone).
    ///
    /// CANCEL-SAFETY: cancel-safe.
    pub async fn lost(&mut self) {
        let _ = self.acting.wait_for(|acting| !acting).await;
    }

    /// The leader key, for logs and for [`LeaderKey::guard`].
    pub fn key(&self) -> &LeaderKey {
        &self.key
    }

    /// A compare to add to every leader-only transaction: it fails once this
    /// leadership is gone, whatever the clocks say.
    pub fn guard(&self) -> Compare {
        self.key.guard()
    }

    /// Steps down: stops acting at once, deletes the key, revokes the lease.
    pub async fn resign(self) -> StoreResult<()> {
        self.stop.cancel();
        metrics::LEADER.with_label_values(&[self.election.name()]).set(0);
        let resigned = self.election.resign(&self.key).await;
        let revoked = self.election.store.lease_revoke(self.key.lease).await;
        tracing::info!(election = %self.election.name(), "resigned");
        resigned?;
        match revoked {
            Ok(()) | Err(StoreError::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        // Stop renewing: without resign the lease lapses after its TTL.
        self.stop.cancel();
        metrics::LEADER.with_label_values(&[self.election.name()]).set(0);
    }
}

/// What [`keep_lease`] tells the leader: whether it may act, and until when.
struct Signals {
    acting: watch::Sender<bool>,
    deadline: watch::Sender<Instant>,
}

/// Renews `lease` until `stop`, keeping `acting` true only until the deadline
/// implied by the last successful renewal.
async fn keep_lease(
    store: SharedStore,
    lease: LeaseId,
    ttl: Duration,
    signals: Signals,
    stop: CancellationToken,
) {
    let mut timing = Timing::for_ttl(ttl);
    let mut deadline = *signals.deadline.borrow();
    let lose = |reason: &str| {
        signals.acting.send_replace(false);
        tracing::warn!(lease = format_args!("{lease:x}"), reason, "leadership lost");
    };
    loop {
        let sent = Instant::now();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => return lose("lease not renewed before deadline"),
            renewed = store.lease_keep_alive(lease) => match renewed {
                Ok(granted) => {
                    timing = Timing::for_ttl(granted);
                    deadline = deadline.max(sent + granted.saturating_sub(timing.margin));
                    signals.deadline.send_replace(deadline);
                }
                Err(StoreError::LeaseNotFound(_)) => return lose("lease expired"),
                Err(e) => tracing::debug!(lease = format_args!("{lease:x}"), error = %e, "lease renewal failed"),
            },
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => return lose("lease not renewed before deadline"),
            () = tokio::time::sleep(timing.renew_every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_margin_stays_inside_ttl() {
        for ms in [1000u64, 2000, 5000, 60_000] {
            let ttl = Duration::from_millis(ms);
            let t = Timing::for_ttl(ttl);
            assert!(t.margin < ttl, "{ms}");
            // At least two renewals fit before the deadline.
            assert!(t.renew_every * 2 < ttl - t.margin, "{ms}");
        }
    }
}
