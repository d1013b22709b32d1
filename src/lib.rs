//! allspark library: every piece the `allspark` binary dispatches to.

pub mod agent;
pub mod api;
pub mod archive;
pub mod callstats;
pub mod cli;
pub mod config;
pub mod docker;
pub mod driver;
pub mod fsutil;
pub mod hostpath;
pub mod logging;
pub mod mounts;
pub mod names;
pub mod options;
pub mod plugin;
pub mod protocol;
pub mod server;
pub mod snapshot;
pub mod snapshot_id;
pub mod spool;
pub mod status;
pub mod store;
pub mod template;
pub mod usage;
pub mod volref;
