//! Command-line parsing and dispatch only: one file per command group.

mod plugin_cmd;
mod volume_cmd;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_ROOT;

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
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the volume driver on a Unix socket.
    Plugin(plugin_cmd::PluginArgs),
    /// Volumes: list, inspect.
    #[command(subcommand)]
    Volume(volume_cmd::VolumeCmd),
}

/// Parse, run, and return the exit status (0 done, 1 failed, 2 usage error).
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    crate::logging::init();
    let result = match cli.command {
        Command::Plugin(ref a) => plugin_cmd::run(&cli, a),
        Command::Volume(ref c) => volume_cmd::run(&cli, c),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("allspark: {e:#}");
            1
        }
    }
}
