#![no_main]
//! Any bytes as a DHCP request: when the own parser accepts them, dhcproto
//! must decode them to the same header and the same values for the options
//! the responder reads (save dhcproto's known shortfalls; see
//! fuzz_logic::differential).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bootfleet_dhcp_responder::fuzz_logic::differential::parsers_agree(data);
});
