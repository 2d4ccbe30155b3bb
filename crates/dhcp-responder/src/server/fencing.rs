//! Who may write leases, and the compare that proves it in every lease
//! transaction: the leader's election key (hot standby), or the writer's
//! own membership record (load-balancing).
//!
//! A membership is fenced by its record's creation revision: the record
//! lives on the replica's etcd lease, so when that lease lapses the record
//! is deleted, and a registration made afterwards creates it anew at a
//! later revision. A transaction comparing the creation revision this
//! replica last saw therefore fails once the membership it saw has
//! lapsed, even when the replica has not noticed yet.

use std::sync::{Arc, Mutex, PoisonError};

use bootfleet_core::membership::{member_key, service_prefix};
use bootfleet_core::snapshot::SnapshotCache;
use bootfleet_core::store::{Compare, CompareOp, Revision, SharedStore};
use tokio_util::sync::CancellationToken;

use super::leadership::{LeaderView, acting};
use crate::shares::{Place, Shares};

/// The service name replicas register under (and so the members' prefix).
pub(super) const SERVICE: &str = "dhcp-responder";

/// What fences this replica's lease writes.
#[derive(Clone)]
pub(super) enum Fence {
    /// Hot standby: the acting leadership's election key.
    Leader(LeaderView),
    /// Load-balancing: this replica's membership.
    Member(Members),
}

impl Fence {
    /// The term and the compare every lease transaction carries, while
    /// this replica may write (`None`: it may not).
    pub(super) fn guard(&self) -> Option<(u64, Compare)> {
        match self {
            Self::Leader(leader) => acting(leader),
            Self::Member(members) => members.guard(),
        }
    }
}

/// The live DHCP members as this replica sees them (a watched copy of
/// their records), and which of them is this replica.
#[derive(Clone)]
pub(super) struct Members {
    cache: SnapshotCache,
    key: String,
    id: String,
    /// The shares, computed again only when the copy has moved on.
    shares: Arc<Mutex<(Revision, Arc<Shares>)>>,
}

impl Members {
    /// Follows the members of the DHCP service; `id` is this replica's.
    pub(super) fn start(store: SharedStore, id: &str, stop: CancellationToken) -> Self {
        let cache = SnapshotCache::start(store, &service_prefix(SERVICE), stop);
        Self {
            cache,
            key: member_key(SERVICE, id),
            id: id.to_owned(),
            shares: Arc::new(Mutex::new((-1, Arc::new(Shares::default())))),
        }
    }

    /// This replica's membership as last seen: the record's creation
    /// revision, and the compare that holds only while that record lives.
    pub(super) fn guard(&self) -> Option<(u64, Compare)> {
        let created = self.cache.get(&self.key)?.create_revision;
        let compare = Compare::create_revision(self.key.clone(), CompareOp::Equal, created);
        Some((u64::try_from(created).unwrap_or(0), compare))
    }

    /// The live members now.
    pub(super) fn shares(&self) -> Arc<Shares> {
        let revision = self.cache.revision();
        let mut cached = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        if cached.0 != revision {
            let ids = self
                .cache
                .list(self.cache.prefix())
                .into_iter()
                .filter_map(|kv| kv.key.strip_prefix(self.cache.prefix()).map(str::to_owned));
            *cached = (revision, Arc::new(Shares::new(ids)));
        }
        Arc::clone(&cached.1)
    }

    /// Where this replica stands for `client`: its membership term,
    /// whether it owns the client, and its place (`None`: not a live
    /// member as far as it can see).
    pub(super) fn standing(&self, client: &[u8; 6]) -> Option<(u64, bool, Place)> {
        let (term, _) = self.guard()?;
        let shares = self.shares();
        let place = shares.place(&self.id)?;
        Some((term, shares.owns(&self.id, client), place))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bootfleet_core::store::embedded::EmbeddedStore;
    use bootfleet_core::store::{TxnOp, TxnRequest};

    use super::*;

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A write carrying `guard`, as the batch writer makes it.
    async fn fenced_write(store: &SharedStore, guard: Compare) -> bool {
        let txn =
            TxnRequest::new().when([guard]).and_then([TxnOp::put("/bootfleet/v1/leases/x", b"l".to_vec())]);
        store.txn(txn).await.unwrap().succeeded
    }

    #[tokio::test]
    async fn a_membership_that_lapsed_fences_off_its_writes_even_if_registered_again() {
        let store: SharedStore = Arc::new(EmbeddedStore::in_memory().unwrap());
        let stop = CancellationToken::new();
        let members = Members::start(store.clone(), "r1", stop.clone());
        assert!(members.guard().is_none(), "not registered: no fence to write with");
        let register = |store: SharedStore| async move {
            let lease = store.lease_grant(Duration::from_secs(5)).await.unwrap();
            store.put(&member_key(SERVICE, "r1"), b"member".to_vec(), Some(lease)).await.unwrap();
            lease
        };
        let lease = register(store.clone()).await;
        wait_for("the membership to be seen", || members.guard().is_some()).await;
        let (_, seen) = members.guard().unwrap();
        assert!(fenced_write(&store, seen.clone()).await, "a live member writes");
        // The membership lapses (its lease revoked, as expiry does); the
        // replica has not noticed yet, and writes with what it saw.
        store.lease_revoke(lease).await.unwrap();
        assert!(!fenced_write(&store, seen.clone()).await, "a lapsed member wrote");
        // Registered again: a new record, a new fence; the old one stays dead.
        register(store.clone()).await;
        assert!(!fenced_write(&store, seen.clone()).await, "an old membership's write went through");
        wait_for("the new membership", || members.guard().is_some_and(|(_, g)| g != seen)).await;
        assert!(fenced_write(&store, members.guard().unwrap().1).await);
        stop.cancel();
    }

    #[tokio::test]
    async fn shares_follow_the_members_records() {
        let store: SharedStore = Arc::new(EmbeddedStore::in_memory().unwrap());
        let stop = CancellationToken::new();
        let members = Members::start(store.clone(), "r2", stop.clone());
        let mut leases = Vec::new();
        for id in ["r1", "r2", "r3"] {
            let lease = store.lease_grant(Duration::from_secs(5)).await.unwrap();
            store.put(&member_key(SERVICE, id), b"member".to_vec(), Some(lease)).await.unwrap();
            leases.push(lease);
        }
        wait_for("three members", || members.shares().members().len() == 3).await;
        assert_eq!(members.standing(&[0; 6]).map(|(_, _, place)| place), Some(Place { index: 1, of: 3 }));
        store.lease_revoke(leases[0]).await.unwrap();
        wait_for("two members", || members.shares().members() == ["r2", "r3"]).await;
        assert_eq!(members.standing(&[0; 6]).map(|(_, _, place)| place), Some(Place { index: 0, of: 2 }));
        store.lease_revoke(leases[1]).await.unwrap();
        wait_for("r2 gone", || members.standing(&[0; 6]).is_none()).await;
        stop.cancel();
    }
}
