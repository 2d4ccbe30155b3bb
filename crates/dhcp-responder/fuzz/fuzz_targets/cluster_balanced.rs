#![no_main]
//! Any bytes as a script for three full-mode machines in load-balancing
//! mode sharing a simulated store: memberships joining, lapsing (late
//! writes refused by the fence) and seen late, so members disagree about
//! who owns a client; requests, store operations run late, failed or lost,
//! watch events out of order, stale reloads, partitions and clock jumps.
//! Every ACK must stand on a committed lease, and no address may be ACKed
//! to two clients for overlapping times.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bootfleet_dhcp_responder::fuzz_logic::cluster::balanced_interleaving(data);
});
