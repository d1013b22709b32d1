//! Create: where a new volume's data may live (`device=`, `parent=`, managed), and its first fill and record.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::core::names::VolumeName;
use crate::core::options::{self, VolumeSpec};
use crate::core::spool;
use crate::core::store::{DataLocation, VolumeRecord};
use crate::fs::beneath::{Dir, Missing, Opened};
use crate::fs::hostpath;
use crate::plugin::error::{io_ctx, DriverError, Result};
use crate::pool::location::Locate;

use super::Driver;

impl Driver {
    /// Create a volume, or accept a repeated Create with the same options.
    pub fn create(&self, name: &VolumeName, opts: Option<&BTreeMap<String, String>>) -> Result<()> {
        let mut spec = options::parse(opts).map_err(|e| DriverError::Invalid(e.to_string()))?;
        if spec.fs.is_some() {
            // fs=: the volume lives in a pool of its own, named after it.
            spec.pool = Some(crate::pool::own::pool_name(name).map_err(DriverError::Invalid)?);
        }
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
            let own = match (spec.fs, spec.size) {
                (Some(_), Some(size)) => {
                    crate::pool::own::ensure(&self.layout, &self.settings.view, name, size)
                        .map_err(|e| DriverError::Invalid(format!("volume {name}: {e}")))?;
                    true
                }
                _ => false,
            };
            let created = crate::plugin::pool_volume::create(
                &cx,
                name,
                opts.cloned().unwrap_or_default(),
                spec,
            );
            if created.is_err() && own {
                if let Err(e) = crate::pool::own::remove(&self.layout, &self.settings.view, name) {
                    tracing::warn!(volume = %name, %e, "cannot remove the own filesystem of a failed Create; the next start of the plugin does");
                }
            }
            return created;
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
    pub(super) fn open_data(
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
