//! `allspark workspace prune`: old temporary volumes and unused project workspaces, snapshotted then removed.

use clap::Subcommand;

use super::Cli;

#[derive(Subcommand, Debug)]
pub enum WorkspaceCmd {
    /// Snapshot, then remove temporary volumes and unused project workspaces older than an age.
    Prune {
        /// Unused for longer than this (e.g. 30d, 12h, 2w).
        #[arg(long, value_parser = crate::ops::workspace::parse_age)]
        older_than: std::time::Duration,
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

pub(super) fn run(cli: &Cli, cmd: &WorkspaceCmd) -> anyhow::Result<()> {
    match cmd {
        WorkspaceCmd::Prune {
            older_than,
            dry_run,
        } => {
            let driver = cli.driver(None, crate::core::layout::DEFAULT_SNAPSHOT_WAIT)?;
            let done = crate::ops::workspace::prune(&cli.ctx(), &driver, *older_than, *dry_run)?;
            if done.is_empty() {
                println!("nothing to prune");
            }
            for (name, what) in done {
                println!("{name}: {what}");
            }
        }
    }
    Ok(())
}
