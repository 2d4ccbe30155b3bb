//! Every write of the rules engine, as a compare-and-swap transaction.
//!
//! Edits — rules, profiles, locations — change the working state, one value
//! under the working key (see [`crate::staging`]): a write reads it from the
//! store (not the snapshot), changes it, validates the whole result, and
//! commits only if nothing changed meanwhile. Activation publishes the
//! working state to the active keys that decisions, boot scripts and TFTP
//! renderings read, in one transaction. A lost race is retried; when the
//! caller gave an `expected_revision`, it fails with a conflict instead (the
//! operator edited a stale copy). No update is ever lost, and a write that
//! would change nothing writes nothing.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bootfleet_core::store::{Compare, CompareOp, SharedStore, StoreError, TxnOp, TxnRequest};
use bootfleet_proto::v1::{
    self as pb, FileRef, ImageVersion, ProfileKind, ProfileObject, Rule, RuleSet, profile_object,
};
use prost::Message;

use super::{
    ACTIVE_KEY, HOST_PREFIX, IMAGE_PREFIX, LOCATION_PREFIX, PROFILES_PREFIX, WORKING_KEY, active_state,
    decode, image_version_key, rule_set_of,
};
use crate::ProfileRef;
use crate::error::RulesError;
use crate::ruleset::check_name;
use crate::staging::{State, check_object, combine, diff};

/// Attempts before a write without `expected_revision` gives up.
const ATTEMPTS: u32 = 16;

/// A short, growing, jittered pause after a lost race, so that replicas
/// racing for the same key do not collide again in lockstep.
async fn pause_after_conflict(attempt: u32) {
    let jitter = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() % 7);
    tokio::time::sleep(std::time::Duration::from_millis(u64::from(attempt * 3 + jitter))).await;
}

pub(crate) fn store_err(e: StoreError) -> RulesError {
    if e.is_unavailable() {
        RulesError::Unavailable(format!("{e}; writes need the store (reads keep working)"))
    } else {
        RulesError::Internal(e.to_string())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Key of an active profile or location, validating the name.
pub fn profile_key(kind: ProfileKind, name: &str) -> Result<String, RulesError> {
    check_name(name, "name")?;
    Ok(match kind {
        ProfileKind::Image => format!("{IMAGE_PREFIX}{name}"),
        ProfileKind::Host => format!("{HOST_PREFIX}{name}"),
        ProfileKind::Location => format!("{LOCATION_PREFIX}{name}"),
        ProfileKind::Unspecified => return Err(RulesError::invalid("kind", "give image, host or location")),
    })
}

/// The working state as stored, with the revision to compare against.
async fn read_working(store: &SharedStore) -> Result<(State, i64), RulesError> {
    let working = store.get(WORKING_KEY).await.map_err(store_err)?;
    let (set, revision) = rule_set_of(working.as_ref())?;
    let mut active = None;
    if set.staged.is_none() {
        // Written before profiles were staged: what is active is staged.
        active = Some(read_active(store).await?.0);
    }
    let state = State::from_working(set, || Ok(active.take().map(|(state, _)| state).unwrap_or_default()))?;
    Ok((state, revision))
}

/// Store revisions of what is active, for the activation's compares.
struct ActiveRevisions {
    set: i64,
    objects: HashMap<String, i64>,
}

/// The active state and version as stored, with the keys' revisions.
async fn read_active(store: &SharedStore) -> Result<((State, u64), ActiveRevisions), RulesError> {
    let active = store.get(ACTIVE_KEY).await.map_err(store_err)?;
    let (set, set_revision) = rule_set_of(active.as_ref())?;
    let profiles = store.range(PROFILES_PREFIX).await.map_err(store_err)?;
    let locations = store.range(LOCATION_PREFIX).await.map_err(store_err)?;
    let objects =
        profiles.kvs.iter().chain(&locations.kvs).map(|kv| (kv.key.clone(), kv.mod_revision)).collect();
    let version = set.version;
    let state = active_state(set, &profiles.kvs, &locations.kvs)?;
    Ok(((state, version), ActiveRevisions { set: set_revision, objects }))
}

/// Refuses image profiles whose files the image catalog does not hold;
/// returns compares asserting that those versions are still there.
async fn check_images(
    store: &SharedStore,
    refs: &[(FileRef, String)],
    source: &str,
) -> Result<Vec<Compare>, RulesError> {
    let mut problems = Vec::new();
    let mut compares = Vec::new();
    let mut versions: HashMap<String, Option<ImageVersion>> = HashMap::new();
    for (file, field) in refs {
        let key = image_version_key(&file.image, &file.version);
        if !versions.contains_key(&key) {
            let kv = store.get(&key).await.map_err(store_err)?;
            let version = kv.as_ref().map(decode::<ImageVersion>).transpose()?;
            if version.is_some() {
                compares.push(Compare::create_revision(key.clone(), CompareOp::Greater, 0));
            }
            versions.insert(key.clone(), version);
        }
        match &versions[&key] {
            None => problems.push(RulesError::invalid(
                field.clone(),
                format!(
                    "image version {}/{} is not in the image catalog; push it first (bootfleet images push)",
                    file.image, file.version
                ),
            )),
            Some(version) if !version.files.iter().any(|f| f.name == file.file) => {
                problems.push(RulesError::invalid(
                    field.clone(),
                    format!("image version {}/{} has no file {:?}", file.image, file.version, file.file),
                ));
            }
            Some(_) => {}
        }
    }
    match combine(source, problems) {
        Some(error) => Err(error),
        None => Ok(compares),
    }
}

fn check_expected(expected: i64, actual: i64, what: &str) -> Result<(), RulesError> {
    if expected != 0 && expected != actual {
        return Err(RulesError::Conflict(format!(
            "{what} changed: expected revision {expected}, it is at {actual}; read it again and retry"
        )));
    }
    Ok(())
}

fn conflict_after_retries(what: &str) -> RulesError {
    RulesError::Conflict(format!("{what} kept changing under concurrent edits; retry"))
}

/// Rule changes and profile changes, as a diff reports them.
pub type Changes = (Vec<pb::RuleChange>, Vec<pb::ProfileChange>);

/// The outcome of a staged write.
#[derive(Debug)]
pub struct Staged {
    /// The working state after the write (or, for a dry run, as it would be).
    pub state: State,
    /// What changed (or would) against the working state before.
    pub plan: Changes,
    /// Revision of the working state after the call.
    pub revision: i64,
    /// True when nothing had to change (nothing was written).
    pub unchanged: bool,
}

/// How a staged write behaves.
#[derive(Clone, Copy, Debug, Default)]
pub struct StageOptions<'a> {
    /// Fail unless the working state is at this revision (0: any).
    pub expected: i64,
    /// Compute the plan only.
    pub dry_run: bool,
    /// Stage image profiles whose files are not in the catalog.
    pub allow_missing_images: bool,
    /// Named in errors (a manifest's file name).
    pub source: &'a str,
}

/// Applies `edit` to the working state — rules, profiles and locations —
/// and commits the result as one compare-and-swap on the working key, or
/// nothing: the whole result is validated first, and every problem is
/// reported at once. A result equal to what is stored writes nothing.
pub async fn stage(
    store: &SharedStore,
    options: StageOptions<'_>,
    edit: impl Fn(&State) -> Result<State, RulesError>,
) -> Result<Staged, RulesError> {
    for attempt in 0..ATTEMPTS {
        let (current, revision) = read_working(store).await?;
        check_expected(options.expected, revision, "the working state")?;
        let next = edit(&current)?;
        if let Some(error) = combine(options.source, next.problems()) {
            return Err(error);
        }
        let plan = diff(&current, &next);
        let unchanged = plan.0.is_empty() && plan.1.is_empty();
        let mut compares = Vec::new();
        if !options.allow_missing_images {
            compares = check_images(store, &next.new_file_refs(&current), options.source).await?;
        }
        if unchanged || options.dry_run {
            return Ok(Staged { state: next, plan, revision, unchanged });
        }
        compares.push(Compare::mod_revision(WORKING_KEY, CompareOp::Equal, revision));
        let value = next.to_working(now_ms()).encode_to_vec();
        let txn = TxnRequest::new().when(compares).and_then([TxnOp::put(WORKING_KEY, value)]);
        let result = store.txn(txn).await.map_err(store_err)?;
        if result.succeeded {
            return Ok(Staged { state: next, plan, revision: result.revision, unchanged });
        }
        if options.expected != 0 {
            return Err(RulesError::Conflict(
                "the working state changed meanwhile; read it again and retry".into(),
            ));
        }
        pause_after_conflict(attempt).await;
    }
    Err(conflict_after_retries("the working state"))
}

/// Applies `edit` to the working rules. Returns the new set and its revision.
pub async fn modify_working(
    store: &SharedStore,
    expected: i64,
    edit: impl Fn(&mut Vec<Rule>) -> Result<(), RulesError>,
) -> Result<(RuleSet, i64), RulesError> {
    let options = StageOptions { expected, allow_missing_images: true, ..StageOptions::default() };
    let staged = stage(store, options, |current| {
        let mut next = current.clone();
        edit(&mut next.rules)?;
        Ok(next)
    })
    .await?;
    Ok((RuleSet { rules: staged.state.rules, ..RuleSet::default() }, staged.revision))
}

/// Inserts or replaces one rule; see `PutRuleRequest` for placement.
pub fn place_rule(rules: &mut Vec<Rule>, rule: Rule, before: &str, after: &str) -> Result<(), RulesError> {
    if !before.is_empty() && !after.is_empty() {
        return Err(RulesError::invalid("before", "give before or after, not both"));
    }
    let existing = rules.iter().position(|r| r.name == rule.name);
    let anchor = |rules: &[Rule], name: &str, field: &str| {
        rules
            .iter()
            .position(|r| r.name == name)
            .ok_or_else(|| RulesError::invalid(field, format!("no rule named {name:?}")))
    };
    if before.is_empty() && after.is_empty() {
        match existing {
            Some(i) => rules[i] = rule,
            None => rules.push(rule),
        }
        return Ok(());
    }
    if let Some(i) = existing {
        rules.remove(i);
    }
    let index =
        if before.is_empty() { anchor(rules, after, "after")? + 1 } else { anchor(rules, before, "before")? };
    rules.insert(index, rule);
    Ok(())
}

/// The outcome of an activation.
#[derive(Debug)]
pub struct Activated {
    /// The active version (new, or the current one when unchanged).
    pub version: u64,
    /// Store revision of the activation (or of the active set, unchanged).
    pub revision: i64,
    /// True when the working state already was active.
    pub unchanged: bool,
    /// What was published.
    pub published: Changes,
}

/// Publishes the working state — rules, profiles and locations — in one
/// transaction, bumping the active version; does nothing when the working
/// state already is what is active.
pub async fn activate(store: &SharedStore, expected: i64) -> Result<Activated, RulesError> {
    for attempt in 0..ATTEMPTS {
        let (working, working_rev) = read_working(store).await?;
        check_expected(expected, working_rev, "the working state")?;
        let ((active, active_version), revisions) = read_active(store).await?;
        if let Some(error) = combine("the working state", working.problems()) {
            return Err(error);
        }
        let published = diff(&active, &working);
        if published.0.is_empty() && published.1.is_empty() {
            let revision = revisions.set;
            return Ok(Activated { version: active_version, revision, unchanged: true, published });
        }
        let version = active_version + 1;
        let set =
            RuleSet { rules: working.rules.clone(), version, updated_at_unix_ms: now_ms(), staged: None };
        let mut compares = vec![
            Compare::mod_revision(WORKING_KEY, CompareOp::Equal, working_rev),
            Compare::mod_revision(ACTIVE_KEY, CompareOp::Equal, revisions.set),
        ];
        let mut ops = vec![TxnOp::put(ACTIVE_KEY, set.encode_to_vec())];
        for change in &published.1 {
            let key = profile_key(change.profile_kind(), &change.name)?;
            let seen = revisions.objects.get(&key).copied().unwrap_or(0);
            compares.push(Compare::mod_revision(key.clone(), CompareOp::Equal, seen));
            ops.push(match change.after.as_ref().and_then(|o| o.object.as_ref()) {
                Some(profile_object::Object::Image(p)) => TxnOp::put(key, p.encode_to_vec()),
                Some(profile_object::Object::Host(p)) => TxnOp::put(key, p.encode_to_vec()),
                Some(profile_object::Object::Location(l)) => TxnOp::put(key, l.encode_to_vec()),
                None => TxnOp::delete(key),
            });
        }
        let txn = TxnRequest::new().when(compares).and_then(ops);
        let result = store.txn(txn).await.map_err(store_err)?;
        if result.succeeded {
            return Ok(Activated { version, revision: result.revision, unchanged: false, published });
        }
        if expected != 0 {
            return Err(RulesError::Conflict(
                "the working or active state changed meanwhile; read them again and retry".into(),
            ));
        }
        pause_after_conflict(attempt).await;
    }
    Err(conflict_after_retries("the rule sets"))
}

/// Stages a profile or location: it is live after the next activation.
pub async fn put_profile(
    store: &SharedStore,
    object: &ProfileObject,
    expected: i64,
    allow_missing_images: bool,
) -> Result<i64, RulesError> {
    let field = match &object.object {
        Some(profile_object::Object::Image(_)) => "image",
        Some(profile_object::Object::Host(_)) => "host",
        Some(profile_object::Object::Location(_)) => "location",
        None => "",
    };
    let (_, name) = check_object(object).map_err(|e| e.within(field))?;
    let options = StageOptions { expected, allow_missing_images, ..StageOptions::default() };
    let staged = stage(store, options, |current| {
        let mut next = current.clone();
        match &object.object {
            Some(profile_object::Object::Image(p)) => drop(next.image.insert(name.clone(), p.clone())),
            Some(profile_object::Object::Host(p)) => drop(next.host.insert(name.clone(), p.clone())),
            Some(profile_object::Object::Location(l)) => drop(next.location.insert(name.clone(), l.clone())),
            None => {}
        }
        Ok(next)
    })
    .await?;
    Ok(staged.revision)
}

/// Removes a staged profile or location unless a working rule names it.
/// What is active stays until the next activation.
pub async fn delete_profile(store: &SharedStore, kind: ProfileKind, name: &str) -> Result<i64, RulesError> {
    profile_key(kind, name)?;
    let reference = match kind {
        ProfileKind::Image => ProfileRef::Image(name.to_owned()),
        ProfileKind::Host => ProfileRef::Host(name.to_owned()),
        _ => ProfileRef::Location(name.to_owned()),
    };
    let options = StageOptions { allow_missing_images: true, ..StageOptions::default() };
    let staged = stage(store, options, |current| {
        let mut next = current.clone();
        let removed = match kind {
            ProfileKind::Image => next.image.remove(name).is_some(),
            ProfileKind::Host => next.host.remove(name).is_some(),
            _ => next.location.remove(name).is_some(),
        };
        if !removed {
            return Err(RulesError::NotFound(format!("{reference} (staged)")));
        }
        let user = next.rules.iter().find(|r| match &reference {
            ProfileRef::Image(n) => &r.image_profile == n,
            ProfileRef::Host(n) => &r.host_profile == n,
            ProfileRef::Location(n) => &r.location == n,
        });
        if let Some(rule) = user {
            return Err(RulesError::Conflict(format!(
                "{reference} is used by rule {:?} in the working set; change the rules first",
                rule.name
            )));
        }
        Ok(next)
    })
    .await?;
    Ok(staged.revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(names: &[&str]) -> Vec<Rule> {
        names.iter().map(|n| Rule { name: (*n).into(), ..Default::default() }).collect()
    }

    fn order(rules: &[Rule]) -> Vec<&str> {
        rules.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn rules_are_placed_as_asked() {
        let mut rules = named(&["a", "b", "c"]);
        place_rule(&mut rules, named(&["d"]).remove(0), "", "").unwrap();
        assert_eq!(order(&rules), ["a", "b", "c", "d"]);
        place_rule(&mut rules, named(&["d"]).remove(0), "a", "").unwrap();
        assert_eq!(order(&rules), ["d", "a", "b", "c"]);
        place_rule(&mut rules, named(&["d"]).remove(0), "", "b").unwrap();
        assert_eq!(order(&rules), ["a", "b", "d", "c"]);
        // Replacing keeps the place.
        let mut replaced = named(&["b"]).remove(0);
        replaced.description = "new".into();
        place_rule(&mut rules, replaced, "", "").unwrap();
        assert_eq!((order(&rules)[1], rules[1].description.as_str()), ("b", "new"));
        assert!(place_rule(&mut rules, named(&["e"]).remove(0), "zz", "").is_err());
        assert!(place_rule(&mut rules, named(&["e"]).remove(0), "a", "b").is_err());
    }
}
