//! Rules, profiles and host records in Bootfleet's `StateStore`.
//!
//! Reads come from watched snapshots (so they keep working while etcd is
//! down); writes go to the store as compare-and-swap transactions (see
//! [`writes`]); decisions are recorded on host records in the background
//! ([`recorder`]), within the bounds of [`limits`]: a cap on records, a
//! retention after which absent hosts' records go ([`retention`]), and a
//! bounded queue while the store is away ([`pending`]). The active rule set
//! is compiled into an [`Engine`] again whenever rules or profiles change.

pub mod boot_reports;
pub mod host_wire;
pub mod limits;
pub mod pending;
pub mod recorder;
pub mod retention;
pub mod writes;

use std::sync::Arc;

use bootfleet_core::snapshot::{CacheStatus, SnapshotCache};
use bootfleet_core::store::{KeyValue, SharedStore};
use bootfleet_proto::v1::{Decision, HostProfile, HostRecord, ImageProfile, Location, Recording, RuleSet};
use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::decide::Engine;
use crate::error::RulesError;
use crate::facts::Facts;
use crate::ruleset::CompiledRuleSet;
use crate::staging::State;
use host_wire::EncodedEvent;
use limits::HostCap;
pub use limits::HostLimits;

/// Key of the working rule set.
pub const WORKING_KEY: &str = "/bootfleet/v1/rules/working";
/// Key of the active rule set.
pub const ACTIVE_KEY: &str = "/bootfleet/v1/rules/active";
/// Prefix of both rule sets.
pub const RULES_PREFIX: &str = "/bootfleet/v1/rules/";
/// Prefix of image and host profiles.
pub const PROFILES_PREFIX: &str = "/bootfleet/v1/profiles/";
/// Prefix of image profiles.
pub const IMAGE_PREFIX: &str = "/bootfleet/v1/profiles/image/";
/// Prefix of host profiles.
pub const HOST_PREFIX: &str = "/bootfleet/v1/profiles/host/";
/// Prefix of locations.
pub const LOCATION_PREFIX: &str = "/bootfleet/v1/locations/";
/// Prefix of host records.
pub const HOSTS_PREFIX: &str = "/bootfleet/v1/hosts/";
/// Prefix of boot statuses (written by the image streamers).
pub const BOOTS_PREFIX: &str = "/bootfleet/v1/boots/";
/// Prefix of the image catalog (`ImageVersion` per `<image>/<version>`,
/// written by the image streamers; read here to refuse profiles naming
/// versions that were never pushed).
pub const IMAGES_PREFIX: &str = "/bootfleet/v1/images/";

/// Key of one image version in the catalog.
pub fn image_version_key(image: &str, version: &str) -> String {
    format!("{IMAGES_PREFIX}{image}/{version}")
}

/// The active state from the active set, which carries its profiles and
/// locations; a set activated by an older release does not, and then the
/// profile and location records are read.
pub fn active_state(
    set: RuleSet,
    profiles: &[KeyValue],
    locations: &[KeyValue],
) -> Result<State, RulesError> {
    State::from_working(set, || objects_of(profiles, locations))
}

fn objects_of(profiles: &[KeyValue], locations: &[KeyValue]) -> Result<State, RulesError> {
    let mut state = State::default();
    for kv in profiles {
        if kv.key.starts_with(IMAGE_PREFIX) {
            let p: ImageProfile = decode(kv)?;
            state.image.insert(p.name.clone(), p);
        } else if kv.key.starts_with(HOST_PREFIX) {
            let p: HostProfile = decode(kv)?;
            state.host.insert(p.name.clone(), p);
        }
    }
    for kv in locations {
        let l: Location = decode(kv)?;
        state.location.insert(l.name.clone(), l);
    }
    Ok(state)
}

/// Decodes a stored message, naming the key when it is corrupt.
pub fn decode<M: Message + Default>(kv: &KeyValue) -> Result<M, RulesError> {
    M::decode(kv.value.as_slice())
        .map_err(|e| RulesError::Internal(format!("undecodable value at {}: {e}", kv.key)))
}

/// A stored rule set and its revision (0 and empty when never written).
pub fn rule_set_of(kv: Option<&KeyValue>) -> Result<(RuleSet, i64), RulesError> {
    match kv {
        Some(kv) => Ok((decode(kv)?, kv.mod_revision)),
        None => Ok((RuleSet::default(), 0)),
    }
}

/// Settings of a rules-engine replica.
#[derive(Clone, Debug)]
pub struct StateOptions {
    /// Member id recorded as `decided_by`.
    pub member_id: String,
    /// Entries kept in each host's history.
    pub history_limit: usize,
}

/// Everything a rules-engine replica serves from.
pub struct RulesState {
    pub(crate) store: SharedStore,
    pub(crate) rules: SnapshotCache,
    pub(crate) profiles: SnapshotCache,
    pub(crate) locations: SnapshotCache,
    pub(crate) hosts: SnapshotCache,
    engine: watch::Receiver<Arc<Engine>>,
    pub(crate) recorder: recorder::HostRecorder,
    cap: Arc<HostCap>,
    pub(crate) options: StateOptions,
    /// Serializes this replica's admin writes: they are rare, and racing
    /// with ourselves would only cost retries.
    pub(crate) write_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for RulesState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulesState").field("options", &self.options).finish_non_exhaustive()
    }
}

impl RulesState {
    /// Starts following the store with the default [`HostLimits`] (no
    /// retention sweep); background tasks end with `stop`.
    pub fn start(store: SharedStore, options: StateOptions, stop: &CancellationToken) -> Arc<Self> {
        Self::start_with(store, options, HostLimits::default(), stop)
    }

    /// Starts following the store, keeping host records within `limits`
    /// (and sweeping expired ones if it sets a retention).
    pub fn start_with(
        store: SharedStore,
        options: StateOptions,
        limits: HostLimits,
        stop: &CancellationToken,
    ) -> Arc<Self> {
        let rules = SnapshotCache::start(store.clone(), RULES_PREFIX, stop.clone());
        let profiles = SnapshotCache::start(store.clone(), PROFILES_PREFIX, stop.clone());
        let locations = SnapshotCache::start(store.clone(), LOCATION_PREFIX, stop.clone());
        let hosts = SnapshotCache::start(store.clone(), HOSTS_PREFIX, stop.clone());
        let (engine_tx, engine) = watch::channel(Arc::new(Engine::default()));
        tokio::spawn(rebuild_engine(
            rules.clone(),
            profiles.clone(),
            locations.clone(),
            engine_tx,
            stop.clone(),
        ));
        let cap = Arc::new(HostCap::new(limits.max_hosts));
        let recorder = recorder::HostRecorder::start(
            store.clone(),
            hosts.clone(),
            options.history_limit,
            (Arc::clone(&cap), limits.queue),
            stop.clone(),
        );
        if let Some(retention) = limits.retention {
            tokio::spawn(retention::sweep_forever(
                store.clone(),
                hosts.clone(),
                Arc::clone(&cap),
                (retention, limits.sweep_interval),
                stop.clone(),
            ));
        }
        Arc::new(Self {
            store,
            rules,
            profiles,
            locations,
            hosts,
            engine,
            recorder,
            cap,
            options,
            write_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Waits until every snapshot is loaded and the engine compiled.
    pub async fn ready(&self) {
        for cache in [&self.rules, &self.profiles, &self.locations, &self.hosts] {
            cache.loaded().await;
        }
        let mut engine = self.engine.clone();
        let revision = self.rules.revision();
        let _ = engine.wait_for(|e| e.built_at >= revision).await;
    }

    /// Waits until the snapshots have applied `revision` and the engine was
    /// rebuilt from them (a write through any replica is then visible).
    pub async fn caught_up(&self, revision: i64) {
        self.rules.caught_up(revision).await;
        let mut engine = self.engine.clone();
        let _ = engine.wait_for(|e| e.built_at >= revision).await;
    }

    /// The store this replica writes to.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// The engine built from the active set.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.borrow().clone()
    }

    /// Decides for `facts` from the current snapshot and, unless `dry_run`,
    /// queues the decision for the host's record. Never waits on the store.
    pub fn evaluate(&self, facts: &Facts, now_unix_ms: i64, dry_run: bool) -> Decision {
        let decision = self.decide(facts, now_unix_ms);
        if !dry_run {
            self.record_decision(facts, &decision, now_unix_ms);
        }
        decision
    }

    /// Decides for `facts` from the current snapshot; records nothing.
    pub fn decide(&self, facts: &Facts, now_unix_ms: i64) -> Decision {
        let decision = self.engine().decide(facts, now_unix_ms);
        let outcome = if decision.image_profile.is_some() { "decided" } else { "no_image_profile" };
        crate::metrics::EVALUATIONS.with_label_values(&[outcome]).inc();
        decision
    }

    /// Queues `decision` for the host's record if it is worth recording
    /// (see [`Self::worth_recording`]); never waits.
    pub fn record_decision(&self, facts: &Facts, decision: &Decision, now_unix_ms: i64) -> Recording {
        if self.worth_recording(facts, decision) {
            self.record(facts, decision, now_unix_ms)
        } else {
            Recording::NotBooted
        }
    }

    /// A record is created only for a host some rule boots: a boot network
    /// carries every machine plugged into it (and forged MACs), and one
    /// that no rule boots — no match, or `ignore` — must leave nothing
    /// behind. A host already recorded keeps getting its history.
    fn worth_recording(&self, facts: &Facts, decision: &Decision) -> bool {
        use bootfleet_proto::v1::image_profile::Boot;
        let boots =
            decision.image_profile.as_ref().is_some_and(|p| !matches!(p.boot, Some(Boot::Ignore(_)) | None));
        boots || self.has_host(&facts.mac)
    }

    /// Queues a decision for the host's record (never waits): `Capped` for
    /// a host without a record while the cap is reached, `Dropped` when the
    /// queue's bounds refuse it.
    pub fn record(&self, facts: &Facts, decision: &Decision, now_unix_ms: i64) -> Recording {
        let known = self.has_host(&facts.mac);
        if !known && !self.cap.admits_new(self.hosts.len()) {
            crate::metrics::HOST_RECORDS_REFUSED.inc();
            return Recording::Capped;
        }
        let event = EncodedEvent::from_parts(
            now_unix_ms,
            Some(&facts.to_proto()),
            Some(decision),
            &self.options.member_id,
        );
        self.recorder.record(&facts.mac, event)
    }

    /// The recorder, for its statistics.
    pub fn recorder(&self) -> &recorder::HostRecorder {
        &self.recorder
    }

    /// The snapshots, for health reporting.
    pub fn caches(&self) -> [&SnapshotCache; 4] {
        [&self.rules, &self.profiles, &self.locations, &self.hosts]
    }

    /// True while any snapshot cannot be refreshed.
    pub fn degraded(&self) -> bool {
        self.caches().iter().any(|c| c.status() == CacheStatus::Degraded)
    }

    /// The working or active set from the snapshot, with its revision.
    pub fn rule_set(&self, active: bool) -> Result<(RuleSet, i64), RulesError> {
        rule_set_of(self.rules.get(if active { ACTIVE_KEY } else { WORKING_KEY }).as_ref())
    }

    /// The working state (rules, staged profiles and locations) from the
    /// snapshot, with its revision.
    pub fn working_state(&self) -> Result<(State, i64), RulesError> {
        let (set, revision) = self.rule_set(false)?;
        let state = State::from_working(set, || Ok(self.active_state()?.0))?;
        Ok((state, revision))
    }

    /// The active state from the snapshot, with the active version.
    pub fn active_state(&self) -> Result<(State, u64), RulesError> {
        let (set, _) = self.rule_set(true)?;
        let version = set.version;
        let state =
            active_state(set, &self.profiles.list(PROFILES_PREFIX), &self.locations.list(LOCATION_PREFIX))?;
        Ok((state, version))
    }

    /// The working set compiled against the staged profiles.
    pub fn working_engine(&self) -> Result<Engine, RulesError> {
        let (state, _) = self.working_state()?;
        let rules = CompiledRuleSet::compile_rules(&state.rules, 0)?;
        Ok(Engine { rules, catalog: state.catalog(), built_at: 0 })
    }

    /// Whether `mac` has a record in the snapshot.
    pub fn has_host(&self, mac: &str) -> bool {
        self.hosts.mod_revision(&format!("{HOSTS_PREFIX}{mac}")).is_some()
    }

    /// One host record from the snapshot.
    pub fn host(&self, mac: &str) -> Result<Option<(HostRecord, i64)>, RulesError> {
        self.hosts
            .get(&format!("{HOSTS_PREFIX}{mac}"))
            .map(|kv| Ok((decode(&kv)?, kv.mod_revision)))
            .transpose()
    }

    /// Every host record from the snapshot.
    pub fn all_hosts(&self) -> Result<Vec<HostRecord>, RulesError> {
        self.hosts.list(HOSTS_PREFIX).iter().map(decode).collect()
    }

    /// Up to `limit` host records whose MACs sort after `after_mac` (all
    /// from the first when empty), in MAC order.
    pub fn hosts_after(&self, after_mac: &str, limit: usize) -> Result<Vec<HostRecord>, RulesError> {
        let after = if after_mac.is_empty() { String::new() } else { format!("{HOSTS_PREFIX}{after_mac}") };
        self.hosts.list_after(HOSTS_PREFIX, &after, limit).iter().map(decode).collect()
    }
}

/// Recompiles the active set whenever rules, profiles or locations change.
async fn rebuild_engine(
    rules: SnapshotCache,
    profiles: SnapshotCache,
    locations: SnapshotCache,
    engine: watch::Sender<Arc<Engine>>,
    stop: CancellationToken,
) {
    let (mut r, mut p, mut l) = (rules.changes(), profiles.changes(), locations.changes());
    loop {
        r.borrow_and_update();
        p.borrow_and_update();
        l.borrow_and_update();
        // Everything the engine is built from is in the rules snapshot: the
        // active set carries its profiles, and active profile keys change
        // only in the transaction that writes it. The profile snapshots'
        // revisions must not count: one that applied an activation before
        // the rules snapshot did would date an engine built from the old set
        // as if it held the new one.
        let built_at = rules.revision();
        let built = rule_set_of(rules.get(ACTIVE_KEY).as_ref()).and_then(|(set, _)| {
            let version = set.version;
            let state = active_state(set, &profiles.list(PROFILES_PREFIX), &locations.list(LOCATION_PREFIX))?;
            let compiled = CompiledRuleSet::compile_rules(&state.rules, version)?;
            Ok(Engine { rules: compiled, catalog: state.catalog(), built_at })
        });
        match built {
            Ok(new) => {
                crate::metrics::ACTIVE_VERSION.set(i64::try_from(new.rules.version).unwrap_or(i64::MAX));
                crate::metrics::ACTIVE_RULES.set(i64::try_from(new.rules.rules.len()).unwrap_or(i64::MAX));
                engine.send_replace(Arc::new(new));
            }
            Err(e) => {
                tracing::error!(error = %e, "active rule set does not compile; keeping the previous engine")
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            _ = r.changed() => {}
            _ = p.changed() => {}
            _ = l.changed() => {}
        }
    }
}
