//! Archives of read-only snapshots, written after the fact (by the agent in the background, or by `snapshot create` once the snapshot is taken) under the volume's archive lock, never its snapshot lock: a Mount never waits for one.
//!
//! Each archive gets the id of the read-only snapshot it was read from and is incremental
//! to the previous archive (standard tar, restorable without allspark like every snapshot
//! archive). It is written as `<root>/snapshots/<volume>/.archiving-<id>` and renamed when
//! complete; only read-only snapshots newer than the newest archive are archived, in order.

use crate::context::Ctx;
use crate::core::names::VolumeName;
use crate::core::store::Store;
use crate::fs::durable::{self, FileLock, LockKind};
use crate::pool::cow::{self, ARCHIVING};
use crate::pool::send_diff;
use crate::snapshot::create::{self, CreateRequest, DEFAULT_FULL_EVERY};
use crate::snapshot::{catalog, retention, Manifest, SnapshotError};
use std::os::fd::AsFd;

/// Archive the read-only snapshots of `volume` that have no archive yet, oldest first, then
/// apply `keep=` to the archives. With `wait`, waits for another archiver of the volume;
/// without, returns nothing when one is at work.
pub(crate) fn catch_up(
    ctx: &Ctx,
    volume: &VolumeName,
    wait: bool,
) -> Result<Vec<Manifest>, SnapshotError> {
    let layout = &ctx.layout;
    let Some(rec) = Store::new(layout.clone()).load(volume)? else {
        return Ok(Vec::new());
    };
    let Some(pool) = cow::pool_of(layout, &rec) else {
        return Ok(Vec::new());
    };
    let lock_path = layout.archive_lock(volume);
    let lock = if wait {
        Some(FileLock::acquire(&lock_path, LockKind::Exclusive))
    } else {
        FileLock::try_acquire(&lock_path, LockKind::Exclusive).transpose()
    };
    let Some(_lock) = lock
        .transpose()
        .map_err(|e| SnapshotError::io(format!("cannot take {}", lock_path.display()), e))?
    else {
        return Ok(Vec::new());
    };
    let vol_dir = layout.volume_snapshots(volume);
    durable::ensure_dir(&vol_dir, 0o700)
        .map_err(|e| SnapshotError::io(format!("cannot create {}", vol_dir.display()), e))?;
    clean_leftovers(&vol_dir);
    let root = pool
        .open_root(layout, &ctx.view)
        .map_err(|e| SnapshotError::io(format!("volume {volume}: cannot open its pool"), e))?;
    let snaps = cow::list_in(&pool, &root, volume);
    let mut out = Vec::new();
    for c in unarchived(layout, volume, &snaps)? {
        // Pruned meanwhile (retention runs under the snapshot lock, not this one): skip it.
        let Some(ro) = cow::open_snapshot(&pool, &root, volume, &c.id)? else {
            continue;
        };
        let near = Neighbours {
            pool: &pool,
            root: &root,
            snaps: &snaps,
        };
        out.push(archive_one(ctx, &rec, &near, &c, &ro)?);
    }
    if !out.is_empty() {
        let removed = retention::prune(layout, volume, &rec.spec.keep)?;
        if !removed.is_empty() {
            tracing::info!(%volume, removed = removed.len(), "old archives pruned");
        }
    }
    Ok(out)
}

/// Where the read-only snapshots of a volume are, for [`archive_one`].
struct Neighbours<'a> {
    pool: &'a crate::pool::Pool,
    root: &'a crate::fs::beneath::Dir,
    /// All of them, oldest first.
    snaps: &'a [cow::CowSnapshot],
}

/// Write the archive of the read-only snapshot `c` (open as `ro`), incremental to the newest
/// archive when the chain allows, and publish it.
fn archive_one(
    ctx: &Ctx,
    rec: &crate::core::store::VolumeRecord,
    near: &Neighbours<'_>,
    c: &cow::CowSnapshot,
    ro: &crate::fs::beneath::Dir,
) -> Result<Manifest, SnapshotError> {
    let (layout, volume) = (&ctx.layout, &rec.name);
    let source = ro.proc_path();
    let req = CreateRequest {
        volume,
        source: &source,
        trigger: c.trigger,
        event: None,
        driver: Some("allspark".into()),
        full_every: DEFAULT_FULL_EVERY,
        skip_if_mounted: false,
        force_full: false,
        compression: rec.spec.compression.unwrap_or(ctx.compression),
        progress: None,
    };
    let existing = catalog::list(layout, volume)?;
    let (parent, index) = create::pick_parent(layout, &req, &existing);
    // An incremental keeps its chain's codec; a new chain takes the volume's.
    let compression = parent
        .as_ref()
        .and_then(|p| existing.iter().find(|m| &m.id == p))
        .map_or(req.compression, |m| m.compression);
    let touched = match (&parent, &index) {
        (Some(p), Some(index)) => changed_since(near, volume, p, c, ro, index),
        _ => None,
    };
    let skip = touched.as_ref().map(|t| move |rel: &[u8]| t.skips(rel));
    let tmp = layout
        .volume_snapshots(volume)
        .join(format!("{ARCHIVING}{}", c.id));
    let written = create::write_snapshot(
        layout,
        &req,
        &c.id,
        &tmp,
        (parent, index.as_ref()),
        compression,
        skip.as_ref().map(|f| f as crate::fs::walk::SkipDir<'_>),
    );
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}

/// What changed between the read-only snapshot the parent archive `parent` was written from
/// and `c` (open as `ro`), when that snapshot is the one right before `c` and still there: the
/// incremental then lists only the directories concerned (see [`send_diff`]). `None` walks
/// the whole tree; a send that fails is logged.
fn changed_since(
    near: &Neighbours<'_>,
    volume: &VolumeName,
    parent: &str,
    c: &cow::CowSnapshot,
    ro: &crate::fs::beneath::Dir,
    parent_index: &crate::archive::Index,
) -> Option<send_diff::Touched> {
    let at = near.snaps.iter().position(|s| s.id == c.id)?;
    let previous = near.snaps[..at].last().filter(|s| s.id == parent)?;
    let older = match cow::open_snapshot(near.pool, near.root, volume, &previous.id) {
        Ok(Some(d)) => d,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(%volume, id = %c.id, error = %e, "cannot open the previous read-only snapshot; walking the whole tree");
            return None;
        }
    };
    match send_diff::between(older.as_fd(), ro.as_fd()) {
        Ok(mut touched) => {
            touched.add_index_hazards(parent_index);
            tracing::info!(%volume, id = %c.id, paths = touched.len(), "incremental from the snapshot diff");
            Some(touched)
        }
        Err(e) => {
            tracing::warn!(%volume, id = %c.id, error = %e, "no diff between the read-only snapshots; walking the whole tree");
            None
        }
    }
}

/// The read-only snapshots of `volume` newer than its newest archive, oldest first: those
/// whose archive is still to be written.
pub(crate) fn pending(
    layout: &crate::core::layout::Layout,
    pool: &crate::pool::Pool,
    root: &crate::fs::beneath::Dir,
    volume: &VolumeName,
) -> Result<Vec<cow::CowSnapshot>, SnapshotError> {
    unarchived(layout, volume, &cow::list_in(pool, root, volume))
}

/// Those of `snaps` (the volume's read-only snapshots) newer than its newest archive.
fn unarchived(
    layout: &crate::core::layout::Layout,
    volume: &VolumeName,
    snaps: &[cow::CowSnapshot],
) -> Result<Vec<cow::CowSnapshot>, SnapshotError> {
    let newest = catalog::list(layout, volume)?.last().map(|m| m.id.clone());
    Ok(snaps
        .iter()
        .filter(|c| newest.as_ref().is_none_or(|n| c.id > *n))
        .cloned()
        .collect())
}

/// Delete archives an interrupted archiver left. Call only while holding the archive lock.
fn clean_leftovers(dir: &std::path::Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(ARCHIVING) {
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                tracing::warn!(path = %e.path().display(), %err, "cannot remove a half-written archive");
            }
        }
    }
}

/// One pass over every volume on a btrfs pool (the agent calls it in the background).
/// Returns how many archives were written.
pub(crate) fn run_once(ctx: &Ctx) -> usize {
    if !crate::pool::Registry::load(&ctx.layout)
        .all()
        .iter()
        .any(|p| p.cow())
    {
        return 0;
    }
    let Ok((records, _)) = Store::new(ctx.layout.clone()).all() else {
        return 0;
    };
    let mut n = 0;
    for rec in records {
        if cow::pool_of(&ctx.layout, &rec).is_none() {
            continue;
        }
        match catch_up(ctx, &rec.name, false) {
            Ok(done) => {
                for m in &done {
                    tracing::info!(volume = %rec.name, id = %m.id, bytes_in = m.bytes_in, bytes_stored = m.bytes_stored, ms = m.duration_ms, incremental = m.parent.is_some(), "archive written from a read-only snapshot");
                }
                n += done.len();
            }
            Err(e) => {
                tracing::error!(volume = %rec.name, error = %e, "cannot archive a read-only snapshot; retried on the next pass")
            }
        }
    }
    n
}
