//! Every configuration file shipped under deploy/ loads with every service
//! section checked, and a stray key in any of its tables is rejected with
//! the key named. The Kubernetes manifests pass a schema validator
//! (kubernetes-validate, strict), the configuration they carry loads, and
//! every workload has probes and a disruption budget.

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

/// A service token file, given on the command line in place of the one
/// a shipped file names (which exists only where it is deployed).
static SERVICE_TOKEN_FILE: std::sync::LazyLock<tempfile::NamedTempFile> = std::sync::LazyLock::new(|| {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "service-token-0123456789").unwrap();
    file
});

/// Loads a whole file as `bootfleet up` would (tokens given on the command
/// line, so token files need not exist here).
fn load(text: &str) -> Result<(), ConfigError> {
    load_with(text, None)
}

/// As [`load`], with the streamer's public URL given the way a deployment
/// gives it (an environment variable per pod).
fn load_with(text: &str, streamer_public_url: Option<&str>) -> Result<(), ConfigError> {
    let core = CoreConfig::from_parts(&CommonArgs::default(), parse_file(text)?, &DEFAULTS)?;
    let service_token_file = Some(SERVICE_TOKEN_FILE.path().to_owned());
    let rules = RulesArgs {
        admin_token: Some("0123456789abcdef0123".into()),
        service_token_file: service_token_file.clone(),
        ..RulesArgs::default()
    };
    RulesConfig::load(&rules, &core)?;
    // Roots named in shipped files need not exist on the test machine.
    let tftp = TftpArgs { root: Some(std::env::temp_dir()), ..TftpArgs::default() };
    TftpConfig::load(&tftp, &core)?;
    let streamer = StreamerArgs {
        admin_token: Some("0123456789abcdef0123".into()),
        public_url: streamer_public_url.map(str::to_owned),
        ..StreamerArgs::default()
    };
    StreamerConfig::load_with_default(&streamer, &core, "127.0.0.1:8080")?;
    DhcpConfig::load(&DhcpArgs { service_token_file, ..DhcpArgs::default() }, &core).map(drop)
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

fn kubernetes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

#[test]
fn kubernetes_manifests_validate_and_carry_a_valid_configuration() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(kubernetes_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    // The validator is installed by the test command (scripts/test.sh) into target/venv.
    let validator = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/venv/bin/kubernetes-validate");
    assert!(validator.is_file(), "{} missing: run scripts/test.sh", validator.display());
    let out = std::process::Command::new(&validator).arg("--strict").args(&files).output().unwrap();
    assert!(
        out.status.success(),
        "kubernetes-validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut workloads = Vec::new();
    let mut budgets = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        for value in docs {
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            let name = value["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "ConfigMap" => {
                    let toml =
                        value["data"]["bootfleet.toml"].as_str().expect("bootfleet.toml in the ConfigMap");
                    // Each streamer pod sets BOOTFLEET_STREAMER_PUBLIC_URL from its IP.
                    load_with(toml, Some("http://10.0.0.5:8080")).unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                "Deployment" | "DaemonSet" => {
                    for container in value["spec"]["template"]["spec"]["containers"].as_array().unwrap() {
                        for probe in ["readinessProbe", "livenessProbe"] {
                            assert!(!container[probe].is_null(), "{name}: no {probe}");
                        }
                    }
                    workloads.push(value["spec"]["selector"]["matchLabels"].clone());
                }
                "PodDisruptionBudget" => budgets.push(value["spec"]["selector"]["matchLabels"].clone()),
                _ => {}
            }
        }
    }
    for selector in &workloads {
        assert!(budgets.contains(selector), "no PodDisruptionBudget for {selector:?}");
    }
}
