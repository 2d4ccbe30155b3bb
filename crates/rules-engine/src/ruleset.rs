//! A rule set compiled for fast first-match evaluation.
//!
//! Scanning 10,000 rules per boot request is too slow for a boot storm, so
//! each rule is filed under an *anchor* taken from its match expression: an
//! equality (or set) on a fact goes into a hash map keyed by field and value,
//! a CIDR on an address into a per-prefix-length map of networks, a glob with
//! a literal prefix into a per-length map of prefixes, anything else into a
//! residual list. Evaluating collects the candidate rules for the
//! host's facts from those indexes, merges them with the residual list in
//! rule order, and checks the full expression of each candidate until every
//! item (image profile, host profile, location) is assigned. The result is
//! the same as scanning every rule in order — a property test checks that.

use std::collections::{BTreeSet, HashMap};

use bootfleet_proto::v1::{Rule, RuleSet};

use crate::error::RulesError;
use crate::facts::{Facts, Field};
use crate::matcher::{self, Cidr, Expr, Test};

/// Which items a rule assigns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assigns {
    /// Image profile name.
    pub image_profile: Option<String>,
    /// Host profile name.
    pub host_profile: Option<String>,
    /// Location name.
    pub location: Option<String>,
}

/// One compiled rule.
#[derive(Clone, Debug)]
pub struct CompiledRule {
    /// The rule's name.
    pub name: String,
    /// Its compiled match expression.
    pub expr: Expr,
    /// What it assigns.
    pub assigns: Assigns,
}

/// Which rule assigned each item, by index into [`CompiledRuleSet::rules`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Rule that assigned the image profile.
    pub image_profile: Option<usize>,
    /// Rule that assigned the host profile.
    pub host_profile: Option<usize>,
    /// Rule that assigned the location.
    pub location: Option<usize>,
}

impl Outcome {
    /// Indices of the rules that contributed, in rule order, deduplicated.
    pub fn contributing(&self) -> Vec<usize> {
        let set: BTreeSet<usize> =
            [self.image_profile, self.host_profile, self.location].into_iter().flatten().collect();
        set.into_iter().collect()
    }
}

enum Anchor {
    Exact(Field, Vec<String>),
    Cidr(Field, Cidr),
    /// A glob with a non-empty literal prefix.
    Prefix(Field, String),
}

fn anchor(expr: &Expr) -> Option<Anchor> {
    match expr {
        Expr::Cond(field, Test::Equals(v)) => Some(Anchor::Exact(field.clone(), vec![v.clone()])),
        Expr::Cond(field, Test::In(set)) => Some(Anchor::Exact(field.clone(), set.iter().cloned().collect())),
        Expr::Cond(field, Test::Cidr(c)) => Some(Anchor::Cidr(field.clone(), *c)),
        Expr::Cond(field, Test::Glob(g)) => {
            let prefix = g.literal_prefix();
            (!prefix.is_empty()).then(|| Anchor::Prefix(field.clone(), prefix))
        }
        // Any conjunct must hold, so any conjunct's anchor is a valid filter;
        // prefer exact ones (fewer candidates).
        Expr::All(items) => {
            let anchors: Vec<Anchor> = items.iter().filter_map(anchor).collect();
            let mut exact = None;
            let mut cidr = None;
            let mut prefix = None;
            for a in anchors {
                match a {
                    Anchor::Exact(..) if exact.is_none() => exact = Some(a),
                    Anchor::Cidr(..) if cidr.is_none() => cidr = Some(a),
                    Anchor::Prefix(..) if prefix.is_none() => prefix = Some(a),
                    _ => {}
                }
            }
            exact.or(cidr).or(prefix)
        }
        _ => None,
    }
}

/// A compiled, indexed rule set.
#[derive(Debug, Default)]
pub struct CompiledRuleSet {
    /// Rules in order.
    pub rules: Vec<CompiledRule>,
    /// The set's version (0 for the working set).
    pub version: u64,
    exact: HashMap<Field, HashMap<String, Vec<usize>>>,
    /// Per (field, prefix length): network → rules.
    cidr: Vec<(Field, u8, HashMap<u32, Vec<usize>>)>,
    /// Per (field, literal prefix length in bytes): glob prefix → rules.
    prefixes: Vec<(Field, usize, HashMap<String, Vec<usize>>)>,
    residual: Vec<usize>,
    /// Items no rule assigns count as done, so evaluation can stop early.
    unassignable: Assigned,
}

/// Which items are settled.
#[derive(Clone, Copy, Debug, Default)]
struct Assigned {
    image_profile: bool,
    host_profile: bool,
    location: bool,
}

/// Checks a rule name: 1-128 of `A-Z a-z 0-9 - _ .`.
pub fn check_name(name: &str, path: &str) -> Result<(), RulesError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(RulesError::invalid(path, format!("{name:?} is not a valid name (1-128 of A-Z a-z 0-9 - _ .)")))
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// Every problem of every rule, not only the first (for an apply that
/// reports all of them at once). Empty when the rules compile.
pub fn rule_problems(rules: &[Rule]) -> Vec<RulesError> {
    let mut names = HashMap::new();
    rules.iter().enumerate().filter_map(|(i, rule)| compile_rule(rule, i, &mut names).err()).collect()
}

/// Checks and compiles rule `i`; `names` holds the names seen before it.
fn compile_rule(
    rule: &Rule,
    i: usize,
    names: &mut HashMap<String, usize>,
) -> Result<(Expr, Assigns), RulesError> {
    let path = format!("rules[{i}]");
    check_name(&rule.name, &format!("{path}.name"))?;
    if let Some(first) = names.insert(rule.name.clone(), i) {
        return Err(RulesError::invalid(
            format!("{path}.name"),
            format!("duplicate rule name {:?} (also rules[{first}])", rule.name),
        ));
    }
    let m = rule.r#match.as_ref().ok_or_else(|| RulesError::invalid(format!("{path}.match"), "missing"))?;
    let expr = matcher::compile(m, &format!("{path}.match"))?;
    let assigns = Assigns {
        image_profile: non_empty(&rule.image_profile),
        host_profile: non_empty(&rule.host_profile),
        location: non_empty(&rule.location),
    };
    if assigns == Assigns::default() {
        return Err(RulesError::invalid(
            path,
            "assigns nothing: give image_profile, host_profile or location",
        ));
    }
    Ok((expr, assigns))
}

impl CompiledRuleSet {
    /// Validates and compiles `set`. Errors name the rule by position and
    /// the field inside it. Profile references are not checked here (see
    /// `validate::check_references`).
    pub fn compile(set: &RuleSet) -> Result<Self, RulesError> {
        Self::compile_rules(&set.rules, set.version)
    }

    /// As [`Self::compile`], from a list of rules.
    pub fn compile_rules(rules: &[Rule], version: u64) -> Result<Self, RulesError> {
        let mut compiled = Self { version, ..Self::default() };
        let mut names = HashMap::new();
        for (i, rule) in rules.iter().enumerate() {
            let (expr, assigns) = compile_rule(rule, i, &mut names)?;
            compiled.index(i, &expr);
            compiled.rules.push(CompiledRule { name: rule.name.clone(), expr, assigns });
        }
        let assigns = |f: fn(&Assigns) -> bool| compiled.rules.iter().any(|r| f(&r.assigns));
        compiled.unassignable = Assigned {
            image_profile: !assigns(|a| a.image_profile.is_some()),
            host_profile: !assigns(|a| a.host_profile.is_some()),
            location: !assigns(|a| a.location.is_some()),
        };
        Ok(compiled)
    }

    fn index(&mut self, i: usize, expr: &Expr) {
        match anchor(expr) {
            Some(Anchor::Exact(field, values)) => {
                let by_value = self.exact.entry(field).or_default();
                for value in values {
                    by_value.entry(value).or_default().push(i);
                }
            }
            Some(Anchor::Cidr(field, cidr)) => {
                let slot = self.cidr.iter().position(|(f, len, _)| *f == field && *len == cidr.prefix);
                let slot = match slot {
                    Some(slot) => slot,
                    None => {
                        self.cidr.push((field, cidr.prefix, HashMap::new()));
                        self.cidr.len() - 1
                    }
                };
                self.cidr[slot].2.entry(cidr.network).or_default().push(i);
            }
            Some(Anchor::Prefix(field, prefix)) => {
                let len = prefix.len();
                let slot = self.prefixes.iter().position(|(f, l, _)| *f == field && *l == len);
                let slot = match slot {
                    Some(slot) => slot,
                    None => {
                        self.prefixes.push((field, len, HashMap::new()));
                        self.prefixes.len() - 1
                    }
                };
                self.prefixes[slot].2.entry(prefix).or_default().push(i);
            }
            None => self.residual.push(i),
        }
    }

    /// First-match evaluation through the indexes.
    pub fn evaluate(&self, facts: &Facts) -> Outcome {
        let mut candidates: Vec<usize> = Vec::new();
        for (field, by_value) in &self.exact {
            if let Some(rules) = facts.get(field).and_then(|v| by_value.get(v)) {
                candidates.extend_from_slice(rules);
            }
        }
        for (field, prefix, by_network) in &self.cidr {
            if let Some(rules) = facts.address(field).and_then(|a| by_network.get(&(a & Cidr::mask(*prefix))))
            {
                candidates.extend_from_slice(rules);
            }
        }
        for (field, len, by_prefix) in &self.prefixes {
            let head = facts.get(field).and_then(|v| v.get(..*len));
            if let Some(rules) = head.and_then(|h| by_prefix.get(h)) {
                candidates.extend_from_slice(rules);
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        // Merge the two sorted lists, checking rules in order.
        let mut outcome = Outcome::default();
        let (mut a, mut b) = (0, 0);
        loop {
            let next = match (candidates.get(a), self.residual.get(b)) {
                (Some(x), Some(y)) if x <= y => {
                    a += 1;
                    *x
                }
                (_, Some(y)) => {
                    b += 1;
                    *y
                }
                (Some(x), None) => {
                    a += 1;
                    *x
                }
                (None, None) => break,
            };
            if self.apply(next, facts, &mut outcome) {
                break;
            }
        }
        outcome
    }

    /// Whether the image profile for `facts` depends on fields `known`
    /// does not accept: the first rule assigning an image profile that can
    /// still match is one whose match needs an unknown field. (Rules that
    /// certainly match or fail on the known fields decide as usual.)
    pub fn image_undecided(&self, facts: &Facts, known: &dyn Fn(&Field) -> bool) -> bool {
        for rule in self.rules.iter().filter(|r| r.assigns.image_profile.is_some()) {
            match rule.expr.eval_partial(facts, known) {
                Some(true) => return false,
                None => return true,
                Some(false) => {}
            }
        }
        false
    }

    /// Reference evaluation: every rule in order (for tests and checks).
    pub fn evaluate_linear(&self, facts: &Facts) -> Outcome {
        let mut outcome = Outcome::default();
        for i in 0..self.rules.len() {
            if self.apply(i, facts, &mut outcome) {
                break;
            }
        }
        outcome
    }

    /// Applies rule `i` if it matches; returns whether every item is assigned.
    fn apply(&self, i: usize, facts: &Facts, outcome: &mut Outcome) -> bool {
        let rule = &self.rules[i];
        let wanted = (outcome.image_profile.is_none() && rule.assigns.image_profile.is_some())
            || (outcome.host_profile.is_none() && rule.assigns.host_profile.is_some())
            || (outcome.location.is_none() && rule.assigns.location.is_some());
        if wanted && rule.expr.eval(facts) {
            if outcome.image_profile.is_none() && rule.assigns.image_profile.is_some() {
                outcome.image_profile = Some(i);
            }
            if outcome.host_profile.is_none() && rule.assigns.host_profile.is_some() {
                outcome.host_profile = Some(i);
            }
            if outcome.location.is_none() && rule.assigns.location.is_some() {
                outcome.location = Some(i);
            }
        }
        let done = self.unassignable;
        (done.image_profile || outcome.image_profile.is_some())
            && (done.host_profile || outcome.host_profile.is_some())
            && (done.location || outcome.location.is_some())
    }

    /// Every profile/location name the rules reference, with the first rule
    /// path that does (for reference checks).
    pub fn references(&self) -> Vec<(crate::ProfileRef, String)> {
        let mut out = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let path = format!("rules[{i}]");
            if let Some(n) = &rule.assigns.image_profile {
                out.push((crate::ProfileRef::Image(n.clone()), format!("{path}.image_profile")));
            }
            if let Some(n) = &rule.assigns.host_profile {
                out.push((crate::ProfileRef::Host(n.clone()), format!("{path}.host_profile")));
            }
            if let Some(n) = &rule.assigns.location {
                out.push((crate::ProfileRef::Location(n.clone()), format!("{path}.location")));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use bootfleet_proto::v1::{Condition, HostFacts, Match, condition, r#match};
    use proptest::prelude::*;

    use super::*;
    use crate::manifest::match_expr;

    fn rule(name: &str, m: serde_json::Value, image: &str, host: &str, location: &str) -> Rule {
        Rule {
            name: name.into(),
            r#match: Some(match_expr(&m, "match").unwrap()),
            image_profile: image.into(),
            host_profile: host.into(),
            location: location.into(),
            ..Default::default()
        }
    }

    fn facts(mac: &str, extra: impl FnOnce(&mut HostFacts)) -> Facts {
        let mut f = HostFacts { mac: mac.into(), ..Default::default() };
        extra(&mut f);
        Facts::from_proto(&f).unwrap()
    }

    type Names = (Option<String>, Option<String>, Option<String>);

    fn names(set: &CompiledRuleSet, o: &Outcome) -> Names {
        let n = |i: Option<usize>| i.map(|i| set.rules[i].name.clone());
        (n(o.image_profile), n(o.host_profile), n(o.location))
    }

    #[test]
    fn first_matching_rule_wins_per_item() {
        use serde_json::json;
        let rules = vec![
            rule("exact", json!({"mac": "52:54:00:00:00:01"}), "img-exact", "", ""),
            rule("efi", json!({"arch": "efi-x64"}), "img-efi", "efi-host", ""),
            rule("lab-net", json!({"ipv4": {"cidr": "198.18.0.0/15"}}), "", "", "lab"),
            rule(
                "qemu",
                json!({"vendor": {"glob": "QEMU*"}, "not": {"serial": {"range": ["100", "199"]}}}),
                "img-qemu",
                "qemu-host",
                "qemu-loc",
            ),
            rule("fallback", json!({"always": true}), "img-default", "default-host", "nowhere"),
        ];
        let set = CompiledRuleSet::compile_rules(&rules, 1).unwrap();
        let s = |v: &str| Some(v.to_owned());
        let cases: Vec<(Facts, Names)> = vec![
            // Exact MAC takes the image; efi gives the host profile; net the location.
            (
                facts("52:54:00:00:00:01", |f| {
                    f.arch = "efi-x64".into();
                    f.ipv4 = "198.19.1.1".into();
                }),
                (s("exact"), s("efi"), s("lab-net")),
            ),
            // Nothing specific: the fallback assigns everything.
            (facts("52:54:00:00:00:02", |_| {}), (s("fallback"), s("fallback"), s("fallback"))),
            // QEMU with a serial outside the excluded range.
            (
                facts("52:54:00:00:00:03", |f| {
                    f.vendor = "QEMU Standard PC".into();
                    f.serial = "250".into();
                }),
                (s("qemu"), s("qemu"), s("qemu")),
            ),
            // QEMU inside the excluded serial range falls through.
            (
                facts("52:54:00:00:00:04", |f| {
                    f.vendor = "QEMU".into();
                    f.serial = "150".into();
                }),
                (s("fallback"), s("fallback"), s("fallback")),
            ),
        ];
        for (i, (f, want)) in cases.into_iter().enumerate() {
            let indexed = set.evaluate(&f);
            assert_eq!(names(&set, &indexed), want, "case {i}");
            assert_eq!(indexed, set.evaluate_linear(&f), "case {i}");
        }
    }

    #[test]
    fn invalid_rules_are_rejected_naming_the_field() {
        use serde_json::json;
        let cases: Vec<(Vec<Rule>, &str)> = vec![
            (
                vec![
                    rule("a", json!({"always": true}), "p", "", ""),
                    rule("a", json!({"always": true}), "p", "", ""),
                ],
                "rules[1].name",
            ),
            (vec![rule("bad name", json!({"always": true}), "p", "", "")], "rules[0].name"),
            (vec![rule("a", json!({"always": true}), "", "", "")], "rules[0]"),
            (vec![rule("a", json!({"colour": "red"}), "p", "", "")], "rules[0].match.field"),
            (vec![rule("a", json!({"mac": {"equals": "nope"}}), "p", "", "")], "rules[0].match.equals"),
            (vec![rule("a", json!({"serial": {"cidr": "10.0.0.0/8"}}), "p", "", "")], "rules[0].match.cidr"),
            (vec![rule("a", json!({"ipv4": {"cidr": "10.0.0.1/8"}}), "p", "", "")], "rules[0].match.cidr"),
            (vec![rule("a", json!({"vendor": {"glob": "[x"}}), "p", "", "")], "rules[0].match.glob"),
            (
                vec![rule(
                    "a",
                    json!({"mac": {"range": ["52:54:00:00:00:09", "52:54:00:00:00:01"]}}),
                    "p",
                    "",
                    "",
                )],
                "rules[0].match.range",
            ),
        ];
        for (rules, field) in cases {
            match CompiledRuleSet::compile_rules(&rules, 0) {
                Err(RulesError::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("expected an error at {field}, got {other:?}"),
            }
        }
        // Too deep.
        let mut m = Match { expr: Some(r#match::Expr::Always(true)) };
        for _ in 0..40 {
            m = Match { expr: Some(r#match::Expr::Not(Box::new(m))) };
        }
        let deep =
            Rule { name: "deep".into(), r#match: Some(m), image_profile: "p".into(), ..Default::default() };
        assert!(CompiledRuleSet::compile_rules(&[deep], 0).is_err());
    }

    fn arb_match(depth: u32) -> BoxedStrategy<Match> {
        let cond = (0usize..6, 0u8..4).prop_map(|(kind, v)| {
            use condition::Test;
            let (field, test) = match kind {
                0 => ("mac", Test::Equals(format!("52:54:00:00:00:0{v}"))),
                1 => (
                    "arch",
                    Test::In(bootfleet_proto::v1::StringSet {
                        values: vec!["bios".into(), format!("efi-{v}")],
                    }),
                ),
                2 => ("vendor", Test::Glob(format!("v{v}*"))),
                3 => ("ipv4", Test::Cidr(format!("198.18.{v}.0/24"))),
                4 => ("ipv4", Test::Cidr("198.18.0.0/15".into())),
                _ => ("serial", Test::Equals(format!("s{v}"))),
            };
            Match {
                expr: Some(r#match::Expr::Condition(Condition { field: field.into(), test: Some(test) })),
            }
        });
        if depth == 0 {
            return cond.boxed();
        }
        prop_oneof![
            3 => cond,
            1 => proptest::collection::vec(arb_match(depth - 1), 1..3)
                .prop_map(|items| Match { expr: Some(r#match::Expr::All(bootfleet_proto::v1::MatchList { items })) }),
            1 => proptest::collection::vec(arb_match(depth - 1), 1..3)
                .prop_map(|items| Match { expr: Some(r#match::Expr::Any(bootfleet_proto::v1::MatchList { items })) }),
            1 => arb_match(depth - 1).prop_map(|m| Match { expr: Some(r#match::Expr::Not(Box::new(m))) }),
        ]
        .boxed()
    }

    fn arb_rules() -> impl Strategy<Value = Vec<Rule>> {
        proptest::collection::vec((arb_match(2), any::<(bool, bool, bool)>()), 1..25).prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (m, (a, b, c)))| Rule {
                    name: format!("r{i}"),
                    r#match: Some(m),
                    image_profile: if a || !(b || c) { format!("img{i}") } else { String::new() },
                    host_profile: if b { format!("host{i}") } else { String::new() },
                    location: if c { format!("loc{i}") } else { String::new() },
                    ..Default::default()
                })
                .collect()
        })
    }

    fn arb_facts() -> impl Strategy<Value = Facts> {
        (0u8..5, 0u8..4, 0u8..4, 0u8..5, 0u8..4).prop_map(|(m, a, v, net, s)| {
            let mut f = HostFacts { mac: format!("52:54:00:00:00:0{m}"), ..Default::default() };
            f.arch = if a == 0 { "bios".into() } else { format!("efi-{a}") };
            f.vendor = format!("v{v}x");
            if net < 4 {
                f.ipv4 = format!("198.18.{net}.7");
            }
            f.serial = format!("s{s}");
            Facts::from_proto(&f).unwrap()
        })
    }

    proptest! {
        /// The indexes never change the answer of an in-order scan, and the
        /// answer is the first matching rule per item.
        #[test]
        fn indexed_evaluation_equals_first_match_scan(rules in arb_rules(), hosts in proptest::collection::vec(arb_facts(), 1..8)) {
            let set = CompiledRuleSet::compile_rules(&rules, 0).unwrap();
            for f in &hosts {
                let outcome = set.evaluate(f);
                prop_assert_eq!(&outcome, &set.evaluate_linear(f));
                let first = |pick: fn(&Assigns) -> bool| set.rules.iter().position(|r| pick(&r.assigns) && r.expr.eval(f));
                prop_assert_eq!(outcome.image_profile, first(|a| a.image_profile.is_some()));
                prop_assert_eq!(outcome.host_profile, first(|a| a.host_profile.is_some()));
                prop_assert_eq!(outcome.location, first(|a| a.location.is_some()));
            }
        }

        /// What DHCP learns of a host (no serial, manufacturer, …) decides
        /// its image profile exactly when every host that could send those
        /// facts later gets the same one; with every field known, partial
        /// evaluation is evaluation.
        #[test]
        fn a_decision_on_dhcp_facts_stands_whatever_the_rest_turns_out(
            rules in arb_rules(),
            hosts in proptest::collection::vec(arb_facts(), 1..8),
        ) {
            let set = CompiledRuleSet::compile_rules(&rules, 0).unwrap();
            for full in &hosts {
                for rule in &set.rules {
                    prop_assert_eq!(rule.expr.eval_partial(full, &|_| true), Some(rule.expr.eval(full)));
                }
                let mut seen = full.to_proto();
                seen.serial.clear();
                seen.vendor.clear();
                seen.model.clear();
                seen.asset_tag.clear();
                let seen = Facts::from_proto(&seen).unwrap();
                if !set.image_undecided(&seen, &Field::known_to_dhcp) {
                    prop_assert_eq!(set.evaluate(full).image_profile, set.evaluate(&seen).image_profile);
                }
            }
        }
    }

    #[test]
    fn rules_match_the_relay_agents_circuit_and_remote_ids_known_to_dhcp() {
        use serde_json::json;
        let set = CompiledRuleSet::compile_rules(
            &[
                rule("port", json!({"circuit_id": "eth1/*", "remote_id": "001bff"}), "rack", "", ""),
                rule("rest", json!({"always": true}), "other", "", ""),
            ],
            0,
        )
        .unwrap();
        let host = |circuit: &str| {
            facts("52:54:00:00:00:01", |f| {
                f.circuit_id = circuit.into();
                f.remote_id = "001bff".into();
            })
        };
        let image = |f: &Facts| names(&set, &set.evaluate(f)).0;
        assert_eq!(image(&host("eth1/42")), Some("port".into()));
        assert_eq!(image(&host("eth2/1")), Some("rest".into()));
        assert!(!set.image_undecided(&host("eth1/42"), &Field::known_to_dhcp));
    }

    #[test]
    fn a_rule_on_the_serial_leaves_dhcp_undecided_until_it_cannot_match() {
        use serde_json::json;
        let set = CompiledRuleSet::compile_rules(
            &[
                rule("other-rack", json!({"mac": "52:54:01:*", "serial": "A*"}), "a", "", ""),
                rule("serial-a", json!({"mac": "52:54:00:*", "serial": "A*"}), "a", "", ""),
                rule("rest", json!({"mac": "52:54:00:*"}), "b", "", ""),
            ],
            0,
        )
        .unwrap();
        let dhcp = |mac: &str| set.image_undecided(&facts(mac, |_| {}), &Field::known_to_dhcp);
        assert!(dhcp("52:54:00:00:00:01"), "serial-a may match: only the serial can tell");
        assert!(!dhcp("52:54:02:00:00:01"), "no rule can match");
        let all = |f: &Facts| set.image_undecided(f, &|_| true);
        assert!(!all(&facts("52:54:00:00:00:01", |f| f.serial = "B1".into())));
    }
}
