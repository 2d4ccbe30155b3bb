//! Bearer tokens on gRPC calls (`authorization: Bearer <token>`) and the
//! role each one grants.
//!
//! A server holds [`Credentials`]: each configured token with its [`Role`]
//! and the setting it comes from (named in refusals). A call is checked for
//! a role, never for a particular token, so that other ways of proving one
//! (TLS client identities) can grant the same roles later.

use std::sync::Arc;

use tonic::{Request, Status};

/// What a caller may do. Each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The boot services: Evaluate that records host records.
    Service,
    /// Operators: every write (rules, profiles, images, repair).
    Admin,
}

impl Role {
    /// The role's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A bearer token read from configuration; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl Token {
    /// Wraps `token`.
    pub fn new(token: impl Into<Arc<str>>) -> Self {
        Self(token.into())
    }

    /// The token itself, to send or compare.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A fresh random token (32 bytes from the kernel, hex): for
    /// processes that hand one to their own parts, like `bootfleet up`.
    pub fn random() -> std::io::Result<Self> {
        use std::io::Read;
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Self::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<token>")
    }
}

/// Compares without leaking the position of the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a call's `authorization` header proved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No token was sent.
    Anonymous,
    /// A token was sent that no configured credential matches.
    Rejected,
    /// A configured credential with this role.
    Authenticated(Role),
}

#[derive(Clone)]
struct Credential {
    role: Role,
    token: Token,
}

/// The tokens a server accepts, each granting a role.
#[derive(Clone, Default)]
pub struct Credentials {
    granted: Vec<Credential>,
    /// The setting that configures each role, for messages.
    settings: Vec<(Role, &'static str)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let roles: Vec<Role> = self.granted.iter().map(|c| c.role).collect();
        f.debug_struct("Credentials").field("roles", &roles).finish()
    }
}

impl Credentials {
    /// No credential yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `token` (if configured) for `role`; `setting` is the
    /// configuration key that sets it, named when the role is missing.
    pub fn grant(mut self, role: Role, token: Option<Token>, setting: &'static str) -> Self {
        if let Some(token) = token {
            self.granted.push(Credential { role, token });
        }
        self.settings.push((role, setting));
        self
    }

    /// Who `request` says it is. Every configured token is compared, so
    /// the time taken does not tell which one came close.
    pub fn caller<T>(&self, request: &Request<T>) -> Caller {
        let Some(header) = request.metadata().get("authorization") else { return Caller::Anonymous };
        let given = header.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        let mut found = None;
        for credential in &self.granted {
            if constant_time_eq(given.as_bytes(), credential.token.expose().as_bytes()) {
                found = found.max(Some(credential.role));
            }
        }
        found.map_or(Caller::Rejected, Caller::Authenticated)
    }

    /// Accepts `request` only if it proves `needed` or a role that
    /// includes it; refusals say what is missing and which setting
    /// provides it.
    pub fn require<T>(&self, request: &Request<T>, needed: Role) -> Result<Role, Status> {
        let able = |role: Role| self.granted.iter().any(|c| c.role >= role);
        if !able(needed) {
            let setting = self.setting(needed);
            return Err(Status::unauthenticated(format!(
                "{} are disabled: no {needed} token is configured ({setting})",
                purpose(needed)
            )));
        }
        match self.caller(request) {
            Caller::Authenticated(role) if role >= needed => Ok(role),
            Caller::Authenticated(role) => Err(Status::permission_denied(format!(
                "the {role} token may not make this call: it needs the {needed} token ({})",
                self.setting(needed)
            ))),
            Caller::Anonymous => Err(Status::unauthenticated(format!(
                "no token was sent: {} need the {needed} token (authorization: Bearer <token>)",
                purpose(needed)
            ))),
            Caller::Rejected => Err(Status::unauthenticated(format!(
                "the token sent was rejected: it is not the {needed} token"
            ))),
        }
    }

    fn setting(&self, role: Role) -> &'static str {
        self.settings.iter().find(|(r, _)| *r == role).map_or("no setting", |(_, s)| s)
    }
}

/// What a role's calls are, in messages.
fn purpose(role: Role) -> &'static str {
    match role {
        Role::Service => "recorded evaluations",
        Role::Admin => "writes",
    }
}

/// Accepts `request` only if it carries the admin `token`. Without a
/// configured token writes are refused altogether; `setting` names the
/// configuration key that enables them, for the error message.
pub fn authorize<T>(request: &Request<T>, token: Option<&str>, setting: &'static str) -> Result<(), Status> {
    Credentials::new()
        .grant(Role::Admin, token.map(Token::new), setting)
        .require(request, Role::Admin)
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    fn with_token(token: &str) -> Request<()> {
        let mut request = Request::new(());
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    }

    #[test]
    fn tokens_are_checked() {
        let request = Request::new(());
        assert!(
            authorize(&request, None, "x.admin_token_file")
                .unwrap_err()
                .message()
                .contains("x.admin_token_file")
        );
        let missing = authorize(&request, Some("0123456789abcdef"), "x").unwrap_err();
        assert!(missing.message().contains("no token was sent"), "{missing:?}");
        let request = with_token("0123456789abcdef");
        assert!(authorize(&request, Some("0123456789abcdef"), "x").is_ok());
        let rejected = authorize(&request, Some("0123456789abcdeX"), "x").unwrap_err();
        assert!(rejected.message().contains("rejected"), "{rejected:?}");
    }

    #[test]
    fn admin_includes_service_and_service_does_not_write() {
        let credentials = Credentials::new()
            .grant(Role::Admin, Some(Token::new("admin-token-0123456789")), "x.admin_token_file")
            .grant(Role::Service, Some(Token::new("service-token-0123456789")), "x.service_token_file");
        let admin = with_token("admin-token-0123456789");
        let service = with_token("service-token-0123456789");
        assert_eq!(credentials.caller(&admin), Caller::Authenticated(Role::Admin));
        assert_eq!(credentials.caller(&service), Caller::Authenticated(Role::Service));
        assert_eq!(credentials.caller(&with_token("nobody-0123456789")), Caller::Rejected);
        assert_eq!(credentials.caller(&Request::new(())), Caller::Anonymous);
        assert_eq!(credentials.require(&admin, Role::Service).unwrap(), Role::Admin);
        assert_eq!(credentials.require(&service, Role::Service).unwrap(), Role::Service);
        let denied = credentials.require(&service, Role::Admin).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
        assert!(denied.message().contains("x.admin_token_file"), "{denied:?}");
    }

    #[test]
    fn a_role_without_its_token_is_named_with_its_setting() {
        let credentials = Credentials::new().grant(Role::Admin, None, "x.admin_token_file").grant(
            Role::Service,
            Some(Token::new("service-token-0123456789")),
            "x.service_token_file",
        );
        let refused = credentials.require(&with_token("service-token-0123456789"), Role::Admin).unwrap_err();
        assert!(refused.message().contains("x.admin_token_file"), "{refused:?}");
        // An admin token alone also serves the service role.
        let admin_only = Credentials::new()
            .grant(Role::Admin, Some(Token::new("admin-token-0123456789")), "x.admin_token_file")
            .grant(Role::Service, None, "x.service_token_file");
        assert!(admin_only.require(&with_token("admin-token-0123456789"), Role::Service).is_ok());
    }

    #[test]
    fn random_tokens_differ_and_are_long() {
        let (a, b) = (Token::random().unwrap(), Token::random().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 64);
        assert_eq!(format!("{a:?}"), "<token>");
    }
}
