//! Image garbage collection, decided without I/O: which catalog versions
//! go (opt-in: versions no active or working profile has named for a
//! while) and which files then go from which replica (those no remaining
//! version references and no profile names).
//!
//! Deciding is one replica's (the one `bootfleet images gc` asks); each
//! replica removes its own copies, checking again at that moment that the
//! file is still unreferenced, not being written, not open for a reader,
//! and older than the order's minimum age (an upload not committed yet is
//! referenced by nothing).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use bootfleet_proto::v1::{FileRef, ImageProfile};

use crate::catalog::{Catalog, profile_files};

/// What a collection removes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// `(image, version)` of each version to delete from the catalog.
    pub versions: Vec<(String, String)>,
    /// Each file to delete, by digest, with the replicas holding it.
    pub files: BTreeMap<String, Vec<String>>,
}

/// The versions and files profiles name, resolved against `catalog`.
#[derive(Debug, Default)]
pub struct Named {
    versions: HashSet<(String, String)>,
    files: HashSet<String>,
}

impl Named {
    /// What `profiles` (the active and the working ones) name.
    pub fn of<'a>(profiles: impl IntoIterator<Item = &'a ImageProfile>, catalog: &Catalog) -> Self {
        let mut named = Self::default();
        for profile in profiles {
            for file in profile_files(profile.boot.as_ref()) {
                named.add(file, catalog);
            }
        }
        named
    }

    fn add(&mut self, file: &FileRef, catalog: &Catalog) {
        self.versions.insert((file.image.clone(), file.version.clone()));
        if let Some(entry) = catalog.resolve_ref(file) {
            self.files.insert(entry.sha256.clone());
        }
    }

    /// Whether a profile names `image/version`.
    pub fn names_version(&self, image: &str, version: &str) -> bool {
        self.versions.contains(&(image.to_owned(), version.to_owned()))
    }
}

/// Digests some catalog version references, or a profile names.
pub fn referenced(catalog: &Catalog, named: &Named) -> HashSet<String> {
    let mut files: HashSet<String> =
        catalog.versions().flat_map(|v| v.files.iter().map(|f| f.sha256.clone())).collect();
    files.extend(named.files.iter().cloned());
    files
}

/// Plans a collection at `now_unix_ms`. `unused_for`: remove versions no
/// profile names whose last naming (or commit, if never named) is at
/// least that old; `None` keeps every version. `holdings`: each replica's
/// id and the digests it holds.
pub fn plan(
    catalog: &Catalog,
    named: &Named,
    holdings: &[(String, Vec<String>)],
    unused_for: Option<Duration>,
    now_unix_ms: i64,
) -> Plan {
    let mut plan = Plan::default();
    let mut removed: BTreeSet<(String, String)> = BTreeSet::new();
    if let Some(unused_for) = unused_for {
        let cutoff = now_unix_ms.saturating_sub(i64::try_from(unused_for.as_millis()).unwrap_or(i64::MAX));
        for version in catalog.versions() {
            let last_used = version.created_at_unix_ms.max(version.last_named_unix_ms);
            if !named.names_version(&version.image, &version.version) && last_used <= cutoff {
                removed.insert((version.image.clone(), version.version.clone()));
            }
        }
    }
    let mut kept: HashSet<String> = catalog
        .versions()
        .filter(|v| !removed.contains(&(v.image.clone(), v.version.clone())))
        .flat_map(|v| v.files.iter().map(|f| f.sha256.clone()))
        .collect();
    kept.extend(named.files.iter().cloned());
    for (replica, held) in holdings {
        for sha in held.iter().filter(|sha| !kept.contains(*sha)) {
            plan.files.entry(sha.clone()).or_default().push(replica.clone());
        }
    }
    for replicas in plan.files.values_mut() {
        replicas.sort();
        replicas.dedup();
    }
    plan.versions = removed.into_iter().collect();
    plan
}

#[cfg(test)]
mod tests {
    use bootfleet_core::store::KeyValue;
    use bootfleet_proto::v1::{ImageFile, ImageVersion, KernelBoot, image_profile};
    use prost::Message;

    use super::*;

    const DAY: i64 = 24 * 3600 * 1000;

    fn version(v: &str, files: &[&str], created: i64, last_named: i64) -> KeyValue {
        let version = ImageVersion {
            image: "os".into(),
            version: v.into(),
            files: files
                .iter()
                .map(|f| ImageFile { name: (*f).into(), sha256: format!("sha-{f}"), size: 1 })
                .collect(),
            created_at_unix_ms: created,
            last_named_unix_ms: last_named,
            ..Default::default()
        };
        KeyValue {
            key: format!("/v/{v}"),
            value: version.encode_to_vec(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: 0,
        }
    }

    fn profile(version: &str) -> ImageProfile {
        let file = |f: &str| FileRef { image: "os".into(), version: version.into(), file: f.into() };
        ImageProfile {
            name: version.into(),
            boot: Some(image_profile::Boot::Kernel(KernelBoot {
                kernel: Some(file("kernel")),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn catalog() -> Catalog {
        Catalog::from_kvs(&[
            version("1", &["kernel-1", "shared"], 0, 0),
            version("2", &["kernel-2", "shared"], 0, 10 * DAY),
            version("3", &["kernel", "shared"], 0, 0),
        ])
    }

    #[test]
    fn unnamed_old_versions_go_with_their_own_files_and_shared_files_stay() {
        let catalog = catalog();
        let named = Named::of(&[profile("3")], &catalog);
        let holdings = [
            ("a".to_owned(), vec!["sha-kernel-1".into(), "sha-kernel-2".into(), "sha-shared".into()]),
            ("b".to_owned(), vec!["sha-kernel-1".into(), "sha-kernel".into(), "orphan".into()]),
        ];
        let plan = plan(&catalog, &named, &holdings, Some(Duration::ZERO), 20 * DAY);
        assert_eq!(plan.versions, [("os".into(), "1".into()), ("os".into(), "2".into())]);
        let files: Vec<(&str, Vec<&str>)> = plan
            .files
            .iter()
            .map(|(sha, r)| (sha.as_str(), r.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            files,
            [("orphan", vec!["b"]), ("sha-kernel-1", vec!["a", "b"]), ("sha-kernel-2", vec!["a"])]
        );
    }

    #[test]
    fn versions_stay_unless_asked_or_while_recently_named() {
        let catalog = catalog();
        let named = Named::of(&[profile("3")], &catalog);
        let holdings = [("a".to_owned(), vec!["sha-kernel-1".into(), "orphan".into()])];
        // Not asked: only files no version references go.
        let plan_kept = plan(&catalog, &named, &holdings, None, 20 * DAY);
        assert!(plan_kept.versions.is_empty());
        assert_eq!(plan_kept.files.keys().collect::<Vec<_>>(), ["orphan"]);
        // Version 2 was named 10 days ago: 30 days of disuse keeps it, and 1.
        let plan_month = plan(&catalog, &named, &holdings, Some(Duration::from_secs(30 * 86400)), 20 * DAY);
        assert!(plan_month.versions.is_empty());
        let plan_week = plan(&catalog, &named, &holdings, Some(Duration::from_secs(7 * 86400)), 20 * DAY);
        assert_eq!(plan_week.versions, [("os".into(), "1".into()), ("os".into(), "2".into())]);
        // A named version never goes, nor a file a profile names even if
        // its version were gone.
        let named_1 = Named::of(&[profile("1"), profile("3")], &catalog);
        let plan_named = plan(&catalog, &named_1, &holdings, Some(Duration::ZERO), 20 * DAY);
        assert_eq!(plan_named.versions, [("os".into(), "2".into())]);
        assert!(referenced(&catalog, &named_1).contains("sha-kernel-1"));
    }
}
