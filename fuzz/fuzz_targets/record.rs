//! Fuzz target `record`: see `c2q::fuzz::record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| c2q::fuzz::record(data));
