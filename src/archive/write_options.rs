//! What a caller gives the archive writer ([`WriteOptions`]) and what it gets back ([`WriteReport`]).

use super::compress::{CompressOptions, CompressStats};
use super::index::Index;

/// Called with the number of file bytes read so far.
pub type ProgressFn = Box<dyn Fn(u64) + Send + Sync>;

/// Testing aid: called with the relative path of a regular file after it was
/// opened and stat'ed, right before its data is read.
pub type FileHook = Box<dyn Fn(&[u8]) + Send + Sync>;

/// Options of [`write_tree`] / [`write_archive`].
#[derive(Default)]
pub struct WriteOptions<'a> {
    /// Index of the parent snapshot: write only what changed since.
    pub parent: Option<&'a Index>,
    /// Progress callback, called every few MiB with the bytes read so far.
    pub progress: Option<ProgressFn>,
    /// Do not descend into directories on other filesystems (mount points
    /// are stored as empty directories). Default `false`, like `tar`.
    pub one_file_system: bool,
    /// Codec and compression settings used by [`write_archive`].
    pub compression: CompressOptions,
    /// Directories known unchanged since `parent` (a snapshot diff says so): not listed, their
    /// entries taken from the parent index. Ignored without `parent`.
    pub skip_dir: Option<crate::fs::walk::SkipDir<'a>>,
    /// Testing aid, see [`FileHook`]. Leave `None`.
    #[doc(hidden)]
    pub before_file_read: Option<FileHook>,
}

impl std::fmt::Debug for WriteOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteOptions")
            .field("parent", &self.parent.map(|p| p.len()))
            .field("progress", &self.progress.is_some())
            .field("one_file_system", &self.one_file_system)
            .field("compression", &self.compression)
            .field("skip_dir", &self.skip_dir.is_some())
            .finish()
    }
}

/// What [`write_tree`] stored and skipped.
#[derive(Debug, Clone, Default)]
pub struct WriteReport {
    /// Index of the whole tree as walked (for the next incremental).
    pub index: Index,
    /// Paths of the parent index that are gone (or changed kind), relative,
    /// encoded with [`encode_rel_path`]; only top-most paths are listed.
    pub deleted: Vec<String>,
    /// Regular files stored with data.
    pub files: u64,
    /// Directories stored (the root included).
    pub dirs: u64,
    /// Symlinks stored.
    pub symlinks: u64,
    /// Hard-link entries stored (second and later names of a file).
    pub hardlinks: u64,
    /// FIFOs and device nodes stored.
    pub specials: u64,
    /// File data bytes read from the tree (holes are not read).
    pub bytes_in: u64,
    /// Apparent size of the regular files stored with data.
    pub apparent_bytes: u64,
    /// Sockets (and unknown file types) skipped.
    pub sockets_skipped: u64,
    /// Entries that disappeared between listing and reading.
    pub vanished: u64,
    /// Files whose size or mtime changed while they were read.
    pub changed_during_walk: u64,
    /// Entries skipped because the parent index shows them unchanged.
    pub unchanged_skipped: u64,
    /// Entries (or parts of them) that could not be read.
    pub unreadable: u64,
    /// Extended attributes that could not be stored (unreadable, non-UTF-8 name).
    pub xattrs_skipped: u64,
    /// `path: what happened` for the first unreadable entries.
    pub problems: Vec<String>,
    /// Compression statistics ([`write_archive`] only).
    pub compressed: Option<CompressStats>,
}
