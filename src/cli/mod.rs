//! Command-line parsing and dispatch only: one file per command group.

mod agent_cmd;
mod backup_cmd;
mod dr_cmd;
mod output;
mod plugin_cmd;
mod pool_cmd;
mod progress;
mod remote_cmd;
mod snapshot_cmd;
mod usage_cmd;
mod volume_cmd;
mod workspace_cmd;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::core::layout::DEFAULT_ROOT;

/// allspark: Docker volume plugin, snapshots, backups.
#[derive(Parser, Debug)]
#[command(name = "allspark", version, about, propagate_version = true)]
pub struct Cli {
    /// State root shared by the plugin, the agent and the CLI.
    #[arg(long, global = true, env = "ALLSPARK_ROOT", default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Where the host's `/` is visible to this process (the managed plugin and agent container use /host).
    #[arg(
        long,
        global = true,
        env = "ALLSPARK_HOST_PREFIX",
        hide_env_values = true
    )]
    pub host_prefix: Option<PathBuf>,
    /// Host directory under which `device=` paths are allowed (repeatable; env: colon list) [default: <root>].
    #[arg(
        long = "bind-root",
        global = true,
        env = "ALLSPARK_BIND_ROOTS",
        value_delimiter = ':'
    )]
    pub bind_roots: Vec<PathBuf>,
    /// Docker endpoint (for foreign volumes, labels, dumps).
    #[arg(long, global = true, env = "ALLSPARK_DOCKER", default_value = crate::docker::DEFAULT_DOCKER)]
    pub docker: String,
    /// Codec of new snapshot chains and of backups: zstd or gzip (a volume's `compression=` option wins).
    #[arg(
        long,
        global = true,
        env = "ALLSPARK_COMPRESSION",
        default_value = "zstd"
    )]
    pub compression: crate::core::options::Compression,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The allowed bind roots (default: the state root).
    pub fn bind_roots(&self) -> Vec<PathBuf> {
        if self.bind_roots.is_empty() {
            vec![self.root.clone()]
        } else {
            self.bind_roots.clone()
        }
    }

    /// Host directories no `device=` may lie in or around besides the state root's own: the
    /// backup root (`ALLSPARK_BACKUP_ROOT`, default /backups/allspark).
    pub fn protected_dirs(&self) -> Vec<PathBuf> {
        let backups = std::env::var_os("ALLSPARK_BACKUP_ROOT")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(crate::core::layout::DEFAULT_BACKUP_ROOT));
        vec![backups]
    }

    /// A driver over the records, for commands that create, remove or move volumes.
    pub fn driver(
        &self,
        mount_dir: Option<PathBuf>,
        snapshot_wait: std::time::Duration,
    ) -> anyhow::Result<crate::plugin::driver::Driver> {
        let layout = crate::core::layout::Layout::new(&self.root);
        let settings = crate::plugin::driver::DriverSettings {
            mount_dir: mount_dir.unwrap_or_else(|| layout.mounts_dir()),
            bind_roots: self.bind_roots(),
            view: crate::core::layout::HostView::new(self.host_prefix.as_deref()),
            snapshot_wait,
            protected: self.protected_dirs(),
        };
        Ok(crate::plugin::host_driver(layout, settings)?)
    }

    /// The shared context of snapshot and backup work.
    pub fn ctx(&self) -> crate::context::Ctx {
        crate::context::Ctx {
            layout: crate::core::layout::Layout::new(&self.root),
            view: crate::core::layout::HostView::new(self.host_prefix.as_deref()),
            docker_url: self.docker.clone(),
            compression: self.compression,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the volume driver on a Unix socket.
    Plugin(plugin_cmd::PluginArgs),
    /// Run the companion agent: snapshots on hooks and labels, schedules, metrics.
    Agent(agent_cmd::AgentArgs),
    /// Snapshots: create, ls, verify, restore, rm, prune.
    #[command(subcommand)]
    Snapshot(snapshot_cmd::SnapshotCmd),
    /// Backups: run daily|weekly|monthly, ls, verify, restore, prune.
    #[command(subcommand)]
    Backup(backup_cmd::BackupCmd),
    /// Volumes: list, inspect, migrate, cleanup.
    #[command(subcommand)]
    Volume(volume_cmd::VolumeCmd),
    /// Workspace cleanup: snapshot, then remove old temporary and unused project volumes.
    #[command(subcommand)]
    Workspace(workspace_cmd::WorkspaceCmd),
    /// Per-volume size, capacity, class, snapshots; filesystems holding volumes.
    Usage(usage_cmd::UsageArgs),
    /// Storage pools: ls, usage (configured on the plugin with --pool / ALLSPARK_POOLS).
    #[command(subcommand)]
    Pool(pool_cmd::PoolCmd),
    /// Off-site copies on S3-compatible storage, age-encrypted: add, ls, rm, push, prune, verify.
    #[command(subcommand)]
    Remote(remote_cmd::RemoteCmd),
    /// Disaster recovery: rebuild this host's volumes from a remote.
    #[command(subcommand)]
    Dr(dr_cmd::DrCmd),
}

/// Parse, run, and return the exit status (0 done, 1 failed, 2 usage error).
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    crate::core::logging::init();
    if !matches!(cli.command, Command::Plugin(_) | Command::Agent(_)) {
        // A command whose output is piped into `head` ends quietly when the pipe closes, as
        // other Unix tools do (the long-running processes keep Rust's default: EPIPE errors).
        // SAFETY: setting a signal disposition to the default, before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Plugin(ref a) => plugin_cmd::run(&cli, a),
        Command::Volume(ref c) => volume_cmd::run(&cli, c),
        Command::Workspace(ref c) => workspace_cmd::run(&cli, c),
        Command::Agent(ref a) => agent_cmd::run(cli.ctx(), a),
        Command::Snapshot(ref c) => snapshot_cmd::run(&cli.ctx(), c),
        Command::Backup(ref c) => backup_cmd::run(&cli.ctx(), c),
        Command::Usage(ref a) => usage_cmd::run(&cli, a),
        Command::Pool(ref c) => pool_cmd::run(&cli, c),
        Command::Remote(ref c) => remote_cmd::run(&cli.ctx().layout, c),
        Command::Dr(ref c) => dr_cmd::run(&cli, c),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("allspark: {e:#}");
            1
        }
    }
}
