#![no_main]
//! Any bytes, as one client connection with completions and a shutdown
//! interleaved: no panic, no request outside the export or over the limits.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bootfleet_nbd::fuzz_logic::session(data);
});
