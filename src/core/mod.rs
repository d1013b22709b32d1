//! What every allspark process shares: the state-root layout, crash points (a test hook), names and ids, options, durable records, the spool, status and call statistics.

pub mod callstats;
pub mod crashpoint;
pub mod layout;
pub(crate) mod locks;
pub(crate) mod logging;
pub mod names;
pub mod options;
pub(crate) mod runtime;
pub mod snapshot_id;
pub mod spool;
pub mod status;
pub mod store;
