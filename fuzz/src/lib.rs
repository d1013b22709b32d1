//! The harness bodies of the fuzz targets. `harness.rs` is also compiled into the main crate's
//! `tests/hardening/fuzz.rs`, which replays every seed and every saved crash as a plain test.

pub mod harness;
