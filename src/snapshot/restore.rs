//! Restoring: a chain of archives extracted into a fresh staging directory, then swapped in atomically.

use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};

use nix::fcntl::{renameat2, RenameFlags};

use crate::archive::{self, ExtractOptions};
use crate::core::layout::Layout;
use crate::fs::durable;
use crate::snapshot::catalog;
use crate::snapshot::manifest::Manifest;
use crate::snapshot::{sha256_file, Counting, SnapshotError};

/// What a restore did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RestoreReport {
    pub archives: usize,
    pub entries: u64,
    pub bytes: u64,
    pub deleted: u64,
}

/// The archive file of a snapshot.
pub fn archive_path(layout: &Layout, m: &Manifest) -> PathBuf {
    catalog::snapshot_dir(layout, &m.volume, &m.id).join(&m.archive)
}

/// Check every archive of the chain against its manifest's sha256; the error names the file.
pub fn check_checksums(layout: &Layout, chain: &[Manifest]) -> Result<(), SnapshotError> {
    for m in chain {
        let p = archive_path(layout, m);
        let sum = sha256_file(&p)
            .map_err(|e| SnapshotError::io(format!("cannot read {}", p.display()), e))?;
        if sum != m.sha256 {
            return Err(SnapshotError::Corrupt(format!(
                "{} does not match its manifest (sha256 {sum}, expected {}); this snapshot cannot be trusted",
                p.display(),
                m.sha256
            )));
        }
    }
    Ok(())
}

/// A fresh staging directory next to `target` (same filesystem, so the swap is a rename).
pub fn staging_dir(target: &Path) -> Result<PathBuf, SnapshotError> {
    let parent = target.parent().ok_or_else(|| {
        SnapshotError::Invalid(format!("cannot restore into {}", target.display()))
    })?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stamp = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let staging = parent.join(format!(".{name}.allspark-staging-{stamp}"));
    fs::create_dir(&staging)
        .map_err(|e| SnapshotError::io(format!("cannot create {}", staging.display()), e))?;
    Ok(staging)
}

/// Delete the staging directories that restores killed midway left next to `target` (a partial
/// extraction, or the old content awaiting deletion). Call only while holding the volume's
/// snapshot lock, which every restore over a volume holds.
pub fn remove_stale_staging(target: &Path) {
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return;
    };
    let prefix = format!(".{}.allspark-staging-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        match fs::remove_dir_all(e.path()) {
            Ok(()) => {
                tracing::info!(path = %e.path().display(), "removed the staging directory of an interrupted restore")
            }
            Err(err) => {
                tracing::warn!(path = %e.path().display(), %err, "cannot remove the staging directory of an interrupted restore")
            }
        }
    }
}

/// Extract `chain` (full first) into a new staging directory and swap it with `target`.
/// The old content is deleted only after the swap; a failure leaves `target` untouched.
pub fn restore_chain_into(
    layout: &Layout,
    chain: &[Manifest],
    target: &Path,
    progress: Option<&(dyn Fn(u64) + Send + Sync)>,
) -> Result<RestoreReport, SnapshotError> {
    check_checksums(layout, chain)?;
    let staging = staging_dir(target)?;
    let result = extract_chain(layout, chain, &staging, progress).and_then(|r| {
        swap_in(&staging, target)?;
        Ok(r)
    });
    if let Err(e) = fs::remove_dir_all(&staging) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %staging.display(), %e, "cannot delete the old content after the restore");
        }
    }
    result
}

/// Extract a chain into `dest` (deletions of each incremental first, then its archive).
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
        let p = archive_path(layout, m);
        let f = File::open(&p)
            .map_err(|e| SnapshotError::io(format!("cannot open {}", p.display()), e))?;
        // A volume may hold device nodes (a rootfs build): restore everything else.
        let opts = ExtractOptions {
            skip_devices: true,
            ..Default::default()
        };
        let r = archive::extract(
            BufReader::with_capacity(1 << 20, Counting::new(f, progress)),
            dest,
            &opts,
        )
        .map_err(|e| SnapshotError::Corrupt(format!("{}: {e}", p.display())))?;
        report.archives += 1;
        report.entries += r.entries;
        report.bytes += r.bytes;
    }
    Ok(report)
}

/// Atomically exchange `staging` and `target` (or rename when `target` does not exist).
pub fn swap_in(staging: &Path, target: &Path) -> Result<(), SnapshotError> {
    let parent = target.parent().unwrap_or(Path::new("/"));
    if target.exists() {
        renameat2(None, staging, None, target, RenameFlags::RENAME_EXCHANGE).map_err(|e| {
            let hint = if e == nix::errno::Errno::EBUSY {
                " (it is a mount point; restore into a new volume with --into instead)"
            } else {
                ""
            };
            SnapshotError::io(
                format!(
                    "cannot swap the restored data into {}{hint}",
                    target.display()
                ),
                e.into(),
            )
        })?;
    } else {
        fs::rename(staging, target).map_err(|e| {
            SnapshotError::io(
                format!("cannot move the restored data to {}", target.display()),
                e,
            )
        })?;
    }
    durable::fsync_dir(parent).map_err(|e| SnapshotError::io("cannot sync after the swap", e))
}
