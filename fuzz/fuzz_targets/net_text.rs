//! Fuzz target `net_text`: see `c2q::fuzz::net_text`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| c2q::fuzz::net_text(data));
