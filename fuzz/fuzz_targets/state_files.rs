//! cargo-fuzz target `state_files`: see `allspark_fuzz::harness::state_files` for what it drives and checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| allspark_fuzz::harness::state_files(data));
