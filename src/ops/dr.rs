//! Disaster recovery from a remote onto a host with nothing but an empty state root: fetch the newest usable backup, recreate every volume record with its options, restore the data, and say what was done and how long it took.
//!
//! 1. The remote's complete backups taken at or before `--at` are tried
//!    newest first (those whose run was `ok` before failed ones). Each is
//!    fetched into `<backup-root>/<type>/.dr-<name>` with every object checked
//!    against its index and its manifest ([`crate::remote::fetch`]); a damaged
//!    or undecryptable object makes DR refuse that backup, say why, and fall
//!    back to the previous one. The fetched directory becomes
//!    `<backup-root>/<type>/<name>`, a normal local backup.
//! 2. Every volume record of the manifest is created again with its options,
//!    parents before `parent=` children, through Docker (`docker volume create
//!    -d <driver>`, so Docker keeps the options and docker-compose accepts the
//!    volume as its own), or through the driver's records when dockerd does not
//!    answer; `template=` is dropped, the data comes from the backup.
//! 3. The volumes' data is restored by the backup restore
//!    ([`crate::backup::restore`]): checksums, staging, atomic swap. A volume
//!    whose newest complete snapshot chain on the remote (`offsite=snapshots`)
//!    was taken after the backup then gets that chain restored over it
//!    ([`crate::ops::offsite::restore_newer_chains`]); a chain that cannot be
//!    used is refused and named, and the next older one newer than the backup
//!    is tried, else the volume keeps the backup's data, said so.
//! 4. Database dumps are fed by the same restore path, into the running
//!    containers labelled `allspark.restore.exec` — with `--databases`, or
//!    later with `allspark backup restore DIR --database NAME --yes` once the
//!    database containers run again. A database volume the backup left to its
//!    dump (`covered_by_dump`) is recreated empty: the database initialises
//!    it when its container starts, then the dump fills it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use chrono::NaiveDateTime;
use serde::Serialize;

use crate::backup::manifest::{BackupManifest, FileKind, RecordEntry};
use crate::backup::restore::{self, ItemResult, RestoreRequest};
use crate::backup::run::ItemProgress;
use crate::backup::Settings;
use crate::context::Ctx;
use crate::core::names::VolumeName;
use crate::core::store::Store;
use crate::ops::docker_volumes::{self, Created};
use crate::plugin::driver::Driver;
use crate::remote::catalog::{self, RemoteBackup};
use crate::remote::client::{runtime, Remote};
use crate::remote::crypt::Opener;
use crate::remote::fetch::fetch;
use crate::remote::RemoteConfig;

/// What to recover.
#[derive(Clone)]
pub(crate) struct DrRequest {
    pub remote: RemoteConfig,
    /// Only backups taken at or before this local time.
    pub at: Option<NaiveDateTime>,
    /// age identity file (else the remote's configured one or its passphrase).
    pub identity: Option<PathBuf>,
    /// Where the fetched backup is kept (`settings.backup_root`), and the container filter of dump restores.
    pub settings: Settings,
    /// Also feed the dumps into the running `allspark.restore.exec` containers.
    pub databases: bool,
    /// The allspark plugin's volume driver name in this dockerd (`allspark`, or
    /// `allspark:latest` for the managed plugin): volumes are created through it.
    pub docker_driver: String,
    pub progress: Option<ItemProgress>,
}

/// What a recovery did.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct DrReport {
    pub remote: String,
    /// The backup used (`daily/20240131_020003`) and its local copy.
    pub backup: String,
    pub dir: PathBuf,
    /// Backups refused before it, each with the reason.
    pub refused: Vec<String>,
    /// Volume records created (through Docker, or through the driver's records when
    /// dockerd did not answer: those are also in `created_without_docker`), and those
    /// that were already there.
    pub created: Vec<String>,
    pub created_without_docker: Vec<String>,
    pub existing: Vec<String>,
    /// Volumes and dumps restored (the backup restore's items).
    pub items: Vec<ItemResult>,
    /// Newer snapshot chains restored over the backup's data: `volume@id`.
    pub snapshots: Vec<String>,
    /// Remote snapshots newer than the backup refused (damaged, …), `volume@id: why`, and
    /// what each volume concerned fell back to (an older chain, or the backup's data).
    pub refused_snapshots: Vec<String>,
    pub fallbacks: Vec<String>,
    /// Dumps in the backup not restored now (see the hint printed).
    pub dumps_pending: Vec<String>,
    /// Volumes recreated empty because a dump stands for them: `(volume, dump)`.
    pub covered_by_dump: Vec<(String, String)>,
    /// Problems, one sentence each (records not created, items failed).
    pub problems: Vec<String>,
    pub download_bytes: u64,
    pub fetch_seconds: f64,
    pub restore_seconds: f64,
    pub total_seconds: f64,
}

impl DrReport {
    pub(crate) fn ok(&self) -> bool {
        self.problems.is_empty() && self.items.iter().all(|i| i.ok)
    }
}

/// The order in which backups are tried: taken at or before `at`, `ok` ones newest first, then the others newest first.
pub(crate) fn candidates(
    backups: &[RemoteBackup],
    at: Option<NaiveDateTime>,
) -> Vec<&RemoteBackup> {
    let mut c: Vec<&RemoteBackup> = backups
        .iter()
        .filter(|b| b.complete && b.index.is_some())
        .filter(|b| at.is_none_or(|t| b.stamp <= t))
        .collect();
    c.sort_by(|a, b| {
        (b.is_ok(), b.stamp, &b.name, b.kind).cmp(&(a.is_ok(), a.stamp, &a.name, a.kind))
    });
    c
}

/// The records to create, parents before their `parent=` children.
pub(crate) fn records_in_order(m: &BackupManifest) -> Vec<RecordEntry> {
    let mut pending: Vec<RecordEntry> = if m.records.is_empty() {
        // A manifest from before records were kept: the archived volumes' options.
        m.files
            .iter()
            .filter(|f| f.kind == FileKind::Volume)
            .filter_map(|f| {
                Some(RecordEntry {
                    name: VolumeName::parse(&f.source).ok()?,
                    options: f.options.clone(),
                })
            })
            .collect()
    } else {
        m.records.clone()
    };
    let mut out: Vec<RecordEntry> = Vec::new();
    while !pending.is_empty() {
        let names: Vec<VolumeName> = pending.iter().map(|r| r.name.clone()).collect();
        let (ready, rest): (Vec<RecordEntry>, Vec<RecordEntry>) =
            pending
                .into_iter()
                .partition(|r| match r.options.get("parent") {
                    Some(p) => !names.iter().any(|n| n == p) || out.iter().any(|o| o.name == *p),
                    None => true,
                });
        if ready.is_empty() {
            // A cycle cannot be created; keep the rest in name order and let Create say why.
            out.extend(rest);
            break;
        }
        out.extend(ready);
        pending = rest;
    }
    out
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// Recover from `req.remote`. `Err` when no backup on the remote is usable (each refusal is in the message).
pub(crate) fn restore(ctx: &Ctx, driver: &Driver, req: &DrRequest) -> anyhow::Result<DrReport> {
    let t0 = Instant::now();
    let cfg = &req.remote;
    let _lock = crate::remote::take_lock(&ctx.layout, &cfg.name)?;
    let remote = Remote::open(cfg)?;
    let opener = Arc::new(Opener::of(cfg, req.identity.as_deref())?);
    let rt = runtime()?;
    let backups = rt.block_on(catalog::list(&remote))?;
    let mut report = DrReport {
        remote: cfg.name.clone(),
        ..Default::default()
    };
    let cands = candidates(&backups, req.at);
    if cands.is_empty() {
        bail!(
            "remote {} has no complete backup{}; nothing was changed (`allspark remote ls {}` lists what is there)",
            cfg.name,
            req.at
                .map(|t| format!(" taken at or before {t}"))
                .unwrap_or_default(),
            cfg.name
        );
    }
    let chosen = fetch_first_usable(rt, &remote, &opener, req, cands, &mut report)?;
    report.fetch_seconds = secs(t0);
    let Some((b, dir, m)) = chosen else {
        bail!(
            "no backup on remote {} is usable, nothing was changed: {}",
            cfg.name,
            report.refused.join("; ")
        );
    };
    report.backup = b.id();
    report.dir = dir.clone();

    let t1 = Instant::now();
    create_records(ctx, driver, &req.docker_driver, &m, &mut report);
    restore_volumes(ctx, req, &remote, &opener, &dir, &m, &mut report)?;
    restore_dumps(ctx, req, &dir, &m, &mut report)?;
    report.restore_seconds = secs(t1);
    report.total_seconds = secs(t0);
    Ok(report)
}

/// Fetch the candidates newest first until one passes every check: it becomes
/// `<type>/<name>` (see [`final_dir`]); each refused one is in `report.refused`. `None` when
/// none is usable.
fn fetch_first_usable<'a>(
    rt: &tokio::runtime::Runtime,
    remote: &Remote,
    opener: &Arc<Opener>,
    req: &DrRequest,
    cands: Vec<&'a RemoteBackup>,
    report: &mut DrReport,
) -> anyhow::Result<Option<(&'a RemoteBackup, PathBuf, BackupManifest)>> {
    for b in cands {
        let type_dir = req.settings.type_dir(b.kind);
        crate::fs::durable::ensure_dir(&type_dir, 0o700).with_context(|| {
            format!("cannot create {}; check --backup-root", type_dir.display())
        })?;
        let staging = type_dir.join(format!(".dr-{}", b.name));
        if staging.exists() {
            std::fs::remove_dir_all(&staging)
                .with_context(|| format!("cannot remove the leftover {}", staging.display()))?;
        }
        tracing::info!(remote = %req.remote.name, backup = %b.id(), "fetching");
        match rt.block_on(fetch(
            remote,
            b,
            opener.clone(),
            &staging,
            req.progress.as_ref(),
        )) {
            Ok(f) => {
                report.download_bytes += f.bytes;
                let dir = final_dir(&type_dir, &b.name);
                std::fs::rename(&staging, &dir).with_context(|| {
                    format!("cannot move {} to {}", staging.display(), dir.display())
                })?;
                return Ok(Some((b, dir, f.manifest)));
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                let why = format!("{}: {e:#}", b.id());
                tracing::error!(reason = %why, "remote backup refused; falling back to the previous one");
                report.refused.push(why);
            }
        }
    }
    Ok(None)
}

/// Restore the data of the manifest's volumes that have a record now.
fn restore_volumes(
    ctx: &Ctx,
    req: &DrRequest,
    remote: &Remote,
    opener: &Arc<Opener>,
    dir: &Path,
    m: &BackupManifest,
    report: &mut DrReport,
) -> anyhow::Result<()> {
    let store = Store::new(ctx.layout.clone());
    let volumes: Vec<VolumeName> = m
        .files
        .iter()
        .filter(|f| f.kind == FileKind::Volume)
        .filter_map(|f| VolumeName::parse(&f.source).ok())
        .filter(|v| matches!(store.load(v), Ok(Some(_))))
        .collect();
    if volumes.is_empty() {
        return Ok(());
    }
    let names = volumes.iter().map(ToString::to_string).collect();
    run_restore(ctx, req, dir, names, Vec::new(), report)?;
    // Then the newest snapshot chain where it is newer than the backup (offsite=snapshots).
    let chains = crate::ops::offsite::restore_newer_chains(
        ctx,
        remote,
        opener.clone(),
        &volumes,
        m.timestamp,
        req.progress.as_ref(),
    );
    report.snapshots = chains.done;
    report.refused_snapshots = chains.refused;
    report.fallbacks = chains.fallbacks;
    report.problems.extend(chains.problems);
    Ok(())
}

/// Feed the database dumps now with `--databases`, else list them as pending.
fn restore_dumps(
    ctx: &Ctx,
    req: &DrRequest,
    dir: &Path,
    m: &BackupManifest,
    report: &mut DrReport,
) -> anyhow::Result<()> {
    let dumps: Vec<String> = m
        .files
        .iter()
        .filter(|f| f.kind == FileKind::Database)
        .map(|f| f.source.clone())
        .collect();
    report.covered_by_dump = m
        .covered_by_dump
        .iter()
        .map(|(v, d)| (v.clone(), d.clone()))
        .collect();
    if req.databases && !dumps.is_empty() {
        run_restore(ctx, req, dir, Vec::new(), dumps, report)?;
    } else {
        report.dumps_pending = dumps;
    }
    Ok(())
}

/// `<type>/<name>`, or `<type>/<name>-dr` when a local directory of that name exists already.
fn final_dir(type_dir: &Path, name: &str) -> PathBuf {
    let d = type_dir.join(name);
    if !d.exists() {
        return d;
    }
    let mut n = 0;
    loop {
        let alt = type_dir.join(if n == 0 {
            format!("{name}-dr")
        } else {
            format!("{name}-dr{n}")
        });
        if !alt.exists() {
            return alt;
        }
        n += 1;
    }
}

/// Creates the manifest's records, parents first: through Docker when it answers (Docker then
/// holds the options, as after `docker volume create`), else through the driver's records. A
/// volume Docker created whose record is not under this root was made by a driver that serves
/// another state root: a problem, named.
fn create_records(
    ctx: &Ctx,
    driver: &Driver,
    docker_driver: &str,
    m: &BackupManifest,
    report: &mut DrReport,
) {
    for r in records_in_order(m) {
        let opts: BTreeMap<String, String> = r
            .options
            .iter()
            .filter(|(k, _)| k.as_str() != "template")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let by_hand = format!(
            "create it by hand and restore it with `allspark backup restore {} --volume {} --yes`",
            report.dir.display(),
            r.name
        );
        if matches!(driver.store().load(&r.name), Ok(Some(_))) {
            match driver.create(&r.name, Some(&opts)) {
                Ok(()) => report.existing.push(r.name.to_string()),
                Err(e) => report.problems.push(format!(
                    "volume {} cannot be created again ({e}); {by_hand}",
                    r.name
                )),
            }
            continue;
        }
        match docker_volumes::create(ctx, driver, docker_driver, &r.name, &opts) {
            Ok(how) if matches!(driver.store().load(&r.name), Ok(Some(_))) => {
                report.created.push(r.name.to_string());
                if how == Created::Driver {
                    report.created_without_docker.push(r.name.to_string());
                }
            }
            Ok(_) => report.problems.push(format!(
                "Docker created volume {} with driver {docker_driver}, but its record is not under {}: that driver serves another state root (give dr restore the --root of the driver, or --driver with the name of the allspark plugin of this root, and remove the volume with `docker volume rm {}`)",
                r.name,
                ctx.layout.root.display(),
                r.name
            )),
            Err(e) => report.problems.push(format!(
                "volume {} cannot be created again ({e:#}); {by_hand}",
                r.name
            )),
        }
    }
}

fn run_restore(
    ctx: &Ctx,
    req: &DrRequest,
    dir: &Path,
    volumes: Vec<String>,
    databases: Vec<String>,
    report: &mut DrReport,
) -> anyhow::Result<()> {
    let rreq = RestoreRequest {
        dir: dir.to_path_buf(),
        volumes,
        databases,
        ..Default::default()
    };
    // Problems the plan foresees (no restore container, Docker down) come back as failed items.
    let plan = restore::plan(ctx, &req.settings, &rreq)?;
    let r = restore::execute(ctx, &plan, req.progress.clone())?;
    report.items.extend(r.items);
    Ok(())
}
