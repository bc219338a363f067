#![no_main]
//! Fuzz target `chain`: see fuzz/README.md and `targets::chain`.

#[path = "../shared/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::chain(data));
