//! What goes off-site: every complete local backup the remote lacks, newest first, each as its files (encrypted) first, then `index.json`, then the manifest last; an interrupted push resumes where it stopped.
//!
//! Progress of a push is kept in `<root>/state/remotes/<remote>.pending/
//! <type>-<name>.json` (the objects uploaded so far, with their size,
//! sha256 and ETag), written after each object. The next push re-uses an
//! object that is still on the remote with the recorded size and ETag, and
//! uploads the rest; the file goes once the manifest is up. Local backups that
//! the remote's retention would delete at once are not pushed.

use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{Local, NaiveDateTime};
use serde::Serialize;

use super::catalog::{self, Index, RemoteBackup, INDEX};
use super::client::{runtime, Remote};
use super::config::{self, RemoteConfig};
use super::crypt::Sealer;
use super::objects::{self, LocalFile};
use super::transfer::put_bytes;
use crate::backup::catalog::BackupEntry;
use crate::backup::retention::{self, Candidate, State};
use crate::backup::run::ItemProgress;
use crate::backup::{self, Settings};
use crate::core::layout::Layout;

/// What a push did.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct PushReport {
    pub remote: String,
    /// Backups made complete on the remote (`daily/20240131_020003`).
    pub pushed: Vec<String>,
    /// Local backups already complete on the remote.
    pub already: usize,
    /// Local backups not pushed because the remote's retention would delete them.
    pub too_old: usize,
    pub uploaded_objects: usize,
    /// Objects of an interrupted push found intact and not uploaded again.
    pub reused_objects: usize,
    /// Bytes uploaded (encrypted).
    pub bytes: u64,
    pub errors: Vec<String>,
    pub seconds: f64,
}

impl PushReport {
    pub(crate) fn ok(&self) -> bool {
        self.errors.is_empty()
    }
    pub(crate) fn summary(&self) -> String {
        format!(
            "remote {}: {} backup(s) pushed ({} object(s) uploaded, {} re-used from an interrupted push, {} bytes) in {:.1} s, {} already there{}",
            self.remote,
            self.pushed.len(),
            self.uploaded_objects,
            self.reused_objects,
            self.bytes,
            self.seconds,
            self.already,
            if self.ok() {
                String::new()
            } else {
                format!(", {} FAILED", self.errors.len())
            }
        )
    }
}

fn pending_path(layout: &Layout, remote: &str, e: &BackupEntry) -> PathBuf {
    objects::pending_path(
        &layout.remotes_dir(),
        remote,
        &format!("{}-{}", e.kind, e.name),
    )
}

fn state_of(complete: bool, ok: bool) -> State {
    match (complete, ok) {
        (true, true) => State::Ok,
        (true, false) => State::Failed,
        _ => State::Incomplete,
    }
}

/// The local backups to push, newest first, and how many are there already or too old.
fn to_push(
    local: Vec<BackupEntry>,
    remote: &[RemoteBackup],
    settings: &Settings,
    now: NaiveDateTime,
) -> (Vec<BackupEntry>, usize, usize) {
    let there = |e: &BackupEntry| {
        remote
            .iter()
            .any(|r| r.kind == e.kind && r.name == e.name && r.complete)
    };
    let (already, missing): (Vec<BackupEntry>, Vec<BackupEntry>) = local
        .into_iter()
        .filter(|e| e.complete && e.manifest.is_some())
        .partition(there);
    // What the remote would hold after the push, through the same calendar rules.
    let mut cands: Vec<Candidate> = remote
        .iter()
        .filter(|r| !missing.iter().any(|m| m.kind == r.kind && m.name == r.name))
        .map(|r| Candidate {
            kind: r.kind,
            name: r.name.clone(),
            stamp: r.stamp,
            state: state_of(r.complete, r.is_ok()),
        })
        .collect();
    cands.extend(missing.iter().map(|e| Candidate {
        kind: e.kind,
        name: e.name.clone(),
        stamp: e.stamp,
        state: state_of(true, e.is_ok()),
    }));
    let plan = retention::plan(&cands, now, &settings.keep);
    let (mut keep, old): (Vec<BackupEntry>, Vec<BackupEntry>) =
        missing.into_iter().partition(|e| {
            !plan
                .iter()
                .any(|d| d.kind == e.kind && d.name == e.name && d.delete)
        });
    keep.sort_by(|a, b| (b.stamp, &b.name).cmp(&(a.stamp, &a.name)));
    (keep, already.len(), old.len())
}

/// Push every complete local backup the remote lacks. `Err` only when nothing could be tried
/// (remote unknown or unreachable); each backup's failure is a sentence in the report.
pub(crate) fn push(
    layout: &Layout,
    cfg: &RemoteConfig,
    settings: &Settings,
    progress: Option<ItemProgress>,
) -> anyhow::Result<PushReport> {
    let t0 = std::time::Instant::now();
    let _lock = super::take_lock(layout, &cfg.name)?;
    let remote = Remote::open(cfg)?;
    let sealer = Sealer::of(cfg)?;
    let local = backup::catalog::list(settings)?;
    let rt = runtime()?;
    let mut report = PushReport {
        remote: cfg.name.clone(),
        ..Default::default()
    };
    rt.block_on(async {
        let listing = catalog::list(&remote).await?;
        let (todo, already, too_old) =
            to_push(local, &listing, settings, Local::now().naive_local());
        report.already = already;
        report.too_old = too_old;
        for e in todo {
            let existing = listing
                .iter()
                .find(|r| r.kind == e.kind && r.name == e.name);
            let pending = pending_path(layout, &cfg.name, &e);
            match push_one(&remote, &sealer, &e, existing, &pending, progress.as_ref()).await {
                Ok((up, reused, bytes)) => {
                    tracing::info!(remote = %cfg.name, backup = %format!("{}/{}", e.kind, e.name), uploaded = up, reused, bytes, "backup pushed");
                    report.pushed.push(format!("{}/{}", e.kind, e.name));
                    report.uploaded_objects += up;
                    report.reused_objects += reused;
                    report.bytes += bytes;
                }
                Err(err) => {
                    let msg = format!(
                        "backup {}/{} was not pushed to remote {} (the local backup is intact; its partial upload has no manifest there and is never used): {err:#}",
                        e.kind, e.name, cfg.name
                    );
                    tracing::error!(error = %msg, "push failed");
                    report.errors.push(msg);
                    // Nothing else will get through a dead endpoint or refused credentials.
                    break;
                }
            }
        }
        anyhow::Ok(())
    })?;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// Push one backup: its files, then the index, then the manifest. Returns (uploaded, reused, bytes).
async fn push_one(
    remote: &Remote,
    sealer: &Sealer,
    e: &BackupEntry,
    existing: Option<&RemoteBackup>,
    pending_file: &Path,
    progress: Option<&ItemProgress>,
) -> anyhow::Result<(usize, usize, u64)> {
    let m = e.manifest.as_ref().context("the backup has no manifest")?;
    let files: Vec<LocalFile> = m
        .files
        .iter()
        .map(|f| LocalFile {
            name: f.name.clone(),
            sha256: Some(f.sha256.clone()),
        })
        .collect();
    let up = objects::upload_files(
        remote,
        sealer,
        &remote.backup_key(e.kind, &e.name),
        &e.dir,
        &files,
        existing.map(|b| &b.listing),
        pending_file,
        progress,
    )
    .await?;
    let (uploaded, reused, mut bytes, objects) = (up.uploaded, up.reused, up.bytes, up.objects);
    let manifest_object = catalog::manifest_object(sealer.suffix());
    let index = Index {
        format: 1,
        kind: e.kind,
        name: e.name.clone(),
        timestamp: e.timestamp.clone(),
        outcome: m.outcome_str().to_string(),
        encryption: if matches!(sealer, Sealer::Plain) {
            "none".into()
        } else {
            "age".into()
        },
        manifest: manifest_object.clone(),
        objects,
    };
    let mut index_bytes = serde_json::to_vec_pretty(&index)?;
    index_bytes.push(b'\n');
    put_bytes(
        remote,
        &remote.object_key(e.kind, &e.name, INDEX),
        index_bytes,
    )
    .await?;
    // The manifest exactly as written locally, encrypted, last.
    let local_manifest = backup::manifest_path(&e.dir);
    let plain = std::fs::read(&local_manifest)
        .with_context(|| format!("cannot read {}", local_manifest.display()))?;
    let sealed = sealer
        .seal_bytes(&plain)
        .context("cannot encrypt the manifest")?;
    bytes += sealed.len() as u64;
    put_bytes(
        remote,
        &remote.object_key(e.kind, &e.name, &manifest_object),
        sealed,
    )
    .await?;
    objects::done(pending_file);
    Ok((uploaded, reused, bytes))
}

/// After a local backup: push what the remote lacks, then apply the remote's retention.
/// Every failure is a sentence in the returned list (the local backups are never touched).
pub(crate) fn push_and_prune(
    layout: &Layout,
    remote_name: &str,
    settings: &Settings,
    progress: Option<ItemProgress>,
) -> (Option<PushReport>, Vec<String>) {
    let cfg = match config::load(layout, remote_name) {
        Ok(c) => c,
        Err(e) => return (None, vec![format!("{e:#}")]),
    };
    let mut errors = Vec::new();
    let report = match push(layout, &cfg, settings, progress) {
        Ok(r) => {
            errors.extend(r.errors.iter().cloned());
            Some(r)
        }
        Err(e) => {
            errors.push(format!(
                "nothing was pushed to remote {remote_name} (the local backups are intact): {e:#}"
            ));
            None
        }
    };
    if errors.is_empty() {
        match super::prune::prune(layout, &cfg, settings, Local::now().naive_local(), false) {
            Ok(p) => errors.extend(p.errors),
            Err(e) => errors.push(format!("remote {remote_name}: retention failed: {e:#}")),
        }
    }
    (report, errors)
}
