#![no_main]
//! Fuzz target `cgroup`: see fuzz/README.md and `targets::cgroup`.

#[path = "../shared/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::cgroup(data));
