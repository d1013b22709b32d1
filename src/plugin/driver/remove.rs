//! Remove: refused while mounted or a parent; owned data goes through the trash, put back if the removal is interrupted.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use chrono::Utc;

use crate::core::names::VolumeName;
use crate::core::spool;
use crate::core::store::{DataLocation, VolumeRecord};
use crate::fs::durable;
use crate::plugin::error::{io_ctx, DriverError, Result};
use crate::pool::location::Locate;

use super::Driver;

impl Driver {
    /// Remove a volume: refused while mounted; deletes managed data, never a device's data.
    pub fn remove(&self, name: &VolumeName) -> Result<()> {
        let lock = self.store.lock(name)?;
        let Some(rec) = self.store.load(name)? else {
            tracing::info!(volume = %name, "remove of an unknown volume: nothing to do");
            crate::core::locks::release_removed(&self.layout, name, lock);
            return Ok(());
        };
        let n = rec.mount_count();
        let live = self.is_live_mount(&self.mountpoint(name));
        if n > 0 && live {
            return Err(DriverError::Busy(format!(
                "volume {name} is mounted by {n} container(s); stop them before removing it"
            )));
        }
        if n > 0 {
            // Under the lock, references without their bind mount are stale: an Unmount
            // removed the mount but could not record it (full or read-only disk).
            tracing::warn!(
                volume = %name,
                refs = n,
                "references without a live mount are stale: ignored"
            );
        }
        if live {
            return Err(DriverError::Busy(format!(
                "volume {name} is still bind-mounted at {}; unmount it before removing the volume",
                self.mountpoint(name).display()
            )));
        }
        let children = self.store.children(name)?;
        if !children.is_empty() {
            return Err(DriverError::Busy(format!(
                "volume {name} is the parent of {}; remove those volumes first",
                children.join(", ")
            )));
        }
        if let DataLocation::Pool { .. } = rec.data {
            return crate::plugin::pool_volume::remove(
                &self.layout,
                &self.settings.view,
                &self.store,
                &rec,
            );
        }
        let dir = self.owned_dir(&rec);
        let discarded = if rec.data.owned() && !rec.adopted {
            self.discard(name, &dir)?
        } else {
            if rec.adopted {
                tracing::warn!(volume = %name, path = %dir.display(), "the volume adopted an existing directory at Create: its data is kept");
            }
            None
        };
        crate::core::crashpoint::crash_point("remove.trashed");
        if let Err(e) = self.store.delete(name) {
            // The record stays, so the data stays too.
            if let Some(trash) = discarded {
                if let Err(err) = fs::rename(&trash, &dir) {
                    tracing::error!(volume = %name, from = %trash.display(), %err, "cannot put the data back after a failed removal; the next start of the plugin does");
                }
            }
            return Err(e.into());
        }
        // Not a live mount (checked above): the mount point kept since the last Unmount.
        if let Err(e) = fs::remove_dir(self.mountpoint(name)) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(volume = %name, %e, "cannot delete the volume's empty mount point");
            }
        }
        // Still under the record lock: the lock files go with the record.
        crate::core::locks::release_removed(&self.layout, name, lock);
        spool::request_measure(&self.layout, name);
        self.empty_trash();
        Ok(())
    }

    /// What Remove moves to the trash: all of `volumes/<name>` for a managed volume, the subdirectory of a child.
    fn owned_dir(&self, rec: &VolumeRecord) -> PathBuf {
        match &rec.data {
            DataLocation::Managed { subdir: None, .. } => self.layout.volumes_dir().join(&rec.name),
            other => other.local_path(&self.layout, &self.settings.view),
        }
    }

    /// Move a directory into the trash (atomic), to be deleted once the record is gone.
    /// Returns where the directory went, if it existed.
    fn discard(&self, name: &VolumeName, dir: &Path) -> Result<Option<PathBuf>> {
        if !dir.exists() {
            return Ok(None);
        }
        let stamp = Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let trash = self.layout.trash_dir().join(format!("{name}.{stamp}"));
        fs::rename(dir, &trash).map_err(io_ctx(format!(
            "cannot move {} to the trash",
            dir.display()
        )))?;
        if let Err(e) = durable::fsync_dir(&self.layout.trash_dir()) {
            let _ = fs::rename(&trash, dir);
            return Err(io_ctx("cannot sync the trash directory")(e));
        }
        Ok(Some(trash))
    }

    /// Delete what removed volumes left in the trash. An entry whose volume still has a record
    /// belongs to a removal not finished yet, or interrupted (`reconcile` puts that data back).
    pub fn empty_trash(&self) {
        let Ok(entries) = fs::read_dir(self.layout.trash_dir()) else {
            return;
        };
        for e in entries.flatten() {
            if let Some(name) = trash_owner(&e.file_name()) {
                if !matches!(self.store.load(&name), Ok(None)) {
                    continue;
                }
            }
            if let Err(err) = fs::remove_dir_all(e.path()) {
                tracing::warn!(path = %e.path().display(), %err, "cannot empty the trash");
            }
        }
    }

    /// A Remove killed after moving the data to the trash but before deleting the record left a
    /// volume without its data; the removal was never acknowledged, so the data goes back.
    pub fn put_back_interrupted_removals(&self) {
        let Ok(entries) = fs::read_dir(self.layout.trash_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let Some(name) = trash_owner(&e.file_name()) else {
                continue;
            };
            let Ok(_lock) = self.store.lock(&name) else {
                continue;
            };
            let Ok(Some(rec)) = self.store.load(&name) else {
                continue;
            };
            let dir = self.owned_dir(&rec);
            // A pool volume's removals go through the pool's own trash.
            if !rec.data.owned() || rec.data.pool().is_some() || dir.exists() {
                continue;
            }
            match fs::rename(e.path(), &dir) {
                Ok(()) => {
                    if let Some(parent) = dir.parent() {
                        let _ = durable::fsync_dir(parent);
                    }
                    tracing::warn!(volume = %name, path = %dir.display(), "a removal was interrupted before it was acknowledged: the volume's data is put back");
                }
                Err(err) => {
                    tracing::error!(volume = %name, from = %e.path().display(), %err, "cannot put back the data of an interrupted removal; it stays in the trash")
                }
            }
        }
    }
}

/// The volume a trash entry (`<name>.<nanoseconds>`) came from.
fn trash_owner(file: &std::ffi::OsStr) -> Option<VolumeName> {
    let (name, stamp) = file.to_str()?.rsplit_once('.')?;
    let stamp_ok = !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit());
    stamp_ok.then(|| VolumeName::parse(name).ok()).flatten()
}
