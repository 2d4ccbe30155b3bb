//! Bootfleet's DHCP responder — the protocol core, without I/O.
//!
//! [`wire`] turns a datagram into a validated [`wire::Request`] by walking
//! the options itself instead of trusting a general-purpose decoder (which,
//! for dhcproto 0.15, may drop every option after an undecodable one while
//! still returning Ok, keeps only the first architecture of option 93, and
//! trips a debug assertion on a malformed option 94). [`client`] tells PXE,
//! iPXE and UEFI HTTP-boot clients and their architecture apart. [`proxy`]
//! decides and encodes proxyDHCP answers (boot file per architecture, the
//! script URL for iPXE, a URL and the echoed class for HTTP boot, silence
//! with a reason otherwise).
//!
//! Not built yet (issue 5): full-DHCP mode with leases in the store, the
//! port-4011 boot server, the socket shell bound to configured interfaces,
//! asking the rules engine, the HA election, and the real-client tests.
#![warn(missing_docs)]

pub mod client;
pub mod full;
pub mod proxy;
#[cfg(feature = "runtime")]
pub mod server;
pub mod wire;
