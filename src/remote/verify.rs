//! Verification at a distance: every complete remote backup's and snapshot's objects present with the size and ETag recorded at upload (one listing, nothing downloaded); with `--full`, each backup downloaded, checked against the index and the manifest, decrypted and test-extracted in a scratch directory.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::catalog::{self, RemoteBackup};
use super::client::{runtime, Remote};
use super::config::RemoteConfig;
use super::crypt::Opener;
use super::fetch::fetch;
use super::snapshots;
use crate::backup::run::ItemProgress;

/// The result of one remote backup.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct BackupCheck {
    pub backup: String,
    pub ok: bool,
    /// Objects checked.
    pub objects: usize,
    /// One sentence per problem, naming the object.
    pub problems: Vec<String>,
}

/// The result of one remote snapshot (objects against its index, from the listing).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct SnapshotCheck {
    /// `volume@id`.
    pub snapshot: String,
    pub ok: bool,
    pub objects: usize,
    pub problems: Vec<String>,
}

/// What [`verify`] found.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct RemoteVerifyReport {
    pub remote: String,
    pub full: bool,
    pub backups: Vec<BackupCheck>,
    /// Every remote snapshot (not with `--backup`).
    pub snapshots: Vec<SnapshotCheck>,
    /// Incomplete remote backups and snapshots (interrupted pushes): not failures.
    pub incomplete: Vec<String>,
}

impl RemoteVerifyReport {
    pub(crate) fn ok(&self) -> bool {
        self.backups.iter().all(|b| b.ok) && self.snapshots.iter().all(|s| s.ok)
    }
    pub(crate) fn failures(&self) -> Vec<String> {
        self.backups
            .iter()
            .flat_map(|b| b.problems.iter().cloned())
            .chain(
                self.snapshots
                    .iter()
                    .flat_map(|s| s.problems.iter().cloned()),
            )
            .collect()
    }
}

/// Verify the remote's complete backups (only `only`, `type/name`, when given) and, without
/// `only`, its snapshots.
///
/// `full` downloads each into a scratch directory below `scratch_parent`
/// (deleted after each backup) and test-extracts it with [`crate::backup::verify`].
pub(crate) fn verify(
    cfg: &RemoteConfig,
    only: Option<&str>,
    full: bool,
    identity: Option<&Path>,
    scratch_parent: &Path,
    progress: Option<ItemProgress>,
) -> anyhow::Result<RemoteVerifyReport> {
    let remote = Remote::open(cfg)?;
    let opener = if full {
        Some(Arc::new(Opener::of(cfg, identity)?))
    } else {
        None
    };
    let rt = runtime()?;
    let backups = rt.block_on(catalog::list(&remote))?;
    let mut report = RemoteVerifyReport {
        remote: cfg.name.clone(),
        full,
        ..Default::default()
    };
    let selected: Vec<&RemoteBackup> = backups
        .iter()
        .filter(|b| only.is_none_or(|o| o == b.id() || o == b.name))
        .collect();
    if let Some(o) = only {
        if selected.is_empty() {
            anyhow::bail!(
                "remote {} has no backup {o}; see `allspark remote ls {}`",
                cfg.name,
                cfg.name
            );
        }
    }
    for b in selected {
        if !b.complete {
            report.incomplete.push(b.id());
            continue;
        }
        let mut problems = catalog::check_listing(&remote, b);
        if full && problems.is_empty() {
            if let Some(op) = &opener {
                problems.extend(full_check(
                    rt,
                    &remote,
                    b,
                    op.clone(),
                    scratch_parent,
                    progress.as_ref(),
                ));
            }
        }
        report.backups.push(BackupCheck {
            backup: b.id(),
            ok: problems.is_empty(),
            objects: b.index.as_ref().map(|i| i.objects.len()).unwrap_or(0),
            problems,
        });
    }
    if only.is_none() {
        check_snapshots(rt, &remote, &mut report)?;
    }
    Ok(report)
}

/// Every remote snapshot's objects against its index, from one listing.
fn check_snapshots(
    rt: &tokio::runtime::Runtime,
    remote: &Remote,
    report: &mut RemoteVerifyReport,
) -> anyhow::Result<()> {
    for s in rt.block_on(snapshots::list(remote, None))? {
        let name = format!("{}@{}", s.volume, s.id);
        if !s.complete {
            report.incomplete.push(format!("snapshot {name}"));
            continue;
        }
        let problems = match &s.index {
            None => vec![format!(
                "snapshot {name}: {}",
                s.error.as_deref().unwrap_or("no readable index")
            )],
            Some(index) => {
                let base = remote.snapshot_key(&s.volume, &s.id);
                catalog::check_objects(
                    remote,
                    |o| base.clone().join(o),
                    &s.listing,
                    &index.objects,
                    &index.manifest,
                    &format!("the snapshot {name} (and every later one of its chain)"),
                )
            }
        };
        report.snapshots.push(SnapshotCheck {
            snapshot: name,
            ok: problems.is_empty(),
            objects: s.index.as_ref().map_or(0, |i| i.objects.len()),
            problems,
        });
    }
    Ok(())
}

/// Download, check, decrypt and test-extract one backup; the problems found.
fn full_check(
    rt: &tokio::runtime::Runtime,
    remote: &Remote,
    b: &RemoteBackup,
    opener: Arc<Opener>,
    scratch_parent: &Path,
    progress: Option<&ItemProgress>,
) -> Vec<String> {
    if let Err(e) = crate::fs::durable::ensure_dir(scratch_parent, 0o700) {
        return vec![format!("cannot create {}: {e}", scratch_parent.display())];
    }
    let scratch = match tempfile::Builder::new()
        .prefix(".remote-verify-")
        .tempdir_in(scratch_parent)
    {
        Ok(t) => t,
        Err(e) => {
            return vec![format!(
                "cannot create a scratch directory in {}: {e}",
                scratch_parent.display()
            )]
        }
    };
    let dir = scratch.path().join(&b.name);
    if let Err(e) = rt.block_on(fetch(remote, b, opener, &dir, progress)) {
        return vec![format!("{}: {e:#}", b.id())];
    }
    match crate::backup::verify::verify_dir(&dir, progress.cloned()) {
        Ok(r) if r.ok() => Vec::new(),
        Ok(r) => r
            .failures()
            .into_iter()
            .map(|f| format!("{}: {f}", b.id()))
            .collect(),
        Err(e) => vec![format!("{}: {e:#}", b.id())],
    }
}
