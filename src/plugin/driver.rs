//! The volume logic behind the VolumeDriver calls: create, remove, mount, unmount, get, list.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::core::layout::{HostView, Layout};
use crate::core::names::VolumeName;
use crate::core::options::{self, VolumeSpec};
use crate::core::spool::{self, Event, EventKind};
use crate::core::store::{DataLocation, Store, VolumeRecord};
use crate::fs::beneath::{Dir, Missing, Opened};
use crate::fs::durable::{self, FileLock, LockKind};
use crate::fs::hostpath;
use crate::plugin::error::io_ctx;
pub use crate::plugin::error::{DriverError, Result};
use crate::plugin::mounts::Sys;
use crate::plugin::status;
use crate::pool::location::Locate;

/// What the driver needs to know besides the root.
#[derive(Clone, Debug)]
pub struct DriverSettings {
    pub mount_dir: PathBuf,
    /// Allowed bind roots, as host paths.
    pub bind_roots: Vec<PathBuf>,
    pub view: HostView,
    pub snapshot_wait: Duration,
    /// Host directories no `device=` may lie in or around besides the state root's own
    /// (the backup root, for one).
    pub protected: Vec<PathBuf>,
}

/// The volume driver. Every call re-reads the records on disk under the volume's lock.
pub struct Driver {
    store: Store,
    layout: Layout,
    sys: Arc<dyn Sys>,
    settings: DriverSettings,
}

impl Driver {
    pub fn new(layout: Layout, sys: Arc<dyn Sys>, settings: DriverSettings) -> io::Result<Driver> {
        layout.ensure()?;
        durable::ensure_dir(&settings.mount_dir, 0o755)?;
        Ok(Driver {
            store: Store::new(layout.clone()),
            layout,
            sys,
            settings,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where a volume is mounted for containers.
    pub fn mountpoint(&self, name: &VolumeName) -> PathBuf {
        self.settings.mount_dir.join(name)
    }

    /// Create a volume, or accept a repeated Create with the same options.
    pub fn create(&self, name: &VolumeName, opts: Option<&BTreeMap<String, String>>) -> Result<()> {
        let spec = options::parse(opts).map_err(|e| DriverError::Invalid(e.to_string()))?;
        let _lock = self.store.lock(name)?;
        crate::ops::template::recover(&self.layout, &self.settings.view, name)
            .map_err(DriverError::Invalid)?;
        if let Some(existing) = self.store.load(name)? {
            if existing.spec == spec {
                return Ok(());
            }
            return Err(DriverError::Conflict(format!(
                "volume {name} already exists with other options ({}); remove it first, or create it with the same options",
                describe_options(&existing.options)
            )));
        }
        if spec.pool.is_some() {
            let cx = crate::plugin::pool_volume::CreateCtx {
                layout: &self.layout,
                view: &self.settings.view,
                store: &self.store,
                sys: self.sys.as_ref(),
            };
            return crate::plugin::pool_volume::create(
                &cx,
                name,
                opts.cloned().unwrap_or_default(),
                spec,
            );
        }
        let data = self.locate(name, &spec)?;
        let opened = self.open_data(name, &data, Missing::Create)?;
        // A directory that existed with content is not ours: a template never overwrites it,
        // and Remove keeps it.
        let existing_content = opened.created.is_none()
            && !opened.dir.is_empty().map_err(io_ctx(format!(
                "cannot read {}",
                opened.dir.shown().display()
            )))?;
        if existing_content && spec.template.is_some() {
            return Err(DriverError::Conflict(format!(
                "{} already holds data; template= fills only an empty or new directory (nothing was changed)",
                opened.dir.shown().display()
            )));
        }
        let adopted = existing_content && spec.parent.is_some();
        if adopted {
            tracing::warn!(volume = %name, path = %opened.dir.shown().display(), "the child's directory already holds data: adopted, and kept when the volume is removed");
        }
        let result = self.fill_and_record(name, opts, spec, data.clone(), &opened, adopted);
        if result.is_ok() {
            spool::request_measure(&self.layout, name);
        } else if let Some(top) = &opened.created {
            // Only what this call created, by the anchor-relative name it created.
            let _ = self.remove_created(&data, top);
        }
        result
    }

    /// Open a volume's data directory through its trusted anchor (see [`crate::fs::beneath`]),
    /// then check a host directory's containment on the descriptor: below an allowed bind
    /// root, and neither inside nor around one of allspark's own directories.
    fn open_data(
        &self,
        name: &VolumeName,
        data: &DataLocation,
        missing: Missing,
    ) -> Result<Opened> {
        let opened = data
            .open(&self.layout, &self.settings.view, missing)
            .map_err(|e| {
                DriverError::Invalid(format!(
                    "volume {name}: its data directory cannot be opened safely: {e}"
                ))
            })?;
        if let DataLocation::Host { path } = data {
            self.check_contained(name, path, &opened.dir)?;
        }
        Ok(opened)
    }

    /// The containment rules of a host directory, checked by device and inode on its descriptor.
    fn check_contained(&self, name: &VolumeName, path: &Path, dir: &Dir) -> Result<()> {
        let ctx = |e: io::Error| DriverError::Io {
            context: format!("volume {name}: cannot check where {} lies", path.display()),
            source: e,
        };
        let mut inside_root = false;
        for root in &self.settings.bind_roots {
            let local = self.settings.view.local(root);
            let Ok(r) = Dir::open_anchor(&local) else {
                continue;
            };
            if dir.is_within(r.id().map_err(ctx)?).map_err(ctx)? {
                inside_root = true;
                break;
            }
        }
        if !inside_root {
            return Err(DriverError::Invalid(format!(
                "volume {name}: {} is not below an allowed bind root ({}); refusing to use it",
                path.display(),
                self.settings
                    .bind_roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let id = dir.id().map_err(ctx)?;
        for own in self.own_dirs() {
            let Ok(o) = Dir::open_anchor(&own) else {
                continue;
            };
            if dir.is_within(o.id().map_err(ctx)?).map_err(ctx)? || o.is_within(id).map_err(ctx)? {
                return Err(DriverError::Invalid(format!(
                    "volume {name}: {} overlaps allspark's own directory {}; refusing to use it",
                    path.display(),
                    own.display()
                )));
            }
        }
        Ok(())
    }

    /// allspark's own directories, which no `device=` may lie in or around.
    fn own_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = self.layout.own_dirs();
        dirs.push(self.settings.mount_dir.clone());
        dirs.extend(
            self.settings
                .protected
                .iter()
                .map(|p| self.settings.view.local(p)),
        );
        // Pool roots (a btrfs or dir pool outside the state root).
        dirs.extend(
            crate::pool::Registry::load(&self.layout)
                .all()
                .iter()
                .map(|p| p.root_path(&self.layout, &self.settings.view)),
        );
        dirs
    }

    /// Undo the directories a failed Create made (`top` is relative to the data's anchor).
    fn remove_created(&self, data: &DataLocation, top: &Path) -> io::Result<()> {
        fs::remove_dir_all(data.anchor_path(&self.layout, &self.settings.view, top))
    }

    fn locate_managed(&self, name: &VolumeName) -> DataLocation {
        DataLocation::Managed {
            volume: name.clone(),
            subdir: None,
        }
    }

    /// Fill the new directory from its template (under the template journal, see
    /// [`crate::ops::template`]), set its owner and mode, and save the record.
    fn fill_and_record(
        &self,
        name: &VolumeName,
        opts: Option<&BTreeMap<String, String>>,
        spec: VolumeSpec,
        data: DataLocation,
        opened: &Opened,
        adopted: bool,
    ) -> Result<()> {
        let dir = &opened.dir;
        let template = spec.template.clone();
        let save = || -> Result<()> {
            self.sys
                .set_owner_mode(dir.as_fd(), spec.uid, spec.gid, spec.mode)
                .map_err(io_ctx(format!(
                    "cannot set owner/mode of {}",
                    dir.shown().display()
                )))?;
            let mut record =
                VolumeRecord::new(name, opts.cloned().unwrap_or_default(), spec, data.clone());
            record.adopted = adopted;
            self.store.save(&record)?;
            Ok(())
        };
        let Some(template) = template else {
            return save();
        };
        crate::ops::template::fill_journaled(
            &self.layout,
            &self.settings.view,
            name,
            &template,
            (&data, opened.created.as_deref(), dir),
            |e| DriverError::Invalid(format!("template={}: {e}", template_text(opts))),
            save,
        )
    }

    /// Decide where a new volume's data lives, refusing paths outside the rules.
    fn locate(&self, name: &VolumeName, spec: &VolumeSpec) -> Result<DataLocation> {
        if let Some(parent) = &spec.parent {
            let p = self.store.load(parent)?.ok_or_else(|| {
                DriverError::Invalid(format!("parent={parent}: no such volume; create it first"))
            })?;
            return Ok(p.data.child(name));
        }
        let Some(device) = &spec.device else {
            let data = self.layout.managed_data(name);
            if fs::read_dir(&data)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
            {
                return Err(DriverError::Conflict(format!(
                    "{} already holds data but no volume {name} exists; move that directory away (nothing was deleted) and try again",
                    data.display()
                )));
            }
            return Ok(self.locate_managed(name));
        };
        let host = self.check_device(device)?;
        Ok(DataLocation::Host { path: host })
    }

    /// Resolve a `device` path and check it against the allowed roots and our own directories.
    pub fn check_device(&self, device: &str) -> Result<PathBuf> {
        let view = &self.settings.view;
        let resolved = hostpath::resolve(view, Path::new(device)).map_err(|e| {
            DriverError::Invalid(format!("device={device}: cannot resolve the path: {e}"))
        })?;
        let roots: Vec<PathBuf> = self
            .settings
            .bind_roots
            .iter()
            .map(|r| hostpath::resolve(view, r).unwrap_or_else(|_| r.clone()))
            .collect();
        if !roots.iter().any(|r| hostpath::is_within(&resolved, r)) {
            let via = if resolved != Path::new(device) {
                format!(" (it resolves to {})", resolved.display())
            } else {
                String::new()
            };
            return Err(DriverError::Invalid(format!(
                "device={device}{via} is outside the allowed bind roots ({}); use a directory below one of them, or add a root with --bind-root / ALLSPARK_BIND_ROOTS",
                roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
            )));
        }
        let local = view.local(&resolved);
        let existing = nearest_existing(&local);
        for own in self
            .layout
            .own_dirs()
            .iter()
            .chain([&self.settings.mount_dir])
        {
            if hostpath::is_inside_dir(&existing, own) || hostpath::is_inside_dir(own, &local) {
                return Err(DriverError::Invalid(format!(
                    "device={device} overlaps allspark's own directory {}; choose a directory outside state/, volumes/, mounts/, spool/, locks/, snapshots/",
                    own.display()
                )));
            }
        }
        if local.exists() && !local.is_dir() {
            return Err(DriverError::Invalid(format!(
                "device={device} exists and is not a directory"
            )));
        }
        Ok(resolved)
    }

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

    fn is_live_mount(&self, target: &Path) -> bool {
        self.sys.is_mount_point(target).unwrap_or(false)
    }

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
        for rec in &records {
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

/// The volume a mount point (`<mount dir>/<name>`) belongs to.
fn mount_owner(point: &Path) -> Option<VolumeName> {
    VolumeName::parse(point.file_name()?.to_str()?).ok()
}

fn nearest_existing(p: &Path) -> PathBuf {
    let mut cur = p;
    while !cur.exists() {
        match cur.parent() {
            Some(parent) => cur = parent,
            None => break,
        }
    }
    cur.to_path_buf()
}

fn describe_options(opts: &BTreeMap<String, String>) -> String {
    if opts.is_empty() {
        return "no options".into();
    }
    opts.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn template_text(opts: Option<&BTreeMap<String, String>>) -> String {
    opts.and_then(|o| o.get("template"))
        .cloned()
        .unwrap_or_default()
}
