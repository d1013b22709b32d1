//! `allspark dr restore --from REMOTE [--at TIMESTAMP]`: flags and output of disaster recovery.

use std::path::PathBuf;

use anyhow::bail;
use chrono::{DateTime, Local, NaiveDate, NaiveDateTime};
use clap::Subcommand;

use super::backup_cmd::{settings, ContainerArgs, RetentionArgs, RootArg};
use super::output::{human, print_items};
use super::progress::item_bars;
use super::Cli;
use crate::ops::dr::{self, DrReport, DrRequest};
use crate::remote::config;

#[derive(Subcommand, Debug)]
pub enum DrCmd {
    /// Rebuild this host from a remote: fetch the newest usable backup, recreate every volume with its options, restore the data.
    Restore {
        /// The remote (add it first on a fresh host: `allspark remote add NAME …`).
        #[arg(long = "from")]
        from: String,
        /// Use the newest backup taken at or before this time: 20240131_020003, 2024-01-31T02:00:03 (local), RFC 3339, or a date.
        #[arg(long, value_parser = parse_at)]
        at: Option<NaiveDateTime>,
        /// age identity file (private key) to decrypt with (default: the remote's --age-identity or passphrase file).
        #[arg(long)]
        identity: Option<PathBuf>,
        /// Also feed the database dumps into the running containers labelled allspark.restore.exec.
        #[arg(long)]
        databases: bool,
        /// The allspark plugin's volume driver name in this dockerd, through which the volumes are created (`allspark:latest` for the managed plugin).
        #[arg(long, env = "ALLSPARK_DRIVER", default_value = "allspark")]
        driver: String,
        #[arg(long)]
        json: bool,
        /// Where the fetched backup is kept (it becomes a normal local backup).
        #[command(flatten)]
        root: RootArg,
        #[command(flatten)]
        retention: RetentionArgs,
        #[command(flatten)]
        containers: ContainerArgs,
    },
}

/// A point in time, local unless it says otherwise.
pub(super) fn parse_at(s: &str) -> Result<NaiveDateTime, String> {
    if let Some(t) = crate::backup::parse_dir_name(s) {
        return Ok(t);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Local).naive_local());
    }
    for f in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Ok(t);
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(23, 59, 59).expect("valid time"));
    }
    Err(format!(
        "{s:?} is not a time; write 20240131_020003, 2024-01-31T02:00:03, 2024-01-31T02:00:03Z or 2024-01-31"
    ))
}

pub(super) fn run(cli: &Cli, cmd: &DrCmd) -> anyhow::Result<()> {
    match cmd {
        DrCmd::Restore {
            from,
            at,
            identity,
            databases,
            driver: docker_driver,
            json,
            root,
            retention,
            containers,
        } => {
            let ctx = cli.ctx();
            ctx.layout.ensure()?;
            let driver = cli.driver(None, crate::core::layout::DEFAULT_SNAPSHOT_WAIT)?;
            let req = DrRequest {
                remote: config::load(&ctx.layout, from)?,
                at: *at,
                identity: identity.clone(),
                settings: settings(&root.backup_root, Some(retention), containers, false),
                databases: *databases,
                docker_driver: docker_driver.clone(),
                progress: if *json { None } else { Some(item_bars()) },
            };
            let r = dr::restore(&ctx, &driver, &req)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_recovery(&r);
            }
            if !r.ok() {
                bail!(
                    "the recovery from {} is incomplete ({} problem(s) above); fix them and restore the rest from {} with `allspark backup restore`",
                    from,
                    r.problems.len() + r.items.iter().filter(|i| !i.ok).count(),
                    r.dir.display()
                );
            }
            Ok(())
        }
    }
}

/// What `dr restore` did, for a person: the backup used, the volumes, the items, what is left to do.
fn print_recovery(r: &DrReport) {
    for why in &r.refused {
        println!("refused {why}");
    }
    println!(
        "using {} from remote {} ({} fetched in {:.1} s into {})",
        r.backup,
        r.remote,
        human(r.download_bytes),
        r.fetch_seconds,
        r.dir.display()
    );
    for v in &r.created {
        if r.created_without_docker.contains(v) {
            println!("created volume {v} (in allspark's records: dockerd did not answer; Docker learns of it from the driver)");
        } else {
            println!("created volume {v}");
        }
    }
    for v in &r.existing {
        println!("kept existing volume {v}");
    }
    print_items(&r.items);
    for why in &r.refused_snapshots {
        println!("refused snapshot {why}");
    }
    for sn in &r.snapshots {
        println!("ok     snapshot {sn}: newer than the backup, restored over it");
    }
    for f in &r.fallbacks {
        println!("{f}");
    }
    for p in &r.problems {
        eprintln!("error: {p}");
    }
    for (v, d) in &r.covered_by_dump {
        println!(
            "volume {v} was recreated empty: the backup keeps its data as dump {d} (the database method); start its database, then replay the dump"
        );
    }
    if !r.dumps_pending.is_empty() {
        println!(
            "database dumps not restored yet: {}; start the database containers (labelled allspark.restore.exec) and run:",
            r.dumps_pending.join(", ")
        );
        for d in &r.dumps_pending {
            println!(
                "  allspark backup restore {} --database {d} --yes",
                r.dir.display()
            );
        }
    }
    println!(
        "recovered in {:.1} s (fetch {:.1} s, records and data {:.1} s): {} volume record(s) created, {} item(s) restored",
        r.total_seconds,
        r.fetch_seconds,
        r.restore_seconds,
        r.created.len(),
        r.items.iter().filter(|i| i.ok).count()
    );
}
