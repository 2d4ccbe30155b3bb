//! Bootfleet's DHCP responder — the protocol core, without I/O.
//!
//! [`wire`] turns a datagram into a validated [`wire::Request`] by walking
//! the options itself instead of trusting a general-purpose decoder (which,
//! for dhcproto 0.15, may drop every option after an undecodable one while
//! still returning Ok, keeps only the first architecture of option 93 and
//! the last piece of a split option, and trips a debug assertion on a
//! malformed option 94); replies are written with dhcproto's encoder. [`client`] tells PXE,
//! iPXE and UEFI HTTP-boot clients and their architecture apart. [`proxy`]
//! decides and encodes proxyDHCP answers (boot file per architecture, the
//! script URL for iPXE, a URL and the echoed class for HTTP boot, silence
//! with a reason otherwise). [`relays`] decides whose relayed requests
//! are believed. [`shares`] says which replica answers which client
//! in load-balancing mode.
//! [`full`] is full mode's state machine: address pools, leases, and what
//! to write, confirm, read and answer (pure);
//! [`ndp`] builds the IPv6 router advertisement that ends iPXE's wait for
//! IPv6. The `runtime` feature adds [`server`]: sockets bound to the
//! configured interfaces, the rules-engine lookup, leases in the store and
//! the hot-standby election.
#![warn(missing_docs)]

pub mod boot_servers;
pub mod client;
pub mod full;
pub mod fuzz_logic;
pub mod ndp;
pub mod proxy;
pub mod relays;
#[cfg(feature = "runtime")]
pub mod server;
pub mod shares;
pub mod wire;
