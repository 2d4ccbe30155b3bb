//! TLS and credentials settings: the etcd client's (`[store]`) and every gRPC
//! server's (the same four keys in each service's section). Files are read
//! when the configuration loads, so a missing or unreadable one is an error
//! naming its key before anything binds or connects.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// A PEM file's contents, read now; errors name `key`. Only checks that the
/// file holds PEM: rustls parses it when the connection is built.
pub fn read_pem(path: &Path, key: &str) -> Result<Vec<u8>, ConfigError> {
    let pem =
        std::fs::read(path).map_err(|e| ConfigError::new(key, format!("reading {}: {e}", path.display())))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(ConfigError::new(key, format!("{} holds no PEM block", path.display())));
    }
    Ok(pem)
}

/// How the etcd client authenticates the cluster and itself.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EtcdSecurity {
    /// Set when the endpoints are `https://`.
    pub tls: Option<EtcdTls>,
    /// etcd's own username/password authentication.
    pub credentials: Option<EtcdCredentials>,
}

impl std::fmt::Debug for EtcdSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSecurity")
            .field("tls", &self.tls.as_ref().map(|t| t.identity.is_some()))
            .field("username", &self.credentials.as_ref().map(|c| &c.username))
            .finish()
    }
}

/// TLS towards etcd: the CA that signed the members' certificates, and a
/// client certificate for clusters started with `--client-cert-auth`.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// PEM of the CA certificate(s).
    pub ca_pem: Vec<u8>,
    /// PEM of the client certificate chain and its key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// etcd user and password (the password read from a file, never logged).
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdCredentials {
    /// etcd user name.
    pub username: String,
    /// Its password.
    pub password: String,
}

/// The `[store]` keys this module reads.
pub(super) struct EtcdSecurityKeys<'a> {
    pub(super) ca_file: Option<&'a PathBuf>,
    pub(super) cert_file: Option<&'a PathBuf>,
    pub(super) key_file: Option<&'a PathBuf>,
    pub(super) username: Option<&'a String>,
    pub(super) password_file: Option<&'a PathBuf>,
}

/// Validates the etcd security keys against the endpoints (`endpoints_key`
/// names where they came from): `https://` needs `store.etcd_ca_file`, TLS
/// files with `http://` endpoints would be ignored and are refused, and so
/// are a certificate without its key, a user without a password, and a mix
/// of schemes.
pub(super) fn etcd_security(
    keys: &EtcdSecurityKeys<'_>,
    endpoints: &[String],
    endpoints_key: &str,
) -> Result<EtcdSecurity, ConfigError> {
    let https = endpoints.iter().filter(|e| e.starts_with("https://")).count();
    if https != 0 && https != endpoints.len() {
        return Err(ConfigError::new(endpoints_key, "mixes http:// and https:// endpoints: use one scheme"));
    }
    let tls = if https > 0 {
        let Some(ca_file) = keys.ca_file else {
            return Err(ConfigError::new(
                "store.etcd_ca_file",
                "required with https:// etcd endpoints (the CA that signed the members' certificates)",
            ));
        };
        let ca_pem = read_pem(ca_file, "store.etcd_ca_file")?;
        let identity = match (keys.cert_file, keys.key_file) {
            (Some(cert), Some(key)) => {
                Some((read_pem(cert, "store.etcd_cert_file")?, read_pem(key, "store.etcd_key_file")?))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new("store.etcd_key_file", "required with store.etcd_cert_file"));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new("store.etcd_cert_file", "required with store.etcd_key_file"));
            }
        };
        Some(EtcdTls { ca_pem, identity })
    } else {
        let set = [
            ("store.etcd_ca_file", keys.ca_file.is_some()),
            ("store.etcd_cert_file", keys.cert_file.is_some()),
            ("store.etcd_key_file", keys.key_file.is_some()),
        ];
        if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
            return Err(ConfigError::new(
                *key,
                format!("set, but {endpoints_key} are http://: use https:// endpoints for TLS"),
            ));
        }
        None
    };
    let credentials = match (keys.username, keys.password_file) {
        (Some(username), Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new("store.etcd_password_file", format!("reading {}: {e}", path.display()))
            })?;
            let password = text.trim_end_matches(['\r', '\n']).to_owned();
            if password.is_empty() {
                return Err(ConfigError::new(
                    "store.etcd_password_file",
                    format!("{} is empty", path.display()),
                ));
            }
            if username.is_empty() {
                return Err(ConfigError::new("store.etcd_username", "is empty"));
            }
            Some(EtcdCredentials { username: username.clone(), password })
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::new("store.etcd_password_file", "required with store.etcd_username"));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new("store.etcd_username", "required with store.etcd_password_file"));
        }
    };
    Ok(EtcdSecurity { tls, credentials })
}

/// The endpoints that are plaintext and leave this machine: anyone on the
/// path can read and rewrite the state (rules choose what machines boot).
pub fn plaintext_remote_endpoints(endpoints: &[String]) -> Vec<&str> {
    endpoints
        .iter()
        .filter_map(|e| e.strip_prefix("http://").map(|rest| (e.as_str(), rest)))
        .filter(|(_, rest)| !is_loopback_authority(rest))
        .map(|(e, _)| e)
        .collect()
}

/// Whether `host[:port][/path]` names loopback (`localhost`, 127/8, `[::1]`).
fn is_loopback_authority(rest: &str) -> bool {
    let authority = rest.split('/').next().unwrap_or_default();
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or_default()
    } else {
        authority.rsplit_once(':').map_or(authority, |(host, _)| host)
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether a gRPC server asks for client certificates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// Clients may present one; it must chain to the client CA if they do.
    Optional,
    /// Connections without a certificate from the client CA are refused.
    Required,
}

/// The TLS keys of a gRPC server, as written in its service's section under
/// `prefix` (`tls_` for `[rules]`, `grpc_tls_` for `[streamer]`).
#[derive(Clone, Debug, Default)]
pub struct ServerTlsSection {
    /// PEM certificate chain the server presents.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of that certificate.
    pub key_file: Option<PathBuf>,
    /// PEM CA certificate(s) client certificates must chain to.
    pub client_ca_file: Option<PathBuf>,
    /// `none` (default), `optional` or `required`.
    pub client_auth: Option<ClientAuth>,
}

/// A gRPC server's validated TLS settings, files read.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert_pem: Vec<u8>,
    /// PEM private key.
    pub key_pem: Vec<u8>,
    /// PEM client CA, with client auth `optional` or `required`.
    pub client_ca_pem: Option<Vec<u8>>,
    /// Whether client certificates are asked for.
    pub client_auth: ClientAuth,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("client_auth", &self.client_auth).finish_non_exhaustive()
    }
}

impl ServerTlsSection {
    /// Validates the keys, naming `<prefix>cert_file` etc. in errors
    /// (`prefix` like `rules.tls_`). No certificate: plaintext (None);
    /// client-auth settings without one are refused, as they would be ignored.
    pub fn validate(&self, prefix: &str) -> Result<Option<ServerTls>, ConfigError> {
        let key = |name: &str| format!("{prefix}{name}");
        let client_auth = self.client_auth.unwrap_or_default();
        let (cert_file, key_file) = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key_file)) => (cert, key_file),
            (None, None) => {
                if self.client_ca_file.is_some() || client_auth != ClientAuth::None {
                    return Err(ConfigError::new(
                        key("cert_file"),
                        "required with client certificates (the server must speak TLS to ask for them)",
                    ));
                }
                return Ok(None);
            }
            (Some(_), None) => {
                return Err(ConfigError::new(key("key_file"), format!("required with {}", key("cert_file"))));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(key("cert_file"), format!("required with {}", key("key_file"))));
            }
        };
        let cert_pem = read_pem(cert_file, &key("cert_file"))?;
        let key_pem = read_pem(key_file, &key("key_file"))?;
        let client_ca_pem = match (&self.client_ca_file, client_auth) {
            (Some(path), ClientAuth::Optional | ClientAuth::Required) => {
                Some(read_pem(path, &key("client_ca_file"))?)
            }
            (None, ClientAuth::None) => None,
            (None, _) => {
                return Err(ConfigError::new(
                    key("client_ca_file"),
                    format!("required with {} = optional or required", key("client_auth")),
                ));
            }
            (Some(_), ClientAuth::None) => {
                return Err(ConfigError::new(
                    key("client_auth"),
                    format!(
                        "is none, so {} would be ignored: set optional or required",
                        key("client_ca_file")
                    ),
                ));
            }
        };
        Ok(Some(ServerTls { cert_pem, key_pem, client_ca_pem, client_auth }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_endpoints_off_this_machine_are_found() {
        let endpoints: Vec<String> = [
            "http://127.0.0.1:2379",
            "http://localhost:2379",
            "http://[::1]:2379",
            "http://127.5.0.1",
            "https://10.0.0.1:2379",
            "http://10.0.0.2:2379",
            "http://etcd-0:2379/",
            "http://[2001:db8::1]:2379",
        ]
        .map(str::to_owned)
        .into();
        assert_eq!(
            plaintext_remote_endpoints(&endpoints),
            ["http://10.0.0.2:2379", "http://etcd-0:2379/", "http://[2001:db8::1]:2379"]
        );
    }

    #[test]
    fn server_tls_keys_are_checked_together() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("x.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n").unwrap();
        let not_pem = dir.path().join("x.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let section =
            |cert: Option<&PathBuf>, key: Option<&PathBuf>, ca: Option<&PathBuf>, auth| ServerTlsSection {
                cert_file: cert.cloned(),
                key_file: key.cloned(),
                client_ca_file: ca.cloned(),
                client_auth: auth,
            };
        let p = Some(&pem);
        assert_eq!(section(None, None, None, None).validate("rules.tls_").unwrap(), None);
        let tls = section(p, p, p, Some(ClientAuth::Required)).validate("rules.tls_").unwrap().unwrap();
        assert_eq!(tls.client_auth, ClientAuth::Required);
        assert!(tls.client_ca_pem.is_some());
        let refused = [
            (section(p, None, None, None), "rules.tls_key_file"),
            (section(None, p, None, None), "rules.tls_cert_file"),
            (section(None, None, p, Some(ClientAuth::Required)), "rules.tls_cert_file"),
            (section(p, p, None, Some(ClientAuth::Optional)), "rules.tls_client_ca_file"),
            (section(p, p, p, None), "rules.tls_client_auth"),
            (section(Some(&not_pem), p, None, None), "rules.tls_cert_file"),
            (section(p, Some(&dir.path().join("absent")), None, None), "rules.tls_key_file"),
        ];
        for (section, key) in refused {
            let err = section.validate("rules.tls_").expect_err(key);
            assert_eq!(err.key, key, "{err}");
        }
    }
}
