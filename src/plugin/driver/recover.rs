//! Recovery after a restart: records and live mounts brought back into agreement, interrupted calls finished or undone.

use std::fs;
use std::path::{Path, PathBuf};

use chrono::Utc;

use crate::core::names::VolumeName;
use crate::fs::durable::FileLock;
use crate::plugin::error::{io_ctx, Result};

use super::Driver;

impl Driver {
    /// Bring records and mounts back into agreement after a restart (see README: Durability).
    pub fn reconcile(&self) -> Result<()> {
        let all = self
            .sys
            .mount_points()
            .map_err(io_ctx("cannot read /proc/self/mountinfo"))?;
        // Calls are served while this runs (the socket listens first): every decision below is
        // taken again under the volume's lock, against the mount table as it is then.
        let staging = self.layout.staging_dir();
        for half_done in all.iter().filter(|p| p.parent() == Some(staging.as_path())) {
            let _lock = self.lock_for_mount(half_done)?;
            if !self.is_live_mount(half_done) {
                continue;
            }
            tracing::warn!(mount = %half_done.display(), "a bind mount left half-prepared by a crash: removed");
            let _ = self.sys.unmount(half_done);
            let _ = fs::remove_dir(half_done);
        }
        let live: Vec<PathBuf> = all
            .into_iter()
            .filter(|p| p.parent() == Some(self.settings.mount_dir.as_path()))
            .collect();
        let (records, _) = self.store.all()?;
        // Only referenced volumes can hold references without a mount (a Mount served
        // meanwhile mounts before it records its reference).
        for rec in records.iter().filter(|r| r.mount_count() > 0) {
            let _lock = self.store.lock(&rec.name)?;
            let Some(rec) = self.store.load(&rec.name)? else {
                continue;
            };
            let target = self.mountpoint(&rec.name);
            if rec.mount_count() > 0 && !self.is_live_mount(&target) {
                tracing::warn!(volume = %rec.name, refs = rec.mount_count(), "references without a live mount: cleared");
                let mut r = (*rec).clone();
                r.mounts.clear();
                r.last_unmounted_at = Some(Utc::now());
                self.store.save_runtime(&r)?;
            }
        }
        for target in &live {
            let name = mount_owner(target);
            let _lock = self.lock_for_mount(target)?;
            if !self.is_live_mount(target) {
                continue;
            }
            let referenced = name.is_some_and(|name| {
                self.store
                    .load(&name)
                    .ok()
                    .flatten()
                    .is_some_and(|r| r.mount_count() > 0)
            });
            if !referenced {
                tracing::warn!(mount = %target.display(), "stale bind mount without a reference: removed");
                if let Err(e) = self.sys.unmount(target) {
                    tracing::error!(mount = %target.display(), %e, "cannot remove a stale bind mount");
                } else {
                    let _ = fs::remove_dir(target);
                }
            }
        }
        self.put_back_interrupted_removals();
        for name in crate::ops::template::interrupted(&self.layout) {
            let Ok(_lock) = self.store.lock(&name) else {
                continue;
            };
            if let Err(e) = crate::ops::template::recover(&self.layout, &self.settings.view, &name)
            {
                tracing::error!(volume = %name, error = %e, "cannot undo an interrupted Create with template=");
            }
        }
        self.empty_trash();
        crate::plugin::pool_volume::reconcile(&self.layout, &self.settings.view, &self.store);
        Ok(())
    }

    /// The record lock of the volume a mount point (in the mount or staging directory) belongs to.
    fn lock_for_mount(&self, point: &Path) -> Result<Option<FileLock>> {
        match mount_owner(point) {
            Some(name) => Ok(Some(self.store.lock(&name)?)),
            None => Ok(None),
        }
    }
}

/// The volume a mount point (`<mount dir>/<name>`) belongs to.
fn mount_owner(point: &Path) -> Option<VolumeName> {
    VolumeName::parse(point.file_name()?.to_str()?).ok()
}
