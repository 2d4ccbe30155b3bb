//! One StateStore conformance battery, run against both backends.

use std::time::Duration;

use bootfleet_core::election::{Election, Leadership};
use bootfleet_core::membership::{Registration, list_members};
use bootfleet_core::snapshot::{CacheStatus, SnapshotCache};
use bootfleet_core::store::{
    Compare, CompareOp, EventKind, SharedStore, StoreError, TxnOp, TxnOpResult, TxnRequest,
};
use bootfleet_proto::v1::Member;
use tokio_util::sync::CancellationToken;

use crate::{Backend, next_batch, within};

const P: &str = "/bootfleet/v1/test/";

macro_rules! battery {
    ($($test:ident),* $(,)?) => {
        mod embedded_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let backend = crate::embedded().await;
                    super::$test(&backend).await;
                }
            )*
        }
        mod etcd_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let backend = crate::etcd().await;
                    super::$test(&backend).await;
                }
            )*
        }
    };
}

battery!(
    put_get_delete,
    range_by_prefix,
    txn_compare_and_swap,
    concurrent_cas_loses_no_update,
    watch_from_revision,
    watch_reports_compaction,
    lease_expiry_deletes_keys,
    lease_revoke_and_unknown_lease,
    election_orders_candidates,
    leadership_guard_fences_writes,
    membership_lists_live_members,
    snapshot_follows_changes,
);

async fn put_get_delete(b: &Backend) {
    let s = &b.store;
    let key = format!("{P}a");
    let r1 = s.put(&key, b"one".to_vec(), None).await.unwrap();
    let kv = s.get(&key).await.unwrap().expect("written key");
    assert_eq!((kv.value.as_slice(), kv.version, kv.mod_revision), (&b"one"[..], 1, r1));
    assert_eq!(kv.create_revision, r1);
    let r2 = s.put(&key, b"two".to_vec(), None).await.unwrap();
    assert!(r2 > r1, "revisions increase: {r1} then {r2}");
    let kv = s.get(&key).await.unwrap().unwrap();
    assert_eq!((kv.version, kv.create_revision, kv.mod_revision), (2, r1, r2));
    assert!(s.delete(&key).await.unwrap());
    assert!(!s.delete(&key).await.unwrap());
    assert_eq!(s.get(&key).await.unwrap(), None);
}

async fn range_by_prefix(b: &Backend) {
    let s = &b.store;
    for key in ["r/b", "r/a", "r/c/d", "rx", "q"] {
        s.put(&format!("{P}{key}"), key.as_bytes().to_vec(), None).await.unwrap();
    }
    let range = s.range(&format!("{P}r/")).await.unwrap();
    let keys: Vec<&str> = range.kvs.iter().map(|kv| &kv.key[P.len()..]).collect();
    assert_eq!(keys, ["r/a", "r/b", "r/c/d"]);
    assert!(range.revision >= range.kvs.iter().map(|kv| kv.mod_revision).max().unwrap());
    assert!(s.range(&format!("{P}none/")).await.unwrap().kvs.is_empty());
}

async fn txn_compare_and_swap(b: &Backend) {
    let s = &b.store;
    let key = format!("{P}cas");
    // Create only if absent.
    let create = || {
        TxnRequest::new()
            .when([Compare::absent(key.clone())])
            .and_then([TxnOp::put(key.clone(), b"v1".to_vec())])
            .or_else([TxnOp::get(key.clone())])
    };
    let first = s.txn(create()).await.unwrap();
    assert!(first.succeeded);
    let second = s.txn(create()).await.unwrap();
    assert!(!second.succeeded);
    let Some(TxnOpResult::Get(Some(current))) = second.results.first().cloned() else {
        panic!("else branch must return the key: {second:?}");
    };
    assert_eq!(current.value, b"v1");
    // Swap on the revision we read; a stale revision fails.
    let swap = |rev| {
        TxnRequest::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([TxnOp::put(key.clone(), b"v2".to_vec()), TxnOp::put(format!("{key}-2"), vec![])])
    };
    let swapped = s.txn(swap(current.mod_revision)).await.unwrap();
    assert!(swapped.succeeded);
    assert_eq!(swapped.results, [TxnOpResult::Put, TxnOpResult::Put]);
    let stale = s.txn(swap(current.mod_revision)).await.unwrap();
    assert!(!stale.succeeded);
    assert_eq!(stale.revision, swapped.revision, "a failed txn writes nothing");
    // Both puts of the successful txn share one revision.
    let a = s.get(&key).await.unwrap().unwrap();
    let b2 = s.get(&format!("{key}-2")).await.unwrap().unwrap();
    assert_eq!(a.mod_revision, b2.mod_revision);
    assert_eq!(a.value, b"v2");
}

async fn concurrent_cas_loses_no_update(b: &Backend) {
    let key = format!("{P}counter");
    b.store.put(&key, b"0".to_vec(), None).await.unwrap();
    let workers = 4;
    let per_worker = 25;
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let s: SharedStore = b.store.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..per_worker {
                loop {
                    let kv = s.get(&key).await.unwrap().unwrap();
                    let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                    let txn = TxnRequest::new()
                        .when([Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision)])
                        .and_then([TxnOp::put(key.clone(), (n + 1).to_string().into_bytes())]);
                    if s.txn(txn).await.unwrap().succeeded {
                        break;
                    }
                    conflicts += 1;
                }
            }
            conflicts
        }));
    }
    for t in tasks {
        within("cas worker", t).await.unwrap();
    }
    let kv = b.store.get(&key).await.unwrap().unwrap();
    assert_eq!(kv.value, (workers * per_worker).to_string().into_bytes());
}

async fn watch_from_revision(b: &Backend) {
    let s = &b.store;
    let prefix = format!("{P}w/");
    let r1 = s.put(&format!("{prefix}a"), b"1".to_vec(), None).await.unwrap();
    s.put(&format!("{P}other"), b"x".to_vec(), None).await.unwrap();
    s.put(&format!("{prefix}b"), b"2".to_vec(), None).await.unwrap();
    // History replays from r1, skipping keys outside the prefix.
    let mut w = s.watch(&prefix, r1).await.unwrap();
    let first = next_batch(&mut w).await;
    assert_eq!((first[0].kind, first[0].kv.key.as_str()), (EventKind::Put, &*format!("{prefix}a")));
    let second = next_batch(&mut w).await;
    assert_eq!(second[0].kv.value, b"2");
    // Live events: a delete, then a two-key transaction in one batch.
    s.delete(&format!("{prefix}a")).await.unwrap();
    let del = next_batch(&mut w).await;
    assert_eq!((del.len(), del[0].kind), (1, EventKind::Delete));
    assert!(del[0].kv.mod_revision > r1);
    let txn = TxnRequest::new()
        .and_then([TxnOp::put(format!("{prefix}c"), vec![]), TxnOp::put(format!("{prefix}d"), vec![])]);
    let rev = s.txn(txn).await.unwrap().revision;
    let batch = next_batch(&mut w).await;
    assert_eq!(batch.len(), 2, "{batch:?}");
    assert!(batch.iter().all(|e| e.kv.mod_revision == rev));
    // from = 0 watches only what comes next.
    let mut live = s.watch(&prefix, 0).await.unwrap();
    s.put(&format!("{prefix}e"), b"5".to_vec(), None).await.unwrap();
    assert_eq!(next_batch(&mut live).await[0].kv.value, b"5");
}

async fn watch_reports_compaction(b: &Backend) {
    let s = &b.store;
    let prefix = format!("{P}c/");
    let r1 = s.put(&format!("{prefix}a"), b"1".to_vec(), None).await.unwrap();
    let r2 = s.put(&format!("{prefix}a"), b"2".to_vec(), None).await.unwrap();
    s.put(&format!("{prefix}a"), b"3".to_vec(), None).await.unwrap();
    s.compact(r2).await.unwrap();
    let mut w = s.watch(&prefix, r1).await.unwrap();
    match within("compaction error", w.next()).await {
        Some(Err(StoreError::Compacted { compact_revision, .. })) => assert!(compact_revision >= r2),
        other => panic!("expected Compacted, got {other:?}"),
    }
    // From the compaction revision on, history is still there.
    let mut w = s.watch(&prefix, r2 + 1).await.unwrap();
    assert_eq!(next_batch(&mut w).await[0].kv.value, b"3");
}

async fn lease_expiry_deletes_keys(b: &Backend) {
    let s = &b.store;
    let key = format!("{P}leased");
    let lease = s.lease_grant(Duration::from_secs(2)).await.unwrap();
    s.put(&key, b"x".to_vec(), Some(lease)).await.unwrap();
    assert_eq!(s.get(&key).await.unwrap().unwrap().lease, lease);
    let mut w = s.watch(&key, 0).await.unwrap();
    // Renewals keep it past its TTL.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(s.lease_keep_alive(lease).await.unwrap() >= Duration::from_secs(1));
    }
    assert!(s.get(&key).await.unwrap().is_some(), "renewed lease must keep its key");
    // Without renewals the key goes, with a delete event.
    let batch = next_batch(&mut w).await;
    assert_eq!((batch[0].kind, batch[0].kv.key.as_str()), (EventKind::Delete, key.as_str()));
    assert_eq!(s.get(&key).await.unwrap(), None);
    assert!(matches!(s.lease_keep_alive(lease).await, Err(StoreError::LeaseNotFound(_))));
}

async fn lease_revoke_and_unknown_lease(b: &Backend) {
    let s = &b.store;
    let lease = s.lease_grant(Duration::from_secs(30)).await.unwrap();
    for i in 0..3 {
        s.put(&format!("{P}l/{i}"), vec![], Some(lease)).await.unwrap();
    }
    s.lease_revoke(lease).await.unwrap();
    assert!(s.range(&format!("{P}l/")).await.unwrap().kvs.is_empty());
    assert!(matches!(s.lease_revoke(lease).await, Err(StoreError::LeaseNotFound(_))));
    assert!(matches!(
        s.put(&format!("{P}l/x"), vec![], Some(lease)).await,
        Err(StoreError::LeaseNotFound(_))
    ));
}

async fn election_orders_candidates(b: &Backend) {
    let s = &b.store;
    let election = Election::new(s.clone(), "conformance");
    let mut observed = election.observe();
    let l1 = s.lease_grant(Duration::from_secs(30)).await.unwrap();
    let l2 = s.lease_grant(Duration::from_secs(2)).await.unwrap();
    let l3 = s.lease_grant(Duration::from_secs(30)).await.unwrap();
    let first = within("first campaign", election.campaign(l1, b"one".to_vec())).await.unwrap();
    assert_eq!(election.leader().await.unwrap().unwrap().value, b"one");
    // Later candidates wait in create order.
    let e2 = election.clone();
    let second = tokio::spawn(async move { e2.campaign(l2, b"two".to_vec()).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let e3 = election.clone();
    let third = tokio::spawn(async move { e3.campaign(l3, b"three".to_vec()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished() && !third.is_finished(), "only one leader at a time");
    within("observe leader one", observed.wait_for(|l| l.as_ref().is_some_and(|l| l.value == b"one")))
        .await
        .unwrap();
    // Resign: the next in line leads.
    election.resign(&first).await.unwrap();
    within("second leads", second).await.unwrap().unwrap();
    within("observe leader two", observed.wait_for(|l| l.as_ref().is_some_and(|l| l.value == b"two")))
        .await
        .unwrap();
    assert!(!third.is_finished());
    // The second leader's lease expires (no renewals): the third leads.
    within("third leads after expiry", third).await.unwrap().unwrap();
    assert_eq!(election.leader().await.unwrap().unwrap().value, b"three");
}

async fn leadership_guard_fences_writes(b: &Backend) {
    let s = &b.store;
    let election = Election::new(s.clone(), "guard");
    let cancel = CancellationToken::new();
    let ttl = Duration::from_secs(2);
    let leader = within("acquire", Leadership::acquire(&election, b"a".to_vec(), ttl, &cancel))
        .await
        .unwrap()
        .expect("not cancelled");
    assert!(leader.is_acting());
    // The deadline lies within the TTL, and renewals move it later.
    let deadlines = leader.deadline_updates();
    let first = *deadlines.borrow();
    assert!(first > tokio::time::Instant::now() && first <= tokio::time::Instant::now() + ttl);
    let guarded = |value: &[u8]| {
        TxnRequest::new().when([leader.guard()]).and_then([TxnOp::put(format!("{P}fenced"), value.to_vec())])
    };
    assert!(s.txn(guarded(b"by leader")).await.unwrap().succeeded);
    // Leadership outlives its TTL while renewed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(leader.is_acting(), "renewals must keep leadership");
    let renewed = *deadlines.borrow();
    assert!(
        renewed > first + Duration::from_secs(1),
        "renewals must move the deadline: {first:?} → {renewed:?}"
    );
    assert!(renewed > tokio::time::Instant::now());
    // A second candidate waits; cancelling it withdraws the candidacy.
    let waiting = CancellationToken::new();
    let e2 = election.clone();
    let w2 = waiting.clone();
    let other = tokio::spawn(async move { Leadership::acquire(&e2, b"b".to_vec(), ttl, &w2).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    waiting.cancel();
    assert!(within("cancelled candidate", other).await.unwrap().unwrap().is_none());
    let stale = guarded(b"after resign");
    leader.resign().await.unwrap();
    assert!(!s.txn(stale).await.unwrap().succeeded, "a deposed leader's write must fail");
    assert_eq!(election.leader().await.unwrap(), None);
}

async fn membership_lists_live_members(b: &Backend) {
    let s = &b.store;
    let member = |id: &str| Member { service: "test-svc".into(), id: id.into(), ..Default::default() };
    let one = Registration::start(s.clone(), member("one"), Duration::from_secs(2));
    let two = Registration::start(s.clone(), member("two"), Duration::from_secs(2));
    let ids = |members: Vec<Member>| members.into_iter().map(|m| m.id).collect::<Vec<_>>();
    within("both registered", async {
        while ids(list_members(s, "test-svc").await.unwrap()) != ["one", "two"] {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    one.update(|m| m.load = 42);
    within("load published", async {
        while list_members(s, "test-svc").await.unwrap().iter().all(|m| m.load != 42) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Registrations outlive their TTL while renewed, also while the record
    // changes more often than the renewal period (a busy replica publishes
    // its load every second): writing the record does not renew a lease.
    let key = bootfleet_core::membership::member_key("test-svc", "one");
    let lease = s.get(&key).await.unwrap().expect("registered").lease;
    for load in 0..30 {
        one.update(|m| m.load = load);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ids(list_members(s, "test-svc").await.unwrap()), ["one", "two"]);
    let now = s.get(&key).await.unwrap().expect("still registered");
    assert_eq!(now.lease, lease, "the lease lapsed and was replaced while the record kept changing");
    one.deregister().await.unwrap();
    assert_eq!(ids(list_members(s, "test-svc").await.unwrap()), ["two"]);
    // A dropped registration stops renewing and lapses by itself.
    drop(two);
    within("lapsed", async {
        while !list_members(s, "test-svc").await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

async fn snapshot_follows_changes(b: &Backend) {
    let s = &b.store;
    let prefix = format!("{P}snap/");
    s.put(&format!("{prefix}a"), b"1".to_vec(), None).await.unwrap();
    let stop = CancellationToken::new();
    let cache = SnapshotCache::start(s.clone(), &prefix, stop.clone());
    within("loaded", cache.loaded()).await;
    assert_eq!(cache.status(), CacheStatus::Live);
    assert_eq!(cache.get(&format!("{prefix}a")).unwrap().value, b"1");
    let rev = s.put(&format!("{prefix}b"), b"2".to_vec(), None).await.unwrap();
    within("caught up", cache.caught_up(rev)).await;
    assert_eq!(cache.list(&prefix).len(), 2);
    let rev =
        s.txn(TxnRequest::new().and_then([TxnOp::delete(format!("{prefix}a"))])).await.unwrap().revision;
    within("delete applied", cache.caught_up(rev)).await;
    assert_eq!(cache.get(&format!("{prefix}a")), None);
    stop.cancel();
}
