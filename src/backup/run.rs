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

use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bollard::Docker;
use chrono::{Local, Utc};

use super::manifest::{self, BackupManifest, FileEntry, FileKind, LastBackup, Outcome, Producer};
use super::quiesce::StopGuard;
use super::{
    dump, retention, BackupType, LabelFilter, Settings, LABEL_DUMP, LABEL_NAME, LABEL_STOP,
};
use crate::archive::{self, CompressOptions, WriteOptions};
use crate::context::Ctx;
use crate::core::names::VolumeName;
use crate::core::options::{BackupPriority, Class, Compression};
use crate::core::store::{Store, VolumeRecord};
use crate::docker::ContainerInfo;
use crate::fs::beneath::Missing;
use crate::fs::durable::{self, FileLock, LockKind};
use crate::pool::location::Locate;

/// Progress of one item: `(item, Some(bytes so far))` while it runs, `(item, None)` when it is done.
pub type ItemProgress = Arc<dyn Fn(&str, Option<u64>) + Send + Sync>;

/// How to run.
#[derive(Default, Clone)]
pub struct RunOptions {
    pub progress: Option<ItemProgress>,
    /// Set to stop between volumes (agent shutdown): the rest is reported as not backed up.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Apply retention after the run.
    pub prune: bool,
}

/// What a run did. Never an `Err`: every failure is a sentence in `errors`.
#[derive(Debug, Default)]
pub struct RunReport {
    pub kind: Option<BackupType>,
    pub dir: Option<PathBuf>,
    pub manifest: Option<BackupManifest>,
    /// Everything that failed (the manifest's errors, then retention's).
    pub errors: Vec<String>,
    pub pruned: Vec<PathBuf>,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// One line for the end of the output.
    pub fn summary(&self) -> String {
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

/// The volumes a run of these settings backs up, in order (highest priority first, then by name).
///
/// A `parent=` child whose parent (or grand-parent …) is backed up is left
/// out: its data is inside the parent's archive already.
pub fn select_volumes(
    records: &[Arc<VolumeRecord>],
    include_temporary: bool,
) -> Vec<Arc<VolumeRecord>> {
    let wanted = |r: &VolumeRecord| {
        r.spec.backup != BackupPriority::None
            && (include_temporary || r.spec.class != Class::Temporary)
    };
    let by_name = |n: &str| records.iter().find(|r| r.name == n);
    let inside_a_backed_up_parent = |r: &VolumeRecord| {
        let mut cur = r.spec.parent.clone();
        let mut hops = 0;
        while let (Some(p), true) = (cur, hops < 64) {
            match by_name(&p) {
                Some(pr) if wanted(pr) => return true,
                Some(pr) => cur = pr.spec.parent.clone(),
                None => return false,
            }
            hops += 1;
        }
        false
    };
    let mut v: Vec<Arc<VolumeRecord>> = records
        .iter()
        .filter(|r| wanted(r))
        .filter(|r| {
            let skip = inside_a_backed_up_parent(r);
            if skip {
                tracing::debug!(volume = %r.name, "inside its parent's archive; not archived on its own");
            }
            !skip
        })
        .cloned()
        .collect();
    v.sort_by(|a, b| (a.spec.backup, &a.name).cmp(&(b.spec.backup, &b.name)));
    v
}

/// `name` and the `parent=` volumes inside it (children, grand-children …).
pub fn with_descendants(records: &[Arc<VolumeRecord>], name: &VolumeName) -> Vec<VolumeName> {
    let mut out = vec![name.clone()];
    let mut i = 0;
    while i < out.len() && out.len() < 10_000 {
        let cur = out[i].clone();
        for r in records {
            if r.spec.parent.as_ref() == Some(&cur) && !out.contains(&r.name) {
                out.push(r.name.clone());
            }
        }
        i += 1;
    }
    out
}

/// Running containers (only those with the filter label, if any).
pub async fn running_containers(
    docker: &Docker,
    filter: Option<&LabelFilter>,
) -> anyhow::Result<Vec<ContainerInfo>> {
    let mut filters = std::collections::HashMap::new();
    filters.insert("status".to_string(), vec!["running".to_string()]);
    if let Some(f) = filter {
        filters.insert("label".to_string(), vec![f.to_string()]);
    }
    let mut out = crate::docker::list(docker, false, filters)
        .await
        .context("cannot list the running containers")?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The selected volumes a dump stands for: volume -> (dump name, container id).
///
/// Every selected volume mounted by a container with a dump label (a volume
/// mounted by two such containers goes with the first, by name).
pub fn dump_coverage(
    selected: &[Arc<VolumeRecord>],
    dumped: &[&ContainerInfo],
) -> std::collections::BTreeMap<String, (String, String)> {
    let mut out = std::collections::BTreeMap::new();
    let mut by_name: Vec<&&ContainerInfo> = dumped.iter().collect();
    by_name.sort_by(|a, b| a.name.cmp(&b.name));
    for c in by_name {
        for v in &c.volumes {
            if selected.iter().any(|r| &r.name == v) && !out.contains_key(v) {
                out.insert(v.clone(), (dump_name(c), c.id.clone()));
            }
        }
    }
    out
}

/// The name a dump of container `c` gets: its `allspark.backup.name` label, else the container name.
pub fn dump_name(c: &ContainerInfo) -> String {
    c.labels
        .get(LABEL_NAME)
        .filter(|n| !n.is_empty())
        .cloned()
        .unwrap_or_else(|| c.name.clone())
}

/// Dump names taken by more than one container of a run: `(name, containers by name)`.
///
/// Dump names are one namespace: two containers with the same name (e.g. one
/// labelled `allspark.backup.name=<the other's name>`) would write one file,
/// and the first would take the other's slot. Such containers are all
/// refused, before any dump runs.
pub fn duplicate_dump_names(dumped: &[&ContainerInfo]) -> Vec<(String, Vec<String>)> {
    let mut by_name: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for c in dumped {
        by_name
            .entry(dump_name(c))
            .or_default()
            .push(c.name.clone());
    }
    by_name
        .into_iter()
        .filter(|(_, cs)| cs.len() > 1)
        .map(|(n, mut cs)| {
            cs.sort();
            (n, cs)
        })
        .collect()
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
pub fn run(ctx: &Ctx, settings: &Settings, kind: BackupType, opts: &RunOptions) -> RunReport {
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
    let mut m = BackupManifest {
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
    };
    let rt = match crate::core::runtime::shared() {
        Ok(rt) => Some(rt),
        Err(e) => {
            m.errors.push(format!(
                "cannot start a runtime for the Docker API ({e}); database dumps and container stops were skipped"
            ));
            None
        }
    };
    let docker = rt.as_ref().and_then(|rt| {
        let r = rt.block_on(async {
            let d = crate::docker::connect(&ctx.docker_url).await?;
            let list = running_containers(&d, settings.container_label.as_ref()).await?;
            anyhow::Ok((d, list))
        });
        match r {
            Ok(x) => Some(x),
            Err(e) => {
                m.errors.push(format!(
                    "{e:#}: database dumps and `{LABEL_STOP}` containers were skipped; start dockerd or fix --docker, then run the backup again"
                ));
                None
            }
        }
    });

    // Volumes are chosen before anything is stopped.
    let store = Store::new(ctx.layout.clone());
    let selected = match store.all() {
        Ok((records, bad)) => {
            m.records = manifest::records_of(&records);
            for b in bad {
                m.errors.push(format!(
                    "a volume record cannot be read ({b}); that volume is not in the backup, repair or remove its record"
                ));
            }
            select_volumes(&records, settings.include_temporary)
        }
        Err(e) => {
            m.errors.push(format!(
                "cannot list the volumes ({e}); no volume is in the backup, check --root"
            ));
            Vec::new()
        }
    };

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
    // Refused before any dump runs: every container whose dump name another one also has.
    let mut refused: std::collections::HashMap<String, String> = Default::default();
    for (name, cs) in duplicate_dump_names(&to_dump) {
        let why = format!(
            "dump {name} refused: containers {} all have dump name {name} (label {LABEL_NAME}, else the container name), so neither is dumped; give each a distinct {LABEL_NAME} label",
            cs.join(" and ")
        );
        for c in to_dump.iter().filter(|c| cs.contains(&c.name)) {
            refused.insert(c.id.clone(), why.clone());
        }
    }
    let volumes: Vec<Arc<VolumeRecord>> = if kind.dumps_only() {
        Vec::new()
    } else {
        selected
            .iter()
            .filter(|r| !coverage.contains_key(r.name.as_str()))
            .cloned()
            .collect()
    };

    let mut guard = None;
    if let (Some(rt), Some((docker, containers))) = (rt.as_ref(), docker.as_ref()) {
        let to_stop: Vec<&ContainerInfo> = if kind.dumps_only() {
            Vec::new()
        } else {
            containers
                .iter()
                .filter(|c| c.labels.get(LABEL_STOP).map(|v| v.trim()) == Some("true"))
                .collect()
        };
        let mut g = StopGuard::new(&ctx.layout, rt, docker, &format!("backup {kind}"));
        let mut stoppable = true;
        if !to_stop.is_empty() {
            let owned: Vec<ContainerInfo> = to_stop.iter().map(|c| (*c).clone()).collect();
            if let Err(e) = g.record(&owned) {
                m.errors.push(format!(
                    "{e:#}; containers labelled {LABEL_STOP}=true were left running"
                ));
                stoppable = false;
            }
        }
        let is_dumped = |c: &ContainerInfo| to_dump.iter().any(|d| d.id == c.id);
        if stoppable {
            for c in to_stop.iter().filter(|c| !is_dumped(c)) {
                match g.stop(c) {
                    Ok(()) => m.stopped_containers.push(c.name.clone()),
                    Err(e) => m.errors.push(e),
                }
            }
        }
        for c in &to_dump {
            let name = dump_name(c);
            let cmd = c.labels.get(LABEL_DUMP).cloned().unwrap_or_default();
            let covers: Vec<String> = coverage
                .iter()
                .filter(|(_, (_, id))| *id == c.id)
                .map(|(v, _)| v.clone())
                .collect();
            if let Some(p) = &opts.progress {
                p(&format!("dump {name}"), Some(0));
            }
            let result = match refused.get(&c.id) {
                Some(why) => Err(format!("container {}: {why}", c.name)),
                None => do_dump(rt, docker, c, &name, &cmd, dir, &m),
            };
            match result {
                Ok(mut entry) => {
                    tracing::info!(dump = %name, container = %c.name, bytes = entry.bytes_in, covers = ?covers, "database dumped");
                    for v in &covers {
                        m.covered_by_dump.insert(v.clone(), name.clone());
                    }
                    entry.covers = covers;
                    m.databases.push(name.clone());
                    m.files.push(entry);
                }
                Err(e) => {
                    m.errors.push(e);
                    if !kind.dumps_only() {
                        for v in &covers {
                            m.errors.push(format!(
                                "volume {v} has no copy in this backup: it belongs to the running database container {}, whose dump failed (above), and the files of a running database are not archived; fix the dump and run the backup again",
                                c.name
                            ));
                        }
                    }
                }
            }
            if let Some(p) = &opts.progress {
                p(&format!("dump {name}"), None);
            }
            if stoppable && to_stop.iter().any(|s| s.id == c.id) {
                match g.stop(c) {
                    Ok(()) => m.stopped_containers.push(c.name.clone()),
                    Err(e) => m.errors.push(e),
                }
            }
        }
        guard = Some(g);
    }

    let cancelled = || {
        opts.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
    };
    for (i, rec) in volumes.iter().enumerate() {
        if cancelled() {
            let rest: Vec<&str> = volumes[i..].iter().map(|r| r.name.as_str()).collect();
            m.errors.push(format!(
                "the backup was interrupted (the agent is stopping); volumes {} were not backed up, run the backup again",
                rest.join(", ")
            ));
            break;
        }
        match archive_volume(ctx, rec, dir, opts) {
            Ok((entry, warning)) => {
                m.volumes.push(rec.name.to_string());
                m.files.push(entry);
                m.errors.extend(warning);
            }
            Err(e) => m.errors.push(e),
        }
    }

    if let Some(mut g) = guard {
        m.errors.extend(g.restart_all());
    }
    let finished = Utc::now();
    m.finished_at = Some(finished);
    m.duration_ms = t0.elapsed().as_millis() as u64;
    m.outcome = Some(if m.errors.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Failed
    });
    m
}

fn do_dump(
    rt: &tokio::runtime::Runtime,
    docker: &Docker,
    c: &ContainerInfo,
    name: &str,
    cmd: &str,
    dir: &Path,
    m: &BackupManifest,
) -> Result<FileEntry, String> {
    crate::core::names::validate(name).map_err(|e| {
        format!(
            "container {}: its dump name is not usable as a file name ({e}); set the label {LABEL_NAME} to a plain name",
            c.name
        )
    })?;
    let file = format!("{name}.sql.gz");
    if m.file(&file).is_some() {
        return Err(format!(
            "container {}: another container's dump is already called {name}; give each a distinct {LABEL_NAME} label",
            c.name
        ));
    }
    let r = rt
        .block_on(dump::dump_to_file(docker, &c.id, cmd, &dir.join(&file)))
        .map_err(|e| format!("dump {name} (container {}): {e}", c.name))?;
    Ok(FileEntry {
        name: file,
        kind: FileKind::Database,
        size: r.size,
        sha256: r.sha256,
        source: name.to_string(),
        options: Default::default(),
        bytes_in: r.bytes_in,
        compression: Compression::Gzip,
        covers: Vec::new(),
        producer: Some(Producer::of(c)),
    })
}

fn archive_volume(
    ctx: &Ctx,
    rec: &VolumeRecord,
    dir: &Path,
    opts: &RunOptions,
) -> Result<(FileEntry, Option<String>), String> {
    let name = &rec.name;
    // Read through a descriptor opened without following symlinks (a `parent=` child swapped
    // for a link to a host directory is refused, not archived).
    let data = rec
        .data
        .open(&ctx.layout, &ctx.view, Missing::Refuse)
        .map_err(|e| {
            format!(
                "volume {name}: its data directory cannot be read safely ({e}); the volume is not in the backup (check `allspark volume inspect {name}`)"
            )
        })?
        .dir;
    let src = data.proc_path();
    let lock_path = ctx.layout.snapshot_lock(name);
    let _snap = FileLock::acquire(&lock_path, LockKind::Shared)
        .map_err(|e| format!("volume {name}: cannot take {}: {e}", lock_path.display()))?;
    let compression = rec.spec.compression.unwrap_or(ctx.compression);
    let file = format!("{name}.{}", compression.archive_suffix());
    let tmp = dir.join(format!(".{file}.partial"));
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("volume {name}: cannot create {}: {e}", tmp.display()))?;
    let item = format!("volume {name}");
    let progress = opts.progress.clone().map(|p| {
        let item = item.clone();
        Box::new(move |n: u64| p(&item, Some(n))) as archive::writer::ProgressFn
    });
    let wopts = WriteOptions {
        progress,
        compression: CompressOptions::new(compression),
        ..Default::default()
    };
    tracing::info!(volume = %name, source = %src.display(), %compression, "archiving volume");
    let result = archive::write_archive(&src, out, &wopts);
    if let Some(p) = &opts.progress {
        p(&item, None);
    }
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(format!("volume {name}: {e}"));
        }
    };
    let Some(stats) = r.compressed.clone() else {
        let _ = fs::remove_file(&tmp);
        return Err(format!(
            "volume {name}: the archive has no checksum (internal error)"
        ));
    };
    fs::rename(&tmp, dir.join(&file))
        .map_err(|e| format!("volume {name}: cannot move the archive into place: {e}"))?;
    let warning = (r.unreadable > 0).then(|| {
        format!(
            "volume {name}: {} entries could not be read and are missing from {file} (first: {}); fix their permissions and run the backup again",
            r.unreadable,
            r.problems.first().cloned().unwrap_or_default()
        )
    });
    if r.vanished + r.changed_during_walk > 0 {
        tracing::info!(volume = %name, vanished = r.vanished, changed = r.changed_during_walk, "files changed while the volume was archived (live data)");
    }
    Ok((
        FileEntry {
            name: file,
            kind: FileKind::Volume,
            size: stats.bytes_out,
            sha256: stats.sha256,
            source: name.to_string(),
            options: rec.options.clone(),
            bytes_in: r.bytes_in,
            compression,
            covers: Vec::new(),
            producer: None,
        },
        warning,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, labels: &[(&str, &str)]) -> ContainerInfo {
        ContainerInfo::fixture(name, labels)
    }

    #[test]
    fn duplicate_dump_names_are_found_naming_every_container() {
        let a = container("aaa-attacker", &[(LABEL_NAME, "victim")]);
        let v = container("victim", &[]);
        let other = container("other", &[(LABEL_NAME, "shop")]);
        let empty_label = container("plain", &[(LABEL_NAME, "")]);
        let all = [&v, &a, &other, &empty_label];
        assert_eq!(
            duplicate_dump_names(&all),
            vec![(
                "victim".to_string(),
                vec!["aaa-attacker".to_string(), "victim".to_string()]
            )]
        );
        assert!(duplicate_dump_names(&[&v, &other, &empty_label]).is_empty());
        let twin = container("twin", &[(LABEL_NAME, "shop")]);
        assert_eq!(
            duplicate_dump_names(&[&other, &twin])[0].1,
            vec!["other", "twin"]
        );
    }

    fn rec(name: &VolumeName, opts: &[(&str, &str)]) -> Arc<VolumeRecord> {
        Arc::new(VolumeRecord::managed(name, opts).unwrap())
    }

    #[test]
    fn selection_orders_by_priority_and_leaves_out_none_temporary_and_children() {
        let all = vec![
            rec(&VolumeName::fixed("redis-data"), &[("backup", "medium")]),
            rec(
                &VolumeName::fixed("postgres-data"),
                &[("backup", "highest")],
            ),
            rec(
                &VolumeName::fixed("log-data"),
                &[("backup", "low"), ("class", "temporary")],
            ),
            rec(&VolumeName::fixed("cache"), &[("backup", "none")]),
            rec(&VolumeName::fixed("builder-data"), &[("backup", "high")]),
            rec(
                &VolumeName::fixed("target-workspaces"),
                &[("backup", "medium")],
            ),
            rec(
                &VolumeName::fixed("project-1"),
                &[("parent", "target-workspaces"), ("backup", "high")],
            ),
            rec(&VolumeName::fixed("orphan-child"), &[("parent", "cache")]),
        ];
        let names =
            |v: Vec<Arc<VolumeRecord>>| v.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(select_volumes(&all, false)),
            vec![
                "postgres-data",
                "builder-data",
                "orphan-child",
                "redis-data",
                "target-workspaces"
            ]
        );
        assert!(names(select_volumes(&all, true)).contains(&VolumeName::fixed("log-data")));
        assert_eq!(
            with_descendants(&all, &VolumeName::fixed("target-workspaces")),
            vec!["target-workspaces", "project-1"]
        );
    }
}
