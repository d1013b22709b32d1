//! `allspark pool create NAME SPEC`: a pool made from the command line, recorded durably before anything is made (so an interrupted creation is completed, never forgotten) and kept across plugin starts.
//!
//! Steps, under the registry lock: the entry is recorded with `creating: true`; the pool is
//! prepared (a `btrfs-image` is built under a temporary name and renamed, mounted, marked);
//! the entry is switched to ready. A kill at any step leaves either a `creating` entry (the
//! next `pool create` of the same spec or the next plugin start completes it, deleting a
//! half-built image first) or a ready pool. A creation that fails with an error is rolled
//! back: its entry is removed and an image it built is deleted.

use std::io;

use crate::core::crashpoint::crash_point;
use crate::core::layout::{HostView, Layout};
use crate::pool::image::partial_name;
use crate::pool::{parse_def, Entry, Pool, PoolSpec, Registry};

/// What `pool create` did.
#[derive(Debug)]
pub(crate) struct Created {
    pub pool: Pool,
    /// An interrupted creation of the same pool was completed.
    pub resumed: bool,
}

/// Create (or complete the interrupted creation of) pool `name` from `spec`.
pub(crate) fn create(
    layout: &Layout,
    view: &HostView,
    name: &str,
    spec: &str,
) -> io::Result<Created> {
    let def = parse_def(&format!("{name}={spec}")).map_err(io::Error::other)?;
    layout.ensure()?;
    let _lock = Registry::lock(layout)?;
    let mut reg = Registry::load(layout);
    let spec_text = def.spec.to_string();
    let resumed = match reg.pools.iter().find(|e| e.name == name) {
        Some(e) if !e.creating => {
            return Err(io::Error::other(format!(
                "pool {name} already exists ({}); choose another name",
                e.spec
            )))
        }
        Some(e) if e.spec != spec_text => {
            return Err(io::Error::other(format!(
                "the creation of pool {name} as {} was interrupted; finish it with `allspark pool create {name} {}` (nothing was changed)",
                e.spec, e.spec
            )))
        }
        Some(_) => true,
        None => {
            check_new(layout, view, &reg, name, &def.spec)?;
            reg.pools.push(Entry {
                name: name.to_string(),
                spec: spec_text.clone(),
                id: String::new(),
                created: true,
                creating: true,
                owner: None,
            });
            reg.save(layout)?;
            false
        }
    };
    crash_point("pool-entry-recorded");
    let pool = complete(layout, view, &mut reg, name, def.spec)?;
    Ok(Created { pool, resumed })
}

/// Make the pool of a recorded `creating` entry (the caller holds the registry lock) and mark
/// it ready; on an error, roll the creation back.
pub(crate) fn complete(
    layout: &Layout,
    view: &HostView,
    reg: &mut Registry,
    name: &str,
    spec: PoolSpec,
) -> io::Result<Pool> {
    let pool = Pool {
        name: name.to_string(),
        spec,
        id: String::new(),
    };
    let id = match pool.prepare(layout, view) {
        Ok(id) => id,
        Err(e) => {
            roll_back(layout, view, reg, &pool);
            return Err(io::Error::other(format!(
                "cannot create pool {name}: {e}; nothing was kept"
            )));
        }
    };
    if let Some(entry) = reg.pools.iter_mut().find(|e| e.name == name) {
        entry.id = id.clone();
        entry.creating = false;
    }
    reg.save(layout)?;
    Ok(Pool { id, ..pool })
}

/// Refuse what a new pool may not take: a path another pool uses, an existing image file
/// (allspark deletes only images it made), a `btrfs:` path that is not a btrfs mount.
fn check_new(
    layout: &Layout,
    view: &HostView,
    reg: &Registry,
    name: &str,
    spec: &PoolSpec,
) -> io::Result<()> {
    // Own pools live under the state root, where no configured pool may be.
    let path = |s: &PoolSpec| match s {
        PoolSpec::Dir { path } | PoolSpec::Btrfs { path } => Some(path.clone()),
        PoolSpec::BtrfsImage { image, .. } => Some(image.clone()),
        PoolSpec::Own { .. } => None,
    };
    let Some(new_path) = path(spec) else {
        return Err(io::Error::other(format!(
            "pool {name}: own: pools are made by volumes created with fs="
        )));
    };
    for e in &reg.pools {
        if let Ok(other) = PoolSpec::parse(&e.spec) {
            if path(&other).as_ref() == Some(&new_path) {
                return Err(io::Error::other(format!(
                    "pool {} already uses {}; give pool {name} its own place",
                    e.name,
                    new_path.display()
                )));
            }
        }
    }
    let local = view.local(&new_path);
    if let Some(own) = layout.own_dirs().iter().find(|d| local.starts_with(d)) {
        return Err(io::Error::other(format!(
            "{} lies inside allspark's own directory {}; put the pool elsewhere",
            new_path.display(),
            own.display()
        )));
    }
    if let PoolSpec::BtrfsImage { image, .. } = spec {
        if view.local(image).exists() {
            return Err(io::Error::other(format!(
                "{} already exists; pool create makes a new image (move the file away, or configure an existing pool image on the plugin with --pool {name}={spec})",
                image.display()
            )));
        }
    }
    Ok(())
}

/// Undo a creation that failed with an error: unmount and delete an image it built, drop
/// the entry.
fn roll_back(layout: &Layout, view: &HostView, reg: &mut Registry, pool: &Pool) {
    // Only an image allspark made and mounted is unmounted (never a user's btrfs: or dir: path).
    if pool.image(layout, view).is_some() {
        let _ = nix::mount::umount2(&pool.root_path(layout, view), nix::mount::MntFlags::empty());
        delete_image(layout, view, pool);
    }
    reg.pools.retain(|e| e.name != pool.name);
    if let Err(e) = reg.save(layout) {
        tracing::error!(pool = %pool.name, %e, "cannot drop the entry of a failed pool creation");
    }
}

/// Delete an image pool's mount point (once unmounted), its image and a half-built one.
pub(crate) fn delete_image(layout: &Layout, view: &HostView, pool: &Pool) {
    let Some((image, _)) = pool.image(layout, view) else {
        return;
    };
    let _ = std::fs::remove_dir(pool.root_path(layout, view));
    for f in [partial_name(&image), image] {
        match std::fs::remove_file(&f) {
            Ok(()) => tracing::warn!(path = %f.display(), "deleted a pool image"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(path = %f.display(), %e, "cannot delete a pool image"),
        }
    }
}
