//! Read-only btrfs snapshots of pool volumes (`<pool root>/snapshots/<volume>/<id>` and `<id>.json`): taken in constant time under the snapshot lock, made under a temporary name and renamed, listed beside the archive snapshots, pruned by `keep=`.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::core::crashpoint::crash_point;
use crate::core::layout::{HostView, Layout};
use crate::core::names::VolumeName;
use crate::core::options::Keep;
use crate::core::snapshot_id::{self, SnapshotId};
use crate::core::store::{DataLocation, Store, VolumeRecord};
use crate::fs::beneath::{BeneathError, Dir, Missing};
use crate::fs::durable::{self, FileLock, LockKind};
use crate::pool::{btrfs, find, location, tree, Pool};
use crate::snapshot::manifest::{Manifest, Trigger};
use crate::snapshot::{catalog, retention, SnapshotError};

/// Prefix of an archive being written from a read-only snapshot.
pub(crate) const ARCHIVING: &str = ".archiving-";

/// One read-only snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CowSnapshot {
    pub id: String,
    pub volume: VolumeName,
    pub pool: String,
    pub trigger: Trigger,
    pub created_at: DateTime<Utc>,
    /// The spool event that caused it, so a redo after a crash is recognised.
    #[serde(default)]
    pub event: Option<String>,
    /// Time to take it (snapshot and rename), in milliseconds.
    pub duration_ms: u64,
    /// Time to write the volume's dirty data out first (`syncfs`, before the snapshot lock),
    /// in milliseconds: the part of a snapshot on stop that grows with what the container
    /// wrote last.
    #[serde(default)]
    pub flush_ms: u64,
}

/// The btrfs pool of a whole pool volume (not a child), if it is on one.
pub(crate) fn pool_of(layout: &Layout, rec: &VolumeRecord) -> Option<Pool> {
    match &rec.data {
        DataLocation::Pool {
            pool, subdir: None, ..
        } => find(layout, pool).ok().filter(Pool::cow),
        _ => None,
    }
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> SnapshotError {
    move |e| SnapshotError::io(context, e)
}

fn beneath(e: BeneathError) -> SnapshotError {
    SnapshotError::Invalid(e.to_string())
}

/// The read-only snapshots of `volume` in `pool`, oldest first (an id whose subvolume exists;
/// its `.json` adds the trigger).
pub(crate) fn list_in(pool: &Pool, root: &Dir, volume: &VolumeName) -> Vec<CowSnapshot> {
    let Ok(dir) = root.open_beneath(
        &Path::new(crate::pool::SNAPSHOTS).join(volume),
        Missing::Refuse,
    ) else {
        return Vec::new();
    };
    let mut out: Vec<CowSnapshot> = tree::names_in(&dir.dir)
        .into_iter()
        .filter_map(|n| n.into_string().ok())
        .filter(|n| snapshot_id::validate(n).is_ok())
        .map(|id| {
            std::fs::read(dir.dir.proc_path().join(format!("{id}.json")))
                .ok()
                .and_then(|b| serde_json::from_slice::<CowSnapshot>(&b).ok())
                .filter(|m| m.id == id)
                .unwrap_or_else(|| CowSnapshot {
                    created_at: snapshot_id::parse(&id).unwrap_or_default(),
                    id,
                    volume: volume.clone(),
                    pool: pool.name.clone(),
                    trigger: Trigger::Manual,
                    event: None,
                    duration_ms: 0,
                    flush_ms: 0,
                })
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// The read-only snapshots of a recorded volume (none when it is not on a btrfs pool).
pub(crate) fn list(layout: &Layout, view: &HostView, rec: &VolumeRecord) -> Vec<CowSnapshot> {
    let Some(pool) = pool_of(layout, rec) else {
        return Vec::new();
    };
    match pool.open_root(layout, view) {
        Ok(root) => list_in(&pool, &root, &rec.name),
        Err(e) => {
            tracing::warn!(volume = %rec.name, error = %e, "cannot list the read-only snapshots");
            Vec::new()
        }
    }
}

/// The read-only snapshot `volume@id` in `pool`, opened without following symlinks, if it exists.
pub(crate) fn open_snapshot(
    pool: &Pool,
    root: &Dir,
    volume: &VolumeName,
    id: &str,
) -> Result<Option<Dir>, SnapshotError> {
    snapshot_id::validate(id).map_err(SnapshotError::Invalid)?;
    let rel = Path::new(crate::pool::SNAPSHOTS).join(volume).join(id);
    if !pool.cow() {
        return Ok(None);
    }
    match root.open_beneath(&rel, Missing::Refuse) {
        Ok(o) => Ok(Some(o.dir)),
        Err(BeneathError::Missing { .. }) => Ok(None),
        Err(e) => Err(beneath(e)),
    }
}

/// The read-only snapshot `volume@id` of a recorded volume, wherever its pool is (for copies
/// into another pool, and for restores).
pub(crate) fn find_snapshot(
    layout: &Layout,
    view: &HostView,
    volume: &VolumeName,
    id: &str,
) -> Result<Option<(Pool, Dir)>, SnapshotError> {
    let Some(rec) = Store::new(layout.clone()).load(volume)? else {
        return Ok(None);
    };
    let Some(pool) = pool_of(layout, &rec) else {
        return Ok(None);
    };
    let root = pool
        .open_root(layout, view)
        .map_err(io(format!("volume {volume}: cannot open its pool")))?;
    Ok(open_snapshot(&pool, &root, volume, id)?.map(|d| (pool, d)))
}

/// Take a read-only snapshot of a whole btrfs-pool volume: the snapshot lock is held for the
/// snapshot and the rename only (milliseconds whatever the size). `Ok(None)`: the volume is
/// not on a btrfs pool (the caller writes an archive instead).
pub(crate) fn take(
    layout: &Layout,
    view: &HostView,
    rec: &VolumeRecord,
    trigger: Trigger,
    event: Option<String>,
    skip_if_mounted: bool,
) -> Result<Option<crate::snapshot::CreateOutcome>, SnapshotError> {
    use crate::snapshot::CreateOutcome;
    let Some(pool) = pool_of(layout, rec) else {
        return Ok(None);
    };
    let name = &rec.name;
    let flush_ms = flush_volume(layout, view, &pool, name);
    let lock_path = layout.snapshot_lock(name);
    let _lock = FileLock::acquire(&lock_path, LockKind::Exclusive)
        .map_err(io(format!("cannot take {}", lock_path.display())))?;
    if skip_if_mounted {
        if let Some(why) = mounted_again(layout, name)? {
            return Ok(Some(CreateOutcome::Skipped(why)));
        }
    }
    let root = pool
        .open_root(layout, view)
        .map_err(io(format!("volume {name}: cannot open its pool")))?;
    let snaps = pool.snapshots_dir(&root, name).map_err(io(format!(
        "volume {name}: cannot open its snapshot directory"
    )))?;
    clean_leftovers(&snaps);
    let existing = list_in(&pool, &root, name);
    if let Some(ev) = &event {
        if let Some(done) = existing.iter().find(|m| m.event.as_ref() == Some(ev)) {
            return Ok(Some(CreateOutcome::Cow(done.clone())));
        }
    }
    let id = next_id_of(layout, name, &existing)?;
    let started = Instant::now();
    let src =
        location::open(layout, view, &pool.name, name, None, Missing::Refuse).map_err(beneath)?;
    let tmp = format!(".tmp-{id}");
    btrfs::snapshot(&src.dir, &snaps, OsStr::new(&tmp), true).map_err(io(format!(
        "cannot snapshot {} (btrfs)",
        src.dir.shown().display()
    )))?;
    crash_point("cow-snapshot-made");
    let meta = CowSnapshot {
        id: id.clone(),
        volume: name.clone(),
        pool: pool.name.clone(),
        trigger,
        created_at: snapshot_id::parse(&id).unwrap_or_else(|_| Utc::now()),
        event,
        duration_ms: 0,
        flush_ms,
    };
    let meta = publish(&snaps, &tmp, &meta, started)?;
    let removed = prune_locked(layout, &pool, &root, name, &rec.spec.keep);
    if !removed.is_empty() {
        tracing::info!(
            volume = %name,
            removed = removed.len(),
            "old read-only snapshots pruned"
        );
    }
    Ok(Some(CreateOutcome::Cow(meta)))
}

/// Write the volume's dirty data out before the lock: the snapshot commits a transaction
/// that would otherwise flush it while Mounts of the volume wait. Returns the time it took,
/// in milliseconds.
fn flush_volume(layout: &Layout, view: &HostView, pool: &Pool, name: &VolumeName) -> u64 {
    let flushing = Instant::now();
    if let Ok(o) = location::open(layout, view, &pool.name, name, None, Missing::Refuse) {
        if let Err(e) = rustix::fs::syncfs(&o.dir) {
            tracing::warn!(volume = %name, %e, "syncfs before the snapshot failed; the snapshot flushes instead");
        }
    }
    flushing.elapsed().as_millis() as u64
}

/// Why a snapshot on unmount is skipped: the volume was mounted again meanwhile (`None`: it
/// was not).
fn mounted_again(layout: &Layout, name: &VolumeName) -> Result<Option<String>, SnapshotError> {
    if let Some(r) = Store::new(layout.clone()).load(name)? {
        if r.mount_count() > 0 {
            return Ok(Some(format!(
                "volume {name} is mounted again by {} container(s); the next unmount will snapshot it",
                r.mount_count()
            )));
        }
    }
    Ok(None)
}

/// The id of a new snapshot of `name`: after its last read-only snapshot (`existing`) and its
/// last archive snapshot.
fn next_id_of(
    layout: &Layout,
    name: &VolumeName,
    existing: &[CowSnapshot],
) -> Result<String, SnapshotError> {
    let last_archive = catalog::list(layout, name)?.last().map(|m| m.id.clone());
    let last = existing
        .last()
        .map(|m| m.id.clone())
        .into_iter()
        .chain(last_archive)
        .max();
    Ok(snapshot_id::next_id(last.as_deref()))
}

/// Publish a snapshot made as `tmp`: its `<id>.json` written durably, then the subvolume
/// renamed to its id; on failure both are removed.
fn publish(
    snaps: &Dir,
    tmp: &str,
    meta: &CowSnapshot,
    started: Instant,
) -> Result<CowSnapshot, SnapshotError> {
    let (name, id) = (&meta.volume, &meta.id);
    let publish = || -> std::io::Result<CowSnapshot> {
        let mut meta = meta.clone();
        meta.duration_ms = started.elapsed().as_millis() as u64;
        let bytes = serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other)?;
        durable::atomic_write(&snaps.proc_path().join(format!("{id}.json")), &bytes, 0o600)?;
        location::rename_noreplace(snaps, OsStr::new(tmp), OsStr::new(id))?;
        snaps.file()?.sync_all()?;
        Ok(meta)
    };
    match publish() {
        Ok(m) => Ok(m),
        Err(e) => {
            let _ = tree::destroy(snaps, OsStr::new(tmp));
            let _ = std::fs::remove_file(snaps.proc_path().join(format!("{id}.json")));
            Err(SnapshotError::io(
                format!("cannot publish snapshot {name}@{id}"),
                e,
            ))
        }
    }
}

/// Delete what an interrupted snapshot left (`.tmp-<id>` subvolumes, `<id>.json` without its
/// subvolume). Call only while holding the volume's snapshot lock.
pub(crate) fn clean_leftovers(snaps: &Dir) {
    let names = tree::names_in(snaps);
    for n in &names {
        let Some(s) = n.to_str() else { continue };
        let orphan_meta = s
            .strip_suffix(".json")
            .is_some_and(|id| !names.iter().any(|m| m.to_str() == Some(id)));
        if s.starts_with(".tmp-") || orphan_meta {
            match tree::destroy(snaps, n) {
                Ok(_) => {
                    tracing::warn!(entry = s, "removed the leftover of an interrupted snapshot")
                }
                Err(e) => {
                    tracing::warn!(entry = s, %e, "cannot remove the leftover of an interrupted snapshot")
                }
            }
        }
    }
}

/// The id an archiver is writing right now for `volume`, if one is.
fn archiving_now(layout: &Layout, volume: &VolumeName) -> Option<String> {
    if let Ok(Some(_free)) =
        FileLock::try_acquire(&layout.archive_lock(volume), LockKind::Exclusive)
    {
        return None;
    }
    std::fs::read_dir(layout.volume_snapshots(volume))
        .ok()?
        .flatten()
        .find_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(ARCHIVING))
                .map(str::to_string)
        })
}

/// Delete the read-only snapshots `keep` does not keep (never the one being archived). The
/// caller holds the snapshot lock.
fn prune_locked(
    layout: &Layout,
    pool: &Pool,
    root: &Dir,
    name: &VolumeName,
    keep: &Keep,
) -> Vec<String> {
    let all = list_in(pool, root, name);
    let items: Vec<retention::Item> = all
        .iter()
        .map(|m| retention::Item {
            id: m.id.clone(),
            created_at: m.created_at,
            parent: None,
        })
        .collect();
    let kept = retention::plan_items(&items, keep);
    let busy = archiving_now(layout, name);
    let mut removed = Vec::new();
    for m in all.iter().rev() {
        if kept.contains(&m.id) || busy.as_deref() == Some(m.id.as_str()) {
            continue;
        }
        match remove_in(pool, root, name, &m.id) {
            Ok(()) => removed.push(m.id.clone()),
            Err(e) => {
                tracing::warn!(volume = %name, id = %m.id, error = %e, "cannot delete a read-only snapshot")
            }
        }
    }
    removed
}

/// Apply `keep` to a volume's read-only snapshots now (`snapshot prune`).
pub(crate) fn prune(
    layout: &Layout,
    view: &HostView,
    rec: &VolumeRecord,
    keep: &Keep,
) -> Result<Vec<String>, SnapshotError> {
    let Some(pool) = pool_of(layout, rec) else {
        return Ok(Vec::new());
    };
    let lock_path = layout.snapshot_lock(&rec.name);
    let _lock = FileLock::acquire(&lock_path, LockKind::Exclusive)
        .map_err(io(format!("cannot take {}", lock_path.display())))?;
    let root = pool
        .open_root(layout, view)
        .map_err(io(format!("volume {}: cannot open its pool", rec.name)))?;
    Ok(prune_locked(layout, &pool, &root, &rec.name, keep))
}

fn remove_in(pool: &Pool, root: &Dir, volume: &VolumeName, id: &str) -> std::io::Result<()> {
    snapshot_id::validate(id).map_err(std::io::Error::other)?;
    let snaps = pool.snapshots_dir(root, volume)?;
    // The subvolume first: a snapshot is listed while its subvolume exists.
    tree::destroy(&snaps, OsStr::new(id))?;
    let _ = rustix::fs::unlinkat(
        &snaps,
        format!("{id}.json").as_str(),
        rustix::fs::AtFlags::empty(),
    );
    Ok(())
}

/// Delete one read-only snapshot (`snapshot rm`), under the snapshot lock. `Ok(false)`: none.
pub(crate) fn remove(
    layout: &Layout,
    view: &HostView,
    rec: &VolumeRecord,
    id: &str,
) -> Result<bool, SnapshotError> {
    let Some(pool) = pool_of(layout, rec) else {
        return Ok(false);
    };
    let root = pool
        .open_root(layout, view)
        .map_err(io(format!("volume {}: cannot open its pool", rec.name)))?;
    if open_snapshot(&pool, &root, &rec.name, id)?.is_none() {
        return Ok(false);
    }
    remove_in(&pool, &root, &rec.name, id)
        .map_err(io(format!("cannot delete {}@{id}", rec.name)))?;
    Ok(true)
}

/// Delete every read-only snapshot of a removed volume, and its directory.
pub(crate) fn destroy_all(root: &Dir, volume: &VolumeName) -> std::io::Result<()> {
    let parent = root
        .open_beneath(Path::new(crate::pool::SNAPSHOTS), Missing::Create)?
        .dir;
    tree::destroy_tree_of_subvolumes(&parent, OsStr::new(volume))
}

/// One row of `snapshot ls`: an archive, a read-only snapshot, or both under one id.
#[derive(Clone, Debug)]
pub(crate) struct Listed {
    /// `cow`, `archive` or `cow+archive`.
    pub kind: &'static str,
    pub manifest: Option<Manifest>,
    pub cow: Option<CowSnapshot>,
}

impl Listed {
    /// The archive's manifest fields (or the read-only snapshot's id, volume, trigger and
    /// time), with `kind`, and `cow` (pool, duration) for a read-only snapshot.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let mut v = match (&self.manifest, &self.cow) {
            (Some(m), _) => serde_json::to_value(m).unwrap_or_default(),
            (None, Some(c)) => serde_json::json!({
                "id": c.id,
                "volume": c.volume,
                "trigger": c.trigger,
                "created_at": c.created_at,
            }),
            (None, None) => serde_json::json!({}),
        };
        if let Some(o) = v.as_object_mut() {
            o.insert("kind".into(), self.kind.into());
            if let Some(c) = &self.cow {
                o.insert(
                    "cow".into(),
                    serde_json::json!({"pool": c.pool, "duration_ms": c.duration_ms}),
                );
            }
        }
        v
    }

    pub(crate) fn id(&self) -> &str {
        self.manifest
            .as_ref()
            .map(|m| m.id.as_str())
            .or(self.cow.as_ref().map(|c| c.id.as_str()))
            .unwrap_or_default()
    }
}

/// Archives and read-only snapshots of a volume, merged by id, oldest first.
pub(crate) fn listing(
    layout: &Layout,
    view: &HostView,
    volume: &VolumeName,
) -> Result<Vec<Listed>, SnapshotError> {
    let archives = catalog::list(layout, volume)?;
    let cows = match Store::new(layout.clone()).load(volume)? {
        Some(rec) => list(layout, view, &rec),
        None => Vec::new(),
    };
    let mut out: Vec<Listed> = archives
        .into_iter()
        .map(|m| {
            let cow = cows.iter().find(|c| c.id == m.id).cloned();
            Listed {
                kind: if cow.is_some() {
                    "cow+archive"
                } else {
                    "archive"
                },
                manifest: Some(m),
                cow,
            }
        })
        .collect();
    for c in cows {
        if !out.iter().any(|l| l.id() == c.id) {
            out.push(Listed {
                kind: "cow",
                manifest: None,
                cow: Some(c),
            });
        }
    }
    out.sort_by(|a, b| a.id().cmp(b.id()));
    Ok(out)
}

/// Snapshot ids of a recorded volume, archives and read-only snapshots, oldest first.
pub(crate) fn all_ids(
    layout: &Layout,
    view: &HostView,
    rec: &VolumeRecord,
    archive_ids: Vec<SnapshotId>,
) -> Vec<SnapshotId> {
    let mut ids = archive_ids;
    if pool_of(layout, rec).is_some() {
        ids.extend(
            list(layout, view, rec)
                .into_iter()
                .filter_map(|c| SnapshotId::parse(&c.id).ok()),
        );
        ids.sort();
        ids.dedup();
    }
    ids
}

/// Delete the data of a whole volume that has left `pool` (a migration's old place) and its
/// read-only snapshots there. The caller checked that no record uses it.
pub(crate) fn destroy_in_pool(
    layout: &Layout,
    view: &HostView,
    pool: &str,
    volume: &VolumeName,
) -> std::io::Result<()> {
    let p = find(layout, pool).map_err(std::io::Error::other)?;
    let root = p.open_root(layout, view)?;
    let vols = p.volumes_dir(&root)?;
    tree::destroy(&vols, OsStr::new(volume.as_str()))?;
    vols.file()?.sync_all()?;
    if p.cow() {
        destroy_all(&root, volume)?;
    }
    Ok(())
}
