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
