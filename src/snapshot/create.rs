//! Taking a snapshot: under the volume's snapshot lock, incremental to the last one, visible only when complete.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Instant;

use chrono::Utc;

use crate::archive::{self, CompressOptions, Index, WriteOptions};
use crate::core::layout::Layout;
use crate::core::names::VolumeName;
use crate::core::options::Compression;
use crate::core::snapshot_id;
use crate::core::store::Store;
use crate::fs::durable::{self, FileLock, LockKind};
use crate::snapshot::catalog;
use crate::snapshot::manifest::{
    archive_name, Manifest, Trigger, INDEX_NAME, MANIFEST_FORMAT, MANIFEST_NAME,
};
use crate::snapshot::SnapshotError;

/// A shared progress callback (bytes so far).
pub type Progress = std::sync::Arc<dyn Fn(u64) + Send + Sync>;

/// Default number of snapshots in a chain before the next one is full again.
pub const DEFAULT_FULL_EVERY: usize = 10;

/// What to snapshot and why.
pub struct CreateRequest<'a> {
    pub volume: &'a VolumeName,
    /// The volume's data directory as this process reaches it.
    pub source: &'a Path,
    pub trigger: Trigger,
    /// Spool event name, so a redo after a crash is recognised and not done twice.
    pub event: Option<String>,
    pub driver: Option<String>,
    /// Start a new full snapshot when the chain is this long.
    pub full_every: usize,
    /// Skip when the volume (an allspark volume) is mounted by then.
    pub skip_if_mounted: bool,
    /// Always write a full snapshot.
    pub force_full: bool,
    /// Codec of a new chain (a full snapshot); incrementals keep their chain's codec.
    pub compression: Compression,
    /// Called with bytes read so far.
    pub progress: Option<Progress>,
}

/// What `create` did.
#[derive(Debug)]
pub enum CreateOutcome {
    Created(Manifest),
    /// The event was already handled before a crash; its snapshot is this one.
    AlreadyDone(Manifest),
    Skipped(String),
    /// A read-only btrfs snapshot (a volume on a btrfs pool); its archive follows later.
    Cow(crate::pool::cow::CowSnapshot),
}

impl CreateOutcome {
    /// The id of the snapshot taken or found, if any.
    pub fn id(&self) -> Option<&str> {
        match self {
            CreateOutcome::Created(m) | CreateOutcome::AlreadyDone(m) => Some(&m.id),
            CreateOutcome::Cow(c) => Some(&c.id),
            CreateOutcome::Skipped(_) => None,
        }
    }
}

/// Take a snapshot. Holds the snapshot lock for the whole walk, so Mounts of the volume wait.
pub fn create(layout: &Layout, req: &CreateRequest) -> Result<CreateOutcome, SnapshotError> {
    if !req.source.is_dir() {
        return Err(SnapshotError::NotFound(format!(
            "the data directory {} of volume {} does not exist",
            req.source.display(),
            req.volume
        )));
    }
    let vol_dir = layout.volume_snapshots(req.volume);
    durable::ensure_dir(&vol_dir, 0o700)
        .map_err(|e| SnapshotError::io(format!("cannot create {}", vol_dir.display()), e))?;
    let lock_path = layout.snapshot_lock(req.volume);
    let _lock = FileLock::acquire(&lock_path, LockKind::Exclusive)
        .map_err(|e| SnapshotError::io(format!("cannot take {}", lock_path.display()), e))?;
    if req.skip_if_mounted {
        if let Some(rec) = Store::new(layout.clone()).load(req.volume)? {
            if rec.mount_count() > 0 {
                return Ok(CreateOutcome::Skipped(format!(
                    "volume {} is mounted again by {} container(s); the next unmount will snapshot it",
                    req.volume,
                    rec.mount_count()
                )));
            }
        }
    }
    catalog::clean_leftovers(&vol_dir);
    let existing = catalog::list(layout, req.volume)?;
    if let Some(ev) = &req.event {
        if let Some(done) = existing.iter().find(|m| m.event.as_ref() == Some(ev)) {
            return Ok(CreateOutcome::AlreadyDone(done.clone()));
        }
    }
    let (parent, parent_index) = pick_parent(layout, req, &existing);
    let compression = match &parent {
        Some(p) => existing
            .iter()
            .find(|m| &m.id == p)
            .map_or(req.compression, |m| m.compression),
        None => req.compression,
    };
    let id = snapshot_id::next_id(existing.last().map(|m| m.id.as_str()));
    let tmp = vol_dir.join(format!(".tmp-{id}"));
    let result = write_snapshot(
        layout,
        req,
        &id,
        &tmp,
        (parent, parent_index.as_ref()),
        compression,
        None,
    );
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result.map(CreateOutcome::Created)
}

pub(crate) fn pick_parent(
    layout: &Layout,
    req: &CreateRequest,
    existing: &[Manifest],
) -> (Option<String>, Option<Index>) {
    if req.force_full {
        return (None, None);
    }
    let Some(last) = existing.last() else {
        return (None, None);
    };
    let chain_len = catalog::chain(existing, &last.id)
        .map(|c| c.len())
        .unwrap_or(usize::MAX);
    if chain_len >= req.full_every.max(1) {
        return (None, None);
    }
    let index_path = catalog::snapshot_dir(layout, req.volume, &last.id).join(INDEX_NAME);
    match Index::load(&index_path) {
        Ok(index) => (Some(last.id.clone()), Some(index)),
        Err(e) => {
            tracing::warn!(volume = %req.volume, %e, "the last snapshot's index is unreadable; taking a full snapshot");
            (None, None)
        }
    }
}

pub(crate) fn write_snapshot(
    layout: &Layout,
    req: &CreateRequest,
    id: &str,
    tmp: &Path,
    (parent, parent_index): (Option<String>, Option<&Index>),
    compression: Compression,
    skip_dir: Option<crate::fs::walk::SkipDir<'_>>,
) -> Result<Manifest, SnapshotError> {
    let started = Instant::now();
    let created_at = Utc::now();
    durable::ensure_dir(tmp, 0o700)
        .map_err(|e| SnapshotError::io(format!("cannot create {}", tmp.display()), e))?;
    let archive_file = archive_name(compression);
    let archive_path = tmp.join(&archive_file);
    // 0600 like every state file: the archive holds the volume's data.
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&archive_path)
        .map_err(|e| SnapshotError::io(format!("cannot create {}", archive_path.display()), e))?;
    let progress = req
        .progress
        .clone()
        .map(|p| Box::new(move |n: u64| p(n)) as archive::ProgressFn);
    let opts = WriteOptions {
        parent: parent_index,
        progress,
        compression: CompressOptions::new(compression),
        skip_dir,
        ..Default::default()
    };
    let report = archive::write_archive(req.source, file, &opts)?;
    report.index.save(&tmp.join(INDEX_NAME))?;
    let stats = report.compressed.as_ref();
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        id: id.to_string(),
        volume: req.volume.clone(),
        parent,
        trigger: req.trigger,
        created_at,
        archive: archive_file,
        compression,
        files: report.files + report.dirs + report.symlinks + report.hardlinks + report.specials,
        bytes_in: report.bytes_in,
        bytes_stored: stats.map(|g| g.bytes_out).unwrap_or_default(),
        sha256: stats.map(|g| g.sha256.clone()).unwrap_or_default(),
        duration_ms: started.elapsed().as_millis() as u64,
        deleted: report.deleted.clone(),
        skipped: report.vanished + report.sockets_skipped + report.unreadable,
        changed_during_walk: report.changed_during_walk,
        event: req.event.clone(),
        driver: req.driver.clone(),
    };
    let bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
    let mpath = tmp.join(MANIFEST_NAME);
    durable::atomic_write(&mpath, &bytes, 0o600)
        .map_err(|e| SnapshotError::io(format!("cannot write {}", mpath.display()), e))?;
    durable::fsync_dir(tmp)
        .map_err(|e| SnapshotError::io("cannot sync the snapshot directory", e))?;
    let final_dir = catalog::snapshot_dir(layout, req.volume, id);
    fs::rename(tmp, &final_dir)
        .map_err(|e| SnapshotError::io(format!("cannot publish {}", final_dir.display()), e))?;
    durable::fsync_dir(&layout.volume_snapshots(req.volume))
        .map_err(|e| SnapshotError::io("cannot sync the snapshot directory", e))?;
    Ok(manifest)
}
