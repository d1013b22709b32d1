//! The CLI and the agent against a socket-level plugin: snapshots, backups, operations, usage, metrics, remotes and disaster recovery, pools.

#[path = "../support/mod.rs"]
mod support;

mod agent;
mod backup;
mod metrics;
mod operations;
mod own_fs;
mod pool;
mod pool_admin;
mod pool_send;
mod remote;
mod remote_chains;
mod shared_tree;
mod snapshots;
mod usage;
