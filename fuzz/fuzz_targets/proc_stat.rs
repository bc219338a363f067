#![no_main]
//! Fuzz target `proc_stat`: see fuzz/README.md and `targets::proc_stat`.

#[path = "../shared/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::proc_stat(data));
