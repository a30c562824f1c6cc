//! Fuzz target `model`: see `c2q::fuzz::model`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| c2q::fuzz::model(data));
