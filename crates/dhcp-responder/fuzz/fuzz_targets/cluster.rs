#![no_main]
//! Any bytes as a script for three full-mode machines sharing a simulated
//! store: requests, store operations run late, failed or lost, watch
//! events out of order, stale reloads, elections, partitions and clock
//! jumps. Every ACK must stand on a committed lease, and no address may be
//! ACKed to two clients for overlapping times.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bootfleet_dhcp_responder::fuzz_logic::cluster::interleaving(data);
});
