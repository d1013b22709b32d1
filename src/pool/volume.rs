//! Volumes in a pool: created whole under a temporary name (a subvolume on btrfs, a copy-on-write clone for templates the pool holds), opened through the proven pool root, removed through the pool's trash, and the leftovers of a crash rolled forward or deleted.
//!
//! Create: `volumes/.creating-<name>` is made (empty subvolume, writable snapshot of the
//! template, or a directory on a `dir` pool), filled, owned, limited (`size=` as a qgroup
//! limit), then the record is saved and the directory renamed to `<name>`. A kill before the
//! record leaves a `.creating-` leftover nobody refers to (deleted); a kill after it leaves a
//! record whose data is still under the temporary name (the rename is rolled forward the
//! next time the data is opened, or at plugin start).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use chrono::Utc;

use crate::core::layout::{HostView, Layout};
use crate::core::options::{Template, VolumeSpec};
use crate::core::store::{DataLocation, Store, VolumeRecord};
use crate::fs::beneath::{BeneathError, Dir, Missing, Opened};
use crate::plugin::driver::DriverError;
use crate::plugin::mounts::Sys;
use crate::pool::{btrfs, cow, find, image::crash_point, Pool, Registry, VOLUMES};

/// Prefix of a volume being created.
pub const CREATING: &str = ".creating-";

/// `<pool root>/volumes` as this process reaches it (an unknown pool: where an image pool of
/// that name would be mounted).
pub fn volumes_path(layout: &Layout, view: &HostView, pool: &str) -> PathBuf {
    match Registry::load(layout).get(pool) {
        Some(p) => p.root_path(layout, view).join(VOLUMES),
        None => layout.pool_mount(pool).join(VOLUMES),
    }
}

/// `<pool root>/volumes/<volume>`.
pub fn path(layout: &Layout, view: &HostView, pool: &str, volume: &str) -> PathBuf {
    volumes_path(layout, view, pool).join(volume)
}

fn pool_err(pool: &str, layout: &Layout, e: impl std::fmt::Display) -> BeneathError {
    BeneathError::Invalid {
        path: volumes_path(layout, &HostView::default(), pool),
        reason: e.to_string(),
    }
}

/// The pool's `volumes/` directory beneath its proven root.
pub fn open_volumes(layout: &Layout, view: &HostView, pool: &str) -> Result<Dir, BeneathError> {
    let p = find(layout, pool).map_err(|e| pool_err(pool, layout, e))?;
    let root = p
        .open_root(layout, view)
        .map_err(|e| pool_err(pool, layout, e))?;
    p.volumes_dir(&root).map_err(|e| pool_err(pool, layout, e))
}

/// Open a pool volume's data (or a child's subdirectory of it) without following symlinks.
/// A volume whose Create was killed after its record is completed here; a volume deleted
/// behind allspark's back is made again, empty, when `missing` is `Create`.
pub fn open(
    layout: &Layout,
    view: &HostView,
    pool: &str,
    volume: &str,
    subdir: Option<&str>,
    missing: Missing,
) -> Result<Opened, BeneathError> {
    let p = find(layout, pool).map_err(|e| pool_err(pool, layout, e))?;
    let root = p
        .open_root(layout, view)
        .map_err(|e| pool_err(pool, layout, e))?;
    let vols = p
        .volumes_dir(&root)
        .map_err(|e| pool_err(pool, layout, e))?;
    let top = open_top(&p, &vols, volume, missing)?;
    match subdir {
        None => Ok(top),
        Some(s) => {
            let o = top.dir.open_beneath(Path::new(s), missing)?;
            Ok(Opened {
                dir: o.dir,
                created: match (top.created, o.created) {
                    (Some(t), _) => Some(t),
                    (None, Some(c)) => Some(Path::new(volume).join(c)),
                    (None, None) => None,
                },
            })
        }
    }
}

fn open_top(p: &Pool, vols: &Dir, volume: &str, missing: Missing) -> Result<Opened, BeneathError> {
    match vols.open_beneath(Path::new(volume), Missing::Refuse) {
        Err(BeneathError::Missing { .. }) => {}
        other => return other,
    }
    let tmp = format!("{CREATING}{volume}");
    match rename_noreplace(vols, OsStr::new(&tmp), OsStr::new(volume)) {
        Ok(()) => {
            let _ = vols.file().and_then(|f| f.sync_all());
            tracing::warn!(
                volume,
                "a Create was interrupted after its record: its data is put in place"
            );
            return vols.open_beneath(Path::new(volume), Missing::Refuse);
        }
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            return vols.open_beneath(Path::new(volume), Missing::Refuse)
        }
        Err(_) => {}
    }
    if missing == Missing::Refuse {
        return vols.open_beneath(Path::new(volume), Missing::Refuse);
    }
    make_empty(p, vols, OsStr::new(volume)).map_err(|source| BeneathError::Io {
        path: vols.shown().join(volume),
        source,
    })?;
    tracing::warn!(volume, pool = %p.name, "the volume's data was missing: made again, empty");
    let o = vols.open_beneath(Path::new(volume), Missing::Refuse)?;
    Ok(Opened {
        dir: o.dir,
        created: Some(PathBuf::from(volume)),
    })
}

/// An empty volume root: a subvolume on btrfs, a directory otherwise.
pub(crate) fn make_empty(p: &Pool, parent: &Dir, name: &OsStr) -> io::Result<()> {
    if p.cow() {
        btrfs::create_subvolume(parent, name)
    } else {
        rustix::fs::mkdirat(parent, name, rustix::fs::Mode::from_raw_mode(0o755))
            .map_err(Into::into)
    }
}

pub(crate) fn rename_noreplace(dir: &Dir, from: &OsStr, to: &OsStr) -> io::Result<()> {
    rustix::fs::renameat_with(dir, from, dir, to, rustix::fs::RenameFlags::NOREPLACE)
        .map_err(Into::into)
}

/// Delete `parent/name` if it exists: a subvolume at once, a directory tree by walking it.
pub(crate) fn destroy(parent: &Dir, name: &OsStr) -> io::Result<bool> {
    let st = match rustix::fs::statat(parent, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let is_dir = (st.st_mode & libc::S_IFMT) == libc::S_IFDIR;
    if is_dir {
        let d = parent.open_beneath(Path::new(name), Missing::Refuse)?;
        if btrfs::is_subvolume(&d.dir)? {
            drop(d);
            btrfs::destroy_subvolume(parent, name)?;
            return Ok(true);
        }
        drop(d);
        std::fs::remove_dir_all(parent.proc_path().join(name))?;
    } else {
        rustix::fs::unlinkat(parent, name, rustix::fs::AtFlags::empty())?;
    }
    Ok(true)
}

/// What a Create in a pool needs from the driver.
pub struct CreateCtx<'a> {
    pub layout: &'a Layout,
    pub view: &'a HostView,
    pub store: &'a Store,
    pub sys: &'a dyn Sys,
}

/// Create `name` in its pool (the caller holds the record lock and checked that no record
/// exists). Nothing is left behind on failure.
pub fn create(
    cx: &CreateCtx,
    name: &str,
    options: std::collections::BTreeMap<String, String>,
    spec: VolumeSpec,
) -> Result<(), DriverError> {
    let pool_name = spec.pool.clone().unwrap_or_default();
    let pool = find(cx.layout, &pool_name).map_err(DriverError::Invalid)?;
    let root = pool
        .open_root(cx.layout, cx.view)
        .map_err(|e| DriverError::Invalid(format!("volume {name}: {e}")))?;
    let io_ctx = |what: String| {
        move |source: io::Error| DriverError::Io {
            context: what,
            source,
        }
    };
    let vols = pool.volumes_dir(&root).map_err(io_ctx(format!(
        "pool {pool_name}: cannot open its volumes directory"
    )))?;
    if rustix::fs::statat(&vols, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok() {
        return Err(DriverError::Conflict(format!(
            "{} already exists but no volume {name} does; move it away (nothing was deleted) and try again",
            vols.shown().join(name).display()
        )));
    }
    let tmp = OsString::from(format!("{CREATING}{name}"));
    if destroy(&vols, &tmp).map_err(io_ctx(format!(
        "cannot delete the leftover {}",
        vols.shown().join(&tmp).display()
    )))? {
        tracing::warn!(
            volume = name,
            "removed the leftover of an interrupted Create"
        );
    }
    let cloned = first_content(cx, &pool, &root, &vols, &tmp, spec.template.as_ref())
        .map_err(|e| DriverError::Invalid(format!("volume {name}: {e}")))?;
    crash_point("pool-clone-made");
    let mut recorded = false;
    let result = (|| -> Result<(), DriverError> {
        let dir = vols
            .open_beneath(Path::new(&tmp), Missing::Refuse)
            .map_err(|e| DriverError::Invalid(e.to_string()))?
            .dir;
        if let (false, Some(t)) = (cloned, &spec.template) {
            crate::ops::template::fill(cx.layout, cx.view, t, &dir).map_err(|e| {
                DriverError::Invalid(format!(
                    "template={}: {e}",
                    options.get("template").cloned().unwrap_or_default()
                ))
            })?;
        }
        cx.sys
            .set_owner_mode(dir.as_fd(), spec.uid, spec.gid, spec.mode)
            .map_err(io_ctx(format!(
                "cannot set owner/mode of {}",
                dir.shown().display()
            )))?;
        if let (Some(size), true) = (spec.size, pool.cow()) {
            btrfs::enable_quota(root.as_fd())
                .and_then(|()| btrfs::set_limit(dir.as_fd(), Some(size)))
                .map_err(io_ctx(format!(
                    "cannot limit {} to size={size} (btrfs quota groups)",
                    dir.shown().display()
                )))?;
        }
        let data = DataLocation::Pool {
            pool: pool_name.clone(),
            volume: name.to_string(),
            subdir: None,
        };
        cx.store.save(&VolumeRecord::new(
            name,
            options.clone(),
            spec.clone(),
            data,
        ))?;
        recorded = true;
        crash_point("pool-create-recorded");
        match rename_noreplace(&vols, &tmp, OsStr::new(name)) {
            Ok(()) => {}
            // Rolled forward meanwhile by a reader of the new record.
            Err(e)
                if e.raw_os_error() == Some(libc::ENOENT)
                    && rustix::fs::statat(&vols, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok() => {}
            Err(e) => {
                return Err(io_ctx(format!(
                    "cannot put {} in place",
                    vols.shown().join(name).display()
                ))(e))
            }
        }
        vols.file()
            .and_then(|f| f.sync_all())
            .map_err(io_ctx("cannot sync the pool's volumes directory".into()))
    })();
    if result.is_err() {
        if recorded {
            let _ = cx.store.delete(name);
        }
        if let Err(e) = destroy(&vols, &tmp) {
            tracing::warn!(volume = name, %e, "cannot delete the data of a failed Create; the next Create or plugin start does");
        }
    }
    result
}

/// Make `vols/tmp`: a writable snapshot when the template is a volume or a read-only snapshot
/// of this same btrfs pool (no bytes copied; returns `true`), else an empty volume root.
fn first_content(
    cx: &CreateCtx,
    pool: &Pool,
    root: &Dir,
    vols: &Dir,
    tmp: &OsStr,
    template: Option<&Template>,
) -> Result<bool, String> {
    if pool.cow() {
        let source: Option<Dir> = match template {
            Some(Template::Volume { volume }) => {
                let rec = cx.store.load(volume).map_err(|e| e.to_string())?;
                match rec.as_deref().map(|r| &r.data) {
                    Some(DataLocation::Pool {
                        pool: p,
                        volume: v,
                        subdir: None,
                    }) if *p == pool.name => Some(
                        open(cx.layout, cx.view, p, v, None, Missing::Refuse)
                            .map_err(|e| format!("cannot open volume {volume}: {e}"))?
                            .dir,
                    ),
                    _ => None,
                }
            }
            Some(Template::Snapshot { volume, id }) => {
                cow::open_snapshot(pool, root, volume, id).map_err(|e| e.to_string())?
            }
            None => None,
        };
        if let Some(src) = source {
            btrfs::snapshot(&src, vols, tmp, false).map_err(|e| {
                format!(
                    "cannot clone {} (btrfs snapshot): {e}",
                    src.shown().display()
                )
            })?;
            return Ok(true);
        }
    }
    make_empty(pool, vols, tmp)
        .map_err(|e| format!("cannot create {}: {e}", vols.shown().join(tmp).display()))?;
    Ok(false)
}

/// Remove a pool volume's data (the caller holds the record lock and made the checks): moved
/// to the pool's trash, the record deleted, then the trash entry and (for a whole volume) its
/// read-only snapshots deleted. If the record cannot be deleted, the data is put back.
pub fn remove(
    layout: &Layout,
    view: &HostView,
    store: &Store,
    rec: &VolumeRecord,
) -> Result<(), DriverError> {
    let DataLocation::Pool {
        pool,
        volume,
        subdir,
    } = &rec.data
    else {
        return Ok(());
    };
    let name = &rec.name;
    let p = find(layout, pool).map_err(|e| DriverError::Invalid(format!("volume {name}: {e}")))?;
    let root = p
        .open_root(layout, view)
        .map_err(|e| DriverError::Invalid(format!("volume {name}: {e}")))?;
    let io_ctx = |what: String| {
        move |source: io::Error| DriverError::Io {
            context: what,
            source,
        }
    };
    if rec.adopted {
        tracing::warn!(volume = %name, "the volume adopted an existing directory at Create: its data is kept");
        store.delete(name)?;
        return Ok(());
    }
    if subdir.is_none() && p.cow() {
        refuse_unarchived(layout, &p, &root, name)?;
    }
    let vols = p.volumes_dir(&root).map_err(io_ctx(format!(
        "pool {pool}: cannot open its volumes directory"
    )))?;
    let trash = p
        .trash_dir(&root)
        .map_err(io_ctx(format!("pool {pool}: cannot open its trash")))?;
    // The directory holding the data, and the data's name in it.
    let (holder, leaf) = match subdir {
        None => (
            vols.try_clone()
                .map_err(io_ctx("cannot open the pool".into()))?,
            OsString::from(volume),
        ),
        Some(s) => {
            let rel = Path::new(volume).join(s);
            let leaf = rel.file_name().map(OsStr::to_os_string).unwrap_or_default();
            let parent = rel.parent().unwrap_or(Path::new(volume));
            match vols.open_beneath(parent, Missing::Refuse) {
                Ok(o) => (o.dir, leaf),
                Err(BeneathError::Missing { .. }) => {
                    store.delete(name)?;
                    return Ok(());
                }
                Err(e) => return Err(DriverError::Invalid(format!("volume {name}: {e}"))),
            }
        }
    };
    let stamp = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let entry = OsString::from(format!("{name}.{stamp}"));
    let moved = match rustix::fs::renameat(&holder, &leaf, &trash, &entry) {
        Ok(()) => true,
        Err(rustix::io::Errno::NOENT) => false,
        Err(e) => {
            return Err(io_ctx(format!(
                "cannot move {} to the pool's trash",
                holder.shown().join(&leaf).display()
            ))(e.into()))
        }
    };
    if moved {
        let synced = trash
            .file()
            .and_then(|f| f.sync_all())
            .and_then(|()| holder.file().and_then(|f| f.sync_all()));
        if let Err(e) = synced {
            let _ = rustix::fs::renameat(&trash, &entry, &holder, &leaf);
            return Err(io_ctx("cannot sync the pool's trash".into())(e));
        }
    }
    if let Err(e) = store.delete(name) {
        if moved {
            if let Err(err) = rustix::fs::renameat(&trash, &entry, &holder, &leaf) {
                tracing::error!(volume = %name, %err, "cannot put the data back after a failed removal; the next start of the plugin does");
            }
        }
        return Err(e.into());
    }
    if moved {
        if let Err(e) = destroy(&trash, &entry) {
            tracing::warn!(volume = %name, %e, "cannot empty the pool's trash; the next start of the plugin does");
        }
    }
    if subdir.is_none() && p.cow() {
        if let Err(e) = cow::destroy_all(&root, volume) {
            tracing::warn!(volume = %name, error = %e, "cannot delete the volume's read-only snapshots");
        }
    }
    Ok(())
}

/// A volume whose newest read-only snapshot has no archive yet is not removed: its snapshots
/// go with it, and that one exists nowhere else (the agent archives it within moments of the
/// stop; `allspark snapshot archive` does it now).
fn refuse_unarchived(layout: &Layout, p: &Pool, root: &Dir, name: &str) -> Result<(), DriverError> {
    let pending = crate::pool::archive::pending(layout, p, root, name)
        .map_err(|e| DriverError::Invalid(format!("volume {name}: cannot tell whether its read-only snapshots are archived: {e}; nothing was removed")))?;
    match pending.last() {
        None => Ok(()),
        Some(newest) => Err(DriverError::Busy(format!(
            "volume {name}: its read-only snapshot {} ({} not archived) has no archive yet and would be lost with the volume; wait for the agent to archive it or run `allspark snapshot archive {name}`, then remove the volume again — nothing was removed",
            newest.id,
            pending.len()
        ))),
    }
}

/// Delete the data of a whole volume that has left `pool` (a migration's old place) and its
/// read-only snapshots there. The caller checked that no record uses it.
pub fn destroy_in_pool(
    layout: &Layout,
    view: &HostView,
    pool: &str,
    volume: &str,
) -> io::Result<()> {
    let p = find(layout, pool).map_err(io::Error::other)?;
    let root = p.open_root(layout, view)?;
    let vols = p.volumes_dir(&root)?;
    destroy(&vols, OsStr::new(volume))?;
    vols.file()?.sync_all()?;
    if p.cow() {
        cow::destroy_all(&root, volume)?;
    }
    Ok(())
}

/// At plugin start, for every pool (mounting images found unmounted): put back the data of
/// removals interrupted before their record was deleted, empty the trash, complete or delete
/// interrupted Creates, delete the old half of interrupted restores.
pub fn reconcile(layout: &Layout, view: &HostView, store: &Store) {
    for p in Registry::load(layout).all() {
        let root = match p.open_root(layout, view) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(pool = %p.name, error = %e, "pool not available");
                continue;
            }
        };
        let (Ok(vols), Ok(trash)) = (p.volumes_dir(&root), p.trash_dir(&root)) else {
            continue;
        };
        for entry in names_in(&trash) {
            let owner = entry
                .to_str()
                .and_then(|s| s.rsplit_once('.'))
                .map(|(n, _)| n.to_string())
                .unwrap_or_default();
            let _lock = crate::core::names::validate(&owner)
                .ok()
                .and_then(|()| store.lock(&owner).ok());
            if let Ok(Some(rec)) = store.load(&owner) {
                if let DataLocation::Pool {
                    pool,
                    volume,
                    subdir: None,
                } = &rec.data
                {
                    if *pool == p.name
                        && rustix::fs::statat(
                            &vols,
                            volume.as_str(),
                            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                        )
                        .is_err()
                        && rustix::fs::renameat(&trash, &entry, &vols, volume.as_str()).is_ok()
                    {
                        let _ = vols.file().and_then(|f| f.sync_all());
                        tracing::warn!(volume = %owner, "a removal was interrupted before it was acknowledged: the volume's data is put back");
                        continue;
                    }
                }
            }
            if let Err(e) = destroy(&trash, &entry) {
                tracing::warn!(pool = %p.name, entry = ?entry, %e, "cannot empty the pool's trash");
            }
        }
        for entry in names_in(&vols) {
            let Some(name) = entry.to_str().and_then(|s| s.strip_prefix(CREATING)) else {
                if let Some(name) = entry
                    .to_str()
                    .and_then(|s| s.strip_prefix(crate::pool::restore::RESTORING))
                {
                    crate::pool::restore::clean_leftover(layout, &vols, name);
                }
                continue;
            };
            if crate::core::names::validate(name).is_err() {
                continue;
            }
            let Ok(_lock) = store.lock(name) else {
                continue;
            };
            match store.load(name) {
                Ok(Some(rec)) if rec.data.pool() == Some(p.name.as_str()) => {
                    let _ = open_top(&p, &vols, name, Missing::Refuse);
                }
                Ok(None) if destroy(&vols, &entry).is_ok() => {
                    tracing::warn!(volume = name, pool = %p.name, "removed the leftover of an interrupted Create");
                }
                _ => {}
            }
        }
    }
}

/// Delete the directory `parent/name` whose entries are subvolumes (read-only snapshots)
/// and files.
pub(crate) fn destroy_tree_of_subvolumes(parent: &Dir, name: &OsStr) -> io::Result<()> {
    let dir = match parent.open_beneath(Path::new(name), Missing::Refuse) {
        Ok(o) => o.dir,
        Err(BeneathError::Missing { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for entry in names_in(&dir) {
        destroy(&dir, &entry)?;
    }
    drop(dir);
    rustix::fs::unlinkat(parent, name, rustix::fs::AtFlags::REMOVEDIR).map_err(Into::into)
}

pub(crate) fn names_in(dir: &Dir) -> Vec<OsString> {
    std::fs::read_dir(dir.proc_path())
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

/// How `size=` is enforced for a volume: `(enforced, how, qgroup figures)`.
pub fn capacity(
    layout: &Layout,
    view: &HostView,
    rec: &VolumeRecord,
) -> (bool, String, Option<btrfs::Qgroup>) {
    let why_not = match &rec.data {
        DataLocation::Pool {
            pool,
            volume,
            subdir: None,
        } => match find(layout, pool) {
            Ok(p) if p.cow() => {
                let q = open(layout, view, pool, volume, None, Missing::Refuse)
                    .ok()
                    .and_then(|o| btrfs::qgroup(&o.dir).ok().flatten());
                return match q.and_then(|q| q.limit) {
                    Some(l) => (
                        true,
                        format!(
                            "btrfs qgroup limit of {l} bytes (writes past it fail with EDQUOT)"
                        ),
                        q,
                    ),
                    None => (
                        false,
                        "no btrfs qgroup limit is set on the subvolume".into(),
                        q,
                    ),
                };
            }
            Ok(_) => "a dir pool cannot enforce it",
            Err(_) => "its pool is not configured",
        },
        DataLocation::Pool { .. } => "a parent= child shares its parent's space",
        DataLocation::Managed { .. } => {
            "the default pool cannot enforce it (use pool= on a btrfs pool)"
        }
        DataLocation::Host { .. } => "a device= directory cannot be limited",
    };
    (false, format!("not enforced: {why_not}"), None)
}
