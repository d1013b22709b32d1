//! cargo-fuzz target `extract`: see `allspark_fuzz::harness::extract` for what it drives and checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| allspark_fuzz::harness::extract(data));
