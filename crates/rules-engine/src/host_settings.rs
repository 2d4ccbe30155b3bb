//! The host-record settings of the `[rules]` section: how much history a
//! record keeps, how long an absent host keeps it, and how many records
//! exist at most.
//!
//! They bind every process that records hosts, not only the rules engine:
//! an image streamer records the hosts whose boot scripts it serves, and
//! with its own defaults it would trim every record's history to 20 and
//! pass an operator's smaller cap. So both read them from here.

use std::time::Duration;

use bootfleet_core::config::{ConfigError, CoreConfig, parse_duration, service_section};
use serde::Deserialize;

use crate::store::HostLimits;
use crate::store::limits::{DEFAULT_HOST_RETENTION, DEFAULT_MAX_HOSTS, MIN_HOST_RETENTION, sweep_interval};

/// Default number of entries kept in a host's history.
pub const DEFAULT_HISTORY_LIMIT: usize = 20;

/// The three keys, read without the rest of `[rules]` (whose token files
/// a streamer's container need not hold).
#[derive(Debug, Default, Deserialize)]
struct Section {
    history_limit: Option<usize>,
    host_retention: Option<String>,
    max_hosts: Option<usize>,
}

/// Validated host-record settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostRecordSettings {
    /// Entries kept in each host's history (`rules.history_limit`).
    pub history_limit: usize,
    /// Records of hosts not seen for this long are removed
    /// (`rules.host_retention`).
    pub host_retention: Duration,
    /// Host records kept at most (`rules.max_hosts`).
    pub max_hosts: usize,
}

impl Default for HostRecordSettings {
    fn default() -> Self {
        Self {
            history_limit: DEFAULT_HISTORY_LIMIT,
            host_retention: DEFAULT_HOST_RETENTION,
            max_hosts: DEFAULT_MAX_HOSTS,
        }
    }
}

impl HostRecordSettings {
    /// Reads and checks the settings from the `[rules]` section; errors
    /// name the key.
    pub fn load(core: &CoreConfig) -> Result<Self, ConfigError> {
        let section: Section = lenient_section(core.file.rules.as_ref())?;
        let history_limit = section.history_limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
        if history_limit == 0 || history_limit > 1000 {
            return Err(ConfigError::new("rules.history_limit", "must be between 1 and 1000"));
        }
        let host_retention = match &section.host_retention {
            Some(text) => parse_duration(text).map_err(|m| ConfigError::new("rules.host_retention", m))?,
            None => DEFAULT_HOST_RETENTION,
        };
        if host_retention < MIN_HOST_RETENTION {
            return Err(ConfigError::new(
                "rules.host_retention",
                "must be at least 1h (e.g. 720h for 30 days): a host between two boots is not gone",
            ));
        }
        let max_hosts = section.max_hosts.unwrap_or(DEFAULT_MAX_HOSTS);
        if max_hosts == 0 {
            return Err(ConfigError::new("rules.max_hosts", "must be at least 1"));
        }
        Ok(Self { history_limit, host_retention, max_hosts })
    }

    /// The bounds a recording process keeps; `sweep`: whether it also
    /// removes expired records (rules engines do; a streamer leaves that
    /// to them).
    pub fn limits(&self, sweep: bool) -> HostLimits {
        HostLimits {
            max_hosts: self.max_hosts,
            retention: sweep.then_some(self.host_retention),
            sweep_interval: sweep_interval(self.host_retention),
            ..HostLimits::default()
        }
    }
}

/// `[rules]` as [`Section`], ignoring the other keys (the rules engine's
/// own loader refuses unknown ones).
fn lenient_section(table: Option<&toml::Table>) -> Result<Section, ConfigError> {
    let Some(table) = table else { return Ok(Section::default()) };
    let mut known = toml::Table::new();
    for key in ["history_limit", "host_retention", "max_hosts"] {
        if let Some(value) = table.get(key) {
            known.insert(key.to_owned(), value.clone());
        }
    }
    service_section(Some(&known), "rules")
}

#[cfg(test)]
mod tests {
    use bootfleet_core::config::{CommonArgs, Defaults, parse_file};

    use super::*;

    fn load(file: &str) -> Result<HostRecordSettings, ConfigError> {
        let defaults = Defaults { admin_listen: "127.0.0.1:9100", store: "memory" };
        HostRecordSettings::load(&CoreConfig::from_parts(
            &CommonArgs::default(),
            parse_file(file)?,
            &defaults,
        )?)
    }

    #[test]
    fn settings_are_read_beside_the_rules_engines_own_keys() {
        assert_eq!(load("").unwrap(), HostRecordSettings::default());
        let file = "[rules]\nlisten = \"127.0.0.1:1\"\nservice_token_file = \"/nonexistent\"\n\
                    history_limit = 5\nmax_hosts = 64\nhost_retention = \"2h\"";
        let settings = load(file).unwrap();
        assert_eq!(
            settings,
            HostRecordSettings { history_limit: 5, max_hosts: 64, host_retention: Duration::from_secs(7200) }
        );
        let limits = settings.limits(false);
        assert_eq!((limits.max_hosts, limits.retention), (64, None));
        assert_eq!(settings.limits(true).retention, Some(Duration::from_secs(7200)));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (file, key) in [
            ("[rules]\nhistory_limit = 0", "rules.history_limit"),
            ("[rules]\nhistory_limit = \"x\"", "rules.history_limit"),
            ("[rules]\nhost_retention = \"10m\"", "rules.host_retention"),
            ("[rules]\nmax_hosts = 0", "rules.max_hosts"),
        ] {
            let error = load(file).unwrap_err();
            assert_eq!(error.key, key, "{file}: {error}");
        }
    }
}
