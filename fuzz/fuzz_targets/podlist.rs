#![no_main]
//! Fuzz target `podlist`: see fuzz/README.md and `targets::podlist`.

#[path = "../shared/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::podlist(data));
