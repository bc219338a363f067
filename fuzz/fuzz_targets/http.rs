#![no_main]
//! Fuzz target `http`: see fuzz/README.md and `targets::http`.

#[path = "../shared/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::http(data));
