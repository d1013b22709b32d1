//! Disk usage of volumes: a parallel, one-filesystem tree walk with a directory-listing cache, per-volume figures (`VolumeUsage`), the filesystems holding volumes, and the `UsageCache` the plugin shows.
//!
//! # What is counted
//!
//! [`measure`] walks a directory the way `du -s -x` does:
//!
//! * `bytes` is the space on disk: `st_blocks * 512` summed over every distinct
//!   inode of the tree, the root directory and all sub-directories included
//!   (so it equals `du -s -x --block-size=1`);
//! * `apparent_bytes` is `st_size` over the same inodes (`du -s -x -b`);
//! * `files` counts distinct non-directory inodes (regular files, symlinks,
//!   sockets, fifos, devices): a file with two hard links inside the tree is
//!   counted once, in `files` and in the byte figures;
//! * `dirs` counts directories, the root included.
//!
//! Symlinks are never followed (a symlink's own inode is counted). The walk
//! stays on the filesystem of the root (`st_dev`): a directory or file whose
//! device differs (a mount point) is skipped with everything below it, and a
//! directory reached twice (a bind mount of the same filesystem) is walked once.
//! Entries that vanish during the walk are skipped silently; other errors below
//! the root are counted in [`Walk::errors`] and the walk goes on.
//!
//! # Parallelism
//!
//! Directories are work items on a shared queue (`crossbeam-channel`), pulled by
//! [`MeasureOptions::threads`] workers (at least 2). Each worker opens a
//! directory once and `fstatat`s its entries relative to that descriptor, so a
//! path is resolved once per directory, not once per file. A directory is only
//! descended into if the descriptor opened for it is the very inode its parent
//! listed (`st_dev`, `st_ino`), so a directory swapped for a symlink during the
//! walk is not followed.
//!
//! # The listing cache, and why it caches names but not sizes
//!
//! A directory's mtime and ctime change when an entry is added, removed or
//! renamed in it, but **not** when a file inside it is written, truncated or
//! extended. A cache of per-directory size sums keyed by directory mtime would
//! therefore report stale sizes for modified files, which we refuse to do.
//!
//! What the cache (`<root>/state/usage-cache/<volume>.bin`) holds instead is,
//! for each directory, its inode, mtime and ctime and the *names* of its
//! entries. A re-measure opens and `fstat`s every directory; if its inode,
//! mtime and ctime are all unchanged it reuses the cached names and skips the
//! `readdir`, otherwise it lists the directory again. Every entry is still
//! `fstatat`ed on every measure, so every size is current. ctime cannot be set by
//! users, so `touch -r` on a directory cannot fool the check.
//!
//! Racy listings: timestamps have a granularity (a clock tick), so a directory
//! changed in the same tick as it was listed could keep the mtime that was
//! cached. As git does with its index, a listing is only cached when the
//! directory's mtime and ctime are at least [`RACY_WINDOW`] older than the
//! start of the walk; a younger directory is simply listed again next time.
//! (A filesystem whose server clock lags this host's by more than that window,
//! e.g. a skewed NFS server, defeats the guard; measure such volumes without the
//! cache.) A corrupt or unreadable cache file is ignored (full walk) and
//! rewritten. The file is rewritten (atomically) only when a listing changed.
//!
//! The speed-up is therefore the `readdir` calls only (see `benches/usage.rs`).

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use serde::{Deserialize, Serialize};

use crate::core::layout::{HostView, Layout};
use crate::core::names::VolumeName;
use crate::core::options::{BackupPriority, Class};
use crate::core::status::{self, UsageCache};
use crate::core::store::{Store, VolumeRecord};
use crate::fs::beneath::Missing;
use crate::pool::location::Locate;

/// Default alert threshold, percent of a volume's `size` or of a filesystem.
pub const DEFAULT_THRESHOLD_PERCENT: f64 = 80.0;

/// A directory listing is cached only if the directory is at least this much older than the walk.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Figures of one tree (see the module documentation for what is counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Space on disk: `st_blocks * 512` over distinct inodes (as `du -s -x --block-size=1`).
    pub bytes: u64,
    /// `st_size` over distinct inodes (as `du -s -x -b`).
    pub apparent_bytes: u64,
    /// Distinct non-directory inodes.
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
}

impl Usage {
    fn add(&mut self, o: &Usage) {
        self.bytes += o.bytes;
        self.apparent_bytes += o.apparent_bytes;
        self.files += o.files;
        self.dirs += o.dirs;
    }
    fn count(&mut self, st: &FileStat, dir: bool) {
        self.bytes += st.st_blocks as u64 * 512;
        self.apparent_bytes += st.st_size.max(0) as u64;
        if dir {
            self.dirs += 1;
        } else {
            self.files += 1;
        }
    }
}

/// The outcome of one walk: the figures and how the work was done.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Walk {
    pub usage: Usage,
    /// Directories read with `readdir`.
    pub dirs_listed: u64,
    /// Directories whose cached listing was reused.
    pub dirs_reused: u64,
    /// Entries below the root that could not be read (the figures leave them out).
    pub errors: u64,
    /// The first of those errors, for a log line.
    pub first_error: Option<String>,
}

/// How to walk.
#[derive(Clone, Debug)]
pub struct MeasureOptions {
    /// Worker threads (at least 2 are used).
    pub threads: usize,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        MeasureOptions {
            threads: cores.clamp(2, 8),
        }
    }
}

/// Measure a tree without any cache.
pub fn measure(dir: &Path) -> io::Result<Usage> {
    Ok(walk(dir, None, &MeasureOptions::default())?.0.usage)
}

/// Measure a tree without any cache, with explicit options.
pub fn measure_with(dir: &Path, opts: &MeasureOptions) -> io::Result<Walk> {
    Ok(walk(dir, None, opts)?.0)
}

/// Measure a tree through the listing cache at `cache_file` (read if present, rewritten if changed).
pub fn measure_cached(dir: &Path, cache_file: &Path) -> io::Result<Walk> {
    measure_cached_with(dir, cache_file, &MeasureOptions::default())
}

/// [`measure_cached`] with explicit options.
pub fn measure_cached_with(
    dir: &Path,
    cache_file: &Path,
    opts: &MeasureOptions,
) -> io::Result<Walk> {
    let old = ListingCache::load(cache_file);
    let (walk, new, changed) = walk(dir, Some(old), opts)?;
    if changed {
        if let Some(parent) = cache_file.parent() {
            crate::fs::durable::ensure_dir(parent, 0o700)?;
        }
        crate::fs::durable::atomic_write(cache_file, &new.encode(), 0o600)?;
    }
    Ok(walk)
}

/// One cached directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CachedDir {
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// Entry names (no `.`/`..`), in inode order.
    names: Vec<CString>,
}

/// Directory listings of one tree, keyed by path relative to its root (empty = the root).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListingCache {
    dirs: HashMap<Vec<u8>, CachedDir>,
}

const CACHE_MAGIC: &[u8; 16] = b"allspark-usage\x00\x01";

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

impl ListingCache {
    /// Number of cached directories.
    pub fn len(&self) -> usize {
        self.dirs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    /// Read a cache file; a missing, unreadable or corrupt file gives an empty cache.
    pub fn load(path: &Path) -> ListingCache {
        match fs::read(path) {
            Ok(b) => ListingCache::decode(&b).unwrap_or_else(|| {
                tracing::warn!(path = %path.display(), "usage cache is corrupt; measuring without it");
                ListingCache::default()
            }),
            Err(_) => ListingCache::default(),
        }
    }

    /// Binary form: magic, count, then per directory its key, inode, times and names; FNV-1a checksum last.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.dirs.len() * 64);
        out.extend_from_slice(CACHE_MAGIC);
        out.extend_from_slice(&(self.dirs.len() as u64).to_le_bytes());
        let mut keys: Vec<&Vec<u8>> = self.dirs.keys().collect();
        keys.sort();
        for k in keys {
            let d = &self.dirs[k];
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&d.ino.to_le_bytes());
            for t in [d.mtime.0, d.mtime.1, d.ctime.0, d.ctime.1] {
                out.extend_from_slice(&t.to_le_bytes());
            }
            out.extend_from_slice(&(d.names.len() as u32).to_le_bytes());
            for n in &d.names {
                let b = n.as_bytes();
                out.extend_from_slice(&(b.len() as u16).to_le_bytes());
                out.extend_from_slice(b);
            }
        }
        let sum = fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Parse [`ListingCache::encode`]'s output; `None` if anything is off.
    pub fn decode(bytes: &[u8]) -> Option<ListingCache> {
        let (body, sum) = bytes.split_at(bytes.len().checked_sub(8)?);
        if fnv1a(body).to_le_bytes() != sum || !body.starts_with(CACHE_MAGIC) {
            return None;
        }
        let mut r = Reader(&body[CACHE_MAGIC.len()..]);
        let n = r.u64()?;
        let mut dirs = HashMap::with_capacity(n.min(1 << 20) as usize);
        for _ in 0..n {
            let klen = r.u32()? as usize;
            let key = r.take(klen)?.to_vec();
            let ino = r.u64()?;
            let mtime = (r.i64()?, r.i64()?);
            let ctime = (r.i64()?, r.i64()?);
            let count = r.u32()? as usize;
            let mut names = Vec::with_capacity(count.min(1 << 16));
            for _ in 0..count {
                let len = r.u16()? as usize;
                let name = r.take(len)?;
                if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
                    return None;
                }
                names.push(CString::new(name).ok()?);
            }
            dirs.insert(
                key,
                CachedDir {
                    ino,
                    mtime,
                    ctime,
                    names,
                },
            );
        }
        r.0.is_empty().then_some(ListingCache { dirs })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

enum Msg {
    Dir { rel: Vec<u8>, ino: u64 },
    Stop,
}

struct Shared<'a> {
    root: &'a Path,
    dev: u64,
    cutoff: (i64, i64),
    old: Option<&'a ListingCache>,
    /// (dev, ino) of directories walked and of files with more than one link.
    seen: Mutex<HashSet<(u64, u64)>>,
    pending: AtomicUsize,
    tx: crossbeam_channel::Sender<Msg>,
    threads: usize,
}

#[derive(Default)]
struct Local {
    usage: Usage,
    listed: u64,
    reused: Vec<Vec<u8>>,
    fresh: Vec<(Vec<u8>, CachedDir)>,
    errors: u64,
    first_error: Option<String>,
}

impl Local {
    fn error(&mut self, path: &Path, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{}: {e}", path.display()));
        }
    }
}

fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR
}

fn child_rel(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(rel.len() + 1 + name.len());
    if !rel.is_empty() {
        v.extend_from_slice(rel);
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

fn full_path(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// The walk itself. Returns the figures, the new listing cache, and whether it differs from `old`.
fn walk(
    root: &Path,
    old: Option<ListingCache>,
    opts: &MeasureOptions,
) -> io::Result<(Walk, ListingCache, bool)> {
    let start = SystemTime::now();
    let cutoff = start
        .checked_sub(RACY_WINDOW)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or((0, 0), |d| (d.as_secs() as i64, d.subsec_nanos() as i64));
    let meta = fs::metadata(root)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", root.display()),
        ));
    }
    let threads = opts.threads.max(2);
    let (tx, rx) = crossbeam_channel::unbounded();
    let shared = Shared {
        root,
        dev: meta.dev(),
        cutoff,
        old: old.as_ref(),
        seen: Mutex::new(HashSet::from([(meta.dev(), meta.ino())])),
        pending: AtomicUsize::new(1),
        tx,
        threads,
    };
    let mut total = Local::default();
    total.usage.bytes = meta.blocks() * 512;
    total.usage.apparent_bytes = meta.size();
    total.usage.dirs = 1;
    shared
        .tx
        .send(Msg::Dir {
            rel: Vec::new(),
            ino: meta.ino(),
        })
        .expect("receiver alive");
    let locals: Vec<Local> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let rx = rx.clone();
                let shared = &shared;
                s.spawn(move || worker(shared, rx))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("usage worker panicked"))
            .collect()
    });
    drop(shared);
    let mut old = old.unwrap_or_default();
    let mut new = ListingCache::default();
    let mut changed = false;
    let mut reused = 0u64;
    for l in locals {
        total.usage.add(&l.usage);
        total.listed += l.listed;
        total.errors += l.errors;
        if total.first_error.is_none() {
            total.first_error = l.first_error;
        }
        reused += l.reused.len() as u64;
        for k in l.reused {
            if let Some(d) = old.dirs.remove(&k) {
                new.dirs.insert(k, d);
            }
        }
        for (k, d) in l.fresh {
            changed |= old.dirs.get(&k) != Some(&d);
            new.dirs.insert(k, d);
        }
    }
    // Directories cached before but gone (or no longer cacheable) now.
    changed |= old.dirs.keys().any(|k| !new.dirs.contains_key(k));
    let walk = Walk {
        usage: total.usage,
        dirs_listed: total.listed,
        dirs_reused: reused,
        errors: total.errors,
        first_error: total.first_error,
    };
    Ok((walk, new, changed))
}

/// Ends the walk for everyone if a worker panics, so the others do not wait forever.
struct PanicStop<'a, 'b>(&'a Shared<'b>);

impl Drop for PanicStop<'_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for _ in 0..self.0.threads {
                let _ = self.0.tx.send(Msg::Stop);
            }
        }
    }
}

fn worker(shared: &Shared<'_>, rx: crossbeam_channel::Receiver<Msg>) -> Local {
    let _guard = PanicStop(shared);
    let mut local = Local::default();
    while let Ok(msg) = rx.recv() {
        let Msg::Dir { rel, ino } = msg else { break };
        visit(shared, &mut local, rel, ino);
        if shared.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            for _ in 0..shared.threads {
                let _ = shared.tx.send(Msg::Stop);
            }
        }
    }
    local
}

fn ts_lt(a: (i64, i64), b: (i64, i64)) -> bool {
    a < b
}

/// List one directory (or reuse its cached listing) and count its entries; queue its sub-directories.
fn visit(shared: &Shared<'_>, local: &mut Local, rel: Vec<u8>, ino: u64) {
    let path = full_path(shared.root, &rel);
    let mut flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    if !rel.is_empty() {
        // Below the root, never through a symlink (the root itself may be one).
        flags |= OFlag::O_NOFOLLOW;
    }
    let mut dir = match Dir::open(&path, flags, Mode::empty()) {
        Ok(d) => d,
        Err(nix::errno::Errno::ENOENT) => return,
        Err(e) => return local.error(&path, e),
    };
    let fd = dir.as_raw_fd();
    let st = match fstat(fd) {
        Ok(st) => st,
        Err(e) => return local.error(&path, e),
    };
    if st.st_dev != shared.dev || st.st_ino != ino {
        // Replaced since its parent was listed (e.g. by a symlink or another directory).
        return;
    }
    let mtime = (st.st_mtime, st.st_mtime_nsec);
    let ctime = (st.st_ctime, st.st_ctime_nsec);
    let cached = shared
        .old
        .and_then(|c| c.dirs.get(&rel))
        .filter(|c| c.ino == st.st_ino && c.mtime == mtime && c.ctime == ctime);
    let fresh_names: Option<Vec<CString>> = match cached {
        Some(_) => {
            local.reused.push(rel.clone());
            None
        }
        None => {
            let mut entries: Vec<(u64, CString)> = Vec::new();
            for e in dir.iter() {
                match e {
                    Ok(e) => {
                        let n = e.file_name();
                        if n.to_bytes() != b"." && n.to_bytes() != b".." {
                            entries.push((e.ino(), n.to_owned()));
                        }
                    }
                    Err(e) => return local.error(&path, e),
                }
            }
            // Inode order: friendlier to the disk on a cold cache.
            entries.sort_unstable_by_key(|(i, _)| *i);
            local.listed += 1;
            Some(entries.into_iter().map(|(_, n)| n).collect())
        }
    };
    let names: &[CString] = match (cached, &fresh_names) {
        (Some(c), _) => &c.names,
        (None, Some(n)) => n,
        (None, None) => &[],
    };
    for name in names {
        count_entry(shared, local, &rel, fd, name);
    }
    if let Some(names) = fresh_names {
        if ts_lt(mtime, shared.cutoff) && ts_lt(ctime, shared.cutoff) {
            local.fresh.push((
                rel,
                CachedDir {
                    ino: st.st_ino,
                    mtime,
                    ctime,
                    names,
                },
            ));
        }
    }
}

fn count_entry(shared: &Shared<'_>, local: &mut Local, rel: &[u8], fd: i32, name: &CStr) {
    let st = match fstatat(Some(fd), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(nix::errno::Errno::ENOENT) => return,
        Err(e) => {
            let p = full_path(shared.root, &child_rel(rel, name.to_bytes()));
            return local.error(&p, e);
        }
    };
    if st.st_dev != shared.dev {
        return; // another filesystem mounted here
    }
    let dir = is_dir(&st);
    if (dir || st.st_nlink > 1)
        && !shared
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((st.st_dev, st.st_ino))
    {
        return; // a hard link already counted, or a directory already walked
    }
    local.usage.count(&st, dir);
    if dir {
        shared.pending.fetch_add(1, Ordering::AcqRel);
        let _ = shared.tx.send(Msg::Dir {
            rel: child_rel(rel, name.to_bytes()),
            ino: st.st_ino,
        });
    }
}

/// Where the listing cache of a volume lives: `<root>/state/usage-cache/<volume>.bin`.
pub fn listing_cache_path(layout: &Layout, volume: &VolumeName) -> PathBuf {
    layout
        .root
        .join("state")
        .join("usage-cache")
        .join(format!("{volume}.bin"))
}

/// One volume as `allspark usage --json` prints it. Field names are stable; every key is always present.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeUsage {
    /// Volume name.
    pub name: String,
    /// The data directory as this process reaches it.
    pub path: PathBuf,
    /// Space on disk in bytes (`du -s -x --block-size=1`); 0 when `error` is set.
    pub bytes: u64,
    /// Sum of file sizes in bytes.
    pub apparent_bytes: u64,
    /// Distinct non-directory inodes.
    pub files: u64,
    /// Directories, the data directory included.
    pub dirs: u64,
    /// The volume's `size` option in bytes, or null.
    pub capacity: Option<u64>,
    /// Whether `capacity` is a limit writes cannot pass (a btrfs qgroup limit on a btrfs
    /// pool) rather than a figure usage is reported against.
    #[serde(default)]
    pub capacity_enforced: bool,
    /// The pool the volume lives in (`default` for `<root>/volumes`; null for `device=`).
    #[serde(default)]
    pub pool: Option<String>,
    /// `bytes` as a percentage of `capacity` (one decimal), or null without `size`.
    pub percent: Option<f64>,
    /// `class` option: critical, important, temporary.
    pub class: Class,
    /// `backup` option: highest, high, medium, low, none.
    pub backup: BackupPriority,
    /// Number of complete snapshots.
    pub snapshots: u64,
    /// Sum of the file sizes in those snapshots, in bytes.
    pub snapshot_bytes: u64,
    /// Id of the newest snapshot, or null.
    pub last_snapshot: Option<String>,
    /// Time of the newest snapshot (RFC 3339), or null.
    pub last_snapshot_at: Option<DateTime<Utc>>,
    /// Live mount references.
    pub mounted: u32,
    /// `percent` is at or above the alert threshold.
    pub alert: bool,
    /// When the volume was measured.
    pub measured_at: DateTime<Utc>,
    /// Why the volume could not be measured, or null.
    pub error: Option<String>,
}

/// A filesystem holding volumes, from `statvfs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FilesystemUsage {
    /// Mount point, as the host sees it.
    pub mount: PathBuf,
    /// Size in bytes (`f_blocks * f_frsize`).
    pub total_bytes: u64,
    /// Used bytes (`(f_blocks - f_bfree) * f_frsize`).
    pub used_bytes: u64,
    /// Available to unprivileged users (`f_bavail * f_frsize`).
    pub available_bytes: u64,
    /// `used / (used + available)` in percent, one decimal (as `df`'s Use%).
    pub percent: f64,
    /// Volumes whose data lies on it.
    pub volumes: Vec<String>,
    /// `percent` is at or above the alert threshold.
    pub alert: bool,
}

impl FilesystemUsage {
    /// `used / (used + available)`, 0..1, unrounded.
    pub fn used_ratio(&self) -> f64 {
        let denom = self.used_bytes + self.available_bytes;
        if denom == 0 {
            0.0
        } else {
            self.used_bytes as f64 / denom as f64
        }
    }
}

/// Everything one measurement produced (`allspark usage --json` prints this object).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub measured_at: DateTime<Utc>,
    pub threshold_percent: f64,
    pub volumes: Vec<VolumeUsage>,
    pub filesystems: Vec<FilesystemUsage>,
    /// Volume records that could not be read.
    pub record_errors: Vec<String>,
}

/// Settings of [`measure_report`].
#[derive(Clone, Debug)]
pub struct ReportOptions {
    pub threshold_percent: f64,
    pub measure: MeasureOptions,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            threshold_percent: DEFAULT_THRESHOLD_PERCENT,
            measure: MeasureOptions::default(),
        }
    }
}

/// Measure every volume (default options); see [`measure_report`].
pub fn measure_all(layout: &Layout, view: &HostView) -> Vec<VolumeUsage> {
    measure_report(layout, view, &ReportOptions::default()).volumes
}

/// Measure every volume through its listing cache, write each volume's [`UsageCache`]
/// atomically (what `docker volume inspect` shows), and stat the filesystems holding them.
/// Volumes are measured one after another; each walk is itself parallel. A `parent=`
/// child's data lies inside its parent's directory, so the parent's figures include it.
pub fn measure_report(layout: &Layout, view: &HostView, opts: &ReportOptions) -> Report {
    let store = Store::new(layout.clone());
    let (records, bad) = match store.all() {
        Ok(x) => x,
        Err(e) => (Vec::new(), vec![e]),
    };
    let record_errors: Vec<String> = bad.iter().map(|e| e.to_string()).collect();
    for e in &record_errors {
        tracing::warn!("{e}");
    }
    if let Err(e) = crate::fs::durable::ensure_dir(&layout.usage_dir(), 0o700) {
        tracing::warn!(dir = %layout.usage_dir().display(), "cannot create usage directory: {e}");
    }
    let mut volumes = Vec::with_capacity(records.len());
    let mut by_dev: Vec<(u64, PathBuf, Vec<String>)> = Vec::new();
    for rec in &records {
        let path = rec.data.local_path(layout, view);
        let u = measure_volume(layout, view, rec, &path, opts);
        if u.error.is_none() {
            if let Ok(m) = fs::metadata(&path) {
                match by_dev.iter_mut().find(|(d, _, _)| *d == m.dev()) {
                    Some((_, _, names)) => names.push(rec.name.to_string()),
                    None => by_dev.push((m.dev(), path.clone(), vec![rec.name.to_string()])),
                }
            }
        }
        volumes.push(u);
    }
    let filesystems = by_dev
        .into_iter()
        .filter_map(|(dev, path, names)| {
            filesystem_usage(&path, dev, view, names, opts.threshold_percent)
                .map_err(|e| tracing::warn!(path = %path.display(), "statvfs failed: {e}"))
                .ok()
        })
        .collect();
    Report {
        measured_at: Utc::now(),
        threshold_percent: opts.threshold_percent,
        volumes,
        filesystems,
        record_errors,
    }
}

/// Measure one volume now (writing its [`UsageCache`]), for a prompt update after Create or
/// Unmount. `Ok(None)` when the volume does not exist: its cached figures are deleted.
pub fn measure_named(
    layout: &Layout,
    view: &HostView,
    name: &VolumeName,
    opts: &ReportOptions,
) -> anyhow::Result<Option<VolumeUsage>> {
    let store = Store::new(layout.clone());
    match store.load(name)? {
        Some(rec) => {
            let path = rec.data.local_path(layout, view);
            Ok(Some(measure_volume(layout, view, &rec, &path, opts)))
        }
        None => {
            for f in [layout.usage(name), listing_cache_path(layout, name)] {
                if let Err(e) = fs::remove_file(&f) {
                    if e.kind() != io::ErrorKind::NotFound {
                        tracing::warn!(path = %f.display(), %e, "cannot delete the figures of a removed volume");
                    }
                }
            }
            Ok(None)
        }
    }
}

fn measure_volume(
    layout: &Layout,
    view: &HostView,
    rec: &VolumeRecord,
    path: &Path,
    opts: &ReportOptions,
) -> VolumeUsage {
    let ids = crate::pool::cow::all_ids(layout, view, rec, status::snapshot_ids(layout, &rec.name));
    let snapshot_bytes = ids
        .iter()
        .map(|id| tree_apparent_size(&layout.volume_snapshots(&rec.name).join(id)))
        .sum();
    let last = ids.last().cloned();
    let mut v = VolumeUsage {
        name: rec.name.to_string(),
        path: path.to_path_buf(),
        bytes: 0,
        apparent_bytes: 0,
        files: 0,
        dirs: 0,
        capacity: rec.spec.size,
        capacity_enforced: rec.spec.size.is_some()
            && crate::pool::capacity::capacity(layout, view, rec).0,
        pool: match &rec.data {
            crate::core::store::DataLocation::Host { .. } => None,
            d => Some(d.pool().unwrap_or(crate::pool::DEFAULT_POOL).to_string()),
        },
        percent: None,
        class: rec.spec.class,
        backup: rec.spec.backup,
        snapshots: ids.len() as u64,
        snapshot_bytes,
        last_snapshot_at: last.as_ref().map(|id| id.time()),
        last_snapshot: last.map(String::from),
        mounted: rec.mount_count(),
        alert: false,
        measured_at: Utc::now(),
        error: None,
    };
    let cache_file = listing_cache_path(layout, &rec.name);
    // The root is opened without following symlinks (a `parent=` child swapped for a link to
    // a host directory is refused, not measured) and walked through its descriptor.
    let root = match rec.data.open(layout, view, Missing::Refuse) {
        Ok(o) => o.dir,
        Err(e) => {
            tracing::warn!(volume = %rec.name, "cannot measure volume: {e}");
            v.error = Some(format!("cannot measure: {e}"));
            return v;
        }
    };
    match measure_cached_with(&root.proc_path(), &cache_file, &opts.measure) {
        Ok(w) => {
            if w.errors > 0 {
                tracing::warn!(volume = %rec.name, errors = w.errors, first = ?w.first_error,
                    "some entries could not be read; the figures leave them out");
            }
            v.bytes = w.usage.bytes;
            v.apparent_bytes = w.usage.apparent_bytes;
            v.files = w.usage.files;
            v.dirs = w.usage.dirs;
            v.measured_at = Utc::now();
            v.percent = status::percent(v.bytes, v.capacity);
            v.alert = v.percent.is_some_and(|p| p >= opts.threshold_percent);
            let cache = UsageCache {
                bytes: v.bytes,
                files: v.files,
                measured_at: v.measured_at,
            };
            let bytes = serde_json::to_vec(&cache).expect("usage serializes");
            if let Err(e) =
                crate::fs::durable::atomic_write(&layout.usage(&rec.name), &bytes, 0o600)
            {
                tracing::warn!(volume = %rec.name, "cannot write usage cache: {e}");
            }
        }
        Err(e) => {
            tracing::warn!(volume = %rec.name, path = %path.display(), "cannot measure volume: {e}");
            v.error = Some(format!("cannot measure {}: {e}", path.display()));
        }
    }
    v
}

/// Sum of `st_size` of the non-directory entries below `dir` (symlinks not followed).
fn tree_apparent_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// The topmost directory above `path` on the same device: the mount point holding it.
fn mount_point_of(path: &Path, dev: u64) -> PathBuf {
    let mut p = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    while let Some(parent) = p.parent() {
        match fs::metadata(parent) {
            Ok(m) if m.dev() == dev => p = parent.to_path_buf(),
            _ => break,
        }
    }
    p
}

fn filesystem_usage(
    path: &Path,
    dev: u64,
    view: &HostView,
    volumes: Vec<String>,
    threshold: f64,
) -> nix::Result<FilesystemUsage> {
    let local = mount_point_of(path, dev);
    let s = nix::sys::statvfs::statvfs(&local)?;
    let frsize = s.fragment_size() as u64;
    let total = s.blocks() as u64 * frsize;
    let used = (s.blocks() as u64).saturating_sub(s.blocks_free() as u64) * frsize;
    let avail = s.blocks_available() as u64 * frsize;
    // Report the host's path when this process sees the host under a prefix.
    let mount = match local.strip_prefix(&view.prefix) {
        Ok(rel) if !view.prefix.as_os_str().is_empty() => Path::new("/").join(rel),
        _ => local,
    };
    let mut f = FilesystemUsage {
        mount,
        total_bytes: total,
        used_bytes: used,
        available_bytes: avail,
        percent: 0.0,
        volumes,
        alert: false,
    };
    f.percent = (f.used_ratio() * 1000.0).round() / 10.0;
    f.alert = f.percent >= threshold;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trips_and_rejects_corruption() {
        let mut c = ListingCache::default();
        c.dirs.insert(
            b"a/b".to_vec(),
            CachedDir {
                ino: 42,
                mtime: (1, 2),
                ctime: (3, 4),
                names: vec![
                    CString::new("x").unwrap(),
                    CString::new(vec![0xff, b'y']).unwrap(),
                ],
            },
        );
        c.dirs.insert(
            Vec::new(),
            CachedDir {
                ino: 7,
                mtime: (5, 6),
                ctime: (7, 8),
                names: vec![],
            },
        );
        let enc = c.encode();
        assert_eq!(ListingCache::decode(&enc), Some(c));
        for i in [0, 20, enc.len() / 2, enc.len() - 1] {
            let mut bad = enc.clone();
            bad[i] ^= 1;
            assert_eq!(ListingCache::decode(&bad), None, "flipped byte {i}");
        }
        assert_eq!(ListingCache::decode(&enc[..enc.len() - 3]), None);
        assert_eq!(ListingCache::decode(b""), None);
    }

    #[test]
    fn new_directories_are_not_cached_until_older_than_the_racy_window() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("sub/f"), b"x").unwrap();
        let (w, cache, changed) = walk(d.path(), None, &MeasureOptions::default()).unwrap();
        assert_eq!(w.usage.files, 1);
        assert!(
            cache.is_empty() && !changed,
            "fresh dirs must not be cached"
        );
    }
}
