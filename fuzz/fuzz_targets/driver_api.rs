//! cargo-fuzz target `driver_api`: see `allspark_fuzz::harness::driver_api` for what it drives and checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| allspark_fuzz::harness::driver_api(data));
