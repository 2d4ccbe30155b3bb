//! Bootfleet's NBD server: vDisks streamed as block devices.
//!
//! The protocol is a sans-IO core: [`wire`] holds the constants and the
//! encoders, [`options`] the handshake's parsing and export descriptions,
//! [`request`] the checks a transmission request must pass, and
//! [`session`] the per-connection state machine (bytes and events in,
//! bytes and actions out). The `runtime` feature (default) adds the
//! [`export`]s (read-only files), the copy-on-write write cache
//! ([`overlay`]), a fixed table of exports ([`static_exports`]), counters
//! ([`metrics`]) and the tokio [`server`].
#![warn(missing_docs)]

#[cfg(feature = "runtime")]
pub mod export;
#[cfg(any(test, fuzzing))]
pub mod fuzz_logic;
#[cfg(feature = "runtime")]
pub mod metrics;
pub mod options;
#[cfg(feature = "runtime")]
pub mod overlay;
pub mod request;
#[cfg(feature = "runtime")]
pub mod server;
pub mod session;
#[cfg(feature = "runtime")]
pub mod static_exports;
pub mod wire;
