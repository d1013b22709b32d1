//! One backup run (`allspark backup run <type>` and the agent's schedule): stop the labelled containers, dump the databases, archive the volumes a dump does not stand for, start the containers again, write the manifest, prune.
//!
//! Order, so that a dump and the volumes are consistent with each other:
//!
//! 1. the running containers labelled `allspark.backup.stop=true` are
//!    recorded (atomically, before any is stopped), then stopped — except
//!    those that also carry a dump label, which are stopped right after
//!    their dump;
//! 2. every running container labelled `allspark.backup.dump=<command>` is
//!    dumped into `<name>.sql.gz`;
//! 3. each volume is archived into `<volume>.tar.zst` (or `.tar.gz`, see the
//!    `compression` setting and volume option), highest priority first
//!    (under the volume's shared snapshot lock, so no restore swaps it
//!    meanwhile) — except the volumes of a dumped container (step 2);
//! 4. the stopped containers are started again — always, also after a
//!    failure or a panic;
//! 5. `manifest.json` is written last, then `last-backup-<type>.json`, then
//!    retention runs.
//!
//! `hourly` runs do step 2 only (and 5): dumps, no stop, no archive.
//!
//! # The database method: the dump, never the files of a running server
//!
//! A volume mounted by a running container that carries a dump label is not
//! archived: copying the files of a live database gives a torn copy (pages
//! and WAL from different moments) that may or may not recover, and putting
//! it back then forces a crash recovery at restore. The dump is consistent
//! (one MVCC snapshot per database for `pg_dumpall`), costs no downtime (so
//! it can run every hour), and restores into any running server of the same
//! or a newer major version. The manifest records it: `covered_by_dump` maps
//! each such volume to its dump, and the dump's file entry lists it in
//! `covers`. If the dump fails, the volume has no copy in that backup, and
//! the run says so and fails. A database container that is *stopped* when
//! the backup runs is not dumped, and its volume is archived like any other
//! (the files of a cleanly stopped server are consistent).
//!
//! Nothing is skipped quietly: a volume, dump or container that fails is an
//! error sentence in the manifest, the outcome is `failed`, and the command
//! exits 1; the other parts are still done.
//!
//! Layout: the run and its steps here; `select` (which volumes and containers, dump
//! names), `dumps` (the containers stopped and dumped), `archive` (one volume archived).

mod archive;
mod dumps;
mod select;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bollard::Docker;
use chrono::{Local, Utc};
use tokio::runtime::Runtime;

use self::archive::archive_volume;
pub(crate) use self::select::{
    dump_coverage, dump_name, duplicate_dump_names, running_containers, select_volumes,
    with_descendants,
};
use super::manifest::{self, BackupManifest, LastBackup, Outcome};
use super::{retention, BackupType, Settings, LABEL_DUMP, LABEL_STOP};
use crate::context::Ctx;
use crate::core::store::{Store, VolumeRecord};
use crate::docker::ContainerInfo;
use crate::fs::durable;

/// Progress of one item: `(item, Some(bytes so far))` while it runs, `(item, None)` when it is done.
pub(crate) type ItemProgress = Arc<dyn Fn(&str, Option<u64>) + Send + Sync>;

/// How to run.
#[derive(Default, Clone)]
pub(crate) struct RunOptions {
    pub progress: Option<ItemProgress>,
    /// Set to stop between volumes (agent shutdown): the rest is reported as not backed up.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Apply retention after the run.
    pub prune: bool,
}

/// What a run did. Never an `Err`: every failure is a sentence in `errors`.
#[derive(Debug, Default)]
pub(crate) struct RunReport {
    pub kind: Option<BackupType>,
    pub dir: Option<PathBuf>,
    pub manifest: Option<BackupManifest>,
    /// Everything that failed (the manifest's errors, then retention's).
    pub errors: Vec<String>,
    pub pruned: Vec<PathBuf>,
}

impl RunReport {
    pub(crate) fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// One line for the end of the output.
    pub(crate) fn summary(&self) -> String {
        let kind = self.kind.map(|k| k.as_str()).unwrap_or("?");
        let dir = self
            .dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "(no directory)".into());
        let (vols, dbs, bytes, ms) = self
            .manifest
            .as_ref()
            .map(|m| {
                (
                    m.volumes.len(),
                    m.databases.len(),
                    m.files.iter().map(|f| f.size).sum::<u64>(),
                    m.duration_ms,
                )
            })
            .unwrap_or_default();
        let verdict = if self.ok() {
            "ok".to_string()
        } else {
            format!("FAILED with {} error(s)", self.errors.len())
        };
        format!(
            "backup {kind} {dir}: {vols} volume(s), {dbs} dump(s), {bytes} bytes stored in {:.1} s, {} old backup(s) pruned: {verdict}",
            ms as f64 / 1000.0,
            self.pruned.len()
        )
    }
}

/// Create `<root>/<type>/<YYYYmmdd_HHMMSS>` (mode 0700: backups hold secrets); a second run in the same second waits for the next one.
fn create_dir(settings: &Settings, kind: BackupType) -> anyhow::Result<PathBuf> {
    let type_dir = settings.type_dir(kind);
    durable::ensure_dir(&type_dir, 0o700).with_context(|| {
        format!(
            "cannot create {}; check --backup-root (ALLSPARK_BACKUP_ROOT) and its permissions",
            type_dir.display()
        )
    })?;
    for _ in 0..3 {
        let dir = type_dir.join(super::dir_name(Local::now().naive_local()));
        match fs::DirBuilder::new().create(&dir) {
            Ok(()) => {
                let _ =
                    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
                durable::fsync_dir(&type_dir).ok();
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::thread::sleep(std::time::Duration::from_millis(1000));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create {}", dir.display()));
            }
        }
    }
    anyhow::bail!(
        "cannot create a fresh backup directory in {}: names for this second are taken; try again",
        type_dir.display()
    )
}

/// Run one backup of `kind`.
pub(crate) fn run(
    ctx: &Ctx,
    settings: &Settings,
    kind: BackupType,
    opts: &RunOptions,
) -> RunReport {
    let started = Utc::now();
    let t0 = Instant::now();
    let mut report = RunReport {
        kind: Some(kind),
        ..Default::default()
    };
    let layout = &ctx.layout;
    let lock = match super::take_lock(layout) {
        Ok(l) => Some(l),
        Err(e) => {
            report.errors.push(format!("{e:#}"));
            None
        }
    };
    let dir = if lock.is_some() {
        match create_dir(settings, kind) {
            Ok(d) => Some(d),
            Err(e) => {
                report.errors.push(format!("{e:#}"));
                None
            }
        }
    } else {
        None
    };
    if let Some(dir) = dir {
        tracing::info!(kind = %kind, dir = %dir.display(), "backup started");
        let m = run_in(ctx, settings, kind, opts, &dir, started, t0);
        report.errors.extend(m.errors.iter().cloned());
        match manifest::write(&dir, &m) {
            Ok(()) => report.manifest = Some(m),
            Err(e) => report.errors.push(format!("{e:#}")),
        }
        report.dir = Some(dir);
    }
    let last = LastBackup {
        finished_at: Utc::now(),
        ok: report.ok(),
        dir: report.dir.as_ref().map(|d| d.display().to_string()),
    };
    if let Err(e) = manifest::write_last(layout, kind, &last) {
        report.errors.push(format!("{e:#}"));
    }
    drop(lock);
    if opts.prune && report.dir.is_some() {
        match retention::prune(settings, Local::now().naive_local(), false) {
            Ok(p) => {
                report.errors.extend(p.errors);
                report.pruned = p.removed;
            }
            Err(e) => report.errors.push(format!("{e:#}")),
        }
    }
    if report.ok() {
        tracing::info!(summary = %report.summary(), "backup finished");
    } else {
        tracing::error!(summary = %report.summary(), errors = ?report.errors, "backup failed");
    }
    report
}

/// The body of a run inside its directory; returns the manifest to write.
fn run_in(
    ctx: &Ctx,
    settings: &Settings,
    kind: BackupType,
    opts: &RunOptions,
    dir: &Path,
    started: chrono::DateTime<Utc>,
    t0: Instant,
) -> BackupManifest {
    let mut run = Run {
        ctx,
        settings,
        kind,
        opts,
        dir,
        m: new_manifest(kind, started),
    };
    let rt = run.runtime();
    let docker = rt.and_then(|rt| run.connect(rt));

    // Volumes are chosen before anything is stopped.
    let selected = run.selected_volumes();

    let empty = Vec::new();
    let containers = docker.as_ref().map(|(_, c)| c).unwrap_or(&empty);
    let to_dump: Vec<&ContainerInfo> = containers
        .iter()
        .filter(|c| {
            c.labels
                .get(LABEL_DUMP)
                .is_some_and(|v| !v.trim().is_empty())
        })
        .collect();
    let coverage = dump_coverage(&selected, &to_dump);
    let volumes: Vec<Arc<VolumeRecord>> = if kind.dumps_only() {
        Vec::new()
    } else {
        selected
            .iter()
            .filter(|r| !coverage.contains_key(r.name.as_str()))
            .cloned()
            .collect()
    };

    let guard = match (rt, docker.as_ref()) {
        (Some(rt), Some((docker, containers))) => {
            Some(run.stop_and_dump(rt, docker, containers, &to_dump, &coverage))
        }
        _ => None,
    };
    run.archive_all(&volumes);
    if let Some(mut g) = guard {
        run.m.errors.extend(g.restart_all());
    }
    run.finish(t0)
}

/// One run inside its directory: what every step reads, and the manifest the steps fill in.
struct Run<'a> {
    ctx: &'a Ctx,
    settings: &'a Settings,
    kind: BackupType,
    opts: &'a RunOptions,
    dir: &'a Path,
    m: BackupManifest,
}

/// The manifest of a run started at `started`, nothing in it yet.
fn new_manifest(kind: BackupType, started: chrono::DateTime<Utc>) -> BackupManifest {
    BackupManifest {
        timestamp: started,
        kind,
        volumes: Vec::new(),
        databases: Vec::new(),
        files: Vec::new(),
        started_at: Some(started),
        finished_at: None,
        duration_ms: 0,
        outcome: None,
        errors: Vec::new(),
        stopped_containers: Vec::new(),
        covered_by_dump: Default::default(),
        allspark_version: env!("CARGO_PKG_VERSION").to_string(),
        records: Vec::new(),
    }
}

impl Run<'_> {
    /// The runtime for the Docker API (`None`, said in the manifest: no dump, no stop).
    fn runtime(&mut self) -> Option<&'static Runtime> {
        match crate::core::runtime::shared() {
            Ok(rt) => Some(rt),
            Err(e) => {
                self.m.errors.push(format!(
                    "cannot start a runtime for the Docker API ({e}); database dumps and container stops were skipped"
                ));
                None
            }
        }
    }

    /// Docker and its running containers (`None`, said in the manifest: no dump, no stop).
    fn connect(&mut self, rt: &Runtime) -> Option<(Docker, Vec<ContainerInfo>)> {
        let r = rt.block_on(async {
            let d = crate::docker::connect(&self.ctx.docker_url).await?;
            let list = running_containers(&d, self.settings.container_label.as_ref()).await?;
            anyhow::Ok((d, list))
        });
        match r {
            Ok(x) => Some(x),
            Err(e) => {
                self.m.errors.push(format!(
                    "{e:#}: database dumps and `{LABEL_STOP}` containers were skipped; start dockerd or fix --docker, then run the backup again"
                ));
                None
            }
        }
    }

    /// The volumes to back up (see [`select_volumes`]); every record goes into the manifest.
    fn selected_volumes(&mut self) -> Vec<Arc<VolumeRecord>> {
        let store = Store::new(self.ctx.layout.clone());
        match store.all() {
            Ok((records, bad)) => {
                self.m.records = manifest::records_of(&records);
                for b in bad {
                    self.m.errors.push(format!(
                        "a volume record cannot be read ({b}); that volume is not in the backup, repair or remove its record"
                    ));
                }
                select_volumes(&records, self.settings.include_temporary)
            }
            Err(e) => {
                self.m.errors.push(format!(
                    "cannot list the volumes ({e}); no volume is in the backup, check --root"
                ));
                Vec::new()
            }
        }
    }

    /// Archive each volume in order, until done or cancelled.
    fn archive_all(&mut self, volumes: &[Arc<VolumeRecord>]) {
        let cancelled = || {
            self.opts
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::SeqCst))
        };
        for (i, rec) in volumes.iter().enumerate() {
            if cancelled() {
                let rest: Vec<&str> = volumes[i..].iter().map(|r| r.name.as_str()).collect();
                self.m.errors.push(format!(
                    "the backup was interrupted (the agent is stopping); volumes {} were not backed up, run the backup again",
                    rest.join(", ")
                ));
                break;
            }
            match archive_volume(self.ctx, rec, self.dir, self.opts) {
                Ok((entry, warning)) => {
                    self.m.volumes.push(rec.name.to_string());
                    self.m.files.push(entry);
                    self.m.errors.extend(warning);
                }
                Err(e) => self.m.errors.push(e),
            }
        }
    }

    /// The manifest with its end time, duration and outcome.
    fn finish(mut self, t0: Instant) -> BackupManifest {
        let m = &mut self.m;
        let finished = Utc::now();
        m.finished_at = Some(finished);
        m.duration_ms = t0.elapsed().as_millis() as u64;
        m.outcome = Some(if m.errors.is_empty() {
            Outcome::Ok
        } else {
            Outcome::Failed
        });
        self.m
    }
}
