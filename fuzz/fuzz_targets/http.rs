//! cargo-fuzz target `http`: see `allspark_fuzz::harness::http` for what it drives and checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| allspark_fuzz::harness::http(data));
