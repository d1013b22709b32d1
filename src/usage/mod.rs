//! Disk usage of a tree: what is counted, over the one walker with a directory-listing cache (format in `cache`, per-volume reports in `report`).
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
//! # The walk
//!
//! [`crate::fs::walk`] does it: every directory opened once relative to its
//! parent without following symlinks, its entries `fstatat`ed relative to that
//! descriptor, directories scanned ahead by [`MeasureOptions::threads`] scan
//! threads. A directory is only descended into if the descriptor opened for it
//! is the very inode its parent listed (`st_dev`, `st_ino`), so a directory
//! swapped during the walk is not followed.
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

mod cache;
mod report;

use std::collections::HashSet;
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::stat::FileStat;
use serde::{Deserialize, Serialize};

use crate::fs::walk::{self, DirView, Failure, Listing, Visitor};
use cache::CachedDir;
pub use cache::ListingCache;
pub use report::{
    listing_cache_path, measure_all, measure_named, measure_report, FilesystemUsage, Report,
    ReportOptions, VolumeUsage,
};

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

/// A (seconds, nanoseconds) timestamp as the listing cache keeps it.
fn ts(s: i64, ns: i64) -> (i64, i64) {
    (s, ns)
}

/// The walk's visitor: counts, deduplicates, and collects the listings to cache.
struct Counter<'a> {
    root: &'a Path,
    dev: u64,
    cutoff: (i64, i64),
    /// (dev, ino) of directories walked and of files with more than one link.
    seen: HashSet<(u64, u64)>,
    walk: Walk,
    /// Listings read now and old enough to be cached.
    fresh: Vec<(Vec<u8>, CachedDir)>,
    /// Directories whose cached listing was used.
    reused: Vec<Vec<u8>>,
}

impl Counter<'_> {
    fn error(&mut self, rel: &[u8], e: impl std::fmt::Display) {
        self.walk.errors += 1;
        if self.walk.first_error.is_none() {
            let path = if rel.is_empty() {
                self.root.to_path_buf()
            } else {
                self.root.join(std::ffi::OsStr::from_bytes(rel))
            };
            self.walk.first_error = Some(format!("{}: {e}", path.display()));
        }
    }

    /// Count an entry unless it lies on another filesystem or was counted already
    /// (a hard link, a directory reached twice); false if it was not counted.
    fn count(&mut self, st: &FileStat) -> bool {
        if st.st_dev != self.dev {
            return false; // another filesystem mounted here
        }
        let dir = walk::is_dir(st);
        if (dir || st.st_nlink > 1) && !self.seen.insert((st.st_dev, st.st_ino)) {
            return false;
        }
        self.walk.usage.count(st, dir);
        true
    }
}

impl Visitor for Counter<'_> {
    type Error = std::convert::Infallible;
    type Ahead = ();

    fn dir(&mut self, d: &DirView<'_>) -> Result<bool, Self::Error> {
        if let Some(lstat) = d.lstat {
            if !self.count(lstat) {
                return Ok(false);
            }
            if (d.st.st_dev, d.st.st_ino) != (lstat.st_dev, lstat.st_ino) {
                // Replaced since its parent was listed (e.g. by another directory).
                return Ok(false);
            }
        }
        match d.listing {
            Listing::Read => {
                self.walk.dirs_listed += 1;
                let (mtime, ctime) = (
                    ts(d.st.st_mtime, d.st.st_mtime_nsec),
                    ts(d.st.st_ctime, d.st.st_ctime_nsec),
                );
                if mtime < self.cutoff && ctime < self.cutoff {
                    let cached = CachedDir {
                        ino: d.st.st_ino,
                        mtime,
                        ctime,
                        names: d.names().map(<[u8]>::to_vec).collect(),
                    };
                    self.fresh.push((d.rel.to_vec(), cached));
                }
            }
            Listing::Reused => {
                self.walk.dirs_reused += 1;
                self.reused.push(d.rel.to_vec());
            }
            Listing::OtherFs | Listing::Skipped => return Ok(false),
            Listing::Failed(e) => {
                self.error(d.rel, e);
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn entry(
        &mut self,
        _: &File,
        _: &CStr,
        _: &[u8],
        st: &FileStat,
        _: Option<()>,
    ) -> Result<(), Self::Error> {
        self.count(st);
        Ok(())
    }

    fn failed(
        &mut self,
        rel: &[u8],
        lstat: Option<&FileStat>,
        why: Failure,
    ) -> Result<(), Self::Error> {
        if let Some(st) = lstat {
            // A directory that could not be opened: its own inode still counts.
            self.count(st);
        }
        match why {
            Failure::Stat(Errno::ENOENT) | Failure::Open(Errno::ENOENT) => {}
            Failure::Stat(e) | Failure::Open(e) => self.error(rel, e),
            Failure::Name => self.error(rel, "name contains a NUL byte"),
        }
        Ok(())
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
    let (dir, st) = walk::open_root(root)?;
    let known = |rel: &[u8], st: &FileStat| {
        let c = old.as_ref()?.dirs.get(rel)?;
        let same = c.ino == st.st_ino
            && c.mtime == ts(st.st_mtime, st.st_mtime_nsec)
            && c.ctime == ts(st.st_ctime, st.st_ctime_nsec);
        same.then(|| c.names.clone())
    };
    let walk_opts = walk::Options {
        one_file_system: true,
        threads: opts.threads.max(2),
        listings: old.is_some().then_some(&known as walk::ListingSource<'_>),
        ahead: None,
        skip_dir: None,
    };
    let mut counter = Counter {
        root,
        dev: st.st_dev,
        cutoff,
        seen: HashSet::from([(st.st_dev, st.st_ino)]),
        walk: Walk::default(),
        fresh: Vec::new(),
        reused: Vec::new(),
    };
    counter.walk.usage.count(&st, true);
    let Ok(()) = walk::walk(dir, st, &walk_opts, &mut counter);
    let Counter {
        walk: result,
        fresh,
        reused,
        ..
    } = counter;
    let mut old = old.unwrap_or_default();
    let mut new = ListingCache::default();
    let mut changed = false;
    for k in reused {
        if let Some(d) = old.dirs.remove(&k) {
            new.dirs.insert(k, d);
        }
    }
    for (k, d) in fresh {
        changed |= old.dirs.get(&k) != Some(&d);
        new.dirs.insert(k, d);
    }
    // Directories cached before but gone (or no longer cacheable) now.
    changed |= old.dirs.keys().any(|k| !new.dirs.contains_key(k));
    Ok((result, new, changed))
}

/// Sum of `st_size` of the non-directory entries below `dir` (symlinks not followed).
pub(crate) fn tree_apparent_size(dir: &Path) -> u64 {
    struct Sizes(u64);
    impl Visitor for Sizes {
        type Error = std::convert::Infallible;
        type Ahead = ();
        fn dir(&mut self, _: &DirView<'_>) -> Result<bool, Self::Error> {
            Ok(true)
        }
        fn entry(
            &mut self,
            _: &File,
            _: &CStr,
            _: &[u8],
            st: &FileStat,
            _: Option<()>,
        ) -> Result<(), Self::Error> {
            self.0 += st.st_size.max(0) as u64;
            Ok(())
        }
        fn failed(
            &mut self,
            _: &[u8],
            _: Option<&FileStat>,
            _: Failure,
        ) -> Result<(), Self::Error> {
            Ok(())
        }
    }
    let Ok((root, st)) = walk::open_root(dir) else {
        return 0;
    };
    let mut sizes = Sizes(0);
    let Ok(()) = walk::walk(root, st, &walk::Options::default(), &mut sizes);
    sizes.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_directories_are_not_cached_until_older_than_the_racy_window() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/f"), b"x").unwrap();
        let (w, cache, changed) = walk(d.path(), None, &MeasureOptions::default()).unwrap();
        assert_eq!(w.usage.files, 1);
        assert!(
            cache.is_empty() && !changed,
            "fresh dirs must not be cached"
        );
    }
}
