#![no_main]
//! Any bytes, as a request plus a session of datagrams and timeouts
//! against one transfer: no panic, no block outside the file.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bootfleet_tftp_server::fuzz_logic::transfer_session(data);
});
