//! Bootfleet's NBD server: vDisks streamed as block devices.
//!
//! The protocol is a sans-IO core: [`wire`] holds the constants and the
//! encoders, [`options`] the handshake's parsing and export descriptions,
//! [`request`] the checks a transmission request must pass, and
//! [`session`] the per-connection state machine (bytes and events in,
//! bytes and actions out). For the client side, [`client`] is the
//! handshake a client that hands its socket to the kernel performs, and
//! [`netlink`] the messages that drive the Linux kernel's NBD client
//! ([`attach`] holds the rest of its decisions; all used by
//! `bootfleet-nbd-attach`, the `attach` feature's binary,
//! which moves a diskless machine's root to another replica when its
//! connection dies). The `runtime` feature (default) adds the
//! [`export`]s (read-only files), the copy-on-write write cache
//! ([`overlay`]), a fixed table of exports ([`static_exports`]), counters
//! ([`metrics`]), the tokio [`server`], and [`mirror`]: a write cache
//! whose changes reach a second replica before they are acknowledged.
#![warn(missing_docs)]

pub mod attach;
pub mod client;
#[cfg(feature = "runtime")]
pub mod export;
#[cfg(any(test, fuzzing))]
pub mod fuzz_logic;
#[cfg(feature = "runtime")]
pub mod metrics;
#[cfg(feature = "runtime")]
pub mod mirror;
pub mod netlink;
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
