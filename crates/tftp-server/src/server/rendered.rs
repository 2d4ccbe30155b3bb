//! Loader configurations rendered per host from the rules engine:
//! `pxelinux.cfg/01-<mac>`, `grub.cfg-01-<mac>` and `bootfleet/<mac>.ipxe`.
//! The whole file is rendered before the transfer starts, so tsize is
//! known. When the rules engine cannot be reached, the last rendering for
//! that name is served (offline mode); without one, the file is "not found"
//! and the firmware moves on to its next boot option.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bootfleet_proto::v1 as pb;
use bootfleet_rules_engine::client::{Client, connect_lazy};
use bootfleet_rules_engine::facts::{Facts, parse_mac};
use bootfleet_rules_engine::render::{self, Vars};

use super::config::RenderConfig;

/// Rendered names this server knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Pxelinux,
    Grub,
    Ipxe,
}

/// Which rendered file a name asks for, and for which MAC.
fn recognize(name: &str) -> Option<(Kind, u64)> {
    let name = name.trim_start_matches('/');
    let (kind, mac) = if let Some(mac) = name.strip_prefix("pxelinux.cfg/01-") {
        (Kind::Pxelinux, mac)
    } else if let Some(mac) = name.strip_prefix("grub.cfg-01-") {
        (Kind::Grub, mac)
    } else if let Some(mac) = name.strip_prefix("bootfleet/").and_then(|n| n.strip_suffix(".ipxe")) {
        (Kind::Ipxe, mac)
    } else {
        return None;
    };
    parse_mac(mac).map(|m| (kind, m))
}

/// Renders files from decisions, remembering the last good rendering.
pub(crate) struct Renderer {
    client: Client,
    http_base: String,
    last_good: Mutex<HashMap<String, Arc<[u8]>>>,
}

impl Renderer {
    pub(crate) fn new(config: &RenderConfig) -> anyhow::Result<Self> {
        Ok(Self {
            client: connect_lazy(&config.rules_url)?,
            http_base: config.http_base.clone(),
            last_good: Mutex::default(),
        })
    }

    /// The rendered file for `name`, if it is a rendered name and the host
    /// is to be booted.
    pub(crate) async fn render(&self, name: &str, peer: IpAddr) -> Option<Arc<[u8]>> {
        let (kind, mac) = recognize(name)?;
        let facts = pb::HostFacts {
            mac: bootfleet_rules_engine::facts::format_mac(mac),
            ipv4: match peer {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(_) => String::new(),
            },
            ..Default::default()
        };
        let request = pb::EvaluateRequest { facts: Some(facts.clone()), dry_run: true };
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
                    Some(text) => {
                        let bytes: Arc<[u8]> = text.into_bytes().into();
                        last_good.insert(name.to_owned(), Arc::clone(&bytes));
                        Some(bytes)
                    }
                    None => {
                        // The rules now say "nothing to boot here".
                        last_good.remove(name);
                        None
                    }
                }
            }
            Err(status) => {
                let cached = self.last_good.lock().unwrap_or_else(PoisonError::into_inner).get(name).cloned();
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
        assert_eq!(recognize("pxelinux.cfg/default"), None);
        assert_eq!(recognize("pxelinux.cfg/01-zz"), None);
    }
}
