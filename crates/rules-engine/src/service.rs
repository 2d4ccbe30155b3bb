//! The `RulesService` gRPC API over [`RulesState`].
//!
//! Evaluate and reads are open: boot services call them. An Evaluate
//! records on the host's record only with the service role (the service or
//! the admin token); without it, it is a dry run that says so. Writes need
//! the admin role; without a configured admin token they are refused
//! altogether. Listings are paged ([`MAX_PAGE`] items, about
//! [`PAGE_BYTES`]) so no answer nears gRPC's 4 MiB message limit.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bootfleet_core::auth::{Caller, Credentials, Role};
use bootfleet_proto::v1 as pb;
use bootfleet_proto::v1::rules_service_server::RulesService;
use pb::profile_object;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::decide::changed_items;
use crate::error::RulesError;
use crate::facts::{Facts, normalize_mac};
use crate::staging::{Changes, State};
use crate::store::{BOOTS_PREFIX, HOSTS_PREFIX, RulesState, decode, writes};
use prost::Message;
use tokio_util::sync::CancellationToken;

pub use crate::metrics;

impl From<RulesError> for Status {
    fn from(e: RulesError) -> Self {
        let message = e.to_string();
        match e {
            RulesError::Invalid { .. } => Self::invalid_argument(message),
            RulesError::NotFound(_) => Self::not_found(message),
            RulesError::Conflict(_) => Self::failed_precondition(message),
            RulesError::Unauthenticated(_) => Self::unauthenticated(message),
            RulesError::Unavailable(_) => Self::unavailable(message),
            RulesError::Internal(_) => Self::internal(message),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The gRPC service.
#[derive(Clone, Debug)]
pub struct RulesApi {
    state: Arc<RulesState>,
    credentials: Credentials,
    /// Ends open streams (WatchDecisions) at shutdown: a graceful server
    /// waits for every stream, and a watch never ends by itself.
    stop: CancellationToken,
    /// One permit per open WatchDecisions stream.
    watchers: Arc<tokio::sync::Semaphore>,
}

/// Open WatchDecisions streams per replica at most; beyond, a new watch is
/// refused with RESOURCE_EXHAUSTED (each holds a task and a 256-event buffer).
pub const MAX_WATCHERS: usize = 1024;
/// Hosts a watch remembers (to send each history entry once); past this it
/// forgets them all, and may send an entry again rather than grow.
const WATCH_HOSTS_REMEMBERED: usize = 65_536;
/// Items per page of ListHosts and TestCompliance at most (and when the
/// caller asks for none in particular).
pub const MAX_PAGE: usize = 500;
/// A page ends before its items pass this many encoded bytes (one item at
/// least), half of gRPC's default 4 MiB message limit.
pub const PAGE_BYTES: usize = 2 << 20;

/// Items in a page, from what the caller asked for.
fn page_size(asked: u32) -> usize {
    match usize::try_from(asked) {
        Ok(0) | Err(_) => MAX_PAGE,
        Ok(n) => n.min(MAX_PAGE),
    }
}

/// The MAC a page token says the previous page ended with ("" for none).
fn page_start(token: &str) -> Result<String, RulesError> {
    if token.is_empty() {
        return Ok(String::new());
    }
    match normalize_mac(token) {
        Ok(mac) if mac == token => Ok(mac),
        _ => Err(RulesError::invalid(
            "page_token",
            "not a token from a previous page; start with an empty one",
        )),
    }
}

/// Fills a page from `items`: at most `size` of them, ending before
/// [`PAGE_BYTES`] (one at least). Returns the page and, when items are
/// left, the key of its last one (the next page starts after it).
fn fill_page<T: Message>(
    items: impl Iterator<Item = Result<(String, Option<T>), RulesError>>,
    size: usize,
) -> Result<(Vec<T>, usize, String), RulesError> {
    let (mut page, mut taken, mut bytes, mut last) = (Vec::new(), 0, 0, String::new());
    for item in items {
        let (key, value) = item?;
        let len = value.as_ref().map_or(0, Message::encoded_len);
        if taken == size || (taken > 0 && bytes + len > PAGE_BYTES) {
            return Ok((page, taken, last));
        }
        taken += 1;
        bytes += len;
        last = key;
        page.extend(value);
    }
    Ok((page, taken, String::new()))
}

impl RulesApi {
    /// Serves `state`; `credentials` decide who records (service role) and
    /// who writes (admin role; none configured: writes refused); streams
    /// end when `stop` is cancelled.
    pub fn new(state: Arc<RulesState>, credentials: Credentials, stop: CancellationToken) -> Self {
        let watchers = Arc::new(tokio::sync::Semaphore::new(MAX_WATCHERS));
        Self { state, credentials, stop, watchers }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.credentials.require(request, Role::Admin).map(drop)
    }

    fn rule_set_response(&self, active: bool) -> Result<pb::RuleSetResponse, RulesError> {
        let (mut rule_set, revision) = self.state.rule_set(active)?;
        // Staged profiles are read with ListProfiles / GetProfile.
        rule_set.staged = None;
        Ok(pb::RuleSetResponse { rule_set: Some(rule_set), revision })
    }

    /// Profiles and locations of `kind` (maybe only `name`), staged or
    /// active, each with its revision: the working state's for staged ones,
    /// the object's own key's for active ones.
    fn profiles(
        &self,
        kind: pb::ProfileKind,
        name: Option<&str>,
        active: bool,
    ) -> Result<Vec<pb::ProfileObject>, RulesError> {
        if active {
            let (state, _) = self.state.active_state()?;
            Ok(objects_of(&state, kind, name, |kind, name| self.active_revision(kind, name)))
        } else {
            let (state, revision) = self.state.working_state()?;
            Ok(objects_of(&state, kind, name, |_, _| revision))
        }
    }

    /// Store revision of an active profile or location (0 when absent).
    fn active_revision(&self, kind: pb::ProfileKind, name: &str) -> i64 {
        let Ok(key) = writes::profile_key(kind, name) else { return 0 };
        let cache =
            if kind == pb::ProfileKind::Location { &self.state.locations } else { &self.state.profiles };
        cache.get(&key).map_or(0, |kv| kv.mod_revision)
    }

    /// One page of compliance results: the hosts after `token` (every
    /// recorded host, or those of `macs`), checked against the active or
    /// the working set. Returns the non-compliant ones, how many were
    /// checked, and the next page's token.
    fn compliance_page(
        &self,
        macs: &[String],
        against_active: bool,
        (size, token): (usize, &str),
    ) -> Result<(Vec<pb::ComplianceResult>, u32, String), RulesError> {
        let engine_storage;
        let engine = if against_active {
            engine_storage = self.state.engine();
            &*engine_storage
        } else {
            &self.state.working_engine()?
        };
        let after = page_start(token)?;
        // One more than a page: whether another page follows.
        let records: Vec<pb::HostRecord> = if macs.is_empty() {
            self.state.hosts_after(&after, size + 1)?
        } else {
            let mut wanted = Vec::new();
            for (i, mac) in macs.iter().enumerate() {
                wanted.push(normalize_mac(mac).map_err(|e| e.within(&format!("macs[{i}]")))?);
            }
            wanted.sort();
            wanted.dedup();
            let mut out = Vec::new();
            for mac in wanted.into_iter().filter(|m| *m > after).take(size + 1) {
                let (record, _) =
                    self.state.host(&mac)?.ok_or_else(|| RulesError::NotFound(format!("host {mac}")))?;
                out.push(record);
            }
            out
        };
        let now = now_ms();
        let checked = records.into_iter().map(|record| {
            let Some(facts) = record.facts.as_ref() else { return Ok((record.mac, None)) };
            let expected = engine.decide(&Facts::from_proto(facts)?, now);
            let changed = changed_items(record.last_decision.as_ref(), &expected);
            let result = (!changed.is_empty()).then(|| pb::ComplianceResult {
                mac: record.mac.clone(),
                recorded: record.last_decision.clone(),
                expected: Some(expected),
                changed,
            });
            Ok((record.mac, result))
        });
        let (results, taken, next) = fill_page(checked, size)?;
        Ok((results, u32::try_from(taken).unwrap_or(u32::MAX), next))
    }

    /// Every non-compliant host of `macs` (all hosts when empty) against
    /// the active set, page after page.
    fn all_non_compliant(&self, macs: &[String]) -> Result<Vec<pb::ComplianceResult>, RulesError> {
        let (mut all, mut token) = (Vec::new(), String::new());
        loop {
            let (results, _, next) = self.compliance_page(macs, true, (MAX_PAGE, &token))?;
            all.extend(results);
            if next.is_empty() {
                return Ok(all);
            }
            token = next;
        }
    }
}

/// The metric label of a recording outcome.
fn recording_label(recording: pb::Recording) -> &'static str {
    match recording {
        pb::Recording::Unspecified => "unspecified",
        pb::Recording::Queued => "queued",
        pb::Recording::DryRun => "dry_run",
        pb::Recording::NoCredential => "no_credential",
        pb::Recording::NotBooted => "not_booted",
        pb::Recording::Capped => "capped",
        pb::Recording::Dropped => "dropped",
        pb::Recording::Undecided => "undecided",
    }
}

/// How an operator names a kind of object.
fn kind_name(kind: pb::ProfileKind) -> &'static str {
    match kind {
        pb::ProfileKind::Image => "image profile",
        pb::ProfileKind::Host => "host profile",
        pb::ProfileKind::Location => "location",
        pb::ProfileKind::Unspecified => "profile",
    }
}

fn kind_of(object: &pb::ProfileObject) -> pb::ProfileKind {
    match object.object {
        Some(profile_object::Object::Image(_)) => pb::ProfileKind::Image,
        Some(profile_object::Object::Host(_)) => pb::ProfileKind::Host,
        Some(profile_object::Object::Location(_)) => pb::ProfileKind::Location,
        None => pb::ProfileKind::Unspecified,
    }
}

fn diff_response(changes: writes::Changes, active_version: u64) -> pb::DiffResponse {
    pb::DiffResponse { changes: changes.0, active_version, profile_changes: changes.1 }
}

fn activate_response(activated: writes::Activated) -> pb::ActivateResponse {
    pb::ActivateResponse {
        version: activated.version,
        revision: activated.revision,
        unchanged: activated.unchanged,
        published: Some(diff_response(activated.published, activated.version)),
    }
}

/// The objects of `state` of `kind` (all kinds when unspecified), only
/// the one called `name` when given, each with `revision`.
fn objects_of(
    state: &State,
    kind: pb::ProfileKind,
    name: Option<&str>,
    revision: impl Fn(pb::ProfileKind, &str) -> i64,
) -> Vec<pb::ProfileObject> {
    use profile_object::Object;
    let wanted = |k: pb::ProfileKind, n: &str| {
        (kind == pb::ProfileKind::Unspecified || kind == k) && name.is_none_or(|name| name == n)
    };
    let mut out = Vec::new();
    for (n, p) in &state.image {
        if wanted(pb::ProfileKind::Image, n) {
            out.push((pb::ProfileKind::Image, n, Object::Image(p.clone())));
        }
    }
    for (n, p) in &state.host {
        if wanted(pb::ProfileKind::Host, n) {
            out.push((pb::ProfileKind::Host, n, Object::Host(p.clone())));
        }
    }
    for (n, l) in &state.location {
        if wanted(pb::ProfileKind::Location, n) {
            out.push((pb::ProfileKind::Location, n, Object::Location(l.clone())));
        }
    }
    out.into_iter()
        .map(|(k, n, object)| pb::ProfileObject { revision: revision(k, n), object: Some(object) })
        .collect()
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::HostEvent, Status>> + Send>>;

#[tonic::async_trait]
impl RulesService for RulesApi {
    async fn evaluate(
        &self,
        request: Request<pb::EvaluateRequest>,
    ) -> Result<Response<pb::EvaluateResponse>, Status> {
        // Recording takes the service role; without it (no token, or one
        // not accepted) the call is still answered, as a dry run: a boot
        // never depends on the caller's credential.
        let may_record = matches!(self.credentials.caller(&request), Caller::Authenticated(_));
        let request = request.into_inner();
        let facts = request.facts.ok_or_else(|| Status::invalid_argument("facts: missing"))?;
        let facts = Facts::from_proto(&facts)?;
        // Read before deciding: the engine that decides is this one or newer.
        let built_at_revision = self.state.engine().built_at;
        let now = now_ms();
        let decision = self.state.decide(&facts, now);
        let undecided = request.partial_facts
            && self.state.engine().rules.image_undecided(&facts, &crate::facts::Field::known_to_dhcp);
        let recording = if undecided {
            pb::Recording::Undecided
        } else if request.dry_run {
            pb::Recording::DryRun
        } else if !may_record {
            pb::Recording::NoCredential
        } else {
            self.state.record_decision(&facts, &decision, now)
        };
        metrics::RECORDINGS.with_label_values(&[recording_label(recording)]).inc();
        Ok(Response::new(pb::EvaluateResponse {
            decision: Some(decision),
            degraded: self.state.degraded(),
            built_at_revision,
            recording: recording.into(),
            undecided,
        }))
    }

    async fn get_rule_set(
        &self,
        request: Request<pb::GetRuleSetRequest>,
    ) -> Result<Response<pb::RuleSetResponse>, Status> {
        let active = request.into_inner().kind() == pb::RuleSetKind::Active;
        Ok(Response::new(self.rule_set_response(active)?))
    }

    async fn put_rule(
        &self,
        request: Request<pb::PutRuleRequest>,
    ) -> Result<Response<pb::RuleSetResponse>, Status> {
        self.authorize(&request)?;
        let _serialized = self.state.write_lock.lock().await;
        let r = request.into_inner();
        let rule = r.rule.ok_or_else(|| Status::invalid_argument("rule: missing"))?;
        let (rule_set, revision) = writes::modify_working(&self.state.store, r.expected_revision, |rules| {
            writes::place_rule(rules, rule.clone(), &r.before, &r.after)
        })
        .await?;
        Ok(Response::new(pb::RuleSetResponse { rule_set: Some(rule_set), revision }))
    }

    async fn delete_rule(
        &self,
        request: Request<pb::DeleteRuleRequest>,
    ) -> Result<Response<pb::RuleSetResponse>, Status> {
        self.authorize(&request)?;
        let _serialized = self.state.write_lock.lock().await;
        let r = request.into_inner();
        let (rule_set, revision) = writes::modify_working(&self.state.store, r.expected_revision, |rules| {
            let before = rules.len();
            rules.retain(|rule| rule.name != r.name);
            if rules.len() == before {
                return Err(RulesError::NotFound(format!("rule {:?} in the working set", r.name)));
            }
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::RuleSetResponse { rule_set: Some(rule_set), revision }))
    }

    async fn replace_working_set(
        &self,
        request: Request<pb::ReplaceWorkingSetRequest>,
    ) -> Result<Response<pb::RuleSetResponse>, Status> {
        self.authorize(&request)?;
        let _serialized = self.state.write_lock.lock().await;
        let r = request.into_inner();
        let (rule_set, revision) = writes::modify_working(&self.state.store, r.expected_revision, |rules| {
            rules.clone_from(&r.rules);
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::RuleSetResponse { rule_set: Some(rule_set), revision }))
    }

    async fn apply(&self, request: Request<pb::ApplyRequest>) -> Result<Response<pb::ApplyResponse>, Status> {
        self.authorize(&request)?;
        let _serialized = self.state.write_lock.lock().await;
        let r = request.into_inner();
        let changes = Changes {
            image: r.image_profiles,
            host: r.host_profiles,
            location: r.locations,
            rules: r.replace_rules.then_some(r.rules),
            prune: r.prune,
        };
        let options = writes::StageOptions {
            expected: r.expected_revision,
            dry_run: r.dry_run,
            allow_missing_images: r.allow_missing_images,
            source: &r.source,
        };
        let staged =
            writes::stage(&self.state.store, options, |current| Ok(current.merged(&changes))).await?;
        let active_version = self.state.rule_set(true)?.0.version;
        if !staged.unchanged && !r.dry_run {
            tracing::info!(
                source = %r.source,
                rules = staged.plan.0.len(),
                objects = staged.plan.1.len(),
                revision = staged.revision,
                "working state applied"
            );
        }
        let mut response = pb::ApplyResponse {
            plan: Some(diff_response(staged.plan, active_version)),
            revision: staged.revision,
            unchanged: staged.unchanged,
            activation: None,
        };
        if r.activate && !r.dry_run {
            let activated = writes::activate(&self.state.store, 0).await?;
            if !activated.unchanged {
                tracing::info!(version = activated.version, "working state activated");
            }
            response.activation = Some(activate_response(activated));
        }
        Ok(Response::new(response))
    }

    async fn activate(
        &self,
        request: Request<pb::ActivateRequest>,
    ) -> Result<Response<pb::ActivateResponse>, Status> {
        self.authorize(&request)?;
        let _serialized = self.state.write_lock.lock().await;
        let activated = writes::activate(&self.state.store, request.into_inner().expected_revision).await?;
        if activated.unchanged {
            tracing::info!(version = activated.version, "activation: already active, nothing written");
        } else {
            tracing::info!(version = activated.version, "working state activated");
        }
        Ok(Response::new(activate_response(activated)))
    }

    async fn diff(&self, _request: Request<pb::DiffRequest>) -> Result<Response<pb::DiffResponse>, Status> {
        let (working, _) = self.state.working_state()?;
        let (active, version) = self.state.active_state()?;
        Ok(Response::new(diff_response(crate::staging::diff(&active, &working), version)))
    }

    async fn list_profiles(
        &self,
        request: Request<pb::ListProfilesRequest>,
    ) -> Result<Response<pb::ListProfilesResponse>, Status> {
        let r = request.into_inner();
        let profiles = self.profiles(r.kind(), None, r.active)?;
        Ok(Response::new(pb::ListProfilesResponse { profiles }))
    }

    async fn get_profile(
        &self,
        request: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::ProfileObject>, Status> {
        let r = request.into_inner();
        writes::profile_key(r.kind(), &r.name).map_err(|e| e.within("name"))?;
        let which = if r.active { "active" } else { "staged" };
        let kind = kind_name(r.kind());
        self.profiles(r.kind(), Some(&r.name), r.active)?
            .pop()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("{kind} {:?} not found ({which})", r.name)))
    }

    async fn put_profile(
        &self,
        request: Request<pb::PutProfileRequest>,
    ) -> Result<Response<pb::ProfileObject>, Status> {
        self.authorize(&request)?;
        let _serialized = self.state.write_lock.lock().await;
        let r = request.into_inner();
        let mut object = r.profile.ok_or_else(|| Status::invalid_argument("profile: missing"))?;
        object.revision =
            writes::put_profile(&self.state.store, &object, r.expected_revision, r.allow_missing_images)
                .await?;
        tracing::info!(kind = kind_name(kind_of(&object)), "profile staged");
        Ok(Response::new(object))
    }

    async fn delete_profile(
        &self,
        request: Request<pb::DeleteProfileRequest>,
    ) -> Result<Response<pb::DeleteProfileResponse>, Status> {
        self.authorize(&request)?;
        let _serialized = self.state.write_lock.lock().await;
        let r = request.into_inner();
        let revision = writes::delete_profile(&self.state.store, r.kind(), &r.name).await?;
        Ok(Response::new(pb::DeleteProfileResponse { revision }))
    }

    async fn test_compliance(
        &self,
        request: Request<pb::TestComplianceRequest>,
    ) -> Result<Response<pb::TestComplianceResponse>, Status> {
        let r = request.into_inner();
        let page = (page_size(r.page_size), r.page_token.as_str());
        let (non_compliant, hosts_checked, next_page_token) =
            self.compliance_page(&r.macs, r.against() == pb::RuleSetKind::Active, page)?;
        Ok(Response::new(pb::TestComplianceResponse { non_compliant, hosts_checked, next_page_token }))
    }

    async fn repair(
        &self,
        request: Request<pb::RepairRequest>,
    ) -> Result<Response<pb::RepairResponse>, Status> {
        self.authorize(&request)?;
        let _serialized = self.state.write_lock.lock().await;
        let r = request.into_inner();
        let repaired = self.all_non_compliant(&r.macs)?;
        let now = now_ms();
        let events = repaired
            .iter()
            .map(|c| {
                let facts = self.state.host(&c.mac).ok().flatten().and_then(|(record, _)| record.facts);
                let event = pb::HostEvent {
                    at_unix_ms: now,
                    facts,
                    decision: c.expected.clone(),
                    decided_by: self.state.options.member_id.clone(),
                };
                (c.mac.clone(), event)
            })
            .collect();
        self.state.recorder.write_now(events).await?;
        Ok(Response::new(pb::RepairResponse { repaired }))
    }

    async fn list_hosts(
        &self,
        request: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        let r = request.into_inner();
        let size = page_size(r.page_size);
        let after = page_start(&r.page_token).map_err(Status::from)?;
        // One more than a page: whether another page follows.
        let records = self.state.hosts_after(&after, size + 1)?.into_iter().map(|mut record| {
            record.history.clear();
            Ok((record.mac.clone(), Some(record)))
        });
        let (hosts, _, next_page_token) = fill_page(records, size)?;
        Ok(Response::new(pb::ListHostsResponse { hosts, next_page_token }))
    }

    async fn get_host(
        &self,
        request: Request<pb::GetHostRequest>,
    ) -> Result<Response<pb::HostRecord>, Status> {
        let mac = normalize_mac(&request.into_inner().mac).map_err(|e| e.within("mac"))?;
        let record = self.state.host(&mac)?.map(|(record, _)| record);
        // Boot progress lives under its own key (the streamers write it);
        // joined here, and skipped if the store cannot answer quickly.
        let key = format!("{BOOTS_PREFIX}{mac}");
        let boot_status = match tokio::time::timeout(Duration::from_secs(1), self.state.store.get(&key)).await
        {
            Ok(Ok(Some(kv))) => decode::<pb::BootStatus>(&kv).ok(),
            _ => None,
        };
        match (record, boot_status) {
            (None, None) => Err(Status::not_found(format!("host {mac} not found"))),
            (record, boot_status) => {
                let mut record =
                    record.unwrap_or_else(|| pb::HostRecord { mac: mac.clone(), ..Default::default() });
                record.boot_status = boot_status;
                Ok(Response::new(record))
            }
        }
    }

    type WatchDecisionsStream = EventStream;

    async fn watch_decisions(
        &self,
        request: Request<pb::WatchDecisionsRequest>,
    ) -> Result<Response<Self::WatchDecisionsStream>, Status> {
        let filter = request.into_inner().mac;
        let filter =
            if filter.is_empty() { None } else { Some(normalize_mac(&filter).map_err(|e| e.within("mac"))?) };
        let Ok(permit) = Arc::clone(&self.watchers).try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "{MAX_WATCHERS} decision watches are open on this replica; try again later"
            )));
        };
        let mut events = self.state.hosts.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // Per host, the newest entry already sent.
            let mut sent: HashMap<String, i64> = HashMap::new();
            loop {
                let received = tokio::select! {
                    () = stop.cancelled() => {
                        let _ = tx.try_send(Err(Status::unavailable("the server is shutting down; watch again")));
                        return;
                    }
                    // A watcher that went away frees its slot now, not at
                    // the next decision.
                    () = tx.closed() => return,
                    received = events.recv() => received,
                };
                let batch = match received {
                    Ok(batch) => batch,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let status =
                            Status::data_loss(format!("watcher fell behind by {n} batches; watch again"));
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                for event in batch.iter().filter(|e| e.kind == bootfleet_core::store::EventKind::Put) {
                    let Some(mac) = event.kv.key.strip_prefix(HOSTS_PREFIX) else { continue };
                    if filter.as_deref().is_some_and(|f| f != mac) {
                        continue;
                    }
                    let Ok(record) = decode::<pb::HostRecord>(&event.kv) else { continue };
                    let last = sent.get(mac).copied().unwrap_or(i64::MIN);
                    for entry in record.history.iter().filter(|h| h.at_unix_ms > last) {
                        if tx.send(Ok(entry.clone())).await.is_err() {
                            return;
                        }
                    }
                    if let Some(newest) = record.history.last() {
                        if sent.len() >= WATCH_HOSTS_REMEMBERED {
                            sent.clear();
                        }
                        sent.insert(mac.to_owned(), newest.at_unix_ms);
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
