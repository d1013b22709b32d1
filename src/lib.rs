//! allspark library: the `allspark plugin` process, the agent, and the operator CLI over shared state.
//!
//! - [`core`]: what every process shares: the state-root layout, names, options, records, spool.
//! - [`fs`]: file-system primitives: durable writes and locks, host paths, tree copies.
//! - [`plugin`]: the volume-driver process (socket server, protocol, driver, mounts).
//! - [`agent`]: the companion process (spool worker, Docker events, schedule, usage, alerts, metrics).
//! - [`archive`], [`snapshot`], [`backup`], [`usage`]: the data engines both processes and the CLI use.
//! - [`pool`]: storage pools (directories, btrfs, btrfs images): subvolumes, read-only snapshots, clones, quotas.
//! - [`remote`]: off-site copies on S3-compatible storage, age-encrypted; disaster recovery is [`ops::dr`].
//! - [`ops`]: operator workflows (migrate, workspace cleanup, templates, volume references, disaster recovery).
//! - [`docker`]: the Docker API façade; [`cli`]: one function per subcommand.

#![warn(unreachable_pub)]

pub mod agent;
pub mod archive;
pub(crate) mod backup;
pub mod cli;
pub mod context;
pub mod core;
pub(crate) mod docker;
pub mod fs;
pub mod ops;
pub mod plugin;
pub mod pool;
pub(crate) mod remote;
pub mod snapshot;
pub mod usage;
