//! Asking the rules engine whether to boot a host, with a cache.
//!
//! Every DHCP exchange is two requests (DISCOVER, REQUEST) and a PXE boot
//! is usually two exchanges (firmware, then iPXE), all within seconds and
//! all asking the same question. A gRPC round trip per request cost more
//! than the rest of the answer (6 ms of 10 ms under a storm), so answers
//! are kept per host and reused while they cannot have changed: same facts
//! and no change to the rule sets, profiles or locations seen in the store
//! since. For `dhcp.rules_cache` (30 s by default; zero turns the cache
//! off) an answer is used as it is (for a REQUEST, twice that: it follows
//! the DISCOVER that refreshed it, or renews a lease); after that it is
//! still used, while one background request asks the rules engine again,
//! so a known host's
//! requests never wait for gRPC. An answer's age never makes a request
//! wait: under a storm the rules engine may fall behind, and if aged
//! answers were asked for in the request path, every request would then
//! wait for it, and it would fall further behind (the responder stopped
//! answering after one overload in the benchmark). Background requests
//! are limited to [`REFRESHES_AT_ONCE`]; past that, a later request of the
//! host tries again. An answer from a rules engine that has
//! not yet caught up with the newest change this responder saw (its
//! `built_at_revision` is older) is used but not cached. The last answer is
//! also the fallback while the rules engine is unreachable, however old.
//!
//! The host record: a DISCOVER asks with `record` so the rules engine logs
//! the boot attempt. A DISCOVER from a host recorded within [`RECORD_EVERY`]
//! (retries, iPXE after the firmware) adds nothing to the history; past
//! it, the cached answer is used and the attempt is recorded by the
//! background request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bootfleet_core::snapshot::SnapshotCache;
use bootfleet_core::store::SharedStore;
use bootfleet_proto::v1 as pb;
use bootfleet_rules_engine::client::Client as RulesClient;
use bootfleet_rules_engine::store::{LOCATION_PREFIX, PROFILES_PREFIX, RULES_PREFIX};
use prometheus::{IntCounterVec, register_int_counter_vec};
use tokio_util::sync::CancellationToken;

use crate::proxy::Verdict;
use crate::wire::Request;

/// How often a host's DISCOVERs are recorded at most while its answer holds.
const RECORD_EVERY: Duration = Duration::from_secs(30);

/// Background requests to the rules engine at once, at most.
const REFRESHES_AT_ONCE: usize = 16;

/// Hosts remembered; past it, some are forgotten (a flood of made-up MACs
/// may push out some real hosts' answers, never all of them at once).
const MAX_HOSTS: usize = 100_000;

static ASKED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "bootfleet_dhcp_rules_answers_total",
        "Boot decisions by source: cached, asked (the rules engine), fallback (last answer, rules engine unreachable)",
        &["source"]
    )
    .expect("metric registers once")
});

/// The facts a decision was made on, besides the MAC.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FactsKey {
    uuid: String,
    arch: String,
    relay: String,
    /// Option 82's circuit and remote id (relayed requests only: they come
    /// from a trusted relay, checked before; a client's own option 82 is
    /// anyone's to write).
    circuit_id: String,
    remote_id: String,
}

struct Known {
    facts: FactsKey,
    verdict: Verdict,
    generation: u64,
    asked: Instant,
    recorded: Option<Instant>,
    /// A background refresh is running.
    refreshing: bool,
}

type Hosts = Arc<Mutex<HashMap<String, Known>>>;

/// What the cache holds for a request.
#[derive(Debug, PartialEq, Eq)]
enum Lookup {
    /// Valid: use it.
    Fresh(Verdict),
    /// Aged out (or a DISCOVER due to be recorded), and no rule changed:
    /// use it, and ask again in the background if `refresh`.
    Stale { verdict: Verdict, refresh: bool },
    /// Nothing usable: ask now.
    Miss,
}

/// Per-host answers from the rules engine.
pub(super) struct Verdicts {
    client: RulesClient,
    hosts: Hosts,
    /// How long an answer is reused at most.
    fresh_for: Duration,
    /// Changes whenever the rule sets, profiles or locations change in the store.
    generation: Arc<AtomicU64>,
    /// The store revision of the newest such change seen: an answer from a
    /// rules engine that has not caught up with it is used, never cached.
    changed_at: Arc<AtomicI64>,
    /// Room for background requests (see [`REFRESHES_AT_ONCE`]).
    refreshes: Arc<tokio::sync::Semaphore>,
}

fn verdict_of(response: pb::EvaluateResponse) -> Verdict {
    if response.undecided {
        // The facts iPXE sends with its script request decide: answer, so
        // that it gets to ask.
        return Verdict::Boot;
    }
    let decision = response.decision.unwrap_or_default();
    match decision.image_profile.as_ref().and_then(|p| p.boot.as_ref()) {
        None => Verdict::Unknown,
        Some(pb::image_profile::Boot::Ignore(_)) => Verdict::Ignore,
        Some(_) => Verdict::Boot,
    }
}

/// Stores a fresh answer for `mac`.
fn remember(
    hosts: &Hosts,
    mac: String,
    facts: FactsKey,
    verdict: Verdict,
    generation: u64,
    now: Instant,
    discover: bool,
) {
    let mut hosts = hosts.lock().unwrap_or_else(PoisonError::into_inner);
    if hosts.len() >= MAX_HOSTS && !hosts.contains_key(&mac) {
        let evict: Vec<String> = hosts.keys().take(1_000).cloned().collect();
        for key in evict {
            hosts.remove(&key);
        }
    }
    let before = hosts.get(&mac).and_then(|k| k.recorded);
    let recorded = if discover { Some(now) } else { before };
    hosts.insert(mac, Known { facts, verdict, generation, asked: now, recorded, refreshing: false });
}

impl Verdicts {
    /// Answers from `client`; `store` is watched for rule and profile
    /// changes, which end every cached answer.
    pub(super) fn new(
        client: RulesClient,
        fresh_for: Duration,
        store: SharedStore,
        stop: CancellationToken,
    ) -> Self {
        let generation = Arc::new(AtomicU64::new(0));
        let changed_at = Arc::new(AtomicI64::new(0));
        if !fresh_for.is_zero() {
            tokio::spawn(follow_rule_changes(store, Arc::clone(&generation), Arc::clone(&changed_at), stop));
        }
        let refreshes = Arc::new(tokio::sync::Semaphore::new(REFRESHES_AT_ONCE));
        Self { client, hosts: Hosts::default(), fresh_for, generation, changed_at, refreshes }
    }

    /// Whether to boot the host that sent `request`; `discover` asks the
    /// rules engine to record the attempt.
    pub(super) async fn ask(&self, request: &Request, arch: Option<String>, discover: bool) -> Verdict {
        let mac = request.mac_text();
        let relayed = !request.giaddr.is_unspecified();
        let (circuit_id, remote_id) = if relayed { relay_agent_ids(request) } else { Default::default() };
        let key = FactsKey {
            uuid: request.uuid().unwrap_or_default(),
            arch: arch.unwrap_or_default(),
            relay: if relayed { request.giaddr.to_string() } else { String::new() },
            circuit_id,
            remote_id,
        };
        let generation = self.generation.load(Ordering::Acquire);
        let now = Instant::now();
        match self.cached(&mac, &key, generation, now, discover) {
            Lookup::Fresh(verdict) => {
                ASKED.with_label_values(&["cached"]).inc();
                return verdict;
            }
            Lookup::Stale { verdict, refresh } => {
                ASKED.with_label_values(&["cached"]).inc();
                if refresh {
                    self.refresh_in_background(mac, key, generation, discover);
                }
                return verdict;
            }
            Lookup::Miss => {}
        }
        match evaluate(self.client.clone(), &mac, &key, discover, Duration::from_secs(1)).await {
            Some(response) => {
                ASKED.with_label_values(&["asked"]).inc();
                let generation = self.cacheable(generation, &response);
                let verdict = verdict_of(response);
                remember(&self.hosts, mac, key, verdict, generation, now, discover);
                verdict
            }
            None => {
                ASKED.with_label_values(&["fallback"]).inc();
                let hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
                let verdict = hosts.get(&mac).map_or(Verdict::Unknown, |k| k.verdict);
                tracing::warn!(%mac, ?verdict, "rules engine unavailable; using the last answer");
                verdict
            }
        }
    }

    /// Asks again for a host whose cached answer is being used stale; after
    /// a failure (or with no room for it) the host's next request asks.
    fn refresh_in_background(&self, mac: String, key: FactsKey, generation: u64, discover: bool) {
        let (client, hosts) = (self.client.clone(), Arc::clone(&self.hosts));
        let Ok(room) = Arc::clone(&self.refreshes).try_acquire_owned() else {
            // Enough asked already: a later request of this host asks.
            ASKED.with_label_values(&["refresh_deferred"]).inc();
            let mut hosts = hosts.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(known) = hosts.get_mut(&mac) {
                known.refreshing = false;
            }
            return;
        };
        let changed_at = self.changed_at.load(Ordering::Acquire);
        tokio::spawn(async move {
            let _room = room;
            match evaluate(client, &mac, &key, discover, Duration::from_secs(3)).await {
                Some(response) => {
                    ASKED.with_label_values(&["refreshed"]).inc();
                    let generation = cacheable_under(generation, changed_at, &response);
                    let verdict = verdict_of(response);
                    remember(&hosts, mac, key, verdict, generation, Instant::now(), discover);
                }
                None => {
                    let mut hosts = hosts.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(known) = hosts.get_mut(&mac) {
                        known.refreshing = false;
                    }
                }
            }
        });
    }

    /// The generation to store an answer under: the current one if the
    /// engine that answered had seen the newest change, else one that never
    /// matches (kept only as the outage fallback).
    fn cacheable(&self, generation: u64, response: &pb::EvaluateResponse) -> u64 {
        cacheable_under(generation, self.changed_at.load(Ordering::Acquire), response)
    }

    /// What the cache holds for this request. Fresh: same facts, no rule
    /// change since, younger than the cache time, and for a DISCOVER a
    /// recent record. Stale: only the age or the record is off; the first
    /// caller to see it refreshes it. With the cache off, nothing.
    fn cached(&self, mac: &str, key: &FactsKey, generation: u64, now: Instant, discover: bool) -> Lookup {
        if self.fresh_for.is_zero() {
            return Lookup::Miss;
        }
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(known) = hosts.get_mut(mac) else { return Lookup::Miss };
        if known.facts != *key || known.generation != generation {
            return Lookup::Miss;
        }
        let age = now.saturating_duration_since(known.asked);
        let recorded_lately =
            known.recorded.is_some_and(|at| now.saturating_duration_since(at) < RECORD_EVERY);
        // A DISCOVER starts a boot (or a retry): it refreshes an aged answer
        // and records the attempt. A REQUEST follows one, or renews a lease
        // — asking again for it too would double the rules engine's work
        // for every boot, so it waits for twice the cache time.
        let fresh = if discover { age < self.fresh_for && recorded_lately } else { age < self.fresh_for * 2 };
        if fresh {
            return Lookup::Fresh(known.verdict);
        }
        let refresh = !known.refreshing;
        known.refreshing = true;
        Lookup::Stale { verdict: known.verdict, refresh }
    }
}

/// One Evaluate for this host (recording the attempt for a DISCOVER);
/// `None` when the rules engine did not answer within `limit`.
async fn evaluate(
    mut client: RulesClient,
    mac: &str,
    key: &FactsKey,
    discover: bool,
    limit: Duration,
) -> Option<pb::EvaluateResponse> {
    // What DHCP knows is partial: a rule on the serial, say, is decided
    // when iPXE asks for its script (the answer says `undecided`).
    let request =
        pb::EvaluateRequest { facts: Some(facts(mac, key)), dry_run: !discover, partial_facts: true };
    let asked = client.evaluate(request);
    match tokio::time::timeout(limit, asked).await {
        Ok(Ok(response)) => {
            let response = response.into_inner();
            if discover && response.recording() == pb::Recording::NoCredential {
                warn_not_recorded();
            }
            Some(response)
        }
        Ok(Err(_)) | Err(_) => None,
    }
}

/// Says once per process that the rules engine records no host for this
/// responder: its service token is missing, or not the rules engine's.
fn warn_not_recorded() {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "the rules engine records no host for this responder's requests: set dhcp.service_token_file \
             to the file of the rules engine's rules.service_token_file"
        );
    }
}

fn cacheable_under(generation: u64, changed_at: i64, response: &pb::EvaluateResponse) -> u64 {
    if response.built_at_revision >= changed_at { generation } else { generation.wrapping_sub(1) }
}

fn facts(mac: &str, key: &FactsKey) -> pb::HostFacts {
    pb::HostFacts {
        mac: mac.to_owned(),
        uuid: key.uuid.clone(),
        arch: key.arch.clone(),
        relay: key.relay.clone(),
        circuit_id: key.circuit_id.clone(),
        remote_id: key.remote_id.clone(),
        ..Default::default()
    }
}

/// Option 82's circuit id (sub-option 1) and remote id (2) as facts:
/// printable text as it is, anything else as lowercase hex.
fn relay_agent_ids(request: &Request) -> (String, String) {
    let Some(Ok(subs)) = request.option(crate::wire::code::RELAY_AGENT_INFO).map(crate::wire::sub_options)
    else {
        return Default::default();
    };
    let text = |code: u8| subs.get(&code).map(|v| id_text(v)).unwrap_or_default();
    (text(1), text(2))
}

fn id_text(bytes: &[u8]) -> String {
    if !bytes.is_empty() && bytes.iter().all(|b| (0x21..0x7f).contains(b)) {
        String::from_utf8_lossy(bytes).into_owned()
    } else {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Bumps `generation` whenever anything a decision is made from changes:
/// the rule sets, the profiles (image and host) or the locations. A
/// fingerprint of the watched copies (newest revision and key count, so
/// deletions count too) compared after every applied change. `changed_at`
/// gets the newest revision first, so a reader that sees the new
/// generation also sees the revision answers must have caught up with.
async fn follow_rule_changes(
    store: SharedStore,
    generation: Arc<AtomicU64>,
    changed_at: Arc<AtomicI64>,
    stop: CancellationToken,
) {
    let caches = [RULES_PREFIX, PROFILES_PREFIX, LOCATION_PREFIX]
        .map(|prefix| SnapshotCache::start(store.clone(), prefix, stop.clone()));
    let [mut rules_changed, mut profiles_changed, mut locations_changed] =
        caches.each_ref().map(SnapshotCache::changes);
    let fingerprint = || {
        caches.each_ref().map(|cache| {
            let kvs = cache.list(cache.prefix());
            (kvs.iter().map(|kv| kv.mod_revision).max().unwrap_or(0), kvs.len())
        })
    };
    let mut last = fingerprint();
    changed_at.store(last.iter().map(|(revision, _)| *revision).max().unwrap_or(0), Ordering::Release);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = rules_changed.changed() => if changed.is_err() { return },
            changed = profiles_changed.changed() => if changed.is_err() { return },
            changed = locations_changed.changed() => if changed.is_err() { return },
        }
        let now = fingerprint();
        if now != last {
            last = now;
            changed_at
                .fetch_max(now.iter().map(|(revision, _)| *revision).max().unwrap_or(0), Ordering::AcqRel);
            generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH_FOR: Duration = Duration::from_secs(30);

    fn verdicts_with(known: Known) -> Verdicts {
        let client = bootfleet_rules_engine::client::connect_lazy("http://127.0.0.1:9").unwrap();
        let hosts = Arc::new(Mutex::new(HashMap::from([("aa".to_owned(), known)])));
        Verdicts {
            client,
            hosts,
            fresh_for: FRESH_FOR,
            generation: Arc::new(AtomicU64::new(1)),
            changed_at: Arc::new(AtomicI64::new(50)),
            refreshes: Arc::new(tokio::sync::Semaphore::new(REFRESHES_AT_ONCE)),
        }
    }

    fn key() -> FactsKey {
        FactsKey {
            uuid: "u".into(),
            arch: "bios".into(),
            relay: String::new(),
            circuit_id: String::new(),
            remote_id: String::new(),
        }
    }

    #[test]
    fn relay_agent_ids_are_text_when_printable_and_hex_otherwise() {
        use crate::wire::code::RELAY_AGENT_INFO;
        use crate::wire::tests::datagram;
        let option = [&[1u8, 7][..], b"eth1/42", &[2, 3, 0x00, 0x1b, 0xff]].concat();
        let discover = (crate::wire::code::MESSAGE_TYPE, &[1u8][..]);
        let options = [discover, (RELAY_AGENT_INFO, &option)];
        let request = Request::parse(&datagram([0x52, 0x54, 0, 0, 0, 1], &options)).unwrap();
        assert_eq!(relay_agent_ids(&request), ("eth1/42".to_owned(), "001bff".to_owned()));
        let plain = Request::parse(&datagram([0x52, 0x54, 0, 0, 0, 1], &[discover])).unwrap();
        assert_eq!(relay_agent_ids(&plain), (String::new(), String::new()));
    }

    fn known(asked: Instant, recorded: Option<Instant>) -> Known {
        Known { facts: key(), verdict: Verdict::Boot, generation: 1, asked, recorded, refreshing: false }
    }

    #[tokio::test]
    async fn a_cached_answer_holds_only_for_the_same_facts_and_rules() {
        let now = Instant::now();
        let v = verdicts_with(known(now, Some(now)));
        assert_eq!(v.cached("aa", &key(), 1, now, false), Lookup::Fresh(Verdict::Boot));
        assert_eq!(v.cached("aa", &key(), 1, now, true), Lookup::Fresh(Verdict::Boot), "recorded just now");
        assert_eq!(v.cached("bb", &key(), 1, now, false), Lookup::Miss, "another host");
        let other = FactsKey { arch: "efi-x64".into(), ..key() };
        assert_eq!(v.cached("aa", &other, 1, now, false), Lookup::Miss, "other facts");
        assert_eq!(v.cached("aa", &key(), 2, now, false), Lookup::Miss, "rules changed");
    }

    #[tokio::test]
    async fn an_aged_answer_is_used_while_one_caller_refreshes_it() {
        let now = Instant::now();
        let v = verdicts_with(known(now, Some(now)));
        let later = now + FRESH_FOR;
        assert_eq!(
            v.cached("aa", &key(), 1, later, false),
            Lookup::Fresh(Verdict::Boot),
            "a REQUEST uses it for twice the cache time"
        );
        assert_eq!(
            v.cached("aa", &key(), 1, later, true),
            Lookup::Stale { verdict: Verdict::Boot, refresh: true }
        );
        assert_eq!(
            v.cached("aa", &key(), 1, later, true),
            Lookup::Stale { verdict: Verdict::Boot, refresh: false },
            "one refresh at a time"
        );
        assert_eq!(
            v.cached("aa", &key(), 1, now + FRESH_FOR * 2, false),
            Lookup::Stale { verdict: Verdict::Boot, refresh: false },
            "past twice the cache time a REQUEST refreshes too (one is running)"
        );
        assert_eq!(
            v.cached("aa", &key(), 1, now + FRESH_FOR * 100, false),
            Lookup::Stale { verdict: Verdict::Boot, refresh: false },
            "however old, an answer under the same rules never makes a request wait"
        );
        assert_eq!(
            v.cached("aa", &key(), 2, later, false),
            Lookup::Miss,
            "a rule change is never answered stale"
        );
    }

    #[tokio::test]
    async fn with_no_room_for_another_refresh_a_later_request_asks() {
        let now = Instant::now();
        let v = Verdicts {
            refreshes: Arc::new(tokio::sync::Semaphore::new(0)),
            ..verdicts_with(known(now, Some(now)))
        };
        let later = now + FRESH_FOR;
        assert_eq!(
            v.cached("aa", &key(), 1, later, true),
            Lookup::Stale { verdict: Verdict::Boot, refresh: true }
        );
        v.refresh_in_background("aa".to_owned(), key(), 1, true);
        assert_eq!(
            v.cached("aa", &key(), 1, later, true),
            Lookup::Stale { verdict: Verdict::Boot, refresh: true },
            "the refresh was not started, so the next request starts it"
        );
        let off = Verdicts { fresh_for: Duration::ZERO, ..verdicts_with(known(now, Some(now))) };
        assert_eq!(off.cached("aa", &key(), 1, now, false), Lookup::Miss, "cache off");
    }

    #[tokio::test]
    async fn a_discover_not_recorded_lately_is_answered_and_recorded_in_the_background() {
        let now = Instant::now();
        let v = verdicts_with(known(now, None));
        assert_eq!(
            v.cached("aa", &key(), 1, now, false),
            Lookup::Fresh(Verdict::Boot),
            "a REQUEST may reuse it"
        );
        assert_eq!(
            v.cached("aa", &key(), 1, now, true),
            Lookup::Stale { verdict: Verdict::Boot, refresh: true },
            "a DISCOVER must be recorded"
        );
    }

    #[tokio::test]
    async fn an_answer_from_an_engine_behind_the_newest_change_is_never_cached() {
        let now = Instant::now();
        let v = verdicts_with(known(now, Some(now)));
        let behind = pb::EvaluateResponse { built_at_revision: 49, ..Default::default() };
        let caught_up = pb::EvaluateResponse { built_at_revision: 50, ..Default::default() };
        assert_ne!(v.cacheable(1, &behind), 1, "behind the change the rules responder saw");
        assert_eq!(v.cacheable(1, &caught_up), 1);
    }
}
