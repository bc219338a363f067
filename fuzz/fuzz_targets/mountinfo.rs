#![no_main]
//! Fuzz target `mountinfo`: see fuzz/README.md and `targets::mountinfo`.

#[path = "../shared/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::mountinfo(data));
