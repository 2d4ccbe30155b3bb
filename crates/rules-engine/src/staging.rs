//! The working state — rules plus staged profiles and locations — as a
//! value: validating it whole, merging a manifest into it, and diffing two
//! states. Pure; the store code in `store::writes` reads and commits it.
//!
//! Why one value: an apply that edits a profile and a rule must land both
//! or neither, and activation must publish both together. Kept inside the
//! working rule set's key, an edit is one compare-and-swap on one key.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bootfleet_proto::v1::{
    self as pb, FileRef, HostProfile, ImageProfile, Location, ProfileKind, ProfileObject, Rule, RuleSet,
    StagedObjects, image_profile, profile_change, profile_object, rule_change,
};

use crate::ProfileRef;
use crate::decide::Catalog;
use crate::error::RulesError;
use crate::ruleset::{check_name, rule_problems};
use crate::template;

/// Rules with the profiles and locations they may name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// Rules, in order.
    pub rules: Vec<Rule>,
    /// Image profiles by name.
    pub image: BTreeMap<String, ImageProfile>,
    /// Host profiles by name.
    pub host: BTreeMap<String, HostProfile>,
    /// Locations by name.
    pub location: BTreeMap<String, Location>,
}

/// What an apply brings: objects to create or replace, maybe rules.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// Image profiles to stage.
    pub image: Vec<ImageProfile>,
    /// Host profiles to stage.
    pub host: Vec<HostProfile>,
    /// Locations to stage.
    pub location: Vec<Location>,
    /// The new working rules, when the manifest has a rules section.
    pub rules: Option<Vec<Rule>>,
    /// Remove what the manifest does not name (rules included).
    pub prune: bool,
}

impl State {
    /// The staged state kept in a working rule set. A set written before
    /// profiles were staged has none: the active ones are its staged ones.
    pub fn from_working(
        set: RuleSet,
        active: impl FnOnce() -> Result<Self, RulesError>,
    ) -> Result<Self, RulesError> {
        match set.staged {
            Some(staged) => Ok(Self {
                rules: set.rules,
                image: staged.image_profiles.into_iter().map(|p| (p.name.clone(), p)).collect(),
                host: staged.host_profiles.into_iter().map(|p| (p.name.clone(), p)).collect(),
                location: staged.locations.into_iter().map(|l| (l.name.clone(), l)).collect(),
            }),
            None => Ok(Self { rules: set.rules, ..active()? }),
        }
    }

    /// The working rule set that stores this state.
    pub fn to_working(&self, updated_at_unix_ms: i64) -> RuleSet {
        RuleSet {
            rules: self.rules.clone(),
            version: 0,
            updated_at_unix_ms,
            staged: Some(StagedObjects {
                image_profiles: self.image.values().cloned().collect(),
                host_profiles: self.host.values().cloned().collect(),
                locations: self.location.values().cloned().collect(),
            }),
        }
    }

    /// The profiles as a decision catalog.
    pub fn catalog(&self) -> Catalog {
        Catalog {
            image: self.image.iter().map(|(n, p)| (n.clone(), Arc::new(p.clone()))).collect(),
            host: self.host.iter().map(|(n, p)| (n.clone(), Arc::new(p.clone()))).collect(),
            location: self.location.iter().map(|(n, l)| (n.clone(), Arc::new(l.clone()))).collect(),
        }
    }

    /// This state with `changes` merged in: named objects created or
    /// replaced, rules replaced when given; with `prune`, everything not
    /// named is removed.
    #[must_use]
    pub fn merged(&self, changes: &Changes) -> Self {
        let mut next = if changes.prune { Self::default() } else { self.clone() };
        if changes.prune || changes.rules.is_some() {
            next.rules = changes.rules.clone().unwrap_or_default();
        }
        for p in &changes.image {
            next.image.insert(p.name.clone(), p.clone());
        }
        for p in &changes.host {
            next.host.insert(p.name.clone(), p.clone());
        }
        for l in &changes.location {
            next.location.insert(l.name.clone(), l.clone());
        }
        next
    }

    /// Every problem: invalid objects, rules that do not compile, rules
    /// naming what does not exist. Empty when the state can be activated.
    pub fn problems(&self) -> Vec<RulesError> {
        let mut problems = Vec::new();
        let mut check = |object: profile_object::Object, path: String| {
            let object = ProfileObject { object: Some(object), revision: 0 };
            if let Err(e) = check_object(&object) {
                problems.push(e.within(&path));
            }
        };
        for (name, p) in &self.image {
            check(profile_object::Object::Image(p.clone()), format!("image_profiles[{name}]"));
        }
        for (name, p) in &self.host {
            check(profile_object::Object::Host(p.clone()), format!("host_profiles[{name}]"));
        }
        for (name, l) in &self.location {
            check(profile_object::Object::Location(l.clone()), format!("locations[{name}]"));
        }
        let rule_errors = rule_problems(&self.rules);
        let catalog = self.catalog();
        for (i, rule) in self.rules.iter().enumerate() {
            let references = [
                ("image_profile", ProfileRef::Image(rule.image_profile.clone())),
                ("host_profile", ProfileRef::Host(rule.host_profile.clone())),
                ("location", ProfileRef::Location(rule.location.clone())),
            ];
            for (field, reference) in references {
                if !reference.name().is_empty() && !catalog.has(&reference) {
                    problems.push(RulesError::invalid(
                        format!("rules[{i}].{field}"),
                        format!("unknown {reference}"),
                    ));
                }
            }
        }
        problems.extend(rule_errors);
        problems
    }

    /// The image files named by image profiles that differ from `before`'s
    /// (the ones an apply must find in the image catalog), with the field
    /// naming each.
    pub fn new_file_refs(&self, before: &Self) -> Vec<(FileRef, String)> {
        let mut refs = Vec::new();
        for (name, profile) in &self.image {
            if before.image.get(name) == Some(profile) {
                continue;
            }
            for (file, field) in file_refs(profile) {
                refs.push((file, format!("image_profiles[{name}].{field}")));
            }
        }
        refs
    }
}

/// The image files an image profile boots from, with their field names.
pub fn file_refs(profile: &ImageProfile) -> Vec<(FileRef, String)> {
    use image_profile::Boot;
    match &profile.boot {
        Some(Boot::Kernel(k)) => {
            let mut refs: Vec<(FileRef, String)> =
                k.kernel.iter().map(|f| (f.clone(), "kernel.kernel".to_owned())).collect();
            for (i, initrd) in k.initrds.iter().enumerate() {
                refs.push((initrd.clone(), format!("kernel.initrds[{i}]")));
            }
            refs
        }
        Some(Boot::Sanboot(s)) => s.disk.iter().map(|f| (f.clone(), "sanboot.disk".to_owned())).collect(),
        Some(Boot::Vdisk(v)) => {
            let mut refs: Vec<(FileRef, String)> =
                v.disk.iter().map(|f| (f.clone(), "vdisk.disk".to_owned())).collect();
            refs.extend(v.kernel.iter().map(|f| (f.clone(), "vdisk.kernel".to_owned())));
            for (i, initrd) in v.initrds.iter().enumerate() {
                refs.push((initrd.clone(), format!("vdisk.initrds[{i}]")));
            }
            refs
        }
        _ => Vec::new(),
    }
}

/// One error for many problems, naming where they come from (a file;
/// empty for a single API call).
pub fn combine(source: &str, mut problems: Vec<RulesError>) -> Option<RulesError> {
    match problems.len() {
        0 => None,
        1 if source.is_empty() => Some(problems.remove(0)),
        1 => Some(RulesError::invalid(source, problems.remove(0).to_string())),
        n => {
            let lines: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
            let source = if source.is_empty() { "request" } else { source };
            Some(RulesError::invalid(source, format!("{n} problems:\n{}", lines.join("\n"))))
        }
    }
}

/// A vDisk profile: its files, its command line, and a write cache this
/// release serves.
fn check_vdisk(v: &bootfleet_proto::v1::VdiskBoot) -> Result<(), RulesError> {
    use bootfleet_proto::v1::WriteCache;
    check_file_ref(v.disk.as_ref(), "vdisk.disk")?;
    check_file_ref(v.kernel.as_ref(), "vdisk.kernel")?;
    if v.initrds.is_empty() {
        return Err(RulesError::invalid(
            "vdisk.initrds",
            "needs Bootfleet's vDisk initramfs (scripts/boot-assets.sh builds vdisk-initrd.img)",
        ));
    }
    for (i, initrd) in v.initrds.iter().enumerate() {
        check_file_ref(Some(initrd), &format!("vdisk.initrds[{i}]"))?;
    }
    check_cmdline_template(&v.cmdline, "vdisk.cmdline")?;
    const OWN: [&str; 4] =
        ["bootfleet.nbd=", "bootfleet.export=", "bootfleet.cache=", "bootfleet.rootfstype="];
    if let Some(word) = v.cmdline.split_whitespace().find(|word| OWN.iter().any(|own| word.starts_with(own)))
    {
        return Err(RulesError::invalid(
            "vdisk.cmdline",
            format!("{word}: the boot script sets bootfleet.nbd, .export, .cache and .rootfstype itself"),
        ));
    }
    match WriteCache::try_from(v.write_cache) {
        Ok(WriteCache::ClientRam | WriteCache::Server) => {}
        Ok(WriteCache::ServerPersistent) => {
            return Err(RulesError::invalid(
                "vdisk.write_cache",
                "server-persistent is not available yet: use client-ram or server",
            ));
        }
        Ok(WriteCache::Unspecified) | Err(_) => {
            return Err(RulesError::invalid("vdisk.write_cache", "use client-ram or server"));
        }
    }
    if !v.root_fs_type.is_empty() && !v.root_fs_type.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(RulesError::invalid("vdisk.root_fs_type", "a filesystem type such as ext4 or xfs"));
    }
    Ok(())
}

fn check_file_ref(f: Option<&FileRef>, path: &str) -> Result<(), RulesError> {
    match f {
        Some(f) if !f.image.is_empty() && !f.version.is_empty() && !f.file.is_empty() => Ok(()),
        _ => Err(RulesError::invalid(path, "needs image, version and file")),
    }
}

/// Checks a profile's iPXE script template: `{{host.KEY}}`,
/// `{{location.KEY}}` or `{{facts.FIELD}}` variables only, every `{{`
/// closed, no variable in the old `${host.KEY}` spelling (`${…}` is
/// iPXE's own and passes through). See [`crate::template`].
pub fn check_template(text: &str, path: &str) -> Result<(), RulesError> {
    template::check(text, &template::is_profile_variable, template::PROFILE_VARIABLES)
        .map(drop)
        .map_err(|e| RulesError::invalid(path, e.to_string()))
}

/// Checks a profile's kernel command-line template: as
/// [`check_template`], and no argument that quotes a variable itself.
pub fn check_cmdline_template(text: &str, path: &str) -> Result<(), RulesError> {
    template::check_kernel_cmdline(text).map_err(|e| RulesError::invalid(path, e.to_string()))
}

/// Validates a profile object; returns its kind and name.
pub fn check_object(object: &ProfileObject) -> Result<(ProfileKind, String), RulesError> {
    use image_profile::Boot;
    match &object.object {
        Some(profile_object::Object::Image(p)) => {
            check_name(&p.name, "name")?;
            match &p.boot {
                None => {
                    return Err(RulesError::invalid(
                        "boot",
                        "give kernel, script, sanboot, vdisk, local or ignore",
                    ));
                }
                Some(Boot::Kernel(k)) => {
                    check_file_ref(k.kernel.as_ref(), "kernel.kernel")?;
                    for (i, initrd) in k.initrds.iter().enumerate() {
                        check_file_ref(Some(initrd), &format!("kernel.initrds[{i}]"))?;
                    }
                    check_cmdline_template(&k.cmdline, "kernel.cmdline")?;
                }
                Some(Boot::Script(s)) => {
                    if s.script.trim().is_empty() {
                        return Err(RulesError::invalid("script", "empty script"));
                    }
                    check_template(&s.script, "script")?;
                }
                Some(Boot::Sanboot(s)) => check_file_ref(s.disk.as_ref(), "sanboot.disk")?,
                Some(Boot::Vdisk(v)) => check_vdisk(v)?,
                Some(Boot::Local(_) | Boot::Ignore(_)) => {}
            }
            Ok((ProfileKind::Image, p.name.clone()))
        }
        Some(profile_object::Object::Host(p)) => {
            check_name(&p.name, "name")?;
            Ok((ProfileKind::Host, p.name.clone()))
        }
        Some(profile_object::Object::Location(l)) => {
            check_name(&l.name, "name")?;
            Ok((ProfileKind::Location, l.name.clone()))
        }
        None => Err(RulesError::invalid("profile", "give an image, host or location object")),
    }
}

/// What turns `from` into `to`: rules (in `to`'s order, removals last),
/// then profiles and locations by kind and name.
pub fn diff(from: &State, to: &State) -> (Vec<pb::RuleChange>, Vec<pb::ProfileChange>) {
    (rule_diff(&to.rules, &from.rules), object_diff(from, to))
}

/// Rule changes from `old` to `new`.
pub fn rule_diff(new: &[Rule], old: &[Rule]) -> Vec<pb::RuleChange> {
    let position = |rules: &[Rule]| -> HashMap<String, usize> {
        rules.iter().enumerate().map(|(i, r)| (r.name.clone(), i)).collect()
    };
    let (n, o) = (position(new), position(old));
    let as_i32 = |i: usize| i32::try_from(i).unwrap_or(i32::MAX);
    let mut changes = Vec::new();
    for (i, rule) in new.iter().enumerate() {
        match o.get(&rule.name) {
            None => changes.push(pb::RuleChange {
                kind: rule_change::Kind::Added.into(),
                name: rule.name.clone(),
                working: Some(rule.clone()),
                active: None,
                working_position: as_i32(i),
                active_position: -1,
            }),
            Some(&j) => {
                let kind = if old[j] != *rule {
                    rule_change::Kind::Changed
                } else if i != j {
                    rule_change::Kind::Moved
                } else {
                    continue;
                };
                changes.push(pb::RuleChange {
                    kind: kind.into(),
                    name: rule.name.clone(),
                    working: Some(rule.clone()),
                    active: Some(old[j].clone()),
                    working_position: as_i32(i),
                    active_position: as_i32(j),
                });
            }
        }
    }
    for (j, rule) in old.iter().enumerate() {
        if !n.contains_key(&rule.name) {
            changes.push(pb::RuleChange {
                kind: rule_change::Kind::Removed.into(),
                name: rule.name.clone(),
                working: None,
                active: Some(rule.clone()),
                working_position: -1,
                active_position: as_i32(j),
            });
        }
    }
    changes
}

fn object_diff(from: &State, to: &State) -> Vec<pb::ProfileChange> {
    let mut changes = Vec::new();
    diff_maps(&from.image, &to.image, ProfileKind::Image, profile_object::Object::Image, &mut changes);
    diff_maps(&from.host, &to.host, ProfileKind::Host, profile_object::Object::Host, &mut changes);
    diff_maps(
        &from.location,
        &to.location,
        ProfileKind::Location,
        profile_object::Object::Location,
        &mut changes,
    );
    changes
}

fn diff_maps<T: Clone + PartialEq>(
    from: &BTreeMap<String, T>,
    to: &BTreeMap<String, T>,
    kind: ProfileKind,
    wrap: fn(T) -> profile_object::Object,
    changes: &mut Vec<pb::ProfileChange>,
) {
    let object = |value: &T| ProfileObject { object: Some(wrap(value.clone())), revision: 0 };
    let names: BTreeSet<&String> = from.keys().chain(to.keys()).collect();
    for name in names {
        let change = match (from.get(name), to.get(name)) {
            (None, Some(after)) => (profile_change::Kind::Added, None, Some(object(after))),
            (Some(before), None) => (profile_change::Kind::Removed, Some(object(before)), None),
            (Some(before), Some(after)) if before != after => {
                (profile_change::Kind::Changed, Some(object(before)), Some(object(after)))
            }
            _ => continue,
        };
        changes.push(pb::ProfileChange {
            kind: change.0.into(),
            profile_kind: kind.into(),
            name: name.clone(),
            before: change.1,
            after: change.2,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bootfleet_proto::v1::{KernelBoot, Match, r#match};

    fn rule(name: &str, image: &str) -> Rule {
        Rule {
            name: name.into(),
            image_profile: image.into(),
            r#match: Some(Match { expr: Some(r#match::Expr::Always(true)) }),
            ..Default::default()
        }
    }

    fn image(name: &str, cmdline: &str) -> ImageProfile {
        let file = |f: &str| FileRef { image: "tiny".into(), version: "1".into(), file: f.into() };
        ImageProfile {
            name: name.into(),
            boot: Some(image_profile::Boot::Kernel(KernelBoot {
                kernel: Some(file("vmlinuz")),
                cmdline: cmdline.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn a_vdisk_profile_needs_its_initramfs_and_a_write_cache_served_today() {
        use bootfleet_proto::v1::{ProfileObject, VdiskBoot, WriteCache, profile_object};
        let file = |f: &str| FileRef { image: "golden".into(), version: "1".into(), file: f.into() };
        let check = |change: &dyn Fn(&mut VdiskBoot)| {
            let mut vdisk = VdiskBoot {
                disk: Some(file("root.ext4")),
                kernel: Some(file("vmlinuz")),
                initrds: vec![file("vdisk-initrd.img")],
                cmdline: "console=ttyS0".into(),
                write_cache: WriteCache::ClientRam.into(),
                root_fs_type: String::new(),
            };
            change(&mut vdisk);
            let profile = ImageProfile {
                name: "p".into(),
                boot: Some(image_profile::Boot::Vdisk(vdisk)),
                ..Default::default()
            };
            let object =
                ProfileObject { object: Some(profile_object::Object::Image(profile)), ..Default::default() };
            check_object(&object).map(drop).map_err(|e| match e {
                RulesError::Invalid { field, .. } => field,
                other => other.to_string(),
            })
        };
        assert_eq!(check(&|_| {}), Ok(()));
        assert_eq!(check(&|v| v.write_cache = WriteCache::Server.into()), Ok(()));
        assert_eq!(check(&|v| v.initrds.clear()), Err("vdisk.initrds".into()));
        assert_eq!(check(&|v| v.disk = None), Err("vdisk.disk".into()));
        assert_eq!(
            check(&|v| v.write_cache = WriteCache::ServerPersistent.into()),
            Err("vdisk.write_cache".into())
        );
        assert_eq!(check(&|v| v.write_cache = 0), Err("vdisk.write_cache".into()));
        assert_eq!(check(&|v| v.cmdline = "quiet bootfleet.nbd=x:1".into()), Err("vdisk.cmdline".into()));
        assert_eq!(check(&|v| v.cmdline = "bootfleet.then=reboot".into()), Ok(()));
        assert_eq!(check(&|v| v.root_fs_type = "ext4 rw".into()), Err("vdisk.root_fs_type".into()));
    }

    #[test]
    fn rule_diff_reports_each_kind_of_change() {
        let active = vec![rule("a", "x"), rule("b", "x"), rule("c", "x")];
        let working = vec![rule("b", "x"), rule("a", "y"), rule("d", "x")];
        let changes: Vec<(i32, String)> =
            rule_diff(&working, &active).into_iter().map(|c| (c.kind, c.name)).collect();
        let k = |kind: rule_change::Kind| i32::from(kind);
        assert_eq!(
            changes,
            [
                (k(rule_change::Kind::Moved), "b".to_owned()),
                (k(rule_change::Kind::Changed), "a".to_owned()),
                (k(rule_change::Kind::Added), "d".to_owned()),
                (k(rule_change::Kind::Removed), "c".to_owned()),
            ]
        );
    }

    #[test]
    fn merging_upserts_and_prune_removes_what_is_not_named() {
        let mut state = State::default();
        state.image.insert("a".into(), image("a", "1"));
        state.image.insert("b".into(), image("b", "1"));
        state.rules = vec![rule("r", "a")];
        let changes = Changes { image: vec![image("a", "2")], ..Changes::default() };
        let merged = state.merged(&changes);
        assert_eq!(merged.image.len(), 2);
        assert_eq!(merged.rules, state.rules, "no rules section keeps the rules");
        let (rules, objects) = diff(&state, &merged);
        assert!(rules.is_empty());
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].kind(), profile_change::Kind::Changed);
        let pruned = state.merged(&Changes { prune: true, ..changes });
        assert_eq!(pruned.image.keys().collect::<Vec<_>>(), ["a"]);
        assert!(pruned.rules.is_empty(), "prune without rules removes the rules");
        assert!(diff(&merged, &merged.clone()).0.is_empty() && diff(&merged, &merged).1.is_empty());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut state = State::default();
        state.image.insert("ok".into(), image("ok", "x={{host.role}}"));
        state.image.insert("bad".into(), image("bad", "x={{nope.x}}"));
        let mut broken = rule("r2", "ok");
        broken.r#match = None;
        state.rules = vec![rule("r1", "missing"), broken, rule("r1", "ok")];
        let problems: Vec<String> = state.problems().iter().map(ToString::to_string).collect();
        assert!(problems.iter().any(|p| p.contains("image_profiles[bad].kernel.cmdline")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("rules[1].match")), "{problems:?}");
        assert!(
            problems.iter().any(|p| p.contains("rules[2].name") && p.contains("duplicate")),
            "{problems:?}"
        );
        let error = combine("site.yaml", state.problems()).unwrap().to_string();
        assert!(error.starts_with("site.yaml: 4 problems"), "{error}");
        assert!(problems.iter().any(|p| p.contains("rules[0].image_profile")), "{problems:?}");
        state.rules = vec![rule("r1", "missing")];
        state.image.remove("bad");
        let problems: Vec<String> = state.problems().iter().map(ToString::to_string).collect();
        assert_eq!(problems, ["rules[0].image_profile: unknown image profile \"missing\""]);
    }

    /// Unknown variables and old spellings are refused at apply time,
    /// with the variable named; iPXE's own `${…}` is not Bootfleet's.
    #[test]
    fn templates_are_checked() {
        check_template("console=ttyS0 role={{host.role}} mac={{ facts.mac }} r={{location.rack}}", "t")
            .unwrap();
        check_template("#!ipxe\nchain http://x/?mac=${net0/mac}&s=${serial} {{facts.label.rack}}", "t")
            .unwrap();
        for (text, why) in [
            ("x={{host.}}", "unknown variable {{host.}}"),
            (
                "x={{secret.key}}",
                "unknown variable {{secret.key}} (use host.KEY, location.KEY or facts.FIELD)",
            ),
            ("x={{facts.colour}}", "fields: mac, uuid"),
            ("x={{host.role", "unclosed {{"),
            ("x=${host.role}", "${host.role} is no longer a Bootfleet variable"),
            ("x=${facts.mac}", "write {{facts.mac}}"),
        ] {
            let e = check_template(text, "kernel.cmdline").unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("kernel.cmdline"), "{text}: {e}");
        }
        check_cmdline_template("a={{host.role}} \"b=c d\"", "t").unwrap();
        let e = check_cmdline_template("a=\"{{host.role}}\"", "t").unwrap_err().to_string();
        assert!(e.contains("quotes a variable itself"), "{e}");
        // Through a whole profile, as apply checks it.
        let object = |cmdline: &str| ProfileObject {
            object: Some(profile_object::Object::Image(image("p", cmdline))),
            ..ProfileObject::default()
        };
        assert!(check_object(&object("x={{host.role}}")).is_ok());
        let e = check_object(&object("x={{hots.role}}")).unwrap_err().to_string();
        assert!(e.contains("kernel.cmdline") && e.contains("{{hots.role}}"), "{e}");
    }

    #[test]
    fn an_unstaged_working_set_stages_the_active_objects() {
        let mut active = State::default();
        active.image.insert("a".into(), image("a", "1"));
        let legacy = RuleSet { rules: vec![rule("r", "a")], ..RuleSet::default() };
        let state = State::from_working(legacy, || Ok(active.clone())).unwrap();
        assert_eq!(state.image, active.image);
        assert_eq!(state.rules.len(), 1);
        let round =
            State::from_working(state.to_working(5), || panic!("staged sets do not read active")).unwrap();
        assert_eq!(round, state);
    }
}
