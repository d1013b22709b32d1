//! Storage pools: where managed volumes live (`dir:PATH`, `btrfs:PATH`, `btrfs-image:PATH:SIZE`), configured on the plugin, recorded in `<root>/state/pools.json` for every process, and opened only after their marker proves the right filesystem is there.
//!
//! The default pool `default` is `<root>/volumes` (records of its volumes are unchanged:
//! `DataLocation::Managed`). Every other pool has a root directory holding `volumes/`,
//! `snapshots/` (read-only snapshots on btrfs), `trash/` and the marker `.allspark-pool`
//! (its name and a random id). A pool root whose marker is missing is not used: an unmounted
//! disk never receives volume data. A `btrfs-image` pool is mounted again by whichever process
//! finds its marker missing (plugin start, Create, Mount, a snapshot).

pub(crate) mod archive;
pub mod btrfs;
pub(crate) mod capacity;
pub(crate) mod cow;
pub(crate) mod create;
pub mod image;
pub mod location;
pub(crate) mod own;
pub(crate) mod restore;
pub mod send_diff;
pub(crate) mod topology;
pub(crate) mod tree;

use std::fs;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::layout::{HostView, Layout};
use crate::fs::beneath::{Dir, Missing};
use crate::fs::durable::{self, FileLock, LockKind};

mod spec;
pub use spec::{parse_def, parse_defs, PoolDef, PoolSpec};

/// The pool of volumes created without `pool=`: `<root>/volumes`.
pub const DEFAULT_POOL: &str = "default";
/// The marker file at the root of every pool.
pub const MARKER: &str = ".allspark-pool";
/// Directories of a pool root.
pub const VOLUMES: &str = "volumes";
pub const SNAPSHOTS: &str = "snapshots";
pub const TRASH: &str = "trash";

/// One configured pool as recorded for every process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    /// The spec as configured (`btrfs-image:/x.img:4G`).
    pub spec: String,
    /// The id in the pool's marker (empty until the pool was prepared once).
    #[serde(default)]
    pub id: String,
    /// Made by `allspark pool create` (kept across plugin starts) rather than configured on
    /// the plugin (`--pool` / `ALLSPARK_POOLS`, recorded again at each start).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub created: bool,
    /// `allspark pool create` has not finished: the pool takes no volumes until the next
    /// `pool create` of the same spec or plugin start completes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub creating: bool,
    /// The `fs=` volume whose own filesystem this pool is (made and removed with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// The pools the plugin serves (`<root>/state/pools.json`, written at plugin start).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    pub pools: Vec<Entry>,
}

impl Registry {
    /// The recorded pools (none when no plugin with pools ever ran).
    pub fn load(layout: &Layout) -> Registry {
        fs::read(layout.pools_registry())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub(crate) fn save(&self, layout: &Layout) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        durable::atomic_write(&layout.pools_registry(), &bytes, 0o600)
    }

    /// A configured pool by name (not the default pool, nor one still being created).
    pub fn get(&self, name: &str) -> Option<Pool> {
        let e = self.pools.iter().find(|e| e.name == name && !e.creating)?;
        Some(Pool {
            name: e.name.clone(),
            spec: PoolSpec::parse(&e.spec).ok()?,
            id: e.id.clone(),
        })
    }

    /// Every configured pool, in configuration order.
    pub fn all(&self) -> Vec<Pool> {
        self.pools
            .iter()
            .filter_map(|e| self.get(&e.name))
            .collect()
    }

    /// Take the lock every writer of `pools.json` holds (plugin start, `pool create`).
    pub(crate) fn lock(layout: &Layout) -> io::Result<FileLock> {
        durable::ensure_dir(&layout.locks_dir(), 0o700)?;
        // A volume name cannot start with a dot: no volume's lock has this name.
        FileLock::acquire(&layout.locks_dir().join(".pools.lock"), LockKind::Exclusive)
    }

    /// `default (dir:<root>/volumes), fast (btrfs:/srv/ssd)`: for refusals.
    pub fn describe(&self, layout: &Layout) -> String {
        let mut v = vec![format!(
            "{DEFAULT_POOL} (dir:{})",
            layout.volumes_dir().display()
        )];
        v.extend(
            self.pools
                .iter()
                .map(|e| format!("{} ({})", e.name, e.spec)),
        );
        v.join(", ")
    }
}

/// The marker's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    name: String,
    id: String,
}

/// A configured pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub spec: PoolSpec,
    /// The marker id this pool must show (empty: not prepared yet).
    pub id: String,
}

impl Pool {
    /// The pool's root directory as this process reaches it.
    pub fn root_path(&self, layout: &Layout, view: &HostView) -> PathBuf {
        match &self.spec {
            PoolSpec::Dir { path } | PoolSpec::Btrfs { path } => view.local(path),
            PoolSpec::BtrfsImage { .. } | PoolSpec::Own { .. } => layout.pool_mount(&self.name),
        }
    }

    /// The image file of a `btrfs-image` or `own` pool as this process reaches it, and its
    /// size.
    pub(crate) fn image(&self, layout: &Layout, view: &HostView) -> Option<(PathBuf, u64)> {
        match &self.spec {
            PoolSpec::BtrfsImage { image, size } => Some((view.local(image), *size)),
            PoolSpec::Own { size } => {
                Some((layout.pools_dir().join(format!("{}.img", self.name)), *size))
            }
            PoolSpec::Dir { .. } | PoolSpec::Btrfs { .. } => None,
        }
    }

    pub fn cow(&self) -> bool {
        self.spec.cow()
    }

    /// Open the pool's root, proven by its marker; a `btrfs-image` pool found unmounted is
    /// mounted again first.
    pub fn open_root(&self, layout: &Layout, view: &HostView) -> io::Result<Dir> {
        match self.check_root(layout, view) {
            Ok(d) => return Ok(d),
            Err((why, unmounted)) if !unmounted || self.image(layout, view).is_none() => {
                return Err(io::Error::other(why))
            }
            Err(_) => {}
        }
        let _lock = FileLock::acquire(&layout.pool_lock(&self.name), LockKind::Exclusive)?;
        if let Ok(d) = self.check_root(layout, view) {
            return Ok(d);
        }
        tracing::warn!(pool = %self.name, "pool image not mounted: mounting it again");
        self.mount_image(layout, view)?;
        self.check_root(layout, view)
            .map_err(|(why, _)| io::Error::other(why))
    }

    /// The root with a marker naming this pool (and its id, once known), or why not (and
    /// whether the marker is simply absent, as on an unmounted pool).
    fn check_root(&self, layout: &Layout, view: &HostView) -> Result<Dir, (String, bool)> {
        let path = self.root_path(layout, view);
        let root = Dir::open_anchor(&path).map_err(|e| {
            (
                format!("pool {}: cannot open {}: {e}", self.name, path.display()),
                true,
            )
        })?;
        match read_marker(&root) {
            Ok(Some(m)) if m.name == self.name && (self.id.is_empty() || m.id == self.id) => {
                Ok(root)
            }
            Ok(Some(m)) => Err((format!(
                "pool {}: {} holds pool {} (id {}), not this pool (id {}); fix --pool / ALLSPARK_POOLS so each pool names its own filesystem",
                self.name,
                path.display(),
                m.name,
                m.id,
                self.id
            ), false)),
            Ok(None) => Err((format!(
                "pool {}: {} has no {MARKER} marker: the pool's filesystem is not mounted there (mount it, or restart the plugin to prepare the pool); nothing was written",
                self.name,
                path.display()
            ), true)),
            Err(e) => Err((format!(
                "pool {}: cannot read {}/{MARKER}: {e}",
                self.name,
                path.display()
            ), false)),
        }
    }

    fn mount_image(&self, layout: &Layout, view: &HostView) -> io::Result<()> {
        let Some((image, _)) = self.image(layout, view) else {
            return Ok(());
        };
        let target = self.root_path(layout, view);
        durable::ensure_dir(&layout.pools_dir(), 0o700)?;
        durable::ensure_dir(&target, 0o700)?;
        // Something is mounted there already (this pool, seen without its marker for a
        // moment, or another filesystem): never stack a second mount on it.
        use std::os::unix::fs::MetadataExt;
        if fs::metadata(&target)?.dev() != fs::metadata(layout.pools_dir())?.dev() {
            return Err(io::Error::other(format!(
                "pool {}: a filesystem is already mounted on {} but shows no {MARKER} marker of this pool; unmount it (umount {}) and try again",
                self.name,
                target.display(),
                target.display()
            )));
        }
        image::mount(&image, &target)
    }

    /// The pool's `volumes/` directory, beneath the proven root.
    pub fn volumes_dir(&self, root: &Dir) -> io::Result<Dir> {
        Ok(root.open_beneath(Path::new(VOLUMES), Missing::Create)?.dir)
    }

    /// The pool's `snapshots/<volume>` directory.
    pub fn snapshots_dir(&self, root: &Dir, volume: &str) -> io::Result<Dir> {
        Ok(root
            .open_beneath(&Path::new(SNAPSHOTS).join(volume), Missing::Create)?
            .dir)
    }

    pub fn trash_dir(&self, root: &Dir) -> io::Result<Dir> {
        Ok(root.open_beneath(Path::new(TRASH), Missing::Create)?.dir)
    }

    /// Prepare the pool at plugin start: create (and format) an image, mount it, write the
    /// marker on a fresh filesystem, create the directories, enable quotas on btrfs. Returns
    /// the marker id.
    pub(crate) fn prepare(&self, layout: &Layout, view: &HostView) -> io::Result<String> {
        let path = self.root_path(layout, view);
        // A new image is a new filesystem: it gets a new marker whatever was recorded.
        let mut fresh = false;
        match &self.spec {
            PoolSpec::Dir { .. } => durable::ensure_dir(&path, 0o700)?,
            PoolSpec::Btrfs { .. } => {
                let d = Dir::open_anchor(&path)?;
                if !btrfs::is_btrfs(&d)? {
                    return Err(io::Error::other(format!(
                        "pool {}: {} is not a btrfs filesystem; mount btrfs there, or use dir:{}",
                        self.name,
                        path.display(),
                        path.display()
                    )));
                }
            }
            PoolSpec::BtrfsImage { .. } | PoolSpec::Own { .. } => {
                fresh = self.prepare_image(layout, view)?;
            }
        }
        let root = Dir::open_anchor(&path)?;
        let id = match read_marker(&root)? {
            Some(m) if m.name == self.name => m.id,
            Some(m) => {
                return Err(io::Error::other(format!(
                    "pool {}: {} already holds pool {}; give each pool its own filesystem or directory",
                    self.name,
                    path.display(),
                    m.name
                )))
            }
            None if !self.id.is_empty() && !fresh => {
                return Err(io::Error::other(format!(
                    "pool {}: {} lost its {MARKER} marker (id {}): is its disk mounted? nothing was written",
                    self.name,
                    path.display(),
                    self.id
                )))
            }
            None => {
                let id = new_id();
                let m = Marker {
                    name: self.name.clone(),
                    id: id.clone(),
                };
                let bytes = serde_json::to_vec(&m).map_err(io::Error::other)?;
                durable::atomic_write(&root.proc_path().join(MARKER), &bytes, 0o600)?;
                tracing::info!(pool = %self.name, path = %path.display(), %id, "pool initialised");
                id
            }
        };
        for d in [VOLUMES, SNAPSHOTS, TRASH] {
            durable::ensure_dir(&root.proc_path().join(d), 0o700)?;
        }
        if self.image(layout, view).is_some() {
            // allspark owns this filesystem: root-only like the state root, and quotas on from
            // the start, so `size=` is enforced.
            rustix::fs::fchmod(&root, rustix::fs::Mode::from_raw_mode(0o700))?;
            btrfs::enable_quota(root.as_fd())?;
        }
        Ok(id)
    }

    /// An image pool's part of [`Pool::prepare`]: the image made if the pool is new (never for
    /// a pool made once: its image missing means its disk is not mounted, or it was moved),
    /// then mounted unless its marker is already there. Returns whether the image is new.
    fn prepare_image(&self, layout: &Layout, view: &HostView) -> io::Result<bool> {
        let _lock = FileLock::acquire(&layout.pool_lock(&self.name), LockKind::Exclusive)?;
        let Some((local, size)) = self.image(layout, view) else {
            return Ok(false);
        };
        if !self.id.is_empty() && !local.exists() {
            return Err(io::Error::other(format!(
                "pool {}: its image {} is missing (is its disk mounted?); a new one is made only for a new pool, so nothing was created",
                self.name,
                local.display()
            )));
        }
        let fresh = image::ensure_image(&local, size, &format!("allspark-{}", self.name))?;
        if fresh {
            tracing::info!(pool = %self.name, image = %local.display(), size, "pool image created");
        }
        if self.check_root(layout, view).is_err() {
            let root = Dir::open_anchor(&self.root_path(layout, view)).ok();
            let has_marker = root
                .as_ref()
                .is_some_and(|r| matches!(read_marker(r), Ok(Some(_))));
            if !has_marker {
                self.mount_image(layout, view)?;
            }
        }
        Ok(fresh)
    }
}

fn read_marker(root: &Dir) -> io::Result<Option<Marker>> {
    let f = match rustix::fs::openat(
        root,
        MARKER,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        Ok(f) => f,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut s = String::new();
    fs::File::from(f).take(4096).read_to_string(&mut s)?;
    serde_json::from_str(&s)
        .map(Some)
        .map_err(|e| io::Error::other(format!("{MARKER} is corrupt: {e}")))
}

fn new_id() -> String {
    let mut b = [0u8; 8];
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64;
        b = (t ^ u64::from(std::process::id())).to_le_bytes();
    }
    hex::encode(b)
}

/// A configured pool by name, or a refusal naming the configured ones.
pub fn find(layout: &Layout, name: &str) -> Result<Pool, String> {
    let reg = Registry::load(layout);
    if let Some(e) = reg.pools.iter().find(|e| e.name == name && e.creating) {
        return Err(format!(
            "pool={name}: the creation of this pool was interrupted; finish it with `allspark pool create {name} {}` (or restart the plugin)",
            e.spec
        ));
    }
    reg.get(name).ok_or_else(|| {
        format!(
            "pool={name}: no such pool; configured pools: {} (pools are configured on the plugin with --pool NAME=SPEC or ALLSPARK_POOLS)",
            reg.describe(layout)
        )
    })
}

/// Prepare the configured pools and the pools `allspark pool create` made, and record them
/// for every process (plugin start). A pool that cannot be prepared is logged and kept (with
/// its known id): its volumes fail with the reason until it is fixed, the other pools serve.
/// A created pool whose creation was interrupted is completed here.
pub fn setup(layout: &Layout, view: &HostView, defs: &[PoolDef]) -> io::Result<Registry> {
    let _lock = Registry::lock(layout)?;
    let old = Registry::load(layout);
    if defs.is_empty() && old.pools.is_empty() {
        // No pools, ever: nothing to record (the state root stays as before pools).
        return Ok(old);
    }
    let mut wanted: Vec<Entry> = defs
        .iter()
        .map(|d| Entry {
            name: d.name.clone(),
            spec: d.spec.to_string(),
            id: String::new(),
            created: false,
            creating: false,
            owner: None,
        })
        .collect();
    for e in old.pools.iter().filter(|e| e.created) {
        match wanted.iter().find(|w| w.name == e.name) {
            Some(w) if w.spec != e.spec => {
                tracing::warn!(pool = %e.name, created = %e.spec, configured = %w.spec, "a pool made with `allspark pool create` is also configured on the plugin with another spec: the configured one is used")
            }
            Some(_) => {}
            None => wanted.push(e.clone()),
        }
    }
    let mut reg = Registry::default();
    for mut w in wanted {
        let known = old
            .pools
            .iter()
            .find(|e| e.name == w.name && e.spec == w.spec)
            .map(|e| e.id.clone())
            .unwrap_or_default();
        let Ok(spec) = PoolSpec::parse(&w.spec) else {
            tracing::error!(pool = %w.name, spec = %w.spec, "unreadable pool spec in pools.json: kept as it is");
            reg.pools.push(w);
            continue;
        };
        let pool = Pool {
            name: w.name.clone(),
            spec,
            id: known.clone(),
        };
        w.id = match pool.prepare(layout, view) {
            Ok(id) => {
                if w.creating {
                    tracing::warn!(pool = %w.name, "an interrupted `allspark pool create` is completed");
                }
                w.creating = false;
                id
            }
            Err(e) => {
                tracing::error!(pool = %w.name, error = %e, "pool not ready; its volumes fail until this is fixed");
                known
            }
        };
        reg.pools.push(w);
    }
    for e in &old.pools {
        if !reg.pools.iter().any(|n| n.name == e.name) {
            tracing::warn!(pool = %e.name, spec = %e.spec, "pool no longer configured: volumes in it cannot be used until it is configured again");
        }
    }
    reg.save(layout)?;
    Ok(reg)
}
