//! What every Bootfleet service stands on.
//!
//! - [`store`]: the [`store::StateStore`] interface with its etcd and embedded
//!   backends;
//! - [`election`]: leader election with a guard that stops acting before the
//!   lease can expire;
//! - [`membership`]: live replica registration under a lease;
//! - [`snapshot`]: a watched in-memory copy of prefixes that keeps serving
//!   when the store is unreachable;
//! - [`config`], [`telemetry`], [`shutdown`], [`admin`], [`auth`]: the process shell
//!   every service binary shares;
//! - [`http_limits`]: the connection limits every HTTP listener applies.
#![warn(missing_docs)]

pub mod admin;
pub mod auth;
pub mod backoff;
pub mod config;
pub mod election;
pub mod grpc;
pub mod http_limits;
pub mod log_limit;
pub mod membership;
pub mod metrics;
pub mod process;
pub mod shutdown;
pub mod snapshot;
pub mod store;
pub mod telemetry;
