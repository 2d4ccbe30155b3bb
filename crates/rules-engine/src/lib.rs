//! Bootfleet's rules engine: decides how each host boots.
//!
//! The pure part — normalized [`facts`], compiled [`matcher`] expressions,
//! indexed rule sets ([`ruleset`]), decisions ([`decide`]) and the
//! declarative [`manifest`] format — has no I/O and builds without the
//! `runtime` feature. With it (the default), [`store`] keeps rules, profiles
//! and host records in Bootfleet's `StateStore`, [`service`] answers the
//! `RulesService` gRPC API, and [`server::run`] serves it.
#![warn(missing_docs)]

#[cfg(feature = "runtime")]
pub mod client;
pub mod decide;
pub mod error;
pub mod facts;
#[cfg(feature = "runtime")]
pub mod host_settings;
pub mod manifest;
pub mod matcher;
#[cfg(feature = "runtime")]
pub mod metrics;
pub mod render;
pub mod ruleset;
#[cfg(feature = "runtime")]
pub mod server;
#[cfg(feature = "runtime")]
pub mod service;
pub mod staging;
#[cfg(feature = "runtime")]
pub mod store;
pub mod template;

pub use error::RulesError;

/// A reference from a rule to a named object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProfileRef {
    /// An image profile.
    Image(String),
    /// A host profile.
    Host(String),
    /// A location.
    Location(String),
}

impl ProfileRef {
    /// The referenced object's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Image(n) | Self::Host(n) | Self::Location(n) => n,
        }
    }
}

impl std::fmt::Display for ProfileRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Image(n) => write!(f, "image profile {n:?}"),
            Self::Host(n) => write!(f, "host profile {n:?}"),
            Self::Location(n) => write!(f, "location {n:?}"),
        }
    }
}
