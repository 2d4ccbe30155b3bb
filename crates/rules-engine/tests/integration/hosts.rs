//! Host records on a hostile or broken boot network: only credentialed
//! Evaluate calls record, absent hosts' records expire, the number of
//! records is capped, the recorder's queue stays bounded while the store is
//! down, and listings come in pages however many records there are.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bootfleet_core::store::SharedStore;
use bootfleet_core::store::embedded::EmbeddedStore;
use bootfleet_proto::v1 as pb;
use bootfleet_rules_engine::client::{Client, connect};
use bootfleet_rules_engine::facts::Facts;
use bootfleet_rules_engine::store::{BOOTS_PREFIX, HOSTS_PREFIX, HostLimits, RulesState};
use prost::Message;
use serde_json::json;
use tonic::Code;

use crate::{admin, anonymous, facts, image_name, kernel_profile, rule, service, start_with, within};

fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

fn mac(i: u32) -> String {
    let [_, a, b, c] = i.to_be_bytes();
    format!("52:54:01:{a:02x}:{b:02x}:{c:02x}")
}

fn memory_store() -> SharedStore {
    Arc::new(EmbeddedStore::in_memory().unwrap())
}

/// Activates one rule booting every host with `image` (and img-a, img-b
/// profiles).
async fn boot_everyone(server: &crate::Server, image: &str) {
    let mut c = admin(&server.url).await;
    for profile in [kernel_profile("img-a", "a"), kernel_profile("img-b", "b")] {
        let request = pb::PutProfileRequest {
            profile: Some(profile),
            expected_revision: 0,
            allow_missing_images: true,
        };
        c.put_profile(request).await.unwrap();
    }
    let rules = vec![rule("all", json!({"always": true}), image)];
    c.replace_working_set(pb::ReplaceWorkingSetRequest { rules, expected_revision: 0 }).await.unwrap();
    let activated = c.activate(pb::ActivateRequest { expected_revision: 0 }).await.unwrap().into_inner();
    within("rules active", server.state.caught_up(activated.revision)).await;
}

async fn evaluate_as(client: &mut Client, mac: &str, dry_run: bool) -> pb::EvaluateResponse {
    client
        .evaluate(pb::EvaluateRequest { facts: Some(facts(mac)), dry_run, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
}

/// Waits until the recorder has written everything it queued and this
/// replica's snapshot shows every stored record as stored.
async fn recorder_idle(state: &RulesState) {
    within("recorder idle", async {
        while state.recorder().stats().queued.hosts > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let stored = state.store().range(HOSTS_PREFIX).await.unwrap().kvs;
    within("snapshot caught up", async {
        loop {
            let same = stored.iter().all(|kv| {
                let mac = kv.key.trim_start_matches(HOSTS_PREFIX);
                state.host(mac).unwrap().is_some_and(|(_, revision)| revision == kv.mod_revision)
            });
            if same && state.all_hosts().unwrap().len() == stored.len() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

async fn stored_macs(store: &SharedStore) -> Vec<String> {
    let range = store.range(HOSTS_PREFIX).await.unwrap();
    range.kvs.iter().map(|kv| kv.key.trim_start_matches(HOSTS_PREFIX).to_owned()).collect()
}

/// Evaluate with the service or admin token records; without one, or with
/// a token the server does not know, it answers the same decision as a
/// dry run that says so, and leaves nothing in the store. The service
/// token cannot write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluate_records_only_with_the_service_credential() {
    let server = start_with(memory_store(), HostLimits::default()).await;
    boot_everyone(&server, "img-a").await;
    let mut anyone = anonymous(&server.url).await;
    let mut forger = connect(&server.url, Some("not-a-token-this-server-knows")).await.unwrap();
    let mut boot_service = service(&server.url).await;
    let mut operator = admin(&server.url).await;

    let without_decided_at = |response: &pb::EvaluateResponse| {
        let decision = response.decision.clone().unwrap();
        pb::Decision { decided_at_unix_ms: 0, ..decision }
    };
    let anonymous_answer = evaluate_as(&mut anyone, &mac(4), false).await;
    assert_eq!(anonymous_answer.recording(), pb::Recording::NoCredential);
    assert_eq!(image_name(anonymous_answer.decision.as_ref().unwrap()), Some("img-a"));
    assert_eq!(evaluate_as(&mut anyone, &mac(1), false).await.recording(), pb::Recording::NoCredential);
    assert_eq!(evaluate_as(&mut forger, &mac(2), false).await.recording(), pb::Recording::NoCredential);
    assert_eq!(evaluate_as(&mut boot_service, &mac(3), true).await.recording(), pb::Recording::DryRun);
    let recorded = evaluate_as(&mut boot_service, &mac(4), false).await;
    assert_eq!(recorded.recording(), pb::Recording::Queued);
    assert_eq!(
        without_decided_at(&recorded),
        without_decided_at(&anonymous_answer),
        "same decision either way"
    );
    assert_eq!(evaluate_as(&mut operator, &mac(5), false).await.recording(), pb::Recording::Queued);
    // The boot services' lazily connecting client sends its token too.
    let token = bootfleet_core::auth::Token::new(crate::SERVICE_TOKEN);
    let mut responder = bootfleet_rules_engine::client::connect_lazy_with(&server.url, Some(&token)).unwrap();
    assert_eq!(evaluate_as(&mut responder, &mac(6), false).await.recording(), pb::Recording::Queued);

    recorder_idle(&server.state).await;
    assert_eq!(stored_macs(server.state.store()).await, [mac(4), mac(5), mac(6)]);
    // The anonymous evaluation of the same host left no history entry.
    let (record, _) = server.state.host(&mac(4)).unwrap().unwrap();
    assert_eq!(record.history.len(), 1);

    let write = boot_service
        .replace_working_set(pb::ReplaceWorkingSetRequest { rules: vec![], expected_revision: 0 })
        .await
        .unwrap_err();
    assert_eq!(write.code(), Code::PermissionDenied, "{write:?}");
    assert!(write.message().contains("rules.admin_token_file"), "{write:?}");
}

/// A stored record of `mac` last seen at `seen_at` (unix ms), with facts
/// and a recorded decision of `pad` bytes each (for size), booting `image`.
fn record_bytes(mac: &str, seen_at: Option<i64>, image: &str, pad: usize) -> Vec<u8> {
    let mut facts = facts(mac);
    if pad > 0 {
        facts.labels.insert("note".into(), "f".repeat(pad));
    }
    let decision = pb::Decision {
        image_profile: Some(pb::ImageProfile { name: image.into(), ..Default::default() }),
        host_profile: (pad > 0).then(|| pb::HostProfile {
            name: "big".into(),
            values: [("blob".to_owned(), "d".repeat(pad))].into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let history = seen_at
        .map(|at| pb::HostEvent {
            at_unix_ms: at,
            facts: Some(facts.clone()),
            decision: Some(decision.clone()),
            decided_by: "old".into(),
        })
        .into_iter()
        .collect();
    pb::HostRecord {
        mac: mac.into(),
        facts: Some(facts),
        last_decision: Some(decision),
        history,
        boot_status: None,
    }
    .encode_to_vec()
}

async fn put(store: &SharedStore, key: String, value: Vec<u8>) -> i64 {
    store.put(&key, value, None).await.unwrap()
}

const HOUR_MS: i64 = 3_600_000;

/// Limits with a one-hour retention swept every 50 ms.
fn swept_hourly() -> HostLimits {
    HostLimits {
        retention: Some(Duration::from_secs(3600)),
        sweep_interval: Duration::from_millis(50),
        ..HostLimits::default()
    }
}

/// A replica sweeping with a one-hour retention removes the records (and
/// boot statuses) of hosts last seen longer ago, and of records without
/// history, and keeps the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_hosts_not_seen_for_the_retention_are_removed() {
    let store = memory_store();
    let now = now_ms();
    put(
        &store,
        format!("{HOSTS_PREFIX}{}", mac(1)),
        record_bytes(&mac(1), Some(now - 2 * HOUR_MS), "img-a", 0),
    )
    .await;
    put(&store, format!("{BOOTS_PREFIX}{}", mac(1)), pb::BootStatus::default().encode_to_vec()).await;
    put(
        &store,
        format!("{HOSTS_PREFIX}{}", mac(2)),
        record_bytes(&mac(2), Some(now - HOUR_MS / 6), "img-a", 0),
    )
    .await;
    put(&store, format!("{HOSTS_PREFIX}{}", mac(3)), record_bytes(&mac(3), None, "img-a", 0)).await;
    let expired_before = bootfleet_rules_engine::metrics::HOST_RECORDS_EXPIRED.get();
    let server = start_with(Arc::clone(&store), swept_hourly()).await;
    within("only the host seen within the hour keeps its record", async {
        while stored_macs(&store).await != [mac(2)] {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        store.get(&format!("{BOOTS_PREFIX}{}", mac(1))).await.unwrap().is_none(),
        "boot status removed too"
    );
    // Counted once the removal has returned to the sweep.
    within("both removals counted", async {
        while bootfleet_rules_engine::metrics::HOST_RECORDS_EXPIRED.get() < expired_before + 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    drop(server);
}

/// A sweep judges records from its snapshot; one whose host was recorded
/// again after that (its revision moved) is kept, and two sweeps judging
/// the same expired record remove it once, without error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_keeps_a_host_recorded_meanwhile_and_sweeps_race_harmlessly() {
    use bootfleet_core::snapshot::SnapshotCache;
    use bootfleet_rules_engine::store::retention::sweep;
    bootfleet_test_support::init_tracing();
    let store = memory_store();
    let now = now_ms();
    let (returning, gone) = (format!("{HOSTS_PREFIX}{}", mac(1)), format!("{HOSTS_PREFIX}{}", mac(2)));
    put(&store, returning.clone(), record_bytes(&mac(1), Some(now - 2 * HOUR_MS), "img-a", 0)).await;
    put(&store, gone.clone(), record_bytes(&mac(2), Some(now - 2 * HOUR_MS), "img-a", 0)).await;
    // Two replicas' snapshots, frozen (their watch stopped) once loaded.
    let mut frozen = Vec::new();
    for _ in 0..2 {
        let stop = tokio_util::sync::CancellationToken::new();
        let snapshot = SnapshotCache::start(Arc::clone(&store), HOSTS_PREFIX, stop.clone());
        within("snapshot loaded", snapshot.loaded()).await;
        stop.cancel();
        frozen.push(snapshot);
    }
    // The returning host boots: recorded again after the snapshots.
    let rebooted = put(&store, returning.clone(), record_bytes(&mac(1), Some(now), "img-a", 0)).await;
    let retention = Duration::from_secs(3600);
    assert_eq!(sweep(&store, &frozen[0], retention, now).await.unwrap(), 1);
    assert_eq!(sweep(&store, &frozen[1], retention, now).await.unwrap(), 0);
    assert!(store.get(&gone).await.unwrap().is_none());
    let kept = store.get(&returning).await.unwrap().expect("the host recorded meanwhile keeps its record");
    assert_eq!(kept.mod_revision, rebooted);
}

/// Past `max_hosts` records, Evaluate for a new host says CAPPED and
/// records nothing; hosts already recorded keep getting history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_hosts_past_the_cap_are_not_recorded_known_hosts_still_are() {
    let limits = HostLimits { max_hosts: 5, ..HostLimits::default() };
    let server = start_with(memory_store(), limits).await;
    boot_everyone(&server, "img-a").await;
    let mut boot_service = service(&server.url).await;
    for i in 0..5 {
        assert_eq!(evaluate_as(&mut boot_service, &mac(i), false).await.recording(), pb::Recording::Queued);
    }
    recorder_idle(&server.state).await;
    let refused_before = bootfleet_rules_engine::metrics::HOST_RECORDS_REFUSED.get();
    for i in 5..25 {
        let answer = evaluate_as(&mut boot_service, &mac(i), false).await;
        assert_eq!(answer.recording(), pb::Recording::Capped, "{}", mac(i));
        assert_eq!(image_name(answer.decision.as_ref().unwrap()), Some("img-a"), "capped hosts still boot");
    }
    assert_eq!(evaluate_as(&mut boot_service, &mac(0), false).await.recording(), pb::Recording::Queued);
    recorder_idle(&server.state).await;
    assert_eq!(stored_macs(server.state.store()).await, (0..5).map(mac).collect::<Vec<_>>());
    assert_eq!(server.state.host(&mac(0)).unwrap().unwrap().0.history.len(), 2);
    assert!(bootfleet_rules_engine::metrics::HOST_RECORDS_REFUSED.get() >= refused_before + 20);
}

/// New hosts queued in a burst, before any of them is stored, still end
/// with exactly `max_hosts` records: the writer counts what it creates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_new_hosts_stops_at_the_cap() {
    let limits = HostLimits { max_hosts: 5, ..HostLimits::default() };
    let server = start_with(memory_store(), limits).await;
    let decision = pb::Decision::default();
    let now = now_ms();
    let mut capped_early = 0;
    for i in 0..30 {
        let facts = Facts::from_proto(&facts(&mac(i))).unwrap();
        match server.state.record(&facts, &decision, now) {
            pb::Recording::Queued => {}
            pb::Recording::Capped => capped_early += 1,
            other => panic!("{other:?}"),
        }
    }
    recorder_idle(&server.state).await;
    assert_eq!(stored_macs(server.state.store()).await.len(), 5);
    assert_eq!(server.state.recorder().stats().refused + capped_early, 25);
}

/// etcd stopped: 10,000 decisions for one host queue as that host's
/// newest five (the history limit), and one decision each for 200 more
/// hosts fills the queue's 50 hosts, the rest counted as dropped. When etcd
/// returns, the queued hosts are written, the busy one with its five
/// newest decisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorder_queue_is_bounded_while_the_store_is_down() {
    use bootfleet_core::store::etcd::{EtcdOptions, EtcdStore};
    use bootfleet_rules_engine::store::pending::QueueLimits;
    use bootfleet_test_support::etcd::EtcdCluster;
    bootfleet_test_support::init_tracing();
    let mut cluster = EtcdCluster::start(1).unwrap();
    let etcd: SharedStore =
        Arc::new(EtcdStore::connect(EtcdOptions::new(cluster.endpoints())).await.unwrap());
    let queue = QueueLimits { max_hosts: 50, max_bytes: 1 << 20 };
    let server = start_with(Arc::clone(&etcd), HostLimits { queue, ..HostLimits::default() }).await;
    tokio::task::block_in_place(|| cluster.stop_all());

    let decision = pb::Decision::default();
    let base = now_ms();
    let busy = Facts::from_proto(&facts(&mac(0))).unwrap();
    for i in 0..10_000 {
        assert_eq!(server.state.record(&busy, &decision, base + i), pb::Recording::Queued);
    }
    let stats = server.state.recorder().stats();
    assert_eq!((stats.queued.hosts, stats.queued.events), (1, 5), "{stats:?}");
    assert_eq!(stats.coalesced, 9_995);
    let mut dropped_answers = 0;
    for i in 1..=200 {
        let facts = Facts::from_proto(&facts(&mac(i))).unwrap();
        if server.state.record(&facts, &decision, base) == pb::Recording::Dropped {
            dropped_answers += 1;
        }
    }
    let stats = server.state.recorder().stats();
    assert_eq!((stats.queued.hosts, stats.queued.events), (50, 54), "{stats:?}");
    assert_eq!((stats.dropped, dropped_answers), (151, 151));
    assert!(stats.queued.bytes <= queue.max_bytes);

    tokio::task::block_in_place(|| cluster.restart_all()).unwrap();
    within("the queue drains once etcd is back", async {
        while server.state.recorder().stats().queued.hosts > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(stored_macs(&etcd).await, (0..50).map(mac).collect::<Vec<_>>());
    let record: pb::HostRecord = pb::HostRecord::decode(
        etcd.get(&format!("{HOSTS_PREFIX}{}", mac(0))).await.unwrap().unwrap().value.as_slice(),
    )
    .unwrap();
    let seen: Vec<i64> = record.history.iter().map(|e| e.at_unix_ms - base).collect();
    assert_eq!(seen, [9_995, 9_996, 9_997, 9_998, 9_999]);
}

/// 1,200 records of about 20 KiB each (24 MiB, six times gRPC's message
/// limit): ListHosts and TestCompliance answer in pages of at most the
/// size asked (500 at most) and 2 MiB, which together hold every host
/// once, in MAC order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_compliance_come_in_pages() {
    use bootfleet_rules_engine::service::{MAX_PAGE, PAGE_BYTES};
    const HOSTS: u32 = 1_200;
    let store = memory_store();
    let now = now_ms();
    for i in 0..HOSTS {
        put(&store, format!("{HOSTS_PREFIX}{}", mac(i)), record_bytes(&mac(i), Some(now), "img-a", 10_000))
            .await;
    }
    let server = start_with(Arc::clone(&store), HostLimits::default()).await;
    // The recorded decisions said img-a; the active set says img-b.
    boot_everyone(&server, "img-b").await;
    let mut c = anonymous(&server.url).await;
    let all: Vec<String> = (0..HOSTS).map(mac).collect();

    for asked in [0, 7, 100_000] {
        let (mut listed, mut token, mut pages) = (Vec::new(), String::new(), 0);
        loop {
            let request = pb::ListHostsRequest { page_size: asked, page_token: token };
            let page = c.list_hosts(request).await.unwrap().into_inner();
            pages += 1;
            assert!(
                page.hosts.len() <= if asked == 7 { 7 } else { MAX_PAGE },
                "{asked}: {}",
                page.hosts.len()
            );
            assert!(page.encoded_len() <= PAGE_BYTES + 32 * 1024, "{asked}: {} bytes", page.encoded_len());
            assert!(!page.hosts.is_empty());
            listed.extend(page.hosts.into_iter().map(|h| h.mac));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(listed, all, "page size {asked}");
        assert!(pages > 1);
    }

    let (mut non_compliant, mut checked, mut token) = (Vec::new(), 0, String::new());
    loop {
        let request = pb::TestComplianceRequest {
            against: pb::RuleSetKind::Active.into(),
            page_token: token,
            ..Default::default()
        };
        let page = c.test_compliance(request).await.unwrap().into_inner();
        assert!(page.encoded_len() <= PAGE_BYTES + 32 * 1024, "{} bytes", page.encoded_len());
        checked += page.hosts_checked;
        non_compliant.extend(page.non_compliant.into_iter().map(|r| r.mac));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!((non_compliant, checked), (all.clone(), HOSTS));

    // Named hosts page the same way; a token not from a page is refused.
    let named: Vec<String> = all.iter().rev().take(20).cloned().collect();
    let request = pb::TestComplianceRequest { macs: named, page_size: 15, ..Default::default() };
    let first = c.test_compliance(request.clone()).await.unwrap().into_inner();
    assert_eq!((first.hosts_checked, first.next_page_token.as_str()), (15, all[HOSTS as usize - 6].as_str()));
    let rest = pb::TestComplianceRequest { page_token: first.next_page_token, ..request };
    let second = c.test_compliance(rest).await.unwrap().into_inner();
    assert_eq!((second.hosts_checked, second.next_page_token.as_str()), (5, ""));
    let bad = pb::ListHostsRequest { page_size: 0, page_token: "garbage".into() };
    assert_eq!(c.list_hosts(bad).await.unwrap_err().code(), Code::InvalidArgument);
}
