//! Where a volume's data is, as this process reaches it: a [`DataLocation`] resolved to a path or, for every step that touches data, opened once as a descriptor beneath its trusted anchor (the default pool `<root>/volumes`, the host's `/` for `device=` paths, a configured pool's proven root).

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use crate::core::layout::{HostView, Layout};
use crate::core::names::VolumeName;
use crate::core::store::DataLocation;
use crate::fs::beneath::{BeneathError, Dir, Missing, Opened};
use crate::pool::{btrfs, find, Pool, Registry, VOLUMES};

/// Resolving a [`DataLocation`] (kept apart from the record type so `core` does not depend on
/// pools).
pub trait Locate {
    /// The directory as this process reaches it.
    fn local_path(&self, layout: &Layout, view: &HostView) -> PathBuf;
    /// Open the data directory beneath its trusted anchor without following any symlink. The
    /// descriptor is what every later step uses; the path is never resolved again.
    fn open(
        &self,
        layout: &Layout,
        view: &HostView,
        missing: Missing,
    ) -> Result<Opened, BeneathError>;
    /// The directory holding the data directory, opened the same way, and the data
    /// directory's name in it (for a restore that swaps a new tree in).
    fn open_parent(
        &self,
        layout: &Layout,
        view: &HostView,
    ) -> Result<(Dir, std::ffi::OsString), BeneathError>;
    /// The anchor-relative path of the data directory, joined to the anchor (for removing
    /// what a Create made).
    fn anchor_path(&self, layout: &Layout, view: &HostView, rel: &Path) -> PathBuf;
}

impl Locate for DataLocation {
    fn local_path(&self, layout: &Layout, view: &HostView) -> PathBuf {
        match self {
            DataLocation::Managed { volume, subdir } => {
                let base = layout.managed_data(volume);
                match subdir {
                    Some(s) => base.join(s),
                    None => base,
                }
            }
            DataLocation::Host { path } => view.local(path),
            DataLocation::Pool {
                pool,
                volume,
                subdir,
            } => {
                let base = path(layout, view, pool, volume);
                match subdir {
                    Some(s) => base.join(s),
                    None => base,
                }
            }
        }
    }
    fn open(
        &self,
        layout: &Layout,
        view: &HostView,
        missing: Missing,
    ) -> Result<Opened, BeneathError> {
        if let DataLocation::Pool {
            pool,
            volume,
            subdir,
        } = self
        {
            return open(layout, view, pool, volume, subdir.as_deref(), missing);
        }
        let (anchor, rel) = anchored(self, layout, view);
        open_anchor(&anchor)?.open_beneath(&rel, missing)
    }

    fn open_parent(
        &self,
        layout: &Layout,
        view: &HostView,
    ) -> Result<(Dir, std::ffi::OsString), BeneathError> {
        let (anchor, rel) = anchored(self, layout, view);
        let name =
            rel.file_name()
                .map(|n| n.to_os_string())
                .ok_or_else(|| BeneathError::Invalid {
                    path: anchor.join(&rel),
                    reason: "a data directory needs a name".into(),
                })?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let anchor_dir = match self {
            DataLocation::Pool { pool, .. } => open_volumes(layout, view, pool)?,
            _ => open_anchor(&anchor)?,
        };
        let dir = anchor_dir.open_beneath(parent, Missing::Refuse)?.dir;
        Ok((dir, name))
    }

    fn anchor_path(&self, layout: &Layout, view: &HostView, rel: &Path) -> PathBuf {
        anchored(self, layout, view).0.join(rel)
    }
}

/// The trusted anchor of the data directory and the path below it: `<root>/volumes` for
/// managed data, the host's `/` (as this process sees it) for a host path, `<pool>/volumes` for a pool.
fn anchored(loc: &DataLocation, layout: &Layout, view: &HostView) -> (PathBuf, PathBuf) {
    match loc {
        DataLocation::Pool { pool, .. } => {
            let anchor = volumes_path(layout, view, pool);
            let local = loc.local_path(layout, view);
            let rel = local
                .strip_prefix(&anchor)
                .map(Path::to_path_buf)
                .unwrap_or(local.clone());
            (anchor, rel)
        }
        DataLocation::Managed { .. } => {
            let anchor = layout.volumes_dir();
            let local = loc.local_path(layout, view);
            let rel = local
                .strip_prefix(&anchor)
                .map(Path::to_path_buf)
                .unwrap_or(local.clone());
            (anchor, rel)
        }
        DataLocation::Host { path } => (
            view.local(Path::new("/")),
            path.strip_prefix("/").unwrap_or(path).to_path_buf(),
        ),
    }
}

fn open_anchor(anchor: &Path) -> Result<Dir, BeneathError> {
    Dir::open_anchor(anchor).map_err(|source| BeneathError::Io {
        path: anchor.to_path_buf(),
        source,
    })
}

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
pub fn path(layout: &Layout, view: &HostView, pool: &str, volume: &VolumeName) -> PathBuf {
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
    volume: &VolumeName,
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

pub(crate) fn open_top(
    p: &Pool,
    vols: &Dir,
    volume: &VolumeName,
    missing: Missing,
) -> Result<Opened, BeneathError> {
    match vols.open_beneath(Path::new(volume), Missing::Refuse) {
        Err(BeneathError::Missing { .. }) => {}
        other => return other,
    }
    let tmp = format!("{CREATING}{volume}");
    match rename_noreplace(vols, OsStr::new(&tmp), OsStr::new(volume)) {
        Ok(()) => {
            let _ = vols.file().and_then(|f| f.sync_all());
            tracing::warn!(
                %volume,
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
    tracing::warn!(%volume, pool = %p.name, "the volume's data was missing: made again, empty");
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
