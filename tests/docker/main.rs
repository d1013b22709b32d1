//! End to end through the real dockerd: legacy and managed plugins, compose as shipped on the installed driver, escapes, snapshots, backups and disaster recovery from a remote (also of the compose platform onto a freshly installed host), pools.

#[path = "../support/mod.rs"]
mod support;

mod backup;
mod compose;
mod databases;
mod dump_override;
mod escapes;
mod fresh_host;
mod legacy_driver;
mod managed;
mod platform;
mod pool;
mod remote;
mod shared_family;
mod snapshots;
