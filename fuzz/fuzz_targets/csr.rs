#![no_main]
//! Fuzz target `csr`: see fuzz/README.md and `targets::csr`.

#[path = "../shared/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::csr(data));
