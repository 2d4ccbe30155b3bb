//! Connecting to a rules engine, with the admin token attached to every
//! request (used by the CLI, the boot services and tests). `https://` URLs
//! always use TLS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bootfleet_proto::v1::rules_service_client::RulesServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Adds `authorization: Bearer <token>` when a token is set.
#[derive(Clone, Debug, Default)]
pub struct BearerToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    /// The header for `token` (none when `None`).
    pub fn new(token: Option<&str>) -> Result<Self, ConnectError> {
        match token {
            Some(t) => Ok(Self(Some(format!("Bearer {t}").parse().map_err(|_| ConnectError::BadToken)?))),
            None => Ok(Self(None)),
        }
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A RulesService client.
pub type Client = RulesServiceClient<InterceptedService<Channel, BearerToken>>;

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is malformed or its scheme is neither http nor https.
    #[error("{url:?} is not a valid server URL (like http://127.0.0.1:7070): {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// Why it is bad.
        reason: String,
    },
    /// The token cannot be sent as a header.
    #[error("the admin token contains characters that cannot be sent in a header")]
    BadToken,
    /// The CA file for an https URL cannot be used.
    #[error("cannot use the CA file {path}: {reason}")]
    CaFile {
        /// The file given.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// Nobody answered, or not in the expected protocol.
    #[error("cannot reach {url}: {cause}")]
    Unreachable {
        /// The URL given.
        url: String,
        /// What went wrong, as far as the transport error tells.
        cause: Unreachable,
    },
}

/// Why a server could not be reached, read from a transport error's
/// `source()` chain so that callers can explain it (and pick an exit code)
/// without parsing text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unreachable {
    /// Nothing listens on that port.
    #[error("connection refused")]
    Refused,
    /// No answer in time.
    #[error("timed out")]
    TimedOut,
    /// The host name did not resolve.
    #[error("name not resolved ({0})")]
    NameNotResolved(String),
    /// The TLS handshake failed; against a plaintext server this is what an
    /// https URL gives.
    #[error("TLS handshake failed (is the server serving TLS?): {0}")]
    Tls(String),
    /// Anything else, with the innermost error's text.
    #[error("{0}")]
    Other(String),
}

impl Unreachable {
    /// Classifies a transport error by walking its `source()` chain.
    /// `tls` says whether the connection used TLS: then a malformed or cut
    /// answer during connect means the handshake failed.
    pub fn classify(error: &(dyn std::error::Error + 'static), tls: bool) -> Self {
        let mut innermost = error.to_string();
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = current {
            innermost = e.to_string();
            if e.is::<tonic::TimeoutExpired>() {
                return Self::TimedOut;
            }
            // hyper-util names its resolver failures "dns error"; the io
            // error under it only says what getaddrinfo said.
            if innermost == "dns error" {
                let detail = e.source().map_or_else(String::new, ToString::to_string);
                return Self::NameNotResolved(detail);
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind;
                match io.kind() {
                    ErrorKind::ConnectionRefused => return Self::Refused,
                    ErrorKind::TimedOut => return Self::TimedOut,
                    ErrorKind::InvalidData | ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset if tls => {
                        return Self::Tls(io.to_string());
                    }
                    _ => {}
                }
            }
            current = e.source();
        }
        if tls { Self::Tls(innermost) } else { Self::Other(innermost) }
    }
}

/// An endpoint for `url`. `https://` always means TLS, verified against the
/// system's roots or, when `ca_file` is given, against that PEM file only
/// (a private CA); there is no fallback to plaintext, so a token is never
/// sent in clear to an https URL. Any scheme but http and https is refused.
pub fn endpoint(url: &str, ca_file: Option<&Path>) -> Result<Endpoint, ConnectError> {
    let bad = |reason: String| ConnectError::BadUrl { url: url.to_owned(), reason };
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| bad(e.to_string()))?;
    match endpoint.uri().scheme_str() {
        Some("http") => Ok(endpoint),
        Some("https") => {
            let config = match ca_file {
                Some(path) => {
                    let pem = std::fs::read(path)
                        .map_err(|e| ConnectError::CaFile { path: path.to_owned(), reason: e.to_string() })?;
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
                }
                None => ClientTlsConfig::new().with_native_roots(),
            };
            // tonic checks the roots here; a failure is about the local
            // setup (no system roots, an unusable CA file), not the URL.
            endpoint.tls_config(config).map_err(|e| {
                let reason = std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
                match ca_file {
                    Some(path) => ConnectError::CaFile { path: path.to_owned(), reason },
                    None => bad(format!("setting up TLS: {reason}")),
                }
            })
        }
        _ => Err(bad("the scheme must be http:// or https://".into())),
    }
}

/// A client that connects on first use and reconnects by itself: for
/// services that must start even while the rules engine is down. An
/// https URL uses TLS with the system's roots, as [`endpoint`] does.
pub fn connect_lazy(url: &str) -> Result<Client, ConnectError> {
    let channel = endpoint(url, None)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(3))
        .connect_lazy();
    Ok(RulesServiceClient::with_interceptor(channel, BearerToken(None)))
}

/// Connects (within 5 s) to `url`, sending `token` with every request.
pub async fn connect(url: &str, token: Option<&str>) -> Result<Client, ConnectError> {
    connect_with(url, token, None).await
}

/// [`connect`], trusting only `ca_file` for an https URL when given.
pub async fn connect_with(
    url: &str,
    token: Option<&str>,
    ca_file: Option<&Path>,
) -> Result<Client, ConnectError> {
    // Checked before connecting so a bad token is not reported as a
    // network problem.
    let token = BearerToken::new(token)?;
    let channel = connect_channel(url, ca_file).await?;
    Ok(RulesServiceClient::with_interceptor(channel, token))
}

/// Connects a channel (within 5 s, calls time out after 30 s) for any of
/// Bootfleet's gRPC services, under [`endpoint`]'s TLS rule.
pub async fn connect_channel(url: &str, ca_file: Option<&Path>) -> Result<Channel, ConnectError> {
    let endpoint =
        endpoint(url, ca_file)?.connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(30));
    let tls = endpoint.uri().scheme_str() == Some("https");
    endpoint
        .connect()
        .await
        .map_err(|e| ConnectError::Unreachable { url: url.to_owned(), cause: Unreachable::classify(&e, tls) })
}

/// One step of applying a manifest, reported as it completes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A profile or location was stored; `kind` is "image profile", "host profile" or "location".
    Object {
        /// What it is.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The working rule set was replaced.
    Rules {
        /// Rules in it.
        count: usize,
        /// Store revision of the write.
        revision: i64,
    },
    /// The working set was activated.
    Activated {
        /// The new active version.
        version: u64,
        /// Store revision of the activation.
        revision: i64,
    },
}

/// Why applying stopped: what was being applied, and the server's answer.
#[derive(Debug)]
pub struct ApplyError {
    /// E.g. `image profile "tiny"` or `rules`.
    pub what: String,
    /// The server's answer.
    pub status: tonic::Status,
}

/// Applies a manifest the way `bootfleet apply` does: profiles and
/// locations, then the working rule set, then activation when asked.
/// `each` hears every completed step; the first failure stops it.
pub async fn apply_manifest(
    client: &mut Client,
    manifest: crate::manifest::Manifest,
    activate: bool,
    mut each: impl FnMut(&Applied),
) -> Result<(), ApplyError> {
    use bootfleet_proto::v1 as pb;
    use pb::profile_object::Object;
    let objects = manifest
        .image_profiles
        .into_iter()
        .map(Object::Image)
        .chain(manifest.host_profiles.into_iter().map(Object::Host))
        .chain(manifest.locations.into_iter().map(Object::Location));
    for object in objects {
        let (kind, name) = match &object {
            Object::Image(p) => ("image profile", p.name.clone()),
            Object::Host(p) => ("host profile", p.name.clone()),
            Object::Location(l) => ("location", l.name.clone()),
        };
        let request = pb::PutProfileRequest {
            profile: Some(pb::ProfileObject { object: Some(object), revision: 0 }),
            expected_revision: 0,
        };
        if let Err(status) = client.put_profile(request).await {
            return Err(ApplyError { what: format!("{kind} {name:?}"), status });
        }
        each(&Applied::Object { kind, name });
    }
    if let Some(rules) = manifest.rules {
        let count = rules.len();
        let request = pb::ReplaceWorkingSetRequest { rules, expected_revision: 0 };
        let response = client
            .replace_working_set(request)
            .await
            .map_err(|status| ApplyError { what: "rules".into(), status })?
            .into_inner();
        each(&Applied::Rules { count, revision: response.revision });
    }
    if activate {
        let response = client
            .activate(pb::ActivateRequest { expected_revision: 0 })
            .await
            .map_err(|status| ApplyError { what: "activation".into(), status })?
            .into_inner();
        each(&Applied::Activated { version: response.version, revision: response.revision });
    }
    Ok(())
}
