//! `allspark volume ls|inspect|migrate|cleanup|push|pull`: the records as operators see them, and moving them.

use clap::Subcommand;

use super::Cli;
use crate::core::layout::Layout;
use crate::core::names::VolumeName;
use crate::core::store::Store;
use crate::plugin::status;
use crate::pool::location::Locate;

#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    /// List volumes.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show one volume's record and status.
    Inspect { name: VolumeName },
    /// Move a volume's data to another host directory or pool (refused while mounted; the old data is kept).
    Migrate {
        name: VolumeName,
        /// The new host directory (empty or missing; under an allowed bind root).
        #[arg(long, required_unless_present = "pool", conflicts_with = "pool")]
        to: Option<String>,
        /// Another pool (`default` is <root>/volumes): the data moves there, as a subvolume on a
        /// btrfs pool, and its read-only snapshots in the old pool are archived first.
        #[arg(long)]
        pool: Option<String>,
        /// Delete the old data once the volume uses the new place.
        #[arg(long)]
        delete_source: bool,
    },
    /// Delete the data a migration left at the old place.
    Cleanup { name: VolumeName },
    /// Snapshot a volume now and upload its snapshot chain and options to a remote (to pull it on another host).
    Push {
        name: VolumeName,
        remote: String,
        #[arg(long)]
        json: bool,
    },
    /// Recreate a volume from a remote (its options and newest snapshot chain), through Docker when dockerd answers.
    Pull {
        name: VolumeName,
        remote: String,
        /// Replace the data of an existing volume of that name (refused while it is mounted).
        #[arg(long)]
        overwrite: bool,
        /// age identity file (private key) to decrypt with (default: the remote's --age-identity or passphrase file).
        #[arg(long)]
        identity: Option<std::path::PathBuf>,
        /// The allspark plugin's volume driver name in this dockerd (`allspark:latest` for the managed plugin).
        #[arg(long, env = "ALLSPARK_DRIVER", default_value = "allspark")]
        driver: String,
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(cli: &Cli, cmd: &VolumeCmd) -> anyhow::Result<()> {
    let layout = Layout::new(&cli.root);
    match cmd {
        VolumeCmd::Ls { json } => ls(&layout, *json),
        VolumeCmd::Inspect { name } => {
            let r = Store::new(layout.clone())
                .load(name)?
                .ok_or_else(|| anyhow::anyhow!("no such volume: {name}"))?;
            let out = serde_json::json!({"record": *r, "status": status::status(&layout, &r)});
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        VolumeCmd::Migrate {
            name,
            to,
            pool,
            delete_source,
        } => migrate(
            cli,
            &layout,
            name,
            to.as_deref(),
            pool.as_deref(),
            *delete_source,
        ),
        VolumeCmd::Push { name, remote, json } => push(cli, &layout, name, remote, *json),
        VolumeCmd::Pull {
            name,
            remote,
            overwrite,
            identity,
            driver,
            json,
        } => {
            let req = crate::ops::offsite::PullRequest {
                remote: crate::remote::config::load(&layout, remote)?,
                volume: name.clone(),
                overwrite: *overwrite,
                identity: identity.clone(),
                docker_driver: driver.clone(),
            };
            pull(cli, &req, remote, *json)
        }
        VolumeCmd::Cleanup { name } => {
            let view = crate::core::layout::HostView::new(cli.host_prefix.as_deref());
            match crate::ops::migrate::cleanup(&layout, &view, name)? {
                Some(dir) => println!("deleted the old data of {name} at {}", dir.display()),
                None => println!("{name} has no old data to clean up"),
            }
            Ok(())
        }
    }
}

/// `volume ls`: every record (the unreadable ones named on stderr, and the exit status 1).
fn ls(layout: &Layout, json: bool) -> anyhow::Result<()> {
    let (records, bad) = Store::new(layout.clone()).all()?;
    for e in &bad {
        eprintln!("allspark: {e}");
    }
    if json {
        let rows: Vec<_> = records
            .iter()
            .map(|r| serde_json::json!({"name": r.name, "created_at": r.created_at, "status": status::status(layout, r)}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<32} {:<10} {:<8} {:>7}  DATA",
            "NAME", "CLASS", "BACKUP", "MOUNTED"
        );
        for r in &records {
            println!(
                "{:<32} {:<10} {:<8} {:>7}  {}",
                r.name,
                r.spec.class.as_str().to_string(),
                r.spec.backup.as_str().to_string(),
                r.mount_count(),
                r.data.local_path(layout, &Default::default()).display()
            );
        }
    }
    if !bad.is_empty() {
        anyhow::bail!(
            "{} volume record(s) could not be read (see above)",
            bad.len()
        );
    }
    Ok(())
}

/// `volume migrate`: the data copied and verified to `to`, the old data kept unless `delete_source`.
fn migrate(
    cli: &Cli,
    layout: &Layout,
    name: &VolumeName,
    to: Option<&str>,
    pool: Option<&str>,
    delete_source: bool,
) -> anyhow::Result<()> {
    let r = match pool {
        Some(pool) => crate::ops::tier::migrate_to_pool(&cli.ctx(), name, pool, delete_source)?,
        None => {
            let driver = cli.driver(None, crate::core::layout::DEFAULT_SNAPSHOT_WAIT)?;
            let view = crate::core::layout::HostView::new(cli.host_prefix.as_deref());
            let to = to.unwrap_or_default();
            crate::ops::migrate::migrate(
                &driver,
                &cli.docker,
                layout,
                &view,
                name,
                to,
                delete_source,
            )?
        }
    };
    println!(
        "migrated {name}: {} entries copied and verified from {} to {}; {}",
        r.files,
        r.from.display(),
        r.to.display(),
        if r.deleted_source {
            "old data deleted".to_string()
        } else {
            format!("old data kept (delete it with `allspark volume cleanup {name}`)")
        }
    );
    Ok(())
}

/// `volume push`: a snapshot now, then its chain and options uploaded to `remote`.
fn push(
    cli: &Cli,
    layout: &Layout,
    name: &VolumeName,
    remote: &str,
    json: bool,
) -> anyhow::Result<()> {
    let cfg = crate::remote::config::load(layout, remote)?;
    let progress = (!json).then(super::progress::item_bars);
    let r = crate::ops::offsite::push(&cli.ctx(), &cfg, name, progress)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "pushed volume {name} to remote {remote}: snapshot {} ({} snapshot(s) uploaded, {} already there, {} bytes) in {:.1} s; on the other host: `allspark volume pull {name} {remote}`",
            r.snapshot,
            r.pushed.len(),
            r.already,
            r.bytes,
            r.seconds
        );
    }
    Ok(())
}

/// `volume pull`: the volume recreated from `remote` (through Docker when dockerd answers).
fn pull(
    cli: &Cli,
    req: &crate::ops::offsite::PullRequest,
    remote: &str,
    json: bool,
) -> anyhow::Result<()> {
    let name = &req.volume;
    let d = cli.driver(None, crate::core::layout::DEFAULT_SNAPSHOT_WAIT)?;
    let r = crate::ops::offsite::pull(&cli.ctx(), &d, req)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "pulled volume {name} from remote {remote}: snapshot {} ({} snapshot(s) fetched, {} entries restored), volume {} in {:.1} s",
            r.snapshot,
            r.fetched.len(),
            r.restore.entries,
            match r.created.as_str() {
                "docker" => "created through Docker",
                "driver" => "created in allspark's records (dockerd did not answer)",
                _ => "overwritten",
            },
            r.seconds
        );
    }
    Ok(())
}
