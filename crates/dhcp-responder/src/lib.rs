//! Bootfleet's DHCP responder — the protocol core, without I/O.
//!
//! [`wire`] turns a datagram into a validated [`wire::Request`] by walking
//! the options itself instead of trusting a general-purpose decoder (which,
//! for dhcproto 0.15, may drop every option after an undecodable one while
//! still returning Ok, keeps only the first architecture of option 93, and
//! trips a debug assertion on a malformed option 94). [`client`] tells PXE,
//! iPXE and UEFI HTTP-boot clients and their architecture apart.
//!
//! Not built yet (issue 5): the reply logic for proxy and full mode,
//! leases in the store, the socket shell and the HA election.
#![warn(missing_docs)]

pub mod client;
pub mod wire;
