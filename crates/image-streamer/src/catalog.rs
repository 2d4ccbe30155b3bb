//! The image catalog as stored (`/bootfleet/v1/images/<image>/<version>`),
//! what the active rules need from it, and what each replica holds (from
//! its member record). Pure: snapshots in, answers out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bootfleet_core::store::KeyValue;
use bootfleet_proto::v1::{FileRef, ImageFile, ImageVersion, Member, image_profile};
use bootfleet_rules_engine::ProfileRef;
use bootfleet_rules_engine::decide::Engine;
use prost::Message;

/// Prefix of image versions and of boot statuses (the key layout lives
/// beside the rules', which refuse profiles naming unknown versions).
pub use bootfleet_rules_engine::store::{BOOTS_PREFIX, IMAGES_PREFIX};
/// Service name streamers register under.
pub const SERVICE: &str = "image-streamer";
/// Member attribute prefix naming a held file: `blob.<sha256>` = state.
pub const BLOB_ATTRIBUTE: &str = "blob.";
/// Member attribute: the replica's NBD address (`host:port`), when it
/// serves NBD.
pub const NBD_ATTRIBUTE: &str = "nbd";
// Member attributes: the replica's NBD counters, as last published
// ([`NbdPublished`]).
const NBD_SESSIONS_ATTRIBUTE: &str = "nbd_sessions";
const NBD_READ_ATTRIBUTE: &str = "nbd_read_bytes";
const NBD_WRITTEN_ATTRIBUTE: &str = "nbd_written_bytes";
const NBD_CACHE_BYTES_ATTRIBUTE: &str = "nbd_write_cache_bytes";
const NBD_CACHES_ATTRIBUTE: &str = "nbd_write_caches";

/// A replica's NBD service as its member record shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NbdPublished {
    /// `host:port`.
    pub address: String,
    /// Sessions open.
    pub sessions: u64,
    /// Bytes read from its exports, ever.
    pub bytes_read: u64,
    /// Bytes written to its exports, ever.
    pub bytes_written: u64,
    /// Bytes its hosts' write caches hold.
    pub cache_bytes: u64,
    /// Hosts with a write cache there.
    pub caches: u64,
}

impl NbdPublished {
    /// The attributes that publish it.
    pub fn attributes(&self) -> [(&'static str, String); 6] {
        [
            (NBD_ATTRIBUTE, self.address.clone()),
            (NBD_SESSIONS_ATTRIBUTE, self.sessions.to_string()),
            (NBD_READ_ATTRIBUTE, self.bytes_read.to_string()),
            (NBD_WRITTEN_ATTRIBUTE, self.bytes_written.to_string()),
            (NBD_CACHE_BYTES_ATTRIBUTE, self.cache_bytes.to_string()),
            (NBD_CACHES_ATTRIBUTE, self.caches.to_string()),
        ]
    }

    fn from_attributes(attributes: &HashMap<String, String>) -> Option<Self> {
        let number = |key: &str| attributes.get(key).and_then(|v| v.parse().ok()).unwrap_or(0);
        Some(Self {
            address: attributes.get(NBD_ATTRIBUTE)?.clone(),
            sessions: number(NBD_SESSIONS_ATTRIBUTE),
            bytes_read: number(NBD_READ_ATTRIBUTE),
            bytes_written: number(NBD_WRITTEN_ATTRIBUTE),
            cache_bytes: number(NBD_CACHE_BYTES_ATTRIBUTE),
            caches: number(NBD_CACHES_ATTRIBUTE),
        })
    }
}

/// Key of an image version.
pub fn version_key(image: &str, version: &str) -> String {
    bootfleet_rules_engine::store::image_version_key(image, version)
}

/// Checks an image, version or file name: 1-128 of `[A-Za-z0-9._+-]`, not
/// starting with a dot (so never `.` or `..`).
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{what} {name:?} must be 1-128 of A-Z a-z 0-9 . _ + - and not start with a dot"))
    }
}

/// State of a file on a replica, as published in its member record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileState {
    /// Verified and served.
    Present,
    /// Being fetched from a peer.
    Pulling,
    /// Needed, not held, not being fetched.
    Missing,
    /// Failed its hash check; deleted and to be fetched again.
    Corrupt,
}

impl FileState {
    /// The published word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Present => "present",
            Self::Pulling => "pulling",
            Self::Missing => "missing",
            Self::Corrupt => "corrupt",
        }
    }

    /// Parses a published word.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "present" => Self::Present,
            "pulling" => Self::Pulling,
            "missing" => Self::Missing,
            "corrupt" => Self::Corrupt,
            _ => return None,
        })
    }
}

/// One streamer replica as seen through its member record.
#[derive(Clone, Debug)]
pub struct Replica {
    /// Member id.
    pub id: String,
    /// Base URL (`http://host:port`).
    pub url: String,
    /// Files by digest.
    pub files: HashMap<String, FileState>,
    /// Its NBD service, when it serves NBD.
    pub nbd: Option<NbdPublished>,
}

impl Replica {
    /// Reads a member record.
    pub fn from_member(member: &Member) -> Option<Self> {
        let url = member.addresses.first()?.clone();
        let files = member
            .attributes
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(BLOB_ATTRIBUTE)?.to_owned(), FileState::parse(v)?)))
            .collect();
        let nbd = NbdPublished::from_attributes(&member.attributes);
        Some(Self { id: member.id.clone(), url, files, nbd })
    }

    /// Whether it serves `sha`.
    pub fn has(&self, sha: &str) -> bool {
        self.files.get(sha) == Some(&FileState::Present)
    }
}

/// Reads replicas from member records.
pub fn replicas_of(members: &[KeyValue]) -> Vec<Replica> {
    let mut out: Vec<Replica> = members
        .iter()
        .filter_map(|kv| Member::decode(kv.value.as_slice()).ok())
        .filter_map(|m| Replica::from_member(&m))
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// The catalog, indexed by image, then version.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    versions: BTreeMap<String, BTreeMap<String, Arc<ImageVersion>>>,
}

impl Catalog {
    /// Builds the index from stored versions, skipping undecodable ones.
    pub fn from_kvs(kvs: &[KeyValue]) -> Self {
        let mut versions = BTreeMap::new();
        for kv in kvs {
            match ImageVersion::decode(kv.value.as_slice()) {
                Ok(v) => {
                    let image: &mut BTreeMap<_, _> = versions.entry(v.image.clone()).or_default();
                    image.insert(v.version.clone(), Arc::new(v));
                }
                Err(e) => tracing::warn!(key = %kv.key, error = %e, "skipping undecodable image version"),
            }
        }
        Self { versions }
    }

    /// One version.
    pub fn version(&self, image: &str, version: &str) -> Option<&Arc<ImageVersion>> {
        self.versions.get(image)?.get(version)
    }

    /// Every version, sorted by image then version.
    pub fn versions(&self) -> impl Iterator<Item = &Arc<ImageVersion>> {
        self.versions.values().flat_map(BTreeMap::values)
    }

    /// The catalog entry of a file.
    pub fn resolve(&self, image: &str, version: &str, file: &str) -> Option<&ImageFile> {
        self.version(image, version)?.files.iter().find(|f| f.name == file)
    }

    /// The entry a profile's file reference names.
    pub fn resolve_ref(&self, file: &FileRef) -> Option<&ImageFile> {
        self.resolve(&file.image, &file.version, &file.file)
    }
}

/// File references of an image profile's boot method.
pub fn profile_files(boot: Option<&image_profile::Boot>) -> Vec<&FileRef> {
    match boot {
        Some(image_profile::Boot::Kernel(k)) => k.kernel.iter().chain(k.initrds.iter()).collect(),
        Some(image_profile::Boot::Sanboot(s)) => s.disk.iter().collect(),
        Some(image_profile::Boot::Vdisk(v)) => {
            v.disk.iter().chain(v.kernel.iter()).chain(v.initrds.iter()).collect()
        }
        _ => Vec::new(),
    }
}

/// What the active rules need: digest → size, plus the versions needed
/// (`image/version`) and references the catalog cannot resolve.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Files by digest, with their size.
    pub files: BTreeMap<String, u64>,
    /// `image/version` of every needed version.
    pub versions: Vec<String>,
    /// `image/version/file` references with no catalog entry.
    pub unresolved: Vec<String>,
}

/// Files that image profiles named by the active rule set reference.
pub fn needs(engine: &Engine, catalog: &Catalog) -> Needs {
    let mut needs = Needs::default();
    let mut profiles: Vec<String> = engine
        .rules
        .references()
        .into_iter()
        .filter_map(|(r, _)| match r {
            ProfileRef::Image(name) => Some(name),
            _ => None,
        })
        .collect();
    profiles.sort();
    profiles.dedup();
    for name in profiles {
        let Some(profile) = engine.catalog.image.get(&name) else { continue };
        for file in profile_files(profile.boot.as_ref()) {
            let label = format!("{}/{}", file.image, file.version);
            if !needs.versions.contains(&label) {
                needs.versions.push(label.clone());
            }
            match catalog.resolve_ref(file) {
                Some(entry) => {
                    needs.files.insert(entry.sha256.clone(), entry.size);
                }
                None => needs.unresolved.push(format!("{label}/{}", file.file)),
            }
        }
    }
    needs.versions.sort();
    needs
}

/// The state of a version on a replica: the worst state of its files
/// (a file not listed at all counts as missing).
pub fn version_state(version: &ImageVersion, replica: &Replica) -> (FileState, u32) {
    let mut worst = FileState::Present;
    let mut present = 0;
    for file in &version.files {
        let state = replica.files.get(&file.sha256).copied().unwrap_or(FileState::Missing);
        if state == FileState::Present {
            present += 1;
        }
        worst = worst.max(state);
    }
    (worst, present)
}

#[cfg(test)]
mod tests {
    use bootfleet_proto::v1::{ImageProfile, KernelBoot, Match, Rule, RuleSet, r#match};
    use bootfleet_rules_engine::decide::Catalog as Profiles;

    use super::*;

    fn file(name: &str, sha: char) -> ImageFile {
        ImageFile { name: name.into(), sha256: sha.to_string().repeat(64), size: 10 }
    }

    fn catalog() -> Catalog {
        let v = ImageVersion {
            image: "tiny".into(),
            version: "1".into(),
            files: vec![file("vmlinuz", 'a'), file("initrd.img", 'b')],
            ..Default::default()
        };
        Catalog::from_kvs(&[KeyValue {
            key: version_key("tiny", "1"),
            value: v.encode_to_vec(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: 0,
        }])
    }

    #[test]
    fn needs_follow_the_active_rules() {
        let r = |f: &str| FileRef { image: "tiny".into(), version: "1".into(), file: f.into() };
        let profile = ImageProfile {
            name: "tiny".into(),
            boot: Some(image_profile::Boot::Kernel(KernelBoot {
                kernel: Some(r("vmlinuz")),
                initrds: vec![r("initrd.img"), r("gone")],
                cmdline: String::new(),
            })),
            ..Default::default()
        };
        let mut profiles = Profiles::default();
        profiles.image.insert("tiny".into(), Arc::new(profile));
        let set = RuleSet {
            rules: vec![Rule {
                name: "all".into(),
                r#match: Some(Match { expr: Some(r#match::Expr::Always(true)) }),
                image_profile: "tiny".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let engine = Engine::new(&set, profiles.clone()).unwrap();
        let n = needs(&engine, &catalog());
        assert_eq!(n.files.keys().cloned().collect::<Vec<_>>(), vec!["a".repeat(64), "b".repeat(64)]);
        assert_eq!(n.versions, vec!["tiny/1"]);
        assert_eq!(n.unresolved, vec!["tiny/1/gone"]);
        // No rule names the profile: nothing is needed.
        let idle = Engine::new(&RuleSet::default(), profiles).unwrap();
        assert_eq!(needs(&idle, &catalog()), Needs::default());
    }

    #[test]
    fn version_state_is_the_worst_file() {
        let c = catalog();
        let v = c.version("tiny", "1").unwrap();
        let mut replica =
            Replica { id: "r".into(), url: "http://x".into(), files: HashMap::new(), nbd: None };
        replica.files.insert("a".repeat(64), FileState::Present);
        assert_eq!(version_state(v, &replica), (FileState::Missing, 1));
        replica.files.insert("b".repeat(64), FileState::Pulling);
        assert_eq!(version_state(v, &replica), (FileState::Pulling, 1));
        replica.files.insert("b".repeat(64), FileState::Present);
        assert_eq!(version_state(v, &replica), (FileState::Present, 2));
    }

    #[test]
    fn names_are_checked() {
        for good in ["tiny", "debian-12.4", "v1+build_2"] {
            assert!(check_name("image", good).is_ok());
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", &"x".repeat(129), "a\0b"] {
            assert!(check_name("image", bad).is_err(), "{bad:?}");
        }
    }
}
