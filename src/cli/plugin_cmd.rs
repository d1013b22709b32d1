//! `allspark plugin`: flags and environment of the volume driver process.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::Cli;
use crate::core::layout::{HostView, Layout, DEFAULT_SOCKET};
use crate::plugin::driver::DriverSettings;
use crate::plugin::{self, PluginConfig};

#[derive(Args, Debug)]
pub struct PluginArgs {
    /// Unix socket Docker connects to (its name is the driver name).
    #[arg(long, env = "ALLSPARK_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Directory where volumes are bind-mounted for containers [default: <root>/mounts].
    #[arg(long, env = "ALLSPARK_MOUNT_DIR")]
    pub mount_dir: Option<PathBuf>,
    /// Seconds a Mount waits for a snapshot in progress (keep below Docker's 120 s).
    #[arg(long, env = "ALLSPARK_SNAPSHOT_WAIT", default_value_t = 60)]
    pub snapshot_wait: u64,
    /// A storage pool NAME=SPEC, SPEC one of dir:PATH, btrfs:PATH, btrfs-image:PATH:SIZE
    /// (repeatable; env: comma list). Volumes choose one with -o pool=NAME; the pool
    /// `default` is <root>/volumes.
    #[arg(long = "pool", env = "ALLSPARK_POOLS", value_delimiter = ',')]
    pub pools: Vec<String>,
}

pub(super) fn run(cli: &Cli, a: &PluginArgs) -> anyhow::Result<()> {
    let layout = Layout::new(&cli.root);
    let pools = crate::pool::parse_defs(&a.pools).map_err(anyhow::Error::msg)?;
    plugin::run(PluginConfig {
        root: cli.root.clone(),
        socket: a.socket.clone(),
        pools,
        settings: DriverSettings {
            mount_dir: a.mount_dir.clone().unwrap_or_else(|| layout.mounts_dir()),
            bind_roots: cli.bind_roots(),
            view: HostView::new(cli.host_prefix.as_deref()),
            snapshot_wait: Duration::from_secs(a.snapshot_wait),
            protected: cli.protected_dirs(),
        },
    })
}
