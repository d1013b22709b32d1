//! `allspark volume ls|inspect`: the records as operators see them.

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
    /// Move a volume's data to another host directory (refused while mounted; the old data is kept).
    Migrate {
        name: VolumeName,
        /// The new host directory (empty or missing; under an allowed bind root).
        #[arg(long)]
        to: String,
        /// Delete the old data once the volume uses the new place.
        #[arg(long)]
        delete_source: bool,
    },
    /// Delete the data a migration left at the old place.
    Cleanup { name: VolumeName },
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
            let r = store
                .load(name)?
                .ok_or_else(|| anyhow::anyhow!("no such volume: {name}"))?;
            let out = serde_json::json!({"record": *r, "status": status::status(&layout, &r)});
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        VolumeCmd::Migrate {
            name,
            to,
            delete_source,
        } => {
            let driver = cli.driver(None, crate::core::layout::DEFAULT_SNAPSHOT_WAIT)?;
            let view = crate::core::layout::HostView::new(cli.host_prefix.as_deref());
            let r = crate::ops::migrate::migrate(
                &driver,
                &cli.docker,
                &layout,
                &view,
                name,
                to,
                *delete_source,
            )?;
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
