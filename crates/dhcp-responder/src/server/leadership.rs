//! The `dhcp-responder` election: which replica may write leases, and the
//! proof it carries while it may.

use std::sync::Arc;
use std::time::Duration;

use bootfleet_core::election::{Election, Leadership};
use bootfleet_core::store::{Compare, SharedStore};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Proof of leadership while it lasts: the compare that fences writes, the
/// flag that turns false when the lease could no longer be renewed, and
/// the deadline by which acting ends unless it is renewed first.
pub(super) struct LeaderToken {
    pub(super) guard: Compare,
    pub(super) acting: watch::Receiver<bool>,
    pub(super) deadline: watch::Receiver<tokio::time::Instant>,
    /// Counts this replica's leaderships: index entries verified in one
    /// are not trusted in the next.
    pub(super) term: u64,
}

impl LeaderToken {
    /// Whether this leadership still acts, by the flag and by the clock
    /// (the flag's update may wait for a busy runtime).
    fn acting(&self) -> bool {
        *self.acting.borrow() && tokio::time::Instant::now() < *self.deadline.borrow()
    }
}

/// The current leadership, if any (`None` while standing by).
pub(super) type LeaderView = watch::Receiver<Option<Arc<LeaderToken>>>;

/// The term and fencing compare of this replica's leadership while it
/// acts: the one check both the request path and the batch writer make.
pub(super) fn acting(leader: &LeaderView) -> Option<(u64, Compare)> {
    let token = leader.borrow().clone()?;
    token.acting().then(|| (token.term, token.guard.clone()))
}

/// Campaigns as `member_id` until `stop`, publishing each leadership won
/// (and its end) on the returned view.
pub(super) fn campaign(
    store: SharedStore,
    member_id: String,
    ttl: Duration,
    stop: CancellationToken,
) -> LeaderView {
    let (tx, leader) = watch::channel(None);
    let election = Election::new(store, "dhcp-responder");
    tokio::spawn(async move {
        let mut term = 0;
        while !stop.is_cancelled() {
            match Leadership::acquire(&election, member_id.clone().into_bytes(), ttl, &stop).await {
                Ok(Some(mut leadership)) => {
                    tracing::info!("acting DHCP leader");
                    term += 1;
                    let token = LeaderToken {
                        guard: leadership.guard(),
                        acting: leadership.acting_updates(),
                        deadline: leadership.deadline_updates(),
                        term,
                    };
                    tx.send_replace(Some(Arc::new(token)));
                    tokio::select! {
                        () = leadership.lost() => tracing::warn!("DHCP leadership lost; standing by"),
                        () = stop.cancelled() => {
                            tx.send_replace(None);
                            let _ = leadership.resign().await;
                            return;
                        }
                    }
                    tx.send_replace(None);
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "DHCP election unavailable; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    leader
}
