//! Fuzz target `net_binary`: see `c2q::fuzz::net_binary`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| c2q::fuzz::net_binary(data));
