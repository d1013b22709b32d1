//! Restoring: a chain of archives extracted into a fresh staging directory (each hashed while it is read, and checked against its manifest before anything is swapped), then swapped in atomically.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::archive::{self, ExtractOptions};
use crate::core::layout::{HostView, Layout};
use crate::core::store::DataLocation;
use crate::fs::beneath::{Dir, Missing};
use crate::pool::location::Locate;
use crate::snapshot::catalog;
use crate::snapshot::manifest::Manifest;
use crate::snapshot::{Counting, SnapshotError};

/// What a restore did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RestoreReport {
    pub archives: usize,
    pub entries: u64,
    pub bytes: u64,
    pub deleted: u64,
    /// A writable copy of a read-only btrfs snapshot was swapped in (nothing extracted).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cow: bool,
}

/// The archive file of a snapshot.
pub fn archive_path(layout: &Layout, m: &Manifest) -> PathBuf {
    catalog::snapshot_dir(layout, &m.volume, &m.id).join(&m.archive)
}

/// The error for an archive whose sha256 is not its manifest's.
pub fn checksum_mismatch(path: &Path, sum: &str, m: &Manifest) -> SnapshotError {
    SnapshotError::Corrupt(format!(
        "{} does not match its manifest (sha256 {sum}, expected {}); this snapshot cannot be trusted",
        path.display(),
        m.sha256
    ))
}

/// Where a restore swaps its new tree in: the data directory's parent, as a descriptor opened
/// without following symlinks, and the data directory's name in it. Staging, swap and cleanup
/// all happen relative to that descriptor, so a container that can rename entries beside the
/// data directory (a parent volume's) cannot redirect them.
#[derive(Debug)]
pub struct SwapTarget {
    pub parent: Dir,
    pub name: OsString,
}

impl SwapTarget {
    /// The data directory of a recorded volume.
    pub fn of(
        data: &DataLocation,
        layout: &Layout,
        view: &HostView,
    ) -> Result<SwapTarget, SnapshotError> {
        let (parent, name) = data
            .open_parent(layout, view)
            .map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        Ok(SwapTarget { parent, name })
    }

    /// A directory named by a trusted path (a Docker-managed volume's `_data`).
    pub fn by_path(target: &Path) -> Result<SwapTarget, SnapshotError> {
        let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(SnapshotError::Invalid(format!(
                "cannot restore into {}",
                target.display()
            )));
        };
        let parent = Dir::open_anchor(parent)
            .map_err(|e| SnapshotError::io(format!("cannot open {}", parent.display()), e))?;
        Ok(SwapTarget {
            parent,
            name: name.to_os_string(),
        })
    }

    /// The target as users know it, for messages.
    pub fn shown(&self) -> PathBuf {
        self.parent.shown().join(&self.name)
    }

    fn staging_prefix(&self) -> String {
        format!(".{}.allspark-staging-", self.name.to_string_lossy())
    }
}

/// A fresh staging directory beside the target (same filesystem, so the swap is a rename),
/// made with `mkdirat` in the parent's descriptor and opened without following links.
pub fn staging_dir(t: &SwapTarget) -> Result<(OsString, Dir), SnapshotError> {
    let stamp = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let name = OsString::from(format!("{}{stamp}", t.staging_prefix()));
    let opened = t
        .parent
        .open_beneath(Path::new(&name), Missing::Create)
        .map_err(|e| SnapshotError::Invalid(format!("cannot create a staging directory: {e}")))?;
    if opened.created.is_none() {
        return Err(SnapshotError::Invalid(format!(
            "{} already exists; another restore is running",
            t.parent.shown().join(&name).display()
        )));
    }
    Ok((name, opened.dir))
}

/// Delete the staging directories that restores killed midway left beside the target (a
/// partial extraction, or the old content awaiting deletion). Call only while holding the
/// volume's snapshot lock, which every restore over a volume holds.
pub fn remove_stale_staging(t: &SwapTarget) {
    let prefix = t.staging_prefix();
    let base = t.parent.proc_path();
    let Ok(entries) = fs::read_dir(&base) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let shown = t.parent.shown().join(e.file_name());
        // remove_dir_all does not follow a symlink put in the staging directory's place.
        match fs::remove_dir_all(base.join(e.file_name())) {
            Ok(()) => {
                tracing::info!(path = %shown.display(), "removed the staging directory of an interrupted restore")
            }
            Err(err) => {
                tracing::warn!(path = %shown.display(), %err, "cannot remove the staging directory of an interrupted restore")
            }
        }
    }
}

/// Extract `chain` (full first) into a new staging directory and swap it with the target.
/// The old content is deleted only after the swap; a failure (a damaged member or frame,
/// a checksum mismatch) leaves the target untouched.
pub fn restore_chain_into(
    layout: &Layout,
    chain: &[Manifest],
    target: &SwapTarget,
    progress: Option<&(dyn Fn(u64) + Send + Sync)>,
) -> Result<RestoreReport, SnapshotError> {
    let (stage, dir) = staging_dir(target)?;
    let result = extract_chain(layout, chain, &dir.proc_path(), progress).and_then(|r| {
        swap_in(target, &stage)?;
        Ok(r)
    });
    drop(dir);
    remove_staged(target, &stage);
    result
}

/// Delete the staging directory (after a swap it holds the old content).
pub fn remove_staged(target: &SwapTarget, stage: &OsStr) {
    if let Err(e) = fs::remove_dir_all(target.parent.proc_path().join(stage)) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %target.parent.shown().join(stage).display(), %e, "cannot delete the old content after the restore");
        }
    }
}

/// Extract a chain into `dest` (deletions of each incremental first, then its archive).
/// Each archive is hashed while it is read and checked against its manifest: an `Err`
/// means `dest` holds a partial or untrusted tree and must be thrown away.
pub fn extract_chain(
    layout: &Layout,
    chain: &[Manifest],
    dest: &Path,
    progress: Option<&(dyn Fn(u64) + Send + Sync)>,
) -> Result<RestoreReport, SnapshotError> {
    let mut report = RestoreReport::default();
    for m in chain {
        if !m.deleted.is_empty() {
            archive::apply_deletions(dest, &m.deleted)?;
            report.deleted += m.deleted.len() as u64;
        }
        let r = extract_checked(layout, m, dest, false, progress)?;
        report.archives += 1;
        report.entries += r.entries;
        report.bytes += r.bytes;
    }
    Ok(report)
}

/// Extract one archive of a chain into `dest` (with `verify_only`, read it to the end and
/// write nothing), hashed on the way: an error unless its sha256 is its manifest's.
pub(crate) fn extract_checked(
    layout: &Layout,
    m: &Manifest,
    dest: &Path,
    verify_only: bool,
    progress: Option<&(dyn Fn(u64) + Send + Sync)>,
) -> Result<archive::ExtractReport, SnapshotError> {
    let p = archive_path(layout, m);
    let f =
        File::open(&p).map_err(|e| SnapshotError::io(format!("cannot open {}", p.display()), e))?;
    // A volume may hold device nodes (a rootfs build): restore everything else.
    let opts = ExtractOptions {
        verify_only,
        skip_devices: true,
        ..Default::default()
    };
    let r = archive::extract(Counting::new(f, progress), dest, &opts)
        .map_err(|e| SnapshotError::Corrupt(format!("{}: {e}", p.display())))?;
    if r.sha256 != m.sha256 {
        return Err(checksum_mismatch(&p, &r.sha256, m));
    }
    Ok(r)
}

/// Atomically exchange the staging directory and the target, in the parent's descriptor (or
/// rename when the target does not exist).
pub fn swap_in(t: &SwapTarget, stage: &OsStr) -> Result<(), SnapshotError> {
    let shown = t.shown();
    let exists = rustix::fs::statat(
        &t.parent,
        t.name.as_os_str(),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .is_ok();
    let flags = if exists {
        rustix::fs::RenameFlags::EXCHANGE
    } else {
        rustix::fs::RenameFlags::NOREPLACE
    };
    rustix::fs::renameat_with(&t.parent, stage, &t.parent, t.name.as_os_str(), flags).map_err(
        |e| {
            let hint = if e == rustix::io::Errno::BUSY {
                " (it is a mount point; restore into a new volume with --into instead)"
            } else {
                ""
            };
            SnapshotError::io(
                format!(
                    "cannot swap the restored data into {}{hint}",
                    shown.display()
                ),
                e.into(),
            )
        },
    )?;
    t.parent
        .file()
        .and_then(|f| f.sync_all())
        .map_err(|e| SnapshotError::io("cannot sync after the swap", e))
}
