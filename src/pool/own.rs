//! A volume's own filesystem (`fs=btrfs`): a pool of its own (spec `own:SIZE`, the image `<root>/pools/<volume>.fs.img`), made before the volume and removed after it, so a write past `size=` fails with ENOSPC and touches no other volume.
//!
//! The volume then lives in that pool like any btrfs-pool volume (read-only snapshots on
//! stop, clones, restores by swap, its archives). Its pool is recorded with `owner` set:
//! a repeated Create after a crash completes it, and the plugin's start removes an own pool
//! whose volume was never recorded (a Create killed half-way) and an image whose entry is
//! gone (a Remove killed half-way).

use std::io;

use crate::core::crashpoint::crash_point;
use crate::core::layout::{HostView, Layout};
use crate::core::names::VolumeName;
use crate::core::store::Store;
use crate::pool::create::{complete, delete_image};
use crate::pool::{Entry, Pool, PoolSpec, Registry};

/// The name of `volume`'s own pool.
pub(crate) fn pool_name(volume: &VolumeName) -> Result<String, String> {
    let name = format!("{volume}.fs");
    crate::core::names::validate(&name)
        .map(|_| name)
        .map_err(|e| format!("volume {volume}: fs= needs a name of at most 252 bytes ({e})"))
}

/// Make `volume`'s own pool of `size` bytes, or complete one an interrupted Create left.
pub(crate) fn ensure(
    layout: &Layout,
    view: &HostView,
    volume: &VolumeName,
    size: u64,
) -> io::Result<Pool> {
    let name = pool_name(volume).map_err(io::Error::other)?;
    let spec = PoolSpec::Own { size };
    layout.ensure()?;
    let _lock = Registry::lock(layout)?;
    let mut reg = Registry::load(layout);
    match reg.pools.iter().find(|e| e.name == name) {
        Some(e) if e.owner.as_deref() != Some(volume.as_str()) => {
            return Err(io::Error::other(format!(
                "pool {name} exists and is not the own filesystem of volume {volume}; give that pool another name, or the volume another name"
            )))
        }
        Some(e) if e.spec != spec.to_string() => {
            return Err(io::Error::other(format!(
                "volume {volume}'s own filesystem exists as {} (a leftover of an interrupted Create); create the volume with that size, or restart the plugin to remove the leftover",
                e.spec
            )))
        }
        Some(e) if !e.creating => {
            return crate::pool::find(layout, &name).map_err(io::Error::other);
        }
        Some(_) => {}
        None => {
            reg.pools.push(Entry {
                name: name.clone(),
                spec: spec.to_string(),
                id: String::new(),
                created: true,
                creating: true,
                owner: Some(volume.to_string()),
            });
            reg.save(layout)?;
        }
    }
    crash_point("own-pool-recorded");
    complete(layout, view, &mut reg, &name, spec)
}

/// Remove `volume`'s own pool (its volume is gone): the entry first, then the mount and the
/// image. A kill in between leaves an image no entry names, which the next start deletes;
/// never an entry without its image, which would be formatted anew.
pub(crate) fn remove(layout: &Layout, view: &HostView, volume: &VolumeName) -> io::Result<()> {
    let name = pool_name(volume).map_err(io::Error::other)?;
    let _lock = Registry::lock(layout)?;
    let mut reg = Registry::load(layout);
    let Some(entry) = reg
        .pools
        .iter()
        .find(|e| e.name == name && e.owner.as_deref() == Some(volume.as_str()))
    else {
        return Ok(());
    };
    let pool = Pool {
        name: name.clone(),
        spec: PoolSpec::parse(&entry.spec).map_err(io::Error::other)?,
        id: entry.id.clone(),
    };
    reg.pools.retain(|e| e.name != name);
    reg.save(layout)?;
    crash_point("own-pool-unrecorded");
    unmount_and_delete(layout, view, &pool);
    tracing::info!(volume = %volume, pool = %name, "the volume's own filesystem was removed");
    Ok(())
}

/// Unmount (lazily: its volume is gone) and delete an own pool's image and mount point.
fn unmount_and_delete(layout: &Layout, view: &HostView, pool: &Pool) {
    let mount = pool.root_path(layout, view);
    let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
    delete_image(layout, view, pool);
}

/// At plugin start: remove the own pools whose volume has no record (a Create killed after
/// the pool was made) and the own images no entry names (a Remove killed half-way). Calls are
/// served meanwhile: each decision is taken under the volume's lock, which a Create holds from
/// before its pool is recorded until its record is saved, and a Remove until its image is gone.
pub(crate) fn sweep(layout: &Layout, view: &HostView, store: &Store) {
    let owners: Vec<VolumeName> = Registry::load(layout)
        .pools
        .iter()
        .filter_map(|e| e.owner.as_deref())
        .filter_map(|o| VolumeName::parse(o).ok())
        .collect();
    for v in owners {
        let Ok(_lock) = store.lock(&v) else { continue };
        if !matches!(store.load(&v), Ok(None)) {
            continue;
        }
        tracing::warn!(volume = %v, "removing the own filesystem of a volume whose Create was interrupted");
        if let Err(e) = remove(layout, view, &v) {
            tracing::error!(volume = %v, %e, "cannot remove an orphaned own filesystem");
        }
    }
    let Ok(dir) = std::fs::read_dir(layout.pools_dir()) else {
        return;
    };
    for f in dir.flatten() {
        let file = f.file_name();
        let Some(v) = file
            .to_str()
            .and_then(|n| n.strip_suffix(".fs.img"))
            .and_then(|n| VolumeName::parse(n).ok())
        else {
            continue;
        };
        let Ok(_lock) = store.lock(&v) else { continue };
        let Ok(name) = pool_name(&v) else { continue };
        let Ok(_reg_lock) = Registry::lock(layout) else {
            return;
        };
        if Registry::load(layout).pools.iter().any(|e| e.name == name) {
            continue;
        }
        let leftover = Pool {
            name,
            spec: PoolSpec::Own { size: 0 },
            id: String::new(),
        };
        tracing::warn!(image = %f.path().display(), "deleting the image of a removed volume's own filesystem (its Remove was interrupted)");
        unmount_and_delete(layout, view, &leftover);
    }
}
