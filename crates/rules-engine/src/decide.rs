//! From facts to a [`Decision`]: the active rule set plus the profiles it
//! names. Pure: the caller supplies the snapshot and the clock.

use std::collections::HashMap;
use std::sync::Arc;

use bootfleet_proto::v1::{Decision, HostProfile, ImageProfile, Location, RuleSet};

use crate::ProfileRef;
use crate::error::RulesError;
use crate::facts::Facts;
use crate::ruleset::{CompiledRuleSet, Outcome};

/// Profiles and locations by name.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// Image profiles.
    pub image: HashMap<String, Arc<ImageProfile>>,
    /// Host profiles.
    pub host: HashMap<String, Arc<HostProfile>>,
    /// Locations.
    pub location: HashMap<String, Arc<Location>>,
}

impl Catalog {
    /// Whether a referenced object exists.
    pub fn has(&self, reference: &ProfileRef) -> bool {
        match reference {
            ProfileRef::Image(n) => self.image.contains_key(n),
            ProfileRef::Host(n) => self.host.contains_key(n),
            ProfileRef::Location(n) => self.location.contains_key(n),
        }
    }

    /// Fails with INVALID_ARGUMENT naming the rule field of the first
    /// reference to something that does not exist.
    pub fn check_references(&self, rules: &CompiledRuleSet) -> Result<(), RulesError> {
        for (reference, path) in rules.references() {
            if !self.has(&reference) {
                return Err(RulesError::invalid(path, format!("unknown {reference}")));
            }
        }
        Ok(())
    }
}

/// An active rule set with the catalog it decides from.
#[derive(Debug, Default)]
pub struct Engine {
    /// The compiled rules.
    pub rules: CompiledRuleSet,
    /// The profiles.
    pub catalog: Catalog,
    /// Store revision the engine was built from (0 when not from a store).
    pub built_at: i64,
}

impl Engine {
    /// Compiles a rule set against a catalog.
    pub fn new(set: &RuleSet, catalog: Catalog) -> Result<Self, RulesError> {
        Ok(Self { rules: CompiledRuleSet::compile(set)?, catalog, built_at: 0 })
    }

    /// Which rules decide for these facts.
    pub fn outcome(&self, facts: &Facts) -> Outcome {
        self.rules.evaluate(facts)
    }

    /// The decision for these facts at `now_unix_ms`.
    pub fn decide(&self, facts: &Facts, now_unix_ms: i64) -> Decision {
        self.materialize(&self.outcome(facts), now_unix_ms)
    }

    /// Turns an outcome into a decision message with the profiles resolved.
    pub fn materialize(&self, outcome: &Outcome, now_unix_ms: i64) -> Decision {
        let name = |i: Option<usize>, pick: fn(&crate::ruleset::Assigns) -> &Option<String>| {
            i.and_then(|i| pick(&self.rules.rules[i].assigns).clone())
        };
        let image = name(outcome.image_profile, |a| &a.image_profile);
        let host = name(outcome.host_profile, |a| &a.host_profile);
        let location = name(outcome.location, |a| &a.location);
        Decision {
            image_profile: image.and_then(|n| self.catalog.image.get(&n)).map(|p| (**p).clone()),
            host_profile: host.and_then(|n| self.catalog.host.get(&n)).map(|p| (**p).clone()),
            location: location.and_then(|n| self.catalog.location.get(&n)).map(|p| (**p).clone()),
            matched_rules: outcome
                .contributing()
                .into_iter()
                .map(|i| self.rules.rules[i].name.clone())
                .collect(),
            rule_set_version: self.rules.version,
            decided_at_unix_ms: now_unix_ms,
        }
    }
}

/// Which items differ between two decisions, by the names they assign.
pub fn changed_items(recorded: Option<&Decision>, expected: &Decision) -> Vec<String> {
    let image = |d: Option<&Decision>| d.and_then(|d| d.image_profile.as_ref()).map(|p| p.name.clone());
    let host = |d: Option<&Decision>| d.and_then(|d| d.host_profile.as_ref()).map(|p| p.name.clone());
    let location = |d: Option<&Decision>| d.and_then(|d| d.location.as_ref()).map(|p| p.name.clone());
    let mut changed = Vec::new();
    if image(recorded) != image(Some(expected)) {
        changed.push("image_profile".to_owned());
    }
    if host(recorded) != host(Some(expected)) {
        changed.push("host_profile".to_owned());
    }
    if location(recorded) != location(Some(expected)) {
        changed.push("location".to_owned());
    }
    changed
}
