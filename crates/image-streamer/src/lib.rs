//! Bootfleet's image streamer: boot scripts rendered from the rules, image
//! files served over HTTP with ranges and validators, boot reports, and
//! replication of content-addressed files between replicas.
//!
//! Protocol logic is pure and separate from I/O:
//! - [`conditional`]: HTTP preconditions and byte ranges;
//! - [`script`]: iPXE scripts with failover URLs, per profile kind;
//! - [`query`]: boot-script and report parameters;
//! - [`catalog`]: the catalog, what the active rules need, what replicas hold.
//!
//! The service around them: [`blobs`] (verified local files), [`reports`]
//! (boot progress in the store) and [`server`] (HTTP, gRPC, replication).
#![warn(missing_docs)]

pub mod blobs;
pub mod catalog;
pub mod client;
pub mod conditional;
pub mod gc;
pub mod metrics;
pub mod query;
pub mod reports;
pub mod script;
pub mod server;
