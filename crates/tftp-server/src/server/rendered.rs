//! Loader configurations rendered per host from the rules engine:
//! `pxelinux.cfg/01-<mac>`, `grub.cfg-01-<mac>` and `bootfleet/<mac>.ipxe`.
//! The whole file is rendered before the transfer starts, so tsize is
//! known. When the rules engine cannot be reached, the last rendering for
//! that kind and MAC is served (offline mode); without one, the file is "not
//! found" and the firmware moves on to its next boot option.
//!
//! Names are parsed strictly, in the one form each loader sends: anything
//! else is "not found". A lax parser would let one MAC be spelled a
//! thousand ways, each a rules-engine call; the cache is keyed by kind and
//! MAC anyway, and capped in entries.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bootfleet_core::log_limit::LogLimit;
use bootfleet_proto::v1 as pb;
use bootfleet_rules_engine::client::{Client, connect_lazy};
use bootfleet_rules_engine::facts::Facts;
use bootfleet_rules_engine::render::{self, Vars};

use super::config::RenderConfig;
use super::metrics;

/// Rendered names this server knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Pxelinux,
    Grub,
    Ipxe,
}

/// A MAC as `aa<sep>bb<sep>…<sep>ff`: six lowercase hex pairs, one separator
/// throughout, taken from `separators`.
fn parse_mac(text: &str, separators: &[u8]) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.len() != 17 {
        return None;
    }
    let separator = bytes[2];
    if !separators.contains(&separator) {
        return None;
    }
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate() {
        if i % 3 == 2 {
            if b != separator {
                return None;
            }
            continue;
        }
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        value = value << 4 | u64::from(digit);
    }
    Some(value)
}

/// Which rendered file a name asks for, and for which MAC. pxelinux and
/// GRUB send `01-` and the MAC in lowercase with `-`; iPXE scripts use
/// `${net0/mac}` (`:`) or `${net0/mac:hexhyp}` (`-`). One leading `/` is
/// allowed, as for files on disk.
fn recognize(name: &str) -> Option<(Kind, u64)> {
    let name = name.strip_prefix('/').unwrap_or(name);
    if let Some(mac) = name.strip_prefix("pxelinux.cfg/01-") {
        parse_mac(mac, b"-").map(|m| (Kind::Pxelinux, m))
    } else if let Some(mac) = name.strip_prefix("grub.cfg-01-") {
        parse_mac(mac, b"-").map(|m| (Kind::Grub, m))
    } else if let Some(mac) = name.strip_prefix("bootfleet/").and_then(|n| n.strip_suffix(".ipxe")) {
        parse_mac(mac, b":-").map(|m| (Kind::Ipxe, m))
    } else {
        None
    }
}

/// What a rendered file is remembered by.
type Key = (Kind, u64);

/// The last good rendering per kind and MAC, at most `capacity` of them;
/// when full, the one rendered longest ago goes.
struct LastGood {
    capacity: usize,
    entries: HashMap<Key, (Arc<[u8]>, u64)>,
    /// Entries by when they were last rendered.
    order: BTreeMap<u64, Key>,
    next: u64,
}

impl LastGood {
    fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), entries: HashMap::new(), order: BTreeMap::new(), next: 0 }
    }

    fn get(&self, key: Key) -> Option<Arc<[u8]>> {
        self.entries.get(&key).map(|(bytes, _)| Arc::clone(bytes))
    }

    fn insert(&mut self, key: Key, bytes: Arc<[u8]>) {
        let stamp = self.next;
        self.next += 1;
        if let Some((_, old)) = self.entries.insert(key, (bytes, stamp)) {
            self.order.remove(&old);
        } else if self.entries.len() > self.capacity
            && let Some((_, evicted)) = self.order.pop_first()
        {
            self.entries.remove(&evicted);
            metrics::RENDERED_EVICTIONS.inc();
            tracing::debug!(kind = ?evicted.0, mac = %bootfleet_rules_engine::facts::format_mac(evicted.1), "rendered file forgotten: cache full");
        }
        self.order.insert(stamp, key);
    }

    fn remove(&mut self, key: Key) {
        if let Some((_, stamp)) = self.entries.remove(&key) {
            self.order.remove(&stamp);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Renders files from decisions, remembering the last good rendering.
pub(crate) struct Renderer {
    client: Client,
    http_base: String,
    last_good: Mutex<LastGood>,
}

impl Renderer {
    pub(crate) fn new(config: &RenderConfig, cache_entries: usize) -> anyhow::Result<Self> {
        Ok(Self {
            client: connect_lazy(&config.rules_url)?,
            http_base: config.http_base.clone(),
            last_good: Mutex::new(LastGood::new(cache_entries)),
        })
    }

    /// The rendered file for `name`, if it is a rendered name and the host
    /// is to be booted.
    pub(crate) async fn render(&self, name: &str, peer: IpAddr) -> Option<Arc<[u8]>> {
        let key = recognize(name)?;
        let (kind, mac) = key;
        let facts = pb::HostFacts {
            mac: bootfleet_rules_engine::facts::format_mac(mac),
            ipv4: match peer {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(_) => String::new(),
            },
            ..Default::default()
        };
        let request = pb::EvaluateRequest { facts: Some(facts.clone()), dry_run: true, ..Default::default() };
        let mut client = self.client.clone();
        match client.evaluate(request).await {
            Ok(response) => {
                let decision = response.into_inner().decision.unwrap_or_default();
                let facts = Facts::from_proto(&facts).ok()?;
                let vars = Vars { decision: &decision, facts: &facts };
                let text = match kind {
                    Kind::Pxelinux => render::pxelinux(&self.http_base, &vars),
                    Kind::Grub => render::grub(&self.http_base, &vars),
                    Kind::Ipxe => render::ipxe(&self.http_base, &vars),
                };
                let mut last_good = self.last_good.lock().unwrap_or_else(PoisonError::into_inner);
                match text {
                    Some(rendered) => {
                        // Facts come from the network: bounded log lines.
                        static REJECTED: LogLimit = LogLimit::default_limit();
                        static OLD_SPELLING: LogLimit = LogLimit::default_limit();
                        for left_out in &rendered.rejected {
                            if let Some(similar_left_out) = REJECTED.admit() {
                                tracing::warn!(file = name, mac = %facts.mac, variable = %left_out.variable, reason = %left_out.reason, similar_left_out, "value left out of a rendered file: it cannot be made safe there");
                            }
                        }
                        for old in &rendered.old_spellings {
                            if let Some(similar_left_out) = OLD_SPELLING.admit() {
                                tracing::warn!(file = name, mac = %facts.mac, variable = %old, similar_left_out, "profile template uses the old ${{…}} spelling, passed through as text; apply it again with {{{{…}}}}");
                            }
                        }
                        let bytes: Arc<[u8]> = rendered.text.into_bytes().into();
                        last_good.insert(key, Arc::clone(&bytes));
                        Some(bytes)
                    }
                    None => {
                        // The rules now say "nothing to boot here".
                        last_good.remove(key);
                        None
                    }
                }
            }
            Err(status) => {
                let cached = self.last_good.lock().unwrap_or_else(PoisonError::into_inner).get(key);
                tracing::warn!(file = name, error = %status.message(), cached = cached.is_some(), "rules engine unavailable for a rendered file");
                cached
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_names_are_recognized() {
        assert_eq!(recognize("pxelinux.cfg/01-52-54-00-ab-cd-ef"), Some((Kind::Pxelinux, 0x5254_00ab_cdef)));
        assert_eq!(recognize("/grub.cfg-01-52-54-00-ab-cd-ef"), Some((Kind::Grub, 0x5254_00ab_cdef)));
        assert_eq!(recognize("bootfleet/52:54:00:ab:cd:ef.ipxe"), Some((Kind::Ipxe, 0x5254_00ab_cdef)));
        assert_eq!(recognize("bootfleet/52-54-00-ab-cd-ef.ipxe"), Some((Kind::Ipxe, 0x5254_00ab_cdef)));
        assert_eq!(recognize("pxelinux.cfg/default"), None);
        assert_eq!(recognize("pxelinux.cfg/01-zz"), None);
    }

    /// One MAC has one spelling per loader; everything else is not ours.
    #[test]
    fn other_spellings_of_a_mac_are_not_found() {
        for name in [
            "pxelinux.cfg/01-52:54:00:ab:cd:ef",
            "pxelinux.cfg/01-52-54-00-AB-CD-EF",
            "pxelinux.cfg/01-52-54-00-aB-cd-ef",
            "pxelinux.cfg/01-525400abcdef",
            "pxelinux.cfg/01-5254.00ab.cdef",
            "pxelinux.cfg/01-52-54-00-ab-cd-ef-",
            "pxelinux.cfg/01--52-54-00-ab-cd-ef",
            "pxelinux.cfg/01-52-54-00-ab-cd:ef",
            "pxelinux.cfg/01-52-54-00-ab-cd-e",
            "pxelinux.cfg/01-+2-54-00-ab-cd-ef",
            "//pxelinux.cfg/01-52-54-00-ab-cd-ef",
            "grub.cfg-01-52:54:00:ab:cd:ef",
            "grub.cfg-01-52.54.00.ab.cd.ef",
            "bootfleet/52:54:00-ab-cd-ef.ipxe",
            "bootfleet/52:54:00:AB:CD:EF.ipxe",
            "bootfleet/52.54.00.ab.cd.ef.ipxe",
            "bootfleet/5254-00ab-cdef.ipxe",
            "bootfleet/525400abcdef.ipxe",
            "bootfleet/52::54:00:ab:cd:ef.ipxe",
        ] {
            assert_eq!(recognize(name), None, "{name}");
        }
    }

    #[test]
    fn the_cache_is_keyed_by_kind_and_mac_and_capped() {
        let mut cache = LastGood::new(3);
        let bytes = |text: &str| -> Arc<[u8]> { text.as_bytes().into() };
        let before = metrics::RENDERED_EVICTIONS.get();
        // Both iPXE spellings of one MAC share an entry.
        for name in ["bootfleet/52:54:00:ab:cd:ef.ipxe", "bootfleet/52-54-00-ab-cd-ef.ipxe"] {
            cache.insert(recognize(name).unwrap(), bytes(name));
        }
        assert_eq!(cache.len(), 1);
        cache.insert((Kind::Pxelinux, 0x5254_00ab_cdef), bytes("pxe"));
        assert_eq!(cache.len(), 2, "kinds are apart");
        for mac in 1..=1000u64 {
            cache.insert((Kind::Grub, mac), bytes("grub"));
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.len(), 3);
        assert!(metrics::RENDERED_EVICTIONS.get() - before >= 999);
        // The most recent survive, the oldest went first.
        assert!(cache.get((Kind::Grub, 1000)).is_some() && cache.get((Kind::Grub, 998)).is_some());
        assert!(cache.get((Kind::Ipxe, 0x5254_00ab_cdef)).is_none());
        // Re-rendering refreshes an entry instead of adding one.
        cache.insert((Kind::Grub, 998), bytes("again"));
        cache.insert((Kind::Grub, 1001), bytes("new"));
        assert_eq!(&*cache.get((Kind::Grub, 998)).unwrap(), b"again");
        assert!(cache.get((Kind::Grub, 999)).is_none());
        cache.remove((Kind::Grub, 998));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.order.len(), 2);
    }
}
