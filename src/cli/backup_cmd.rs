//! `allspark backup run|ls|verify|restore|prune`: flags and output of the backup commands.

use std::path::PathBuf;

use anyhow::bail;
use chrono::Local;
use clap::{Args, Subcommand};

use super::output::{human, print_items, report_prune, verdict};
use super::progress::item_bars;
use crate::backup::restore::{self, RestoreRequest};
use crate::backup::run::{self, RunOptions};
use crate::backup::{catalog, retention, verify, BackupType, Keep, LabelFilter, Settings};
use crate::context::Ctx;
use crate::core::layout::DEFAULT_BACKUP_ROOT;

/// How long backups are kept (`backup run`, `backup prune` and `allspark agent`).
#[derive(Args, Debug, Clone)]
pub struct RetentionArgs {
    /// Keep hourly backups (database dumps) this many hours.
    #[arg(long, env = "ALLSPARK_KEEP_HOURLY_HOURS", default_value_t = 48)]
    pub keep_hourly_hours: u32,
    /// Keep daily backups this many calendar days.
    #[arg(long, env = "ALLSPARK_KEEP_DAILY_DAYS", default_value_t = 7)]
    pub keep_daily_days: u32,
    /// Keep weekly backups this many calendar days.
    #[arg(long, env = "ALLSPARK_KEEP_WEEKLY_DAYS", default_value_t = 30)]
    pub keep_weekly_days: u32,
    /// Keep monthly backups this many calendar days.
    #[arg(long, env = "ALLSPARK_KEEP_MONTHLY_DAYS", default_value_t = 365)]
    pub keep_monthly_days: u32,
}

impl RetentionArgs {
    pub fn keep(&self) -> Keep {
        Keep {
            hourly_hours: self.keep_hourly_hours,
            daily_days: self.keep_daily_days,
            weekly_days: self.keep_weekly_days,
            monthly_days: self.keep_monthly_days,
        }
    }
}

/// Which containers take part in dumps, stops, restore hooks and maintenance.
#[derive(Args, Debug, Clone)]
pub struct ContainerArgs {
    /// Only containers carrying this label (KEY=VALUE) are dumped, stopped, used as restore hooks or maintained.
    #[arg(long, env = "ALLSPARK_BACKUP_CONTAINER_LABEL")]
    pub container_label: Option<LabelFilter>,
}

/// The backup settings for `backup_root` (retention left at its defaults when `retention` is `None`).
pub(super) fn settings(
    backup_root: &std::path::Path,
    retention: Option<&RetentionArgs>,
    containers: &ContainerArgs,
    include_temporary: bool,
) -> Settings {
    Settings {
        backup_root: backup_root.to_path_buf(),
        keep: retention.map(RetentionArgs::keep).unwrap_or_default(),
        include_temporary,
        container_label: containers.container_label.clone(),
    }
}

/// Where backups live.
#[derive(Args, Debug, Clone)]
pub struct RootArg {
    /// Backup root: `<root>/<type>/<YYYYmmdd_HHMMSS>/`.
    #[arg(long, env = "ALLSPARK_BACKUP_ROOT", default_value = DEFAULT_BACKUP_ROOT)]
    pub backup_root: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum BackupCmd {
    /// Back up now: dumps, volumes (highest priority first), manifest, then retention. Exit 1 if anything failed.
    Run {
        /// hourly (database dumps only), daily, weekly or monthly (the subdirectory of the backup root).
        #[arg(value_parser = parse_type)]
        kind: BackupType,
        /// Also back up volumes of class `temporary`.
        #[arg(long)]
        include_temporary: bool,
        /// Do not apply retention after the run.
        #[arg(long)]
        no_prune: bool,
        /// Then push to this remote what it lacks (this backup first) and apply retention there.
        #[arg(long, env = "ALLSPARK_REMOTE")]
        remote: Option<String>,
        #[command(flatten)]
        root: RootArg,
        #[command(flatten)]
        retention: RetentionArgs,
        #[command(flatten)]
        containers: ContainerArgs,
    },
    /// List backups: type, directory, timestamp, outcome, size, complete or not.
    Ls {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        root: RootArg,
    },
    /// Check every file's size and sha256, test-extract every archive, read every dump. Exit 1 naming the file on any mismatch.
    Verify {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Restore volumes and dumps from a backup directory (without --yes: show what would be overwritten). Exit 1 naming every part that failed.
    Restore {
        dir: PathBuf,
        /// Restore only this volume (repeatable); no dump unless --database is given too.
        #[arg(long = "volume")]
        volumes: Vec<String>,
        /// Restore only this dump (repeatable); no volume unless --volume is given too.
        /// NAME=CONTAINER feeds dump NAME to that running container (name or id, labelled
        /// allspark.restore.exec), instead of the container that wrote it.
        #[arg(long = "database", value_name = "NAME[=CONTAINER]")]
        databases: Vec<String>,
        /// Confirm: stop the containers, replace the volumes' content, feed the dumps.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        containers: ContainerArgs,
    },
    /// Apply retention now (hourly 48 hours; daily 7, weekly 30, monthly 365 calendar days by default).
    Prune {
        /// Show what would be removed.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        root: RootArg,
        #[command(flatten)]
        retention: RetentionArgs,
    },
}

fn parse_type(s: &str) -> Result<BackupType, String> {
    s.parse()
}

/// `backup run --remote`: push and prune the remote; the errors, printed and returned.
fn remote_after_backup(ctx: &Ctx, remote: &str, settings: &Settings) -> Vec<String> {
    let (report, errors) =
        crate::remote::push::push_and_prune(&ctx.layout, remote, settings, Some(item_bars()));
    if let Some(r) = report {
        println!("{}", r.summary());
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    errors
}

pub(super) fn run(ctx: &Ctx, cmd: &BackupCmd) -> anyhow::Result<()> {
    match cmd {
        BackupCmd::Run {
            kind,
            include_temporary,
            no_prune,
            remote,
            root,
            retention,
            containers,
        } => {
            let settings = settings(
                &root.backup_root,
                Some(retention),
                containers,
                *include_temporary,
            );
            backup_run(ctx, &settings, *kind, *no_prune, remote.as_deref())
        }
        BackupCmd::Ls { json, root } => ls(&root.backup_root, *json),
        BackupCmd::Verify { dir, json } => verify_backup(dir, *json),
        BackupCmd::Restore {
            dir,
            volumes,
            databases,
            yes,
            containers,
        } => {
            let settings = settings(
                std::path::Path::new(DEFAULT_BACKUP_ROOT),
                None,
                containers,
                false,
            );
            let (databases, targets) = restore::parse_database_args(databases)?;
            // A restore killed midway left containers stopped: start them before planning.
            if *yes {
                if let Err(e) = crate::backup::quiesce::restart_leftovers(ctx) {
                    tracing::warn!(error = %format!("{e:#}"), "cannot start the containers an interrupted backup or restore stopped");
                }
            }
            let req = RestoreRequest {
                dir: dir.clone(),
                volumes: volumes.clone(),
                databases,
                targets,
            };
            restore_backup(ctx, &settings, &req, *yes)
        }
        BackupCmd::Prune {
            dry_run,
            root,
            retention,
        } => {
            let settings = settings(
                &root.backup_root,
                Some(retention),
                &ContainerArgs {
                    container_label: None,
                },
                false,
            );
            prune(&settings, *dry_run)
        }
    }
}

/// `backup run`: dumps, volumes, manifest and retention, then the push to `remote`.
fn backup_run(
    ctx: &Ctx,
    settings: &Settings,
    kind: BackupType,
    no_prune: bool,
    remote: Option<&str>,
) -> anyhow::Result<()> {
    let report = run::run(
        ctx,
        settings,
        kind,
        &RunOptions {
            progress: Some(item_bars()),
            cancel: None,
            prune: !no_prune,
        },
    );
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    println!("{}", report.summary());
    let offsite = remote
        .map(|r| remote_after_backup(ctx, r, settings))
        .unwrap_or_default();
    if !report.ok() {
        bail!(
            "the {kind} backup had {} error(s) (listed above and in its manifest.json); fix them and run it again",
            report.errors.len()
        );
    }
    if !offsite.is_empty() {
        bail!(
            "the {kind} backup is complete locally, but the off-site copy failed: {}",
            offsite.join("; ")
        );
    }
    Ok(())
}

/// `backup ls`: every backup under the root, as a table or JSON.
fn ls(backup_root: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let settings = Settings::new(backup_root);
    let list = catalog::list(&settings)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        println!(
            "{:<8} {:<16} {:<21} {:<11} {:>10} {:<9} DIR",
            "TYPE", "NAME", "TIMESTAMP", "OUTCOME", "SIZE", "COMPLETE"
        );
        for e in &list {
            println!(
                "{:<8} {:<16} {:<21} {:<11} {:>10} {:<9} {}",
                e.kind.as_str(),
                e.name,
                e.timestamp,
                e.outcome,
                human(e.size),
                if e.complete { "yes" } else { "no" },
                e.dir.display()
            );
        }
    }
    Ok(())
}

/// `backup verify`: every file of one backup directory.
fn verify_backup(dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let r = verify::verify_dir(dir, Some(item_bars()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for w in &r.warnings {
            eprintln!("warning: {w}");
        }
        for f in &r.files {
            println!("{:<6} {}: {}", verdict(f.ok), f.name, f.detail);
        }
    }
    if !r.ok() {
        bail!("verification failed: {}", r.failures().join("; "));
    }
    if !json {
        println!(
            "ok: {} file(s) of {} verified",
            r.files.len(),
            dir.display()
        );
    }
    Ok(())
}

/// `backup restore`: the plan alone without `yes`; with it, the plan carried out.
fn restore_backup(
    ctx: &Ctx,
    settings: &Settings,
    req: &RestoreRequest,
    yes: bool,
) -> anyhow::Result<()> {
    let dir = &req.dir;
    let plan = restore::plan(ctx, settings, req)?;
    if !yes {
        eprint!("{}", plan.describe());
        bail!("nothing was changed; run again with --yes to do it");
    }
    if !plan.problems.is_empty() {
        eprint!("{}", plan.describe());
        bail!(
            "nothing was changed: {}; fix that, or choose what to restore with --volume/--database",
            plan.problems.join("; ")
        );
    }
    let report = restore::execute(ctx, &plan, Some(item_bars()))?;
    print_items(&report.items);
    if !report.ok() {
        bail!(
            "the restore from {} failed for {} item(s) (listed above); fix them and restore those again with --volume/--database",
            dir.display(),
            report.items.iter().filter(|i| !i.ok).count()
        );
    }
    println!(
        "restored {} item(s) from {}",
        report.items.len(),
        dir.display()
    );
    Ok(())
}

/// `backup prune`: retention over the backup root (`dry_run`: decide only).
fn prune(settings: &Settings, dry_run: bool) -> anyhow::Result<()> {
    let r = retention::prune(settings, Local::now().naive_local(), dry_run)?;
    report_prune(
        "backup",
        &r.decisions,
        (r.removed.len(), r.kept),
        &r.errors,
        dry_run,
    )
}
