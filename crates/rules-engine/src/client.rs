//! Connecting to a rules engine, with the admin token attached to every
//! request (used by the CLI, the boot services and tests).

use std::time::Duration;

use bootfleet_proto::v1::rules_service_client::RulesServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

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
    /// The URL is malformed.
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
    /// Nobody answered.
    #[error("cannot reach the rules engine at {url}: {reason}")]
    Unreachable {
        /// The URL given.
        url: String,
        /// The transport error.
        reason: String,
    },
}

/// A client that connects on first use and reconnects by itself: for
/// services that must start even while the rules engine is down.
pub fn connect_lazy(url: &str) -> Result<Client, ConnectError> {
    let channel = Endpoint::from_shared(url.to_owned())
        .map_err(|e| ConnectError::BadUrl { url: url.to_owned(), reason: e.to_string() })?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(3))
        .connect_lazy();
    Ok(RulesServiceClient::with_interceptor(channel, BearerToken(None)))
}

/// Connects (within 5 s) to `url`, sending `token` with every request.
pub async fn connect(url: &str, token: Option<&str>) -> Result<Client, ConnectError> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| ConnectError::BadUrl { url: url.to_owned(), reason: e.to_string() })?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    let channel = endpoint.connect().await.map_err(|e| ConnectError::Unreachable {
        url: url.to_owned(),
        reason: std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string),
    })?;
    Ok(RulesServiceClient::with_interceptor(channel, BearerToken::new(token)?))
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
