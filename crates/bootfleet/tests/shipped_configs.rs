//! Every configuration file shipped under deploy/ loads with every service
//! section checked, and a stray key in any of its tables is rejected with
//! the key named.

use std::path::{Path, PathBuf};

use bootfleet_core::config::{CommonArgs, ConfigError, CoreConfig, Defaults, parse_file};
use bootfleet_dhcp_responder::server::{DhcpArgs, DhcpConfig};
use bootfleet_image_streamer::server::{StreamerArgs, StreamerConfig};
use bootfleet_rules_engine::server::{RulesArgs, RulesConfig};
use bootfleet_tftp_server::server::{TftpArgs, TftpConfig};

const DEFAULTS: Defaults = Defaults { admin_listen: "127.0.0.1:9100", store: "embedded" };

fn shipped() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                found.push(path);
            }
        }
    }
    assert!(!found.is_empty(), "no shipped configs found");
    found
}

/// Loads a whole file as `bootfleet up` would (token given on the command
/// line, so token files need not exist here).
fn load(text: &str) -> Result<(), ConfigError> {
    let core = CoreConfig::from_parts(&CommonArgs::default(), parse_file(text)?, &DEFAULTS)?;
    let rules = RulesArgs { admin_token: Some("0123456789abcdef0123".into()), ..RulesArgs::default() };
    RulesConfig::load(&rules, &core)?;
    // Roots named in shipped files need not exist on the test machine.
    let tftp = TftpArgs { root: Some(std::env::temp_dir()), ..TftpArgs::default() };
    TftpConfig::load(&tftp, &core)?;
    let streamer =
        StreamerArgs { admin_token: Some("0123456789abcdef0123".into()), ..StreamerArgs::default() };
    StreamerConfig::load_with_default(&streamer, &core, "127.0.0.1:8080")?;
    DhcpConfig::load(&DhcpArgs::default(), &core).map(drop)
}

#[test]
fn shipped_configs_load_and_reject_stray_keys() {
    for path in shipped() {
        let text = std::fs::read_to_string(&path).unwrap();
        load(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let table: toml::Table = text.parse().unwrap();
        for (section, value) in &table {
            if !value.is_table() {
                continue;
            }
            let mut broken = table.clone();
            broken[section].as_table_mut().unwrap().insert("stray_key".into(), toml::Value::Boolean(true));
            let err = load(&toml::to_string(&broken).unwrap()).expect_err(section);
            assert_eq!(err.key, format!("{section}.stray_key"), "{}: {err}", path.display());
        }
    }
}
