//! Volumes in a pool: created whole under a temporary name (a subvolume on btrfs, a copy-on-write clone for templates the pool holds), opened through the proven pool root, removed through the pool's trash, and the leftovers of a crash rolled forward or deleted.
//!
//! Create: `volumes/.creating-<name>` is made (empty subvolume, writable snapshot of the
//! template, or a directory on a `dir` pool), filled, owned, limited (`size=` as a qgroup
//! limit), then the record is saved and the directory renamed to `<name>`. A kill before the
//! record leaves a `.creating-` leftover nobody refers to (deleted); a kill after it leaves a
//! record whose data is still under the temporary name (the rename is rolled forward the
//! next time the data is opened, or at plugin start).

use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::path::Path;

use chrono::Utc;

use crate::core::crashpoint::crash_point;
use crate::core::layout::{HostView, Layout};
use crate::core::names::VolumeName;
use crate::core::options::{Template, VolumeSpec};
use crate::core::store::{DataLocation, Store, VolumeRecord};
use crate::fs::beneath::{BeneathError, Dir, Missing};
use crate::plugin::error::{io_ctx, DriverError};
use crate::plugin::mounts::Sys;
use crate::pool::location::{make_empty, open, open_top, rename_noreplace, CREATING};
use crate::pool::tree::{destroy, names_in};
use crate::pool::{btrfs, cow, find, Pool, Registry};

/// What a Create in a pool needs from the driver.
pub(crate) struct CreateCtx<'a> {
    pub layout: &'a Layout,
    pub view: &'a HostView,
    pub store: &'a Store,
    pub sys: &'a dyn Sys,
}

/// Create `name` in its pool (the caller holds the record lock and checked that no record
/// exists). Nothing is left behind on failure.
pub(crate) fn create(
    cx: &CreateCtx,
    name: &VolumeName,
    options: std::collections::BTreeMap<String, String>,
    spec: VolumeSpec,
) -> Result<(), DriverError> {
    let pool_name = spec.pool.clone().unwrap_or_default();
    let pool = find(cx.layout, &pool_name).map_err(DriverError::Invalid)?;
    let root = pool
        .open_root(cx.layout, cx.view)
        .map_err(|e| DriverError::Invalid(format!("volume {name}: {e}")))?;
    let vols = pool.volumes_dir(&root).map_err(io_ctx(format!(
        "pool {pool_name}: cannot open its volumes directory"
    )))?;
    let tmp = OsString::from(format!("{CREATING}{name}"));
    clear_the_way(&vols, name, &tmp)?;
    let cloned = first_content(cx, &pool, &root, &vols, &tmp, spec.template.as_ref())
        .map_err(|e| DriverError::Invalid(format!("volume {name}: {e}")))?;
    crash_point("pool-clone-made");
    let mut recorded = false;
    let result = (|| -> Result<(), DriverError> {
        let dir = vols
            .open_beneath(Path::new(&tmp), Missing::Refuse)
            .map_err(|e| DriverError::Invalid(e.to_string()))?
            .dir;
        prepare(cx, &pool, &root, &dir, &spec, &options, cloned)?;
        let data = DataLocation::Pool {
            pool: pool_name.clone(),
            volume: name.clone(),
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
        put_in_place(&vols, &tmp, name)
    })();
    if result.is_err() {
        if recorded {
            let _ = cx.store.delete(name);
        }
        if let Err(e) = destroy(&vols, &tmp) {
            tracing::warn!(volume = %name, %e, "cannot delete the data of a failed Create; the next Create or plugin start does");
        }
    }
    result
}

/// Refuse a name already taken in the pool's volumes directory (by data without a record),
/// and delete the leftover `tmp` of an interrupted Create.
fn clear_the_way(vols: &Dir, name: &VolumeName, tmp: &OsStr) -> Result<(), DriverError> {
    if rustix::fs::statat(vols, name.as_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok() {
        return Err(DriverError::Conflict(format!(
            "{} already exists but no volume {name} does; move it away (nothing was deleted) and try again",
            vols.shown().join(name).display()
        )));
    }
    if destroy(vols, tmp).map_err(io_ctx(format!(
        "cannot delete the leftover {}",
        vols.shown().join(tmp).display()
    )))? {
        tracing::warn!(
            volume = %name,
            "removed the leftover of an interrupted Create"
        );
    }
    Ok(())
}

/// Fill the new volume root `dir` from its template (unless it was `cloned` from it), set its
/// owner and mode, and limit it to `size=` (btrfs quota groups).
fn prepare(
    cx: &CreateCtx,
    pool: &Pool,
    root: &Dir,
    dir: &Dir,
    spec: &VolumeSpec,
    options: &std::collections::BTreeMap<String, String>,
    cloned: bool,
) -> Result<(), DriverError> {
    if let (false, Some(t)) = (cloned, &spec.template) {
        crate::ops::template::fill(cx.layout, cx.view, t, dir).map_err(|e| {
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
    Ok(())
}

/// Rename the recorded volume's `tmp` to its name (unless a reader of the new record already
/// rolled it forward) and make the rename durable.
fn put_in_place(vols: &Dir, tmp: &OsStr, name: &VolumeName) -> Result<(), DriverError> {
    match rename_noreplace(vols, tmp, OsStr::new(name)) {
        Ok(()) => {}
        // Rolled forward meanwhile by a reader of the new record.
        Err(e)
            if e.raw_os_error() == Some(libc::ENOENT)
                && rustix::fs::statat(
                    vols,
                    name.as_str(),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
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
        .map_err(io_ctx("cannot sync the pool's volumes directory"))
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
pub(crate) fn remove(
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
    let Some((holder, leaf)) = data_holder(&vols, name, volume, subdir.as_deref())? else {
        store.delete(name)?;
        return Ok(());
    };
    let stamp = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let entry = OsString::from(format!("{name}.{stamp}"));
    let moved = move_to_trash(&holder, &leaf, &trash, &entry)?;
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
    if rec.spec.fs.is_some() {
        drop((vols, trash, root));
        if let Err(e) = crate::pool::own::remove(layout, view, name) {
            tracing::warn!(volume = %name, %e, "cannot remove the volume's own filesystem; the next start of the plugin does");
        }
    }
    Ok(())
}

/// The directory holding a pool volume's data, and the data's name in it; `None` when the
/// parent directory of a child's subdirectory is gone (nothing left to remove).
fn data_holder(
    vols: &Dir,
    name: &VolumeName,
    volume: &VolumeName,
    subdir: Option<&str>,
) -> Result<Option<(Dir, OsString)>, DriverError> {
    let Some(s) = subdir else {
        let holder = vols.try_clone().map_err(io_ctx("cannot open the pool"))?;
        return Ok(Some((holder, OsString::from(volume))));
    };
    let rel = Path::new(volume).join(s);
    let leaf = rel.file_name().map(OsStr::to_os_string).unwrap_or_default();
    let parent = rel.parent().unwrap_or(Path::new(volume));
    match vols.open_beneath(parent, Missing::Refuse) {
        Ok(o) => Ok(Some((o.dir, leaf))),
        Err(BeneathError::Missing { .. }) => Ok(None),
        Err(e) => Err(DriverError::Invalid(format!("volume {name}: {e}"))),
    }
}

/// Move `holder/leaf` to `trash/entry` durably (put back if the move cannot be synced).
/// Returns whether there was anything to move.
fn move_to_trash(
    holder: &Dir,
    leaf: &OsStr,
    trash: &Dir,
    entry: &OsStr,
) -> Result<bool, DriverError> {
    match rustix::fs::renameat(holder, leaf, trash, entry) {
        Ok(()) => {}
        Err(rustix::io::Errno::NOENT) => return Ok(false),
        Err(e) => {
            return Err(io_ctx(format!(
                "cannot move {} to the pool's trash",
                holder.shown().join(leaf).display()
            ))(e.into()))
        }
    }
    let synced = trash
        .file()
        .and_then(|f| f.sync_all())
        .and_then(|()| holder.file().and_then(|f| f.sync_all()));
    if let Err(e) = synced {
        let _ = rustix::fs::renameat(trash, entry, holder, leaf);
        return Err(io_ctx("cannot sync the pool's trash")(e));
    }
    Ok(true)
}

/// A volume whose newest read-only snapshot has no archive yet is not removed: its snapshots
/// go with it, and that one exists nowhere else (the agent archives it within moments of the
/// stop; `allspark snapshot archive` does it now).
fn refuse_unarchived(
    layout: &Layout,
    p: &Pool,
    root: &Dir,
    name: &VolumeName,
) -> Result<(), DriverError> {
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

/// At plugin start, for every pool (mounting images found unmounted): put back the data of
/// removals interrupted before their record was deleted, empty the trash, complete or delete
/// interrupted Creates, delete the old half of interrupted restores.
pub(crate) fn reconcile(layout: &Layout, view: &HostView, store: &Store) {
    crate::pool::own::sweep(layout, view, store);
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
                .and_then(|(n, _)| VolumeName::parse(n).ok());
            let _lock = owner.as_ref().and_then(|o| store.lock(o).ok());
            if let Some(Ok(Some(rec))) = owner.as_ref().map(|o| store.load(o)) {
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
                        tracing::warn!(volume = ?owner, "a removal was interrupted before it was acknowledged: the volume's data is put back");
                        continue;
                    }
                }
            }
            if let Err(e) = destroy(&trash, &entry) {
                tracing::warn!(pool = %p.name, entry = ?entry, %e, "cannot empty the pool's trash");
            }
        }
        for entry in names_in(&vols) {
            let Some(created) = entry.to_str().and_then(|s| s.strip_prefix(CREATING)) else {
                if let Some(name) = entry
                    .to_str()
                    .and_then(|s| s.strip_prefix(crate::pool::restore::RESTORING))
                    .and_then(|n| VolumeName::parse(n).ok())
                {
                    crate::pool::restore::clean_leftover(layout, &vols, &name);
                }
                continue;
            };
            let Ok(name) = VolumeName::parse(created) else {
                continue;
            };
            let name = &name;
            let Ok(_lock) = store.lock(name) else {
                continue;
            };
            match store.load(name) {
                Ok(Some(rec)) if rec.data.pool() == Some(p.name.as_str()) => {
                    let _ = open_top(&p, &vols, name, Missing::Refuse);
                }
                Ok(None) if destroy(&vols, &entry).is_ok() => {
                    tracing::warn!(volume = %name, pool = %p.name, "removed the leftover of an interrupted Create");
                }
                _ => {}
            }
        }
    }
}
