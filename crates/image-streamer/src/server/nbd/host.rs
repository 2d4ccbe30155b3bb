//! A machine's own export, `host/<mac>[/<boot>]`: the vDisk its rules
//! decision names (a `vdisk` image profile), under that host's `server`
//! write cache on this replica (PVS's "standard image": a copy-on-write
//! overlay per host and per boot, the golden file never written).
//!
//! Boots: the client names its boot (`host/<mac>/<boot>`, the initramfs
//! passes the kernel's boot id). A name with a boot other than the one the
//! current cache was opened for starts a new boot: a fresh, empty cache
//! over the version the rules name now, the old one discarded. The same
//! boot again (a reconnect) finds the same cache and the same golden
//! version, even if a newer one was activated meanwhile. Without a boot
//! part, a host's current cache is reused and only its first open starts
//! one. The server cannot tell boots apart by connections: a machine that
//! resets leaves its old connection half-open.
//!
//! Who may open it is checked before (`lease_check`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bootfleet_nbd::export::Export;
use bootfleet_nbd::overlay::{ClientCache, WriteCacheError, WriteCaches};
use bootfleet_nbd::session::Refusal;

/// Longest boot id a client may name (the kernel's boot id is 36).
const MAX_BOOT_LEN: usize = 64;

/// A parsed `host/<mac>[/<boot>]`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HostName<'a> {
    /// Normalized MAC ("52:54:00:12:34:56").
    pub(crate) mac: String,
    /// The client's boot, if it named one.
    pub(crate) boot: Option<&'a str>,
}

/// `Some` for a name in the `host/` space (`Err` if malformed), `None`
/// for any other name.
pub(crate) fn parse(name: &str) -> Option<Result<HostName<'_>, Refusal>> {
    let rest = name.strip_prefix("host/")?;
    let (mac, boot) = match rest.split_once('/') {
        Some((mac, boot)) => (mac, Some(boot)),
        None => (rest, None),
    };
    let Some(mac) =
        bootfleet_rules_engine::facts::parse_mac(mac).map(bootfleet_rules_engine::facts::format_mac)
    else {
        return Some(Err(Refusal::Unknown));
    };
    let boot_ok = |b: &str| {
        !b.is_empty() && b.len() <= MAX_BOOT_LEN && b.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
    };
    if boot.is_some_and(|b| !boot_ok(b)) {
        return Some(Err(Refusal::Unknown));
    }
    Some(Ok(HostName { mac, boot }))
}

/// The hosts' write caches on this replica and the boot each belongs to.
pub(crate) struct HostCaches {
    caches: WriteCaches,
    /// The boot each host's current cache was opened for ("" when the
    /// client named none). Held while a cache is chosen, so two opens of
    /// one new boot end up in one cache.
    boots: Mutex<HashMap<String, String>>,
}

impl HostCaches {
    pub(crate) fn new(caches: WriteCaches) -> Self {
        Self { caches, boots: Mutex::default() }
    }

    /// Cluster size of the caches.
    pub(crate) fn cluster_size(&self) -> u64 {
        self.caches.cluster_size()
    }

    /// Each host's cache: MAC, the boot it belongs to, bytes it holds.
    pub(crate) fn usage(&self) -> Vec<(String, String, u64)> {
        let boots = self.boots.lock().unwrap_or_else(PoisonError::into_inner).clone();
        self.caches
            .usage()
            .into_iter()
            .map(|(mac, bytes)| {
                let boot = boots.get(&mac).cloned().unwrap_or_default();
                (mac, boot, bytes)
            })
            .collect()
    }

    /// The cache `host` reconnects to: its current one, if `host` names no
    /// other boot.
    pub(crate) fn current(&self, host: &HostName<'_>) -> Option<Arc<ClientCache>> {
        let boots = self.boots.lock().unwrap_or_else(PoisonError::into_inner);
        self.current_locked(&boots, host)
    }

    fn current_locked(
        &self,
        boots: &HashMap<String, String>,
        host: &HostName<'_>,
    ) -> Option<Arc<ClientCache>> {
        let cache = self.caches.current(&host.mac)?;
        match host.boot {
            Some(boot) if boots.get(&host.mac).is_none_or(|b| b != boot) => None,
            _ => Some(cache),
        }
    }

    /// The cache for `host`: its current one (see [`Self::current`]), or a
    /// new boot's over `base`, discarding the previous boot's.
    pub(crate) fn open(
        &self,
        host: &HostName<'_>,
        base: Arc<dyn Export>,
    ) -> Result<Arc<ClientCache>, Refusal> {
        let mut boots = self.boots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cache) = self.current_locked(&boots, host) {
            return Ok(cache);
        }
        let cache = self.caches.boot(&host.mac, base).map_err(|e| {
            tracing::warn!(host = %host.mac, cause = %e, "cannot open a write cache");
            match e {
                WriteCacheError::TooManyClients { .. } => {
                    Refusal::Policy("this replica holds as many write caches as it may".into())
                }
                _ => Refusal::Unknown,
            }
        })?;
        boots.insert(host.mac.clone(), host.boot.unwrap_or_default().to_owned());
        tracing::info!(host = %host.mac, boot = host.boot.unwrap_or_default(), "new boot: a fresh write cache");
        Ok(cache)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bootfleet_nbd::export::{Export, FileExport};
    use bootfleet_nbd::metrics::NbdMetrics;
    use bootfleet_nbd::overlay::WriteCaches;

    use super::{HostCaches, HostName, parse};

    #[test]
    fn names_are_a_mac_and_maybe_a_boot() {
        let host = |mac: &str, boot: Option<&'static str>| Some(Ok(HostName { mac: mac.into(), boot }));
        assert_eq!(parse("host/52:54:00:AB:cd:01"), host("52:54:00:ab:cd:01", None));
        assert_eq!(parse("host/52-54-00-ab-cd-01/4f1c-9a"), host("52:54:00:ab:cd:01", Some("4f1c-9a")));
        assert_eq!(parse("debian/12/root.img"), None);
        let long = format!("host/52:54:00:ab:cd:01/{}", "a".repeat(65));
        for bad in ["host/", "host/nope", "host/52:54:00:ab:cd:01/", "host/52:54:00:ab:cd:01/a/b", &long] {
            assert!(matches!(parse(bad), Some(Err(_))), "{bad}");
        }
    }

    fn base(dir: &std::path::Path) -> Arc<dyn Export> {
        let path = dir.join("golden");
        std::fs::write(&path, vec![7u8; 256 * 1024]).unwrap();
        Arc::new(FileExport::open(&path).unwrap())
    }

    fn written(cache: &Arc<impl Export + ?Sized>) -> bool {
        let mut byte = [0u8; 1];
        cache.read_at(&mut byte, 0).unwrap();
        byte[0] == 1
    }

    #[test]
    fn a_reconnect_finds_its_boots_writes_and_a_new_boot_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let caches =
            WriteCaches::new(&dir.path().join("caches"), 1 << 20, 4, Arc::new(NbdMetrics::default()));
        let hosts = HostCaches::new(caches.unwrap());
        let base = base(dir.path());
        let host = |boot| parse(boot).unwrap().unwrap();

        let first = hosts.open(&host("host/52:54:00:00:00:01/boot-1"), Arc::clone(&base)).unwrap();
        first.write_at(&[1], 0, true).unwrap();
        // The same boot again, and the name without a boot: the same writes.
        assert!(written(&hosts.open(&host("host/52:54:00:00:00:01/boot-1"), Arc::clone(&base)).unwrap()));
        assert!(written(&hosts.open(&host("host/52:54:00:00:00:01"), Arc::clone(&base)).unwrap()));
        assert!(hosts.current(&host("host/52:54:00:00:00:01/boot-1")).is_some());
        // Another host has its own cache.
        assert!(!written(&hosts.open(&host("host/52:54:00:00:00:02/boot-1"), Arc::clone(&base)).unwrap()));
        // A new boot starts empty; the old boot's name no longer finds it.
        assert!(hosts.current(&host("host/52:54:00:00:00:01/boot-2")).is_none());
        assert!(!written(&hosts.open(&host("host/52:54:00:00:00:01/boot-2"), Arc::clone(&base)).unwrap()));
        assert!(hosts.current(&host("host/52:54:00:00:00:01/boot-1")).is_none());
    }
}
