//! Restores over a btrfs-pool volume: a writable snapshot of the read-only one (constant time), or an archive chain extracted into a new subvolume, made as `volumes/.restoring-<name>`, swapped with the volume in one `renameat2(RENAME_EXCHANGE)`, the old subvolume deleted after.
//!
//! A kill before the swap leaves the volume as it was and a `.restoring-` leftover; a kill
//! after it leaves the restored volume and the old content under that name. Either way the
//! leftover is deleted by the next restore or plugin start, under the volume's snapshot lock.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;

use crate::context::Ctx;
use crate::core::crashpoint::crash_point;
use crate::core::layout::Layout;
use crate::core::names::VolumeName;
use crate::fs::beneath::{Dir, Missing};
use crate::fs::durable::{FileLock, LockKind};
use crate::ops::volref::VolumeRef;
use crate::pool::{btrfs, cow, tree};
use crate::snapshot::restore::{self as archive_restore, RestoreReport};
use crate::snapshot::{Manifest, SnapshotError};

/// Prefix of the subvolume a restore swaps in (and, after the swap, of the old content).
pub(crate) const RESTORING: &str = ".restoring-";

fn io(context: String) -> impl FnOnce(std::io::Error) -> SnapshotError {
    move |e| SnapshotError::io(context, e)
}

/// Restore `id` over the volume when it is a whole volume of a btrfs pool (`Ok(None)`
/// otherwise: the caller restores through a staging directory). The caller holds the
/// snapshot lock and made the in-use checks. `chain` is the archive chain of `id` (empty when
/// only the read-only snapshot exists).
pub(crate) fn over(
    ctx: &Ctx,
    vref: &VolumeRef,
    id: &str,
    chain: &[Manifest],
    progress: Option<&(dyn Fn(u64) + Send + Sync)>,
) -> Result<Option<RestoreReport>, SnapshotError> {
    let Some(rec) = &vref.record else {
        return Ok(None);
    };
    let Some(pool) = cow::pool_of(&ctx.layout, rec) else {
        return Ok(None);
    };
    let name = &rec.name;
    let root = pool
        .open_root(&ctx.layout, &ctx.view)
        .map_err(io(format!("volume {name}: cannot open its pool")))?;
    let vols = pool
        .volumes_dir(&root)
        .map_err(io(format!("volume {name}: cannot open its pool")))?;
    let tmp = format!("{RESTORING}{name}");
    let tmp = OsStr::new(&tmp);
    tree::destroy(&vols, tmp).map_err(io(format!(
        "cannot delete the leftover {}",
        vols.shown().join(tmp).display()
    )))?;
    let made = make(ctx, &pool, &root, &vols, tmp, name, id, chain, progress);
    let report = match made.and_then(|r| {
        let dir = vols
            .open_beneath(Path::new(tmp), Missing::Refuse)
            .map_err(|e| SnapshotError::Invalid(e.to_string()))?
            .dir;
        if let Some(size) = rec.spec.size {
            // A new subvolume has a new quota group: the volume's limit goes with it.
            btrfs::set_limit(dir.as_fd(), Some(size)).map_err(io(format!(
                "cannot limit {} to size={size}",
                dir.shown().display()
            )))?;
        }
        Ok(r)
    }) {
        Ok(r) => r,
        Err(e) => {
            let _ = tree::destroy(&vols, tmp);
            return Err(e);
        }
    };
    crash_point("pool-restore-made");
    let exists =
        rustix::fs::statat(&vols, name.as_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok();
    let flags = if exists {
        rustix::fs::RenameFlags::EXCHANGE
    } else {
        rustix::fs::RenameFlags::NOREPLACE
    };
    if let Err(e) = rustix::fs::renameat_with(&vols, tmp, &vols, name.as_str(), flags) {
        let _ = tree::destroy(&vols, tmp);
        let hint = if e == rustix::io::Errno::BUSY {
            " (it is a mount point; restore into a new volume with --into instead)"
        } else {
            ""
        };
        return Err(SnapshotError::io(
            format!("cannot swap the restored data into volume {name}{hint}"),
            e.into(),
        ));
    }
    vols.file()
        .and_then(|f| f.sync_all())
        .map_err(io("cannot sync after the swap".into()))?;
    if let Err(e) = tree::destroy(&vols, tmp) {
        tracing::warn!(volume = %name, %e, "cannot delete the old content after the restore; the next restore or plugin start does");
    }
    Ok(Some(report))
}

#[allow(clippy::too_many_arguments)]
fn make(
    ctx: &Ctx,
    pool: &crate::pool::Pool,
    root: &Dir,
    vols: &Dir,
    tmp: &OsStr,
    name: &VolumeName,
    id: &str,
    chain: &[Manifest],
    progress: Option<&(dyn Fn(u64) + Send + Sync)>,
) -> Result<RestoreReport, SnapshotError> {
    if let Some(ro) = cow::open_snapshot(pool, root, name, id)? {
        btrfs::snapshot(&ro, vols, tmp, false).map_err(io(format!(
            "cannot clone {} (btrfs snapshot)",
            ro.shown().display()
        )))?;
        return Ok(RestoreReport {
            cow: true,
            ..Default::default()
        });
    }
    if chain.is_empty() {
        return Err(SnapshotError::NotFound(format!(
            "volume {name} has no snapshot {id}; see `allspark snapshot ls {name}`"
        )));
    }
    btrfs::create_subvolume(vols, tmp).map_err(io(format!(
        "cannot create {}",
        vols.shown().join(tmp).display()
    )))?;
    let dir = vols
        .open_beneath(Path::new(tmp), Missing::Refuse)
        .map_err(|e| SnapshotError::Invalid(e.to_string()))?
        .dir;
    archive_restore::extract_chain(&ctx.layout, chain, &dir.proc_path(), progress)
}

/// Delete a restore's leftover `volumes/.restoring-<name>` unless a restore of the volume is
/// running (plugin start).
pub(crate) fn clean_leftover(layout: &Layout, vols: &Dir, name: &VolumeName) {
    let Ok(Some(_lock)) = FileLock::try_acquire(&layout.snapshot_lock(name), LockKind::Exclusive)
    else {
        return;
    };
    let tmp = format!("{RESTORING}{name}");
    match tree::destroy(vols, OsStr::new(&tmp)) {
        Ok(true) => tracing::warn!(
            volume = %name,
            "removed the leftover of an interrupted restore"
        ),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(volume = %name, %e, "cannot remove the leftover of an interrupted restore")
        }
    }
}
