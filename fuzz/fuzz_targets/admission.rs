#![no_main]
//! Fuzz target `admission`: see fuzz/README.md and `targets::admission`.

#[path = "../shared/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::admission(data));
