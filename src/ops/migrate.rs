//! Moving a volume's data to another host directory: copy, verify, switch the record atomically, keep the old data until cleanup.
//!
//! Crash safety (every step is a crash point, see [`crate::core::crashpoint::MIGRATE`]): the
//! copy is made in `<target>.allspark-migrating/data`, a directory marked as allspark's by a
//! marker file, and discarded by the next attempt. Once verified, the record notes the
//! migration under way (`migrating_to`) before the copy is renamed to the target, so a copy
//! found there after a crash is known to be allspark's: the next `volume migrate` to the same
//! place checks it against the data again and finishes (or discards and redoes) it. Until the
//! record is switched the volume uses the old place; after the switch it uses the new place,
//! and the old data stays until `--delete-source` or `allspark volume cleanup`.

use std::collections::BTreeMap;
use std::ffi::{CStr, OsStr};
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{readlinkat, OFlag};
use nix::sys::stat::{FileStat, SFlag};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::core::crashpoint::crash_point;
use crate::core::layout::{HostView, Layout};
use crate::core::names::VolumeName;
use crate::core::store::{DataLocation, Store};
use crate::fs::beneath::{Dir, Missing};
use crate::fs::durable::{FileLock, LockKind};
use crate::fs::walk;
use crate::plugin::driver::Driver;
use crate::pool::location::Locate;
use crate::pool::topology;

/// What a migration did.
#[derive(Debug, serde::Serialize)]
pub(crate) struct MigrateReport {
    pub from: PathBuf,
    /// The new place (for `--pool`, the volume's directory in the pool).
    pub to: PathBuf,
    pub files: usize,
    pub deleted_source: bool,
}

/// Migrate volume `name` to the host directory `to` (checked like a `device=`); Docker at
/// `docker_url` is asked which containers use a volume that shares the data, to name them.
pub(crate) fn migrate(
    driver: &Driver,
    docker_url: &str,
    layout: &Layout,
    view: &HostView,
    name: &VolumeName,
    to: &str,
    delete_source: bool,
) -> anyhow::Result<MigrateReport> {
    let store = Store::new(layout.clone());
    let host_to = driver.check_device(to)?;
    let _snap = FileLock::acquire(&layout.snapshot_lock(name), LockKind::Exclusive)?;
    let Movable { rec, source, from } = movable(layout, view, name, Some(docker_url))?;
    if let Some(pending) = rec.migrating_to.as_ref().filter(|p| **p != host_to) {
        bail!(
            "volume {name} has an interrupted migration to {}; finish it first with `allspark volume migrate {name} --to {}` — nothing was changed",
            pending.display(),
            pending.display()
        );
    }
    let target = view.local(&host_to);
    if target == from {
        bail!("volume {name} already lives at {to}");
    }
    check_not_nested(&source, &target, to)?;
    let staging = PathBuf::from(format!("{}.allspark-migrating", target.display()));
    let moved = Moved {
        store: &store,
        name,
        source: &source.proc_path(),
        staging: &staging,
        target: &target,
        host_to: &host_to,
    };
    let files = if rec.migrating_to.is_some() && is_non_empty(&target) {
        moved.finish_interrupted()?
    } else {
        if is_non_empty(&target) {
            bail!("{to} is not empty; choose an empty or new directory");
        }
        moved.copy_and_move()?
    };
    {
        let _lock = store.lock(name)?;
        let mut r = (*store
            .load(name)?
            .with_context(|| format!("volume {name} disappeared"))?)
        .clone();
        r.previous_data = Some(r.data.clone());
        r.data = DataLocation::Host {
            path: host_to.clone(),
        };
        r.migrating_to = None;
        store.save(&r)?;
    }
    crash_point("migrate.switched");
    if delete_source {
        cleanup(layout, view, name)?;
    }
    Ok(MigrateReport {
        from,
        to: target,
        files,
        deleted_source: delete_source,
    })
}

fn is_non_empty(dir: &Path) -> bool {
    fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// The places one migration works with.
struct Moved<'a> {
    store: &'a Store,
    name: &'a VolumeName,
    source: &'a Path,
    staging: &'a Path,
    target: &'a Path,
    host_to: &'a Path,
}

impl Moved<'_> {
    /// Copy into the marked staging directory, verify, note the migration in the record, and
    /// rename the copy to the target; the count of entries.
    fn copy_and_move(&self) -> anyhow::Result<usize> {
        let (staging, target) = (self.staging, self.target);
        discard_marked_staging(staging)?;
        crate::fs::durable::ensure_dir(staging, 0o700)?;
        fs::write(staging.join(STAGING_MARKER), self.name.as_bytes())
            .with_context(|| format!("cannot mark {}", staging.display()))?;
        crate::fs::durable::fsync_dir(staging.parent().unwrap_or(Path::new("/")))?;
        let copy = staging.join("data");
        crate::fs::copy::copy_tree(self.source, &copy).with_context(|| {
            format!(
                "cannot copy {} to {}",
                self.source.display(),
                copy.display()
            )
        })?;
        crash_point("migrate.copied");
        let files = compare_trees(self.source, &copy)?;
        crash_point("migrate.verified");
        self.journal()?;
        crash_point("migrate.journaled");
        if target.exists() {
            fs::remove_dir(target).with_context(|| {
                format!("cannot replace the empty directory {}", target.display())
            })?;
        }
        fs::rename(&copy, target)
            .with_context(|| format!("cannot move the copy to {}", target.display()))?;
        crate::fs::durable::fsync_dir(target.parent().unwrap_or(Path::new("/")))?;
        crash_point("migrate.renamed");
        discard_marked_staging(staging)?;
        Ok(files)
    }

    /// The record says a verified copy was renamed to the target before a crash: keep it if it
    /// still equals the data (the volume may have been written since), else discard and redo.
    fn finish_interrupted(&self) -> anyhow::Result<usize> {
        discard_marked_staging(self.staging)?;
        match compare_trees(self.source, self.target) {
            Ok(files) => Ok(files),
            Err(e) => {
                tracing::warn!(volume = %self.name, target = %self.target.display(), error = %format!("{e:#}"), "the copy an interrupted migration left differs from the data: copied again");
                fs::remove_dir_all(self.target).with_context(|| {
                    format!(
                        "cannot discard the outdated copy at {}",
                        self.target.display()
                    )
                })?;
                self.copy_and_move()
            }
        }
    }

    /// Note the migration under way in the volume's record (the switch clears it).
    fn journal(&self) -> anyhow::Result<()> {
        let _lock = self.store.lock(self.name)?;
        let mut r = (*self
            .store
            .load(self.name)?
            .with_context(|| format!("volume {} disappeared", self.name))?)
        .clone();
        r.migrating_to = Some(self.host_to.to_path_buf());
        self.store.save(&r)?;
        Ok(())
    }
}

/// The file that marks a half copy as allspark's own, and so disposable.
const STAGING_MARKER: &str = ".allspark-migrating";

/// Delete a half copy an earlier, interrupted migration left, but only one allspark marked:
/// anything else at that name (another volume's `device=` directory, say) is refused.
fn discard_marked_staging(staging: &Path) -> anyhow::Result<()> {
    let meta = match fs::symlink_metadata(staging) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", staging.display())),
    };
    if !meta.is_dir() || !staging.join(STAGING_MARKER).is_file() {
        bail!(
            "{} exists and is not a half copy allspark made (no {STAGING_MARKER} marker); move it away and migrate again — nothing was deleted",
            staging.display()
        );
    }
    fs::remove_dir_all(staging).with_context(|| {
        format!(
            "cannot discard an earlier half copy at {}",
            staging.display()
        )
    })
}

/// Refuse a target inside the source (the copy would copy itself) or the source inside the
/// target, compared by device and inode (the target's nearest existing ancestor).
fn check_not_nested(source: &Dir, target: &Path, to: &str) -> anyhow::Result<()> {
    let mut existing = target;
    while fs::symlink_metadata(existing).is_err() {
        match existing.parent() {
            Some(p) => existing = p,
            None => return Ok(()),
        }
    }
    let t = Dir::open_anchor(existing)?;
    if t.is_within(source.id()?)? {
        bail!("--to {to} lies inside the volume's own data; choose a directory outside it");
    }
    if source.is_within(t.id()?)? && existing == target {
        bail!("--to {to} contains the volume's data; choose a directory outside it");
    }
    Ok(())
}

/// Delete the data a migration left at the old place.
pub(crate) fn cleanup(
    layout: &Layout,
    view: &HostView,
    name: &VolumeName,
) -> anyhow::Result<Option<PathBuf>> {
    let store = Store::new(layout.clone());
    let _lock = store.lock(name)?;
    let mut r = (*store
        .load(name)?
        .with_context(|| format!("no such volume: {name}"))?)
    .clone();
    let Some(prev) = r.previous_data.clone() else {
        return Ok(None);
    };
    let dir = prev.local_path(layout, view);
    if let Ok(opened) = prev.open(layout, view, Missing::Refuse) {
        // Another volume on the same directory, inside it or around it keeps it alive.
        let fam = topology::family(layout, view, &opened.dir, &dir);
        if let Some(other) = fam.members.iter().find(|m| m.name != *name) {
            bail!(
                "the old data of {name} at {} is still used by volume {} (it {}); it is kept — nothing was deleted",
                dir.display(),
                other.name,
                other.relation.as_str()
            );
        }
        if let Some(m) = fam.mounts_below.first() {
            bail!(
                "the old data of {name} at {} holds a live mount {}; it is kept — nothing was deleted",
                dir.display(),
                m.display()
            );
        }
    }
    if let DataLocation::Pool {
        pool,
        volume,
        subdir: None,
    } = &prev
    {
        // A subvolume goes at once; the volume's read-only snapshots in that pool were
        // archived before it moved.
        crate::pool::cow::destroy_in_pool(layout, view, pool, volume)
            .with_context(|| format!("cannot delete the old data at {}", dir.display()))?;
    } else if dir.exists() {
        fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot delete the old data at {}", dir.display()))?;
    }
    if let DataLocation::Managed {
        volume,
        subdir: None,
    } = &prev
    {
        let _ = fs::remove_dir(layout.volumes_dir().join(volume));
    }
    crash_point("cleanup.deleted");
    r.previous_data = None;
    store.save(&r)?;
    Ok(Some(dir))
}

/// Compare two trees entry by entry (kind, size, mode, owner, link target, sha256 of content); the count of entries.
pub(crate) fn compare_trees(a: &Path, b: &Path) -> anyhow::Result<usize> {
    let (ta, tb) = (fingerprint(a)?, fingerprint(b)?);
    for (path, fa) in &ta {
        match tb.get(path) {
            None => bail!("the copy lacks {}", path.display()),
            Some(fb) if fb != fa => bail!("the copy of {} differs ({fa} vs {fb})", path.display()),
            _ => {}
        }
    }
    if let Some(extra) = tb.keys().find(|k| !ta.contains_key(*k)) {
        bail!("the copy has an extra entry {}", extra.display());
    }
    Ok(ta.len())
}

/// Every entry below `root` (by the one walker: descriptor-relative, symlinks never followed)
/// as `kind size/target/hash mode uid:gid`, keyed by its relative path.
fn fingerprint(root: &Path) -> anyhow::Result<BTreeMap<PathBuf, String>> {
    let (dir, st) =
        walk::open_root(root).with_context(|| format!("cannot open {}", root.display()))?;
    let mut v = Fingerprint {
        root,
        out: BTreeMap::new(),
        buf: vec![0u8; 1 << 16],
    };
    walk::walk(dir, st, &walk::Options::default(), &mut v)?;
    Ok(v.out)
}

struct Fingerprint<'a> {
    root: &'a Path,
    out: BTreeMap<PathBuf, String>,
    buf: Vec<u8>,
}

impl Fingerprint<'_> {
    fn put(&mut self, rel: &[u8], what: String, st: &FileStat, link: bool) {
        let mode = if link { 0 } else { st.st_mode & 0o7777 };
        let line = format!("{what} {mode:o} {}:{}", st.st_uid, st.st_gid);
        self.out.insert(PathBuf::from(OsStr::from_bytes(rel)), line);
    }

    fn hash(&mut self, parent: &File, name: &CStr) -> std::io::Result<String> {
        let mut f = walk::open_at(parent.as_raw_fd(), name, OFlag::O_RDONLY)?;
        let mut h = Sha256::new();
        loop {
            let n = f.read(&mut self.buf)?;
            if n == 0 {
                break;
            }
            h.update(&self.buf[..n]);
        }
        Ok(hex::encode(h.finalize()))
    }
}

impl walk::Visitor for Fingerprint<'_> {
    type Error = anyhow::Error;
    type Ahead = ();

    fn dir(&mut self, d: &walk::DirView<'_>) -> anyhow::Result<bool> {
        if let walk::Listing::Failed(e) = d.listing {
            bail!(
                "cannot list {}: {e}",
                self.root.join(OsStr::from_bytes(d.rel)).display()
            );
        }
        if !d.rel.is_empty() {
            self.put(d.rel, "dir".into(), d.st, false);
        }
        Ok(true)
    }

    fn entry(
        &mut self,
        parent: &File,
        name: &CStr,
        rel: &[u8],
        st: &FileStat,
        _: Option<()>,
    ) -> anyhow::Result<()> {
        let shown = || self.root.join(OsStr::from_bytes(rel));
        let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        let (what, link) = if fmt == SFlag::S_IFLNK {
            let target = readlinkat(Some(parent.as_raw_fd()), name)
                .with_context(|| format!("cannot read the link {}", shown().display()))?;
            (format!("link:{}", Path::new(&target).display()), true)
        } else if fmt == SFlag::S_IFREG {
            let sum = self
                .hash(parent, name)
                .with_context(|| format!("cannot read {}", shown().display()))?;
            (format!("file:{}:{sum}", st.st_size), false)
        } else {
            ("special".to_string(), false)
        };
        self.put(rel, what, st, link);
        Ok(())
    }

    fn failed(
        &mut self,
        rel: &[u8],
        _: Option<&FileStat>,
        why: walk::Failure,
    ) -> anyhow::Result<()> {
        bail!(
            "cannot read {}: {why:?}",
            self.root.join(OsStr::from_bytes(rel)).display()
        )
    }
}

/// A volume that may be moved now, and its data opened once.
pub(crate) struct Movable {
    pub rec: crate::core::store::VolumeRecord,
    pub source: Dir,
    pub from: PathBuf,
}

/// The checks every move of a volume's data makes (the caller holds the volume's snapshot
/// lock, so no snapshot reads the data meanwhile): the volume exists and is not mounted, has
/// no earlier migration's data left, is not a `parent=` child nor a parent, and nothing of
/// its family (volumes on, inside or around its data) is in use; with `docker_url`, a
/// refusal names the containers of the volume in use.
pub(crate) fn movable(
    layout: &Layout,
    view: &HostView,
    name: &VolumeName,
    docker_url: Option<&str>,
) -> anyhow::Result<Movable> {
    let store = Store::new(layout.clone());
    let rec = {
        let _lock = store.lock(name)?;
        let rec = store
            .load(name)?
            .with_context(|| format!("no such volume: {name}"))?;
        if rec.mount_count() > 0 {
            bail!(
                "volume {name} is mounted by {} container(s); stop them before migrating it",
                rec.mount_count()
            );
        }
        (*rec).clone()
    };
    if let Some(prev) = &rec.previous_data {
        bail!(
            "volume {name} still has the data of an earlier migration at {}; delete it first with `allspark volume cleanup {name}`",
            prev.local_path(layout, view).display()
        );
    }
    if let Some(fs) = rec.spec.fs {
        bail!(
            "volume {name} has a filesystem of its own (fs={fs}), which goes with it; to move its data, restore a snapshot into a new volume (`allspark snapshot restore {name} ID --into NEW`) — nothing was changed"
        );
    }
    if rec.spec.parent.is_some() {
        bail!(
            "volume {name} lives inside its parent volume {}; migrate the parent instead",
            rec.spec.parent.as_deref().unwrap_or("")
        );
    }
    let children = store.children(name)?;
    if !children.is_empty() {
        // Their records name places inside this volume's data: moving the data alone would
        // leave them behind, and a cleanup would then delete their data.
        bail!(
            "volume {name} is the parent of {}; a parent cannot be migrated while it has children (remove or recreate them elsewhere first) — nothing was changed",
            children.join(", ")
        );
    }
    let from = rec.data.local_path(layout, view);
    let source = rec
        .data
        .open(layout, view, Missing::Refuse)
        .with_context(|| format!("volume {name}: cannot open its data"))?
        .dir;
    let mut fam = topology::family(layout, view, &source, &from);
    if let Some(url) = docker_url {
        fam.name_users(url, name);
    }
    if let Some(refusal) = fam.refusal(name, &format!("migrate volume {name}")) {
        bail!(refusal);
    }
    Ok(Movable { rec, source, from })
}
