//! The rules engine's errors, typed by what the caller does about them.

/// What went wrong; maps one-to-one onto gRPC status codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RulesError {
    /// The request is wrong; `field` names what (e.g. `rules[2].match.all[0].cidr`).
    #[error("{field}: {message}")]
    Invalid {
        /// Path of the offending field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The named object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A concurrent change or a reference prevents the write.
    #[error("{0}")]
    Conflict(String),
    /// The write needs the admin credential.
    #[error("{0}")]
    Unauthenticated(String),
    /// The store cannot be reached (reads still work from the snapshot).
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// Anything else.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RulesError {
    /// An invalid-argument error about `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), message: message.into() }
    }

    /// Prefixes the field path (for errors from nested validation).
    #[must_use]
    pub fn within(self, prefix: &str) -> Self {
        match self {
            Self::Invalid { field, message } => {
                let field = if field.is_empty() { prefix.to_owned() } else { format!("{prefix}.{field}") };
                Self::Invalid { field, message }
            }
            other => other,
        }
    }
}
