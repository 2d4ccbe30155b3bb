//! Connecting to a rules engine, with the admin token attached to every
//! request (used by the CLI, the boot services and tests). `https://` URLs
//! always use TLS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bootfleet_proto::v1::rules_service_client::RulesServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

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
    #[error("the token contains characters that cannot be sent in a header")]
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
    endpoint_with_identity(url, ca_file, None)
}

/// [`endpoint`], presenting the client certificate and key in `identity`
/// (PEM files) to servers that ask for one (`tls_client_auth`).
pub fn endpoint_with_identity(
    url: &str,
    ca_file: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<Endpoint, ConnectError> {
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
            let config = match identity {
                Some((cert, key)) => {
                    let read = |path: &Path| {
                        std::fs::read(path).map_err(|e| ConnectError::CaFile {
                            path: path.to_owned(),
                            reason: e.to_string(),
                        })
                    };
                    config.identity(Identity::from_pem(read(cert)?, read(key)?))
                }
                None => config,
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
    connect_lazy_with(url, None)
}

/// [`connect_lazy`], sending `token` (a boot service's service token, so
/// that its Evaluate calls record) with every request.
pub fn connect_lazy_with(
    url: &str,
    token: Option<&bootfleet_core::auth::Token>,
) -> Result<Client, ConnectError> {
    let token = BearerToken::new(token.map(bootfleet_core::auth::Token::expose))?;
    let channel = endpoint(url, None)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(3))
        .connect_lazy();
    Ok(RulesServiceClient::with_interceptor(channel, token))
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
    connect_channel_with_identity(url, ca_file, None).await
}

/// [`connect_channel`], presenting a client certificate as
/// [`endpoint_with_identity`] does.
pub async fn connect_channel_with_identity(
    url: &str,
    ca_file: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<Channel, ConnectError> {
    let endpoint = endpoint_with_identity(url, ca_file, identity)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    let tls = endpoint.uri().scheme_str() == Some("https");
    endpoint
        .connect()
        .await
        .map_err(|e| ConnectError::Unreachable { url: url.to_owned(), cause: Unreachable::classify(&e, tls) })
}

/// How `bootfleet apply` applies a manifest.
#[derive(Clone, Debug, Default)]
pub struct ApplyOptions {
    /// Activate after staging.
    pub activate: bool,
    /// Only compute the plan.
    pub dry_run: bool,
    /// Remove staged objects and rules the manifest does not name.
    pub prune: bool,
    /// Stage image profiles whose files the catalog lacks.
    pub allow_missing_images: bool,
    /// Where the manifest came from, named in errors.
    pub source: String,
}

/// Applies a manifest in one `Apply` call: every profile, location and
/// rule is validated, then staged in one transaction or not at all; the
/// response carries the plan and, if asked, the activation.
pub async fn apply_manifest(
    client: &mut Client,
    manifest: crate::manifest::Manifest,
    options: ApplyOptions,
) -> Result<bootfleet_proto::v1::ApplyResponse, tonic::Status> {
    let request = bootfleet_proto::v1::ApplyRequest {
        image_profiles: manifest.image_profiles,
        host_profiles: manifest.host_profiles,
        locations: manifest.locations,
        replace_rules: manifest.rules.is_some(),
        rules: manifest.rules.unwrap_or_default(),
        prune: options.prune,
        dry_run: options.dry_run,
        activate: options.activate,
        expected_revision: 0,
        source: options.source,
        allow_missing_images: options.allow_missing_images,
    };
    Ok(client.apply(request).await?.into_inner())
}
