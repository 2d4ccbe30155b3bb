#![no_main]
//! Any bytes as one DHCP datagram through parse, client detection, the
//! proxy decision for every verdict, encoding and pool choice: no panic,
//! every reply a well-formed BOOTREPLY.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bootfleet_dhcp_responder::fuzz_logic::decide_path(data);
});
