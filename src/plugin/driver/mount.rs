//! Mount and Unmount (reference counted per mount ID, with the on-mount snapshot and the snapshot lock), Path, Get, List.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::core::names::VolumeName;
use crate::core::spool::{self, Event, EventKind};
use crate::core::store::VolumeRecord;
use crate::fs::beneath::Missing;
use crate::fs::durable::{self, FileLock, LockKind};
use crate::plugin::error::{io_ctx, DriverError, Result};
use crate::plugin::status;

use super::Driver;

impl Driver {
    /// Mount a volume for a container (reference counted per mount ID).
    pub fn mount(&self, name: &VolumeName, id: &str) -> Result<PathBuf> {
        // The durable record alone: the references are read below, under the lock, and
        // before it only when an on-mount snapshot depends on them.
        let rec = self
            .store
            .load_durable(name)?
            .ok_or_else(|| DriverError::NotFound(name.to_string()))?;
        // One deadline for the whole call, well under Docker's own Mount timeout (120 s): the
        // on-mount snapshot and the snapshot lock share it.
        let deadline = Instant::now() + self.settings.snapshot_wait;
        if rec.spec.snapshot.on_mount()
            && self.store.load(name)?.is_some_and(|r| r.mount_count() == 0)
        {
            self.wait_for_mount_snapshot(name, deadline)?;
        }
        let _snap = self.wait_for_snapshot_lock(name, deadline)?;
        let _lock = self.store.lock(name)?;
        let rec = self
            .store
            .load(name)?
            .ok_or_else(|| DriverError::NotFound(name.to_string()))?;
        let target = self.mountpoint(name);
        let mut rec = (*rec).clone();
        if rec.mount_count() == 0 || !self.is_live_mount(&target) {
            if rec.mount_count() > 0 {
                // Stale: an Unmount removed the bind mount but could not record it (full or
                // read-only disk). Kept, they would keep the new mount alive after its Unmount.
                tracing::warn!(volume = %name, refs = ?rec.mounts, "references without a live mount are stale: cleared");
                rec.mounts.clear();
            } else if self.is_live_mount(&target) {
                // A bind mount nobody references (a crash between the bind and the record, not
                // yet recovered): replace it rather than stack a second one on it.
                tracing::warn!(volume = %name, "a bind mount without a reference: replaced");
                self.sys
                    .unmount(&target)
                    .map_err(io_ctx(format!("cannot unmount {}", target.display())))?;
            }
            self.bind(&rec, &target)?;
            rec.last_mounted_at = Some(Utc::now());
        }
        *rec.mounts.entry(id.to_string()).or_insert(0) += 1;
        if let Err(e) = self.store.save_runtime(&rec) {
            if rec.mount_count() == 1 {
                let _ = self.sys.unmount(&target);
            }
            return Err(e.into());
        }
        Ok(target)
    }

    /// Open the data directory once and do everything through that descriptor: owner and mode,
    /// then the mount itself.
    fn bind(&self, rec: &VolumeRecord, target: &Path) -> Result<()> {
        let missing = if rec.data.owned() {
            // A managed directory deleted behind our back is recreated (empty).
            Missing::Create
        } else {
            Missing::Refuse
        };
        let src = self.open_data(&rec.name, &rec.data, missing)?.dir;
        self.sys
            .set_owner_mode(src.as_fd(), rec.spec.uid, rec.spec.gid, rec.spec.mode)
            .map_err(io_ctx(format!(
                "cannot set owner/mode of {}",
                src.shown().display()
            )))?;
        durable::ensure_dir(target, 0o755)
            .map_err(io_ctx(format!("cannot create {}", target.display())))?;
        self.sys
            .bind_mount(src.as_fd(), target, &rec.spec.flags)
            .map_err(io_ctx(format!(
                "cannot bind-mount {} on {}",
                src.shown().display(),
                target.display()
            )))
    }

    /// Spool an on-mount event (unless one for this volume is already pending: a Mount that
    /// timed out and was retried does not queue a second snapshot) and wait for the agent to
    /// consume it, until `deadline`.
    fn wait_for_mount_snapshot(&self, name: &VolumeName, deadline: Instant) -> Result<()> {
        let pending = spool::pending(&self.layout)
            .unwrap_or_default()
            .into_iter()
            .find(|f| {
                spool::read(f).is_ok_and(|e| e.kind == EventKind::Mount && e.volume == *name)
            });
        let file = match pending {
            Some(f) => f,
            None => {
                let event = Event {
                    kind: EventKind::Mount,
                    volume: name.clone(),
                    at: Utc::now(),
                    container: None,
                };
                spool::write(&self.layout, &event)
                    .map_err(io_ctx("cannot write the spool event"))?
            }
        };
        while file.exists() {
            if Instant::now() >= deadline {
                tracing::warn!(volume = %name, "the on-mount snapshot did not finish within the snapshot wait; mounting anyway (the agent will take it when it runs)");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn wait_for_snapshot_lock(&self, name: &VolumeName, deadline: Instant) -> Result<FileLock> {
        let p = self.layout.snapshot_lock(name);
        let left = deadline.saturating_duration_since(Instant::now());
        FileLock::acquire_within(&p, LockKind::Shared, left)
            .map_err(io_ctx(format!("cannot take the snapshot lock {}", p.display())))?
            .ok_or_else(|| {
                DriverError::Busy(format!(
                    "volume {name}: a snapshot is in progress and did not finish within {} s; try again shortly (see `allspark snapshot ls {name}`)",
                    self.settings.snapshot_wait.as_secs()
                ))
            })
    }

    /// Drop one reference of a mount ID; the last one removes the bind mount. Unknown IDs are harmless.
    pub fn unmount(&self, name: &VolumeName, id: &str) -> Result<()> {
        let _lock = self.store.lock(name)?;
        let Some(rec) = self.store.load(name)? else {
            tracing::info!(volume = %name, "unmount of an unknown volume: nothing to do");
            return Ok(());
        };
        let mut rec = (*rec).clone();
        match rec.mounts.get_mut(id) {
            None => {
                tracing::info!(
                    volume = %name,
                    id,
                    "unmount of an unknown mount ID: nothing to do"
                );
                return Ok(());
            }
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                rec.mounts.remove(id);
            }
        }
        let last = rec.mounts.is_empty();
        if last {
            let target = self.mountpoint(name);
            self.sys
                .unmount(&target)
                .map_err(io_ctx(format!("cannot unmount {}", target.display())))?;
            // The empty mount point stays for the next Mount (a mkdir and rmdir per pair
            // cost as much as the mount itself); Remove deletes it.
            rec.last_unmounted_at = Some(Utc::now());
        }
        self.store.save_runtime(&rec)?;
        if last && rec.spec.snapshot.on_unmount() {
            let event = Event {
                kind: EventKind::Unmount,
                volume: name.clone(),
                at: Utc::now(),
                container: None,
            };
            if let Err(e) = spool::write(&self.layout, &event) {
                tracing::error!(volume = %name, %e, "cannot spool the unmount event; no automatic snapshot will be taken");
            }
        }
        if last {
            spool::request_measure(&self.layout, name);
        }
        Ok(())
    }

    /// The mountpoint of an existing volume.
    pub fn path(&self, name: &VolumeName) -> Result<PathBuf> {
        self.store
            .load_durable(name)?
            .ok_or_else(|| DriverError::NotFound(name.to_string()))?;
        Ok(self.mountpoint(name))
    }

    /// One volume with its status; an error for an unknown volume (Docker relies on it).
    pub fn get(&self, name: &VolumeName) -> Result<crate::plugin::protocol::Volume> {
        let rec = self
            .store
            .load(name)?
            .ok_or_else(|| DriverError::NotFound(name.to_string()))?;
        Ok(crate::plugin::protocol::Volume {
            name: name.to_string(),
            mountpoint: self.mountpoint(name).to_string_lossy().into_owned(),
            created_at: Some(rec.created_at.to_rfc3339()),
            status: Some(status::status_in(&self.layout, &self.settings.view, &rec)),
        })
    }

    /// Every volume: names and mountpoints, all Docker needs, from the directory listing of
    /// the records (no record is read; Get gives the rest).
    pub fn list(&self) -> Result<Vec<crate::plugin::protocol::Volume>> {
        let names = self.store.names()?;
        // `mountpoint()` for every name, with the directory's text made once.
        let base = self.settings.mount_dir.to_string_lossy();
        let base = base.trim_end_matches('/');
        Ok(names
            .iter()
            .map(|name| crate::plugin::protocol::Volume {
                mountpoint: format!("{base}/{name}"),
                name: name.to_string(),
                created_at: None,
                status: None,
            })
            .collect())
    }
}
