//! Bootfleet's TFTP server.
//!
//! The protocol is a sans-IO core: [`wire`] parses and encodes packets,
//! [`options`] negotiates RFC 2347/2348/2349/7440 options, [`transfer`] is
//! the per-transfer state machine (packets and timer expiries in, actions
//! out), [`netascii`] converts text as it streams, [`path`] decides which
//! names may be served. The `runtime` feature
//! (default) adds the tokio [`server`] that owns sockets, files and timers.
//!
//! Why not the `tftpd` crate the customer named: it blocks one OS thread
//! per transfer with no limit, serves only a directory, logs with println,
//! leaks absolute server paths in error packets, follows symlinks out of
//! its root, accepts non-standard `utimeout`/`windowwait` options that let a
//! client force retransmit storms, and never cleans its client map. It stays
//! in the tests and benchmarks as a peer.
#![warn(missing_docs)]

#[cfg(any(test, fuzzing))]
pub mod fuzz_logic;
pub mod netascii;
pub mod options;
pub mod path;
#[cfg(feature = "runtime")]
pub mod server;
pub mod transfer;
pub mod wire;
