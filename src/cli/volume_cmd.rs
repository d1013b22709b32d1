//! `allspark volume ls|inspect`: the records as operators see them.

use clap::Subcommand;

use super::Cli;
use crate::core::layout::Layout;
use crate::core::status;
use crate::core::store::Store;

#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    /// List volumes.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show one volume's record and status.
    Inspect { name: String },
    /// Move a volume's data to another host directory or pool (refused while mounted; the old data is kept).
    Migrate {
        name: String,
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
    Cleanup { name: String },
}

pub fn run(cli: &Cli, cmd: &VolumeCmd) -> anyhow::Result<()> {
    let layout = Layout::new(&cli.root);
    let store = Store::new(layout.clone());
    match cmd {
        VolumeCmd::Ls { json } => {
            let (records, bad) = store.all()?;
            for e in &bad {
                eprintln!("allspark: {e}");
            }
            if *json {
                let rows: Vec<_> = records
                    .iter()
                    .map(|r| serde_json::json!({"name": r.name, "created_at": r.created_at, "status": status::status(&layout, r)}))
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
                        r.data.local_path(&layout, &Default::default()).display()
                    );
                }
            }
            if !bad.is_empty() {
                anyhow::bail!(
                    "{} volume record(s) could not be read (see above)",
                    bad.len()
                );
            }
        }
        VolumeCmd::Inspect { name } => {
            crate::core::names::validate(name).map_err(anyhow::Error::msg)?;
            let r = store
                .load(name)?
                .ok_or_else(|| anyhow::anyhow!("no such volume: {name}"))?;
            let out = serde_json::json!({"record": *r, "status": status::status(&layout, &r)});
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        VolumeCmd::Migrate {
            name,
            to,
            pool,
            delete_source,
        } => {
            let r = match (to, pool) {
                (_, Some(pool)) => {
                    crate::ops::tier::migrate_to_pool(&cli.ctx(), name, pool, *delete_source)?
                }
                (to, None) => {
                    let driver = cli.driver(None, crate::core::layout::DEFAULT_SNAPSHOT_WAIT)?;
                    let view = crate::core::layout::HostView::new(cli.host_prefix.as_deref());
                    let to = to.as_deref().unwrap_or_default();
                    crate::ops::migrate::migrate(&driver, &layout, &view, name, to, *delete_source)?
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
        }
        VolumeCmd::Cleanup { name } => {
            let view = crate::core::layout::HostView::new(cli.host_prefix.as_deref());
            match crate::ops::migrate::cleanup(&layout, &view, name)? {
                Some(dir) => println!("deleted the old data of {name} at {}", dir.display()),
                None => println!("{name} has no old data to clean up"),
            }
        }
    }
    Ok(())
}
