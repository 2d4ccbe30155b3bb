//! Bootfleet's image streamer: boot scripts rendered from the rules, image
//! files served over HTTP with ranges and validators, boot reports, and
//! replication of content-addressed files between replicas.
//!
//! Protocol logic is pure and separate from I/O:
//! - [`conditional`]: HTTP preconditions and byte ranges;
//! - [`script`]: iPXE scripts with failover URLs, per profile kind;
//! - [`query`]: boot-script and report parameters;
//! - [`catalog`]: the catalog, what the active rules need, what replicas hold;
//! - [`gc`]: which versions and files garbage collection removes.
//!
//! The service around them: [`blobs`] (verified local files) and [`server`]
//! (HTTP, gRPC, NBD, replication); boot progress goes to the store through
//! the rules engine's `store::boot_reports`, as from every boot service.
#![warn(missing_docs)]

pub mod blobs;
pub mod catalog;
pub mod client;
pub mod conditional;
pub mod gc;
pub mod metrics;
pub mod query;
pub mod script;
pub mod server;
