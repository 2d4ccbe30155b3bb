//! Asking the rules engine whether to boot a host, with a cache.
//!
//! Every DHCP exchange is two requests (DISCOVER, REQUEST) and a PXE boot
//! is usually two exchanges (firmware, then iPXE), all within seconds and
//! all asking the same question. A gRPC round trip per request cost more
//! than the rest of the answer (6 ms of 10 ms under a storm), so answers
//! are kept per host and reused while they cannot have changed: same facts,
//! no change to the rule sets or image profiles seen in the store since,
//! and at most `dhcp.rules_cache` old (30 s by default: the bound that
//! matters when this replica cannot watch the store; zero turns the cache
//! off). The last answer is also the fallback while
//! the rules engine is unreachable, however old.
//!
//! The host record: a DISCOVER asks with `record` so the rules engine logs
//! the boot attempt. A DISCOVER uses a cached answer only if the host's
//! last attempt was recorded within [`RECORD_EVERY`]: a repeated DISCOVER
//! (retries, iPXE after the firmware) with an unchanged answer adds nothing
//! to the history.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bootfleet_core::snapshot::SnapshotCache;
use bootfleet_core::store::SharedStore;
use bootfleet_proto::v1 as pb;
use bootfleet_rules_engine::client::Client as RulesClient;
use bootfleet_rules_engine::store::{IMAGE_PREFIX, RULES_PREFIX};
use prometheus::{IntCounterVec, register_int_counter_vec};
use tokio_util::sync::CancellationToken;

use crate::proxy::Verdict;
use crate::wire::Request;

/// How often a host's DISCOVERs are recorded at most while its answer holds.
const RECORD_EVERY: Duration = Duration::from_secs(30);

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
}

struct Known {
    facts: FactsKey,
    verdict: Verdict,
    generation: u64,
    asked: Instant,
    recorded: Option<Instant>,
}

/// Per-host answers from the rules engine.
pub(super) struct Verdicts {
    client: RulesClient,
    hosts: Mutex<HashMap<String, Known>>,
    /// How long an answer is reused at most.
    fresh_for: Duration,
    /// Changes whenever the rule sets or image profiles change in the store.
    generation: Arc<AtomicU64>,
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
        if !fresh_for.is_zero() {
            tokio::spawn(follow_rule_changes(store, Arc::clone(&generation), stop));
        }
        Self { client, hosts: Mutex::default(), fresh_for, generation }
    }

    /// Whether to boot the host that sent `request`; `discover` asks the
    /// rules engine to record the attempt.
    pub(super) async fn ask(&self, request: &Request, arch: Option<String>, discover: bool) -> Verdict {
        let mac = request.mac_text();
        let key = FactsKey {
            uuid: request.uuid().unwrap_or_default(),
            arch: arch.unwrap_or_default(),
            relay: if request.giaddr.is_unspecified() { String::new() } else { request.giaddr.to_string() },
        };
        let generation = self.generation.load(Ordering::Acquire);
        let now = Instant::now();
        if let Some(verdict) = self.cached(&mac, &key, generation, now, discover) {
            ASKED.with_label_values(&["cached"]).inc();
            return verdict;
        }
        let mut client = self.client.clone();
        let asked =
            client.evaluate(pb::EvaluateRequest { facts: Some(facts(&mac, &key)), dry_run: !discover });
        let answer = tokio::time::timeout(Duration::from_secs(1), asked).await;
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        match answer {
            Ok(Ok(response)) => {
                ASKED.with_label_values(&["asked"]).inc();
                let decision = response.into_inner().decision.unwrap_or_default();
                let verdict = match decision.image_profile.as_ref().and_then(|p| p.boot.as_ref()) {
                    None => Verdict::Unknown,
                    Some(pb::image_profile::Boot::Ignore(_)) => Verdict::Ignore,
                    Some(_) => Verdict::Boot,
                };
                if hosts.len() >= MAX_HOSTS && !hosts.contains_key(&mac) {
                    let evict: Vec<String> = hosts.keys().take(1_000).cloned().collect();
                    for key in evict {
                        hosts.remove(&key);
                    }
                }
                let before = hosts.get(&mac).and_then(|k| k.recorded);
                let recorded = if discover { Some(now) } else { before };
                hosts.insert(mac, Known { facts: key, verdict, generation, asked: now, recorded });
                verdict
            }
            Ok(Err(_)) | Err(_) => {
                ASKED.with_label_values(&["fallback"]).inc();
                let verdict = hosts.get(&mac).map_or(Verdict::Unknown, |k| k.verdict);
                tracing::warn!(%mac, ?verdict, "rules engine unavailable; using the last answer");
                verdict
            }
        }
    }

    /// A cached answer still valid for this request: same facts, no rule
    /// change since, young enough, and for a DISCOVER a recent record.
    fn cached(
        &self,
        mac: &str,
        key: &FactsKey,
        generation: u64,
        now: Instant,
        discover: bool,
    ) -> Option<Verdict> {
        let hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        let known = hosts.get(mac)?;
        let recorded_lately =
            known.recorded.is_some_and(|at| now.saturating_duration_since(at) < RECORD_EVERY);
        let valid = known.facts == *key
            && known.generation == generation
            && now.saturating_duration_since(known.asked) < self.fresh_for
            && (recorded_lately || !discover);
        valid.then_some(known.verdict)
    }
}

fn facts(mac: &str, key: &FactsKey) -> pb::HostFacts {
    pb::HostFacts {
        mac: mac.to_owned(),
        uuid: key.uuid.clone(),
        arch: key.arch.clone(),
        relay: key.relay.clone(),
        ..Default::default()
    }
}

/// Bumps `generation` whenever the rule sets or image profiles change: a
/// fingerprint of both watched copies (newest revision and key count, so
/// deletions count too) compared after every applied change.
async fn follow_rule_changes(store: SharedStore, generation: Arc<AtomicU64>, stop: CancellationToken) {
    let rules = SnapshotCache::start(store.clone(), RULES_PREFIX, stop.clone());
    let profiles = SnapshotCache::start(store, IMAGE_PREFIX, stop.clone());
    let (mut rules_changed, mut profiles_changed) = (rules.changes(), profiles.changes());
    let fingerprint = || {
        [&rules, &profiles].map(|cache| {
            let kvs = cache.list(cache.prefix());
            (kvs.iter().map(|kv| kv.mod_revision).max().unwrap_or(0), kvs.len())
        })
    };
    let mut last = fingerprint();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = rules_changed.changed() => if changed.is_err() { return },
            changed = profiles_changed.changed() => if changed.is_err() { return },
        }
        let now = fingerprint();
        if now != last {
            last = now;
            generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts_with(known: Known) -> Verdicts {
        let client = bootfleet_rules_engine::client::connect_lazy("http://127.0.0.1:9").unwrap();
        let hosts = Mutex::new(HashMap::from([("aa".to_owned(), known)]));
        Verdicts { client, hosts, fresh_for: FRESH_FOR, generation: Arc::new(AtomicU64::new(1)) }
    }

    const FRESH_FOR: Duration = Duration::from_secs(30);

    fn key() -> FactsKey {
        FactsKey { uuid: "u".into(), arch: "bios".into(), relay: String::new() }
    }

    #[tokio::test]
    async fn a_cached_answer_holds_only_for_the_same_facts_generation_and_age() {
        let now = Instant::now();
        let known =
            Known { facts: key(), verdict: Verdict::Boot, generation: 1, asked: now, recorded: Some(now) };
        let v = verdicts_with(known);
        assert_eq!(v.cached("aa", &key(), 1, now, false), Some(Verdict::Boot));
        assert_eq!(v.cached("aa", &key(), 1, now, true), Some(Verdict::Boot), "recorded just now");
        assert_eq!(v.cached("bb", &key(), 1, now, false), None, "another host");
        let other = FactsKey { arch: "efi-x64".into(), ..key() };
        assert_eq!(v.cached("aa", &other, 1, now, false), None, "other facts");
        assert_eq!(v.cached("aa", &key(), 2, now, false), None, "rules changed");
        assert_eq!(v.cached("aa", &key(), 1, now + FRESH_FOR, false), None, "too old");
    }

    #[tokio::test]
    async fn a_discover_is_recorded_unless_one_was_lately() {
        let now = Instant::now();
        let asked_by_request =
            Known { facts: key(), verdict: Verdict::Boot, generation: 1, asked: now, recorded: None };
        let v = verdicts_with(asked_by_request);
        assert_eq!(v.cached("aa", &key(), 1, now, false), Some(Verdict::Boot), "a REQUEST may reuse it");
        assert_eq!(v.cached("aa", &key(), 1, now, true), None, "a DISCOVER must be recorded");
        let earlier = now.checked_sub(RECORD_EVERY).unwrap();
        let recorded_long_ago = Known {
            facts: key(),
            verdict: Verdict::Boot,
            generation: 1,
            asked: now,
            recorded: Some(earlier),
        };
        let v = verdicts_with(recorded_long_ago);
        assert_eq!(v.cached("aa", &key(), 1, now, true), None);
    }
}
