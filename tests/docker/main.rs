//! End to end through the real dockerd: legacy and managed plugins, compose as shipped on the installed driver, escapes, snapshots and backups, pools.

#[path = "../support/mod.rs"]
mod support;

mod backup;
mod compose;
mod databases;
mod escapes;
mod legacy_driver;
mod managed;
mod pool;
mod snapshots;
