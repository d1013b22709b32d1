//! `volume migrate NAME --pool OTHER`: moving a volume between pools (tiering), with the checks and crash points of [`crate::ops::migrate`]; on a btrfs pool the data becomes a subvolume (a writable snapshot, no bytes copied, when both pools share one btrfs filesystem).
//!
//! Crash safety: into a configured pool, the data is built under `volumes/.creating-<name>`
//! (deleted by the next attempt), verified, then the record is switched (the old place kept
//! as `previous_data`, deleted by `--delete-source` or `volume cleanup`) and the directory
//! renamed; a kill between the switch and the rename is rolled forward by the next open of
//! the volume, as for a pool Create. Into the default pool, the copy is made beside
//! `<root>/volumes/<name>/data` and renamed before the switch. Read-only snapshots in the old
//! pool are archived first, so cleaning the old pool up loses no snapshot.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::context::Ctx;
use crate::core::crashpoint::crash_point;
use crate::core::layout::{HostView, Layout};
use crate::core::names::VolumeName;
use crate::core::store::{DataLocation, Store, VolumeRecord};
use crate::fs::beneath::{Dir, Missing};
use crate::fs::durable::{self, FileLock, LockKind};
use crate::ops::migrate::{cleanup, compare_trees, movable, MigrateReport, Movable};
use crate::pool::location::{make_empty, rename_noreplace, CREATING};
use crate::pool::tree::destroy;
use crate::pool::{archive, btrfs, cow, find, Pool, DEFAULT_POOL};

/// Move volume `name` into pool `pool` (`default` is `<root>/volumes`).
pub(crate) fn migrate_to_pool(
    ctx: &Ctx,
    name: &VolumeName,
    pool: &str,
    delete_source: bool,
) -> anyhow::Result<MigrateReport> {
    crate::core::names::validate(name).map_err(anyhow::Error::msg)?;
    let (layout, view) = (&ctx.layout, &ctx.view);
    let target = match pool {
        DEFAULT_POOL => None,
        p => Some(find(layout, p).map_err(|e| anyhow::anyhow!("--pool {e}"))?),
    };
    // Before the snapshot lock: writing archives applies `keep=`, which takes it.
    archive_pending(ctx, name)?;
    let _snap = FileLock::acquire(&layout.snapshot_lock(name), LockKind::Exclusive)?;
    let Movable { rec, source, from } = movable(layout, view, name, Some(&ctx.docker_url))?;
    let current = match &rec.data {
        DataLocation::Host { .. } => bail!(
            "volume {name} is a device= directory, not a pool volume; move it with `allspark volume migrate {name} --to PATH`"
        ),
        DataLocation::Managed { .. } => DEFAULT_POOL,
        DataLocation::Pool { pool, .. } => pool.as_str(),
    };
    if current == pool {
        bail!("volume {name} is already in pool {pool}");
    }
    if let Some(old_pool) = cow::pool_of(layout, &rec) {
        check_archived(ctx, &old_pool, name)?;
    }
    let (to, files) = match &target {
        Some(p) => into_pool(layout, view, &rec, &source, p)?,
        None => into_default(layout, &rec, &source)?,
    };
    if delete_source {
        cleanup(layout, view, name)?;
    }
    Ok(MigrateReport {
        from,
        to,
        files,
        deleted_source: delete_source,
    })
}

/// Archive the read-only snapshots of the volume in its pool that have none yet (they are
/// deleted with the old data).
fn archive_pending(ctx: &Ctx, name: &VolumeName) -> anyhow::Result<()> {
    let written = archive::catch_up(ctx, name, true).with_context(|| {
        format!("volume {name}: cannot archive its read-only snapshots before the move; nothing was moved")
    })?;
    if !written.is_empty() {
        tracing::info!(
            volume = %name,
            archives = written.len(),
            "read-only snapshots archived before the move"
        );
    }
    Ok(())
}

/// Under the snapshot lock: no read-only snapshot of the volume in `pool` is left without
/// its archive.
fn check_archived(ctx: &Ctx, pool: &Pool, name: &VolumeName) -> anyhow::Result<()> {
    let root = pool.open_root(&ctx.layout, &ctx.view)?;
    if let Some(c) = archive::pending(&ctx.layout, pool, &root, name)?.last() {
        bail!(
            "volume {name}: read-only snapshot {} has no archive yet; nothing was moved (run `allspark snapshot archive {name}`, then migrate again)",
            c.id
        );
    }
    Ok(())
}

fn into_pool(
    layout: &Layout,
    view: &HostView,
    rec: &VolumeRecord,
    source: &Dir,
    p: &Pool,
) -> anyhow::Result<(PathBuf, usize)> {
    let name = rec.name.as_str();
    let root = p.open_root(layout, view)?;
    let vols = p.volumes_dir(&root)?;
    if rustix::fs::statat(&vols, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok() {
        bail!(
            "{} already exists but volume {name} does not live there; move it away (nothing was deleted) and try again",
            vols.shown().join(name).display()
        );
    }
    let tmp = OsString::from(format!("{CREATING}{name}"));
    if destroy(&vols, &tmp)? {
        tracing::warn!(
            volume = %name,
            "removed the half copy of an interrupted migration"
        );
    }
    // Same btrfs filesystem: a writable snapshot of the subvolume (EXDEV otherwise).
    let cloned = p.cow()
        && btrfs::is_subvolume(source)?
        && btrfs::snapshot(source, &vols, &tmp, false).is_ok();
    if !cloned {
        make_empty(p, &vols, &tmp)?;
        crate::fs::copy::copy_tree(&source.proc_path(), &vols.proc_path().join(&tmp))
            .with_context(|| {
                format!(
                    "cannot copy volume {name} into pool {} ({})",
                    p.name,
                    vols.shown().join(&tmp).display()
                )
            })?;
    }
    crash_point("tier.copied");
    let staged = vols.open_beneath(Path::new(&tmp), Missing::Refuse)?.dir;
    let files = compare_trees(&source.proc_path(), &staged.proc_path())?;
    crash_point("tier.verified");
    if let (Some(size), true) = (rec.spec.size, p.cow()) {
        btrfs::enable_quota(&root)
            .and_then(|()| btrfs::set_limit(&staged, Some(size)))
            .with_context(|| {
                format!(
                    "cannot limit volume {name} to size={size} in pool {}",
                    p.name
                )
            })?;
    }
    drop(staged);
    let data = DataLocation::Pool {
        pool: p.name.clone(),
        volume: rec.name.clone(),
        subdir: None,
    };
    switch(layout, &rec.name, data, Some(&p.name))?;
    crash_point("tier.switched");
    match rename_noreplace(&vols, &tmp, name.as_ref()) {
        Ok(()) => {}
        // Rolled forward meanwhile by an open of the switched record.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e).context("cannot put the moved data in place"),
    }
    vols.file()?.sync_all()?;
    Ok((vols.shown().join(name), files))
}

fn into_default(
    layout: &Layout,
    rec: &VolumeRecord,
    source: &Dir,
) -> anyhow::Result<(PathBuf, usize)> {
    let name = &rec.name;
    let data = layout.managed_data(name);
    if fs::symlink_metadata(&data).is_ok() {
        bail!(
            "{} already exists but volume {name} does not live there; move it away (nothing was deleted) and try again",
            data.display()
        );
    }
    let parent = data.parent().unwrap_or(Path::new("/"));
    durable::ensure_dir(parent, 0o700)?;
    // Inside allspark's own `volumes/<name>`: a leftover here is an interrupted migration's.
    let staging = parent.join("data.allspark-migrating");
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot delete the half copy {}", staging.display()))?;
        tracing::warn!(
            volume = %name,
            "removed the half copy of an interrupted migration"
        );
    }
    crate::fs::copy::copy_tree(&source.proc_path(), &staging)
        .with_context(|| format!("cannot copy volume {name} to {}", staging.display()))?;
    crash_point("tier.copied");
    let files = compare_trees(&source.proc_path(), &staging)?;
    crash_point("tier.verified");
    fs::rename(&staging, &data)?;
    durable::fsync_dir(parent)?;
    let loc = DataLocation::Managed {
        volume: name.clone(),
        subdir: None,
    };
    switch(layout, name, loc, None)?;
    crash_point("tier.switched");
    Ok((data, files))
}

/// Point the record at its new data, keeping the old place as `previous_data`, and its
/// `pool=` option with it.
fn switch(
    layout: &Layout,
    name: &VolumeName,
    data: DataLocation,
    pool: Option<&String>,
) -> anyhow::Result<()> {
    let store = Store::new(layout.clone());
    let _lock = store.lock(name)?;
    let mut r = (*store
        .load(name)?
        .with_context(|| format!("volume {name} disappeared during the move"))?)
    .clone();
    r.previous_data = Some(std::mem::replace(&mut r.data, data));
    r.spec.pool = pool.cloned();
    match pool {
        Some(p) => r.options.insert("pool".into(), p.clone()),
        None => r.options.remove("pool"),
    };
    store.save(&r)?;
    Ok(())
}
