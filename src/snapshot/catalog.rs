//! The snapshots of a volume on disk: listing, chains, and removal.

use std::fs;
use std::path::{Path, PathBuf};

use crate::core::layout::Layout;
use crate::core::names::VolumeName;
use crate::core::snapshot_id;
use crate::fs::durable;
use crate::snapshot::manifest::{self, Manifest, MANIFEST_NAME};
use crate::snapshot::SnapshotError;

/// Directory of one snapshot.
pub fn snapshot_dir(layout: &Layout, volume: &VolumeName, id: &str) -> PathBuf {
    layout.volume_snapshots(volume).join(id)
}

/// Complete snapshots of a volume, oldest first. Unreadable manifests are errors, never skipped silently.
pub fn list(layout: &Layout, volume: &VolumeName) -> Result<Vec<Manifest>, SnapshotError> {
    let dir = layout.volume_snapshots(volume);
    let mut out = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(SnapshotError::io(
                format!("cannot list {}", dir.display()),
                e,
            ))
        }
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if snapshot_id::validate(&name).is_err() {
            continue;
        }
        let m = manifest::read(&e.path().join(MANIFEST_NAME)).map_err(SnapshotError::Corrupt)?;
        out.push(m);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Volumes that have snapshots (allspark volumes and others snapshotted by label).
pub fn volumes(layout: &Layout) -> Vec<VolumeName> {
    let mut v: Vec<VolumeName> = fs::read_dir(layout.snapshots_dir())
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| VolumeName::parse(n).ok())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// One snapshot's manifest.
pub fn get(layout: &Layout, volume: &VolumeName, id: &str) -> Result<Manifest, SnapshotError> {
    snapshot_id::validate(id).map_err(SnapshotError::Invalid)?;
    let dir = snapshot_dir(layout, volume, id);
    if !dir.is_dir() {
        return Err(SnapshotError::NotFound(format!(
            "volume {volume} has no snapshot {id}; see `allspark snapshot ls {volume}`"
        )));
    }
    manifest::read(&dir.join(MANIFEST_NAME)).map_err(SnapshotError::Corrupt)
}

/// The chain that restores `id`: its full ancestor first, `id` last.
pub fn chain(all: &[Manifest], id: &str) -> Result<Vec<Manifest>, SnapshotError> {
    let mut out = Vec::new();
    let mut cur = Some(id.to_string());
    while let Some(c) = cur {
        let m = all.iter().find(|m| m.id == c).ok_or_else(|| {
            SnapshotError::Corrupt(format!(
                "snapshot {c} is missing; the chain of {id} is broken"
            ))
        })?;
        if out.len() > all.len() {
            return Err(SnapshotError::Corrupt(format!("the chain of {id} loops")));
        }
        out.push(m.clone());
        cur = m.parent.clone();
    }
    out.reverse();
    Ok(out)
}

/// Delete one snapshot directory: rename it out of sight first, so a half-deleted snapshot is never listed.
pub fn remove_dir(layout: &Layout, volume: &VolumeName, id: &str) -> Result<(), SnapshotError> {
    let dir = snapshot_dir(layout, volume, id);
    let gone = layout
        .volume_snapshots(volume)
        .join(format!(".deleting-{id}"));
    fs::rename(&dir, &gone)
        .map_err(|e| SnapshotError::io(format!("cannot remove {}", dir.display()), e))?;
    let _ = durable::fsync_dir(&layout.volume_snapshots(volume));
    fs::remove_dir_all(&gone)
        .map_err(|e| SnapshotError::io(format!("cannot delete {}", gone.display()), e))
}

/// Remove leftovers of interrupted work (`.tmp-*`, `.deleting-*`). Call only while holding the snapshot lock.
pub fn clean_leftovers(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(".tmp-") || n.starts_with(".deleting-") {
            if let Err(err) = fs::remove_dir_all(e.path()) {
                tracing::warn!(path = %e.path().display(), %err, "cannot remove a leftover of interrupted work");
            }
        }
    }
}
