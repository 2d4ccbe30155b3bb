//! Every write of the rules engine, as a compare-and-swap transaction.
//!
//! A write reads the current value from the store (not the snapshot),
//! changes it, validates the result — rules compile, every profile they name
//! exists — and commits only if nothing it read has changed meanwhile and
//! every referenced profile still exists. A lost race is retried; when the
//! caller gave an `expected_revision`, it fails with a conflict instead (the
//! operator edited a stale copy). No update is ever lost.

use std::time::{SystemTime, UNIX_EPOCH};

use bootfleet_core::store::{Compare, CompareOp, SharedStore, StoreError, TxnOp, TxnRequest};
use bootfleet_proto::v1::{ProfileKind, ProfileObject, Rule, RuleSet, image_profile, profile_object};
use prost::Message;

use super::{
    ACTIVE_KEY, HOST_PREFIX, IMAGE_PREFIX, LOCATION_PREFIX, PROFILES_PREFIX, WORKING_KEY, catalog_of,
    rule_set_of,
};
use crate::ProfileRef;
use crate::decide::Catalog;
use crate::error::RulesError;
use crate::ruleset::{CompiledRuleSet, check_name};

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

/// Key of a referenced object.
pub fn reference_key(reference: &ProfileRef) -> String {
    match reference {
        ProfileRef::Image(n) => format!("{IMAGE_PREFIX}{n}"),
        ProfileRef::Host(n) => format!("{HOST_PREFIX}{n}"),
        ProfileRef::Location(n) => format!("{LOCATION_PREFIX}{n}"),
    }
}

/// Key and name of a profile object, validating the name.
pub fn profile_key(kind: ProfileKind, name: &str) -> Result<String, RulesError> {
    check_name(name, "name")?;
    Ok(match kind {
        ProfileKind::Image => format!("{IMAGE_PREFIX}{name}"),
        ProfileKind::Host => format!("{HOST_PREFIX}{name}"),
        ProfileKind::Location => format!("{LOCATION_PREFIX}{name}"),
        ProfileKind::Unspecified => return Err(RulesError::invalid("kind", "give image, host or location")),
    })
}

async fn fresh_catalog(store: &SharedStore) -> Result<Catalog, RulesError> {
    let profiles = store.range(PROFILES_PREFIX).await.map_err(store_err)?;
    let locations = store.range(LOCATION_PREFIX).await.map_err(store_err)?;
    catalog_of(&profiles.kvs, &locations.kvs)
}

/// Compiles rules and checks their references; returns compares asserting
/// that every referenced object still exists at commit time.
async fn validate(store: &SharedStore, rules: &[Rule]) -> Result<Vec<Compare>, RulesError> {
    let compiled = CompiledRuleSet::compile_rules(rules, 0)?;
    fresh_catalog(store).await?.check_references(&compiled)?;
    let mut keys: Vec<String> = compiled.references().iter().map(|(r, _)| reference_key(r)).collect();
    keys.sort();
    keys.dedup();
    Ok(keys.into_iter().map(|k| Compare::create_revision(k, CompareOp::Greater, 0)).collect())
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

/// Applies `edit` to the working set. Returns the new set and its revision.
pub async fn modify_working(
    store: &SharedStore,
    expected: i64,
    edit: impl Fn(&mut Vec<Rule>) -> Result<(), RulesError>,
) -> Result<(RuleSet, i64), RulesError> {
    for attempt in 0..ATTEMPTS {
        let current = store.get(WORKING_KEY).await.map_err(store_err)?;
        let (mut set, revision) = rule_set_of(current.as_ref())?;
        check_expected(expected, revision, "the working rule set")?;
        edit(&mut set.rules)?;
        let mut compares = validate(store, &set.rules).await?;
        compares.push(Compare::mod_revision(WORKING_KEY, CompareOp::Equal, revision));
        set.updated_at_unix_ms = now_ms();
        set.version = 0;
        let txn = TxnRequest::new().when(compares).and_then([TxnOp::put(WORKING_KEY, set.encode_to_vec())]);
        let result = store.txn(txn).await.map_err(store_err)?;
        if result.succeeded {
            return Ok((set, result.revision));
        }
        if expected != 0 {
            return Err(RulesError::Conflict(
                "the working rule set or a profile it names changed meanwhile; read it again and retry"
                    .into(),
            ));
        }
        pause_after_conflict(attempt).await;
    }
    Err(conflict_after_retries("the working rule set"))
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

/// Makes the working set active. Returns the new version and revision.
pub async fn activate(store: &SharedStore, expected: i64) -> Result<(u64, i64), RulesError> {
    for attempt in 0..ATTEMPTS {
        let working = store.get(WORKING_KEY).await.map_err(store_err)?;
        let active = store.get(ACTIVE_KEY).await.map_err(store_err)?;
        let (working_set, working_rev) = rule_set_of(working.as_ref())?;
        let (active_set, active_rev) = rule_set_of(active.as_ref())?;
        check_expected(expected, working_rev, "the working rule set")?;
        let mut compares = validate(store, &working_set.rules).await?;
        compares.push(Compare::mod_revision(WORKING_KEY, CompareOp::Equal, working_rev));
        compares.push(Compare::mod_revision(ACTIVE_KEY, CompareOp::Equal, active_rev));
        let version = active_set.version + 1;
        let new = RuleSet { rules: working_set.rules, version, updated_at_unix_ms: now_ms() };
        let txn = TxnRequest::new().when(compares).and_then([TxnOp::put(ACTIVE_KEY, new.encode_to_vec())]);
        let result = store.txn(txn).await.map_err(store_err)?;
        if result.succeeded {
            return Ok((version, result.revision));
        }
        if expected != 0 {
            return Err(RulesError::Conflict(
                "the rule sets changed meanwhile; read them again and retry".into(),
            ));
        }
        pause_after_conflict(attempt).await;
    }
    Err(conflict_after_retries("the rule sets"))
}

fn check_file_ref(f: Option<&bootfleet_proto::v1::FileRef>, path: &str) -> Result<(), RulesError> {
    match f {
        Some(f) if !f.image.is_empty() && !f.version.is_empty() && !f.file.is_empty() => Ok(()),
        _ => Err(RulesError::invalid(path, "needs image, version and file")),
    }
}

/// Checks a cmdline/script template: `${namespace.key}` with a known namespace.
pub fn check_template(text: &str, path: &str) -> Result<(), RulesError> {
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| RulesError::invalid(path, "unclosed ${"))?;
        let var = &after[..end];
        let known = ["host.", "location.", "facts."]
            .iter()
            .any(|p| var.strip_prefix(p).is_some_and(|k| !k.is_empty()));
        if !known {
            return Err(RulesError::invalid(
                path,
                format!("unknown variable ${{{var}}} (use host.KEY, location.KEY or facts.FIELD)"),
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

/// Validates a profile object; returns its kind, name and encoded value.
pub fn profile_parts(object: &ProfileObject) -> Result<(ProfileKind, String, Vec<u8>), RulesError> {
    use image_profile::Boot;
    match &object.object {
        Some(profile_object::Object::Image(p)) => {
            match &p.boot {
                None => {
                    return Err(RulesError::invalid(
                        "image.boot",
                        "give kernel, script, sanboot, nbd, local or ignore",
                    ));
                }
                Some(Boot::Kernel(k)) => {
                    check_file_ref(k.kernel.as_ref(), "image.kernel.kernel")?;
                    for (i, initrd) in k.initrds.iter().enumerate() {
                        check_file_ref(Some(initrd), &format!("image.kernel.initrds[{i}]"))?;
                    }
                    check_template(&k.cmdline, "image.kernel.cmdline")?;
                }
                Some(Boot::Script(s)) => {
                    if s.script.trim().is_empty() {
                        return Err(RulesError::invalid("image.script", "empty script"));
                    }
                    check_template(&s.script, "image.script")?;
                }
                Some(Boot::Sanboot(s)) => check_file_ref(s.disk.as_ref(), "image.sanboot.disk")?,
                Some(Boot::Nbd(n)) => check_file_ref(n.vdisk.as_ref(), "image.nbd.vdisk")?,
                Some(Boot::Local(_) | Boot::Ignore(_)) => {}
            }
            check_name(&p.name, "image.name")?;
            Ok((ProfileKind::Image, p.name.clone(), p.encode_to_vec()))
        }
        Some(profile_object::Object::Host(p)) => {
            check_name(&p.name, "host.name")?;
            Ok((ProfileKind::Host, p.name.clone(), p.encode_to_vec()))
        }
        Some(profile_object::Object::Location(l)) => {
            check_name(&l.name, "location.name")?;
            Ok((ProfileKind::Location, l.name.clone(), l.encode_to_vec()))
        }
        None => Err(RulesError::invalid("profile", "give an image, host or location object")),
    }
}

/// Creates or replaces a profile; returns the stored revision.
pub async fn put_profile(
    store: &SharedStore,
    object: &ProfileObject,
    expected: i64,
) -> Result<i64, RulesError> {
    let (kind, name, value) = profile_parts(object)?;
    let key = profile_key(kind, &name)?;
    let mut txn = TxnRequest::new().and_then([TxnOp::put(key.clone(), value)]);
    if expected != 0 {
        txn = txn.when([Compare::mod_revision(key, CompareOp::Equal, expected)]);
    }
    let result = store.txn(txn).await.map_err(store_err)?;
    if !result.succeeded {
        return Err(RulesError::Conflict(format!(
            "{name:?} changed since revision {expected}; read it again and retry"
        )));
    }
    Ok(result.revision)
}

/// Deletes a profile unless a rule in the working or active set uses it.
pub async fn delete_profile(store: &SharedStore, kind: ProfileKind, name: &str) -> Result<(), RulesError> {
    let key = profile_key(kind, name)?;
    let reference = match kind {
        ProfileKind::Image => ProfileRef::Image(name.to_owned()),
        ProfileKind::Host => ProfileRef::Host(name.to_owned()),
        _ => ProfileRef::Location(name.to_owned()),
    };
    for attempt in 0..ATTEMPTS {
        let mut compares = vec![Compare::create_revision(key.clone(), CompareOp::Greater, 0)];
        for (set_key, label) in [(WORKING_KEY, "working"), (ACTIVE_KEY, "active")] {
            let kv = store.get(set_key).await.map_err(store_err)?;
            let (set, revision) = rule_set_of(kv.as_ref())?;
            let user = set.rules.iter().find(|r| match &reference {
                ProfileRef::Image(n) => &r.image_profile == n,
                ProfileRef::Host(n) => &r.host_profile == n,
                ProfileRef::Location(n) => &r.location == n,
            });
            if let Some(rule) = user {
                return Err(RulesError::Conflict(format!(
                    "{reference} is used by rule {:?} in the {label} set; change the rules first",
                    rule.name
                )));
            }
            compares.push(Compare::mod_revision(set_key, CompareOp::Equal, revision));
        }
        let txn = TxnRequest::new()
            .when(compares)
            .and_then([TxnOp::delete(key.clone())])
            .or_else([TxnOp::get(key.clone())]);
        let result = store.txn(txn).await.map_err(store_err)?;
        if result.succeeded {
            return Ok(());
        }
        if matches!(result.results.first(), Some(bootfleet_core::store::TxnOpResult::Get(None))) {
            return Err(RulesError::NotFound(reference.to_string()));
        }
        pause_after_conflict(attempt).await;
    }
    Err(conflict_after_retries("the rule sets"))
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

    #[test]
    fn templates_are_checked() {
        check_template("console=ttyS0 role=${host.role} mac=${facts.mac}", "t").unwrap();
        assert!(check_template("x=${host.}", "t").is_err());
        assert!(check_template("x=${secret.key}", "t").is_err());
        assert!(check_template("x=${host.role", "t").is_err());
    }
}
