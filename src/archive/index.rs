//! Per-path metadata index of a snapshot, used to decide what an incremental snapshot must store.
//!
//! An [`Index`] lists every path of a tree (relative, as raw bytes; the root
//! is the empty path) with the stat fields that reveal a change: kind, size,
//! mtime and ctime in nanoseconds, inode, mode, uid and gid (the device number
//! is recorded but not compared, since it is not stable across remounts).
//!
//! Entries are kept in *tree order*: paths compare component by component, so
//! a directory comes right before everything below it and a subtree is one
//! contiguous range. This is the order [`write_tree`](super::write_tree) walks in.
//!
//! ## File format
//!
//! A text file, streamed line by line (saved compressed as one zstd stream,
//! `zstd -dc index` shows it; [`Index::load`] reads both forms):
//!
//! ```text
//! allspark-index 1
//! <kind> <size> <mtime_ns> <ctime_ns> <ino> <dev> <mode-octal> <uid> <gid> <path>
//! ...
//! end <entry-count>
//! ```
//!
//! `kind` is one of `f d l p c b`. The path is the last field; bytes outside
//! printable ASCII, space and `%` are written as `%XX`, so any file name
//! (including non-UTF-8 ones and names with newlines) round-trips. The root is
//! written as `.`. A missing `end` line, a wrong count, an unsorted or
//! duplicated path, or any malformed field is reported as an error.

use std::cmp::Ordering;

mod format;

/// Kind of a filesystem entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Character device node.
    CharDevice,
    /// Block device node.
    BlockDevice,
}

impl EntryKind {
    fn code(self) -> char {
        match self {
            EntryKind::File => 'f',
            EntryKind::Dir => 'd',
            EntryKind::Symlink => 'l',
            EntryKind::Fifo => 'p',
            EntryKind::CharDevice => 'c',
            EntryKind::BlockDevice => 'b',
        }
    }

    fn from_code(s: &str) -> Option<EntryKind> {
        Some(match s {
            "f" => EntryKind::File,
            "d" => EntryKind::Dir,
            "l" => EntryKind::Symlink,
            "p" => EntryKind::Fifo,
            "c" => EntryKind::CharDevice,
            "b" => EntryKind::BlockDevice,
            _ => return None,
        })
    }
}

/// The recorded state of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Path relative to the tree root, `/`-separated, raw bytes; empty for the root.
    pub path: Vec<u8>,
    /// Kind of entry.
    pub kind: EntryKind,
    /// Size in bytes (`st_size`).
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// Device number of the filesystem (recorded, not compared).
    pub dev: u64,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl IndexEntry {
    /// True if `other` describes the same unchanged content and metadata.
    pub fn same_state(&self, other: &IndexEntry) -> bool {
        self.kind == other.kind
            && self.size == other.size
            && self.mtime_ns == other.mtime_ns
            && self.ctime_ns == other.ctime_ns
            && self.ino == other.ino
            && self.mode == other.mode
            && self.uid == other.uid
            && self.gid == other.gid
    }
}

/// Compare two relative paths component by component (tree order).
pub(crate) fn tree_order(a: &[u8], b: &[u8]) -> Ordering {
    let mut ai = a.split(|&c| c == b'/').filter(|c| !c.is_empty());
    let mut bi = b.split(|&c| c == b'/').filter(|c| !c.is_empty());
    loop {
        match (ai.next(), bi.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => match x.cmp(y) {
                Ordering::Equal => continue,
                o => return o,
            },
        }
    }
}

/// True if `path` is `dir` or lies below it (relative paths, raw bytes).
pub(crate) fn is_within(path: &[u8], dir: &[u8]) -> bool {
    if dir.is_empty() {
        return true;
    }
    path.starts_with(dir) && (path.len() == dir.len() || path[dir.len()] == b'/')
}

/// All entries of a tree, in tree order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    entries: Vec<IndexEntry>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Index {
        Index::default()
    }

    /// Build from entries in any order (sorted here; later duplicates win).
    pub fn from_entries(mut entries: Vec<IndexEntry>) -> Index {
        entries.sort_by(|a, b| tree_order(&a.path, &b.path));
        entries.dedup_by(|later, earlier| {
            if tree_order(&later.path, &earlier.path) == Ordering::Equal {
                std::mem::swap(later, earlier);
                true
            } else {
                false
            }
        });
        Index { entries }
    }

    /// Append an entry that sorts after every entry present (used by the walker).
    pub(crate) fn push_sorted(&mut self, e: IndexEntry) {
        debug_assert!(self
            .entries
            .last()
            .is_none_or(|l| tree_order(&l.path, &e.path) == Ordering::Less));
        self.entries.push(e);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in tree order.
    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    /// Look a relative path up (`a/b.txt`; empty for the root).
    pub fn get(&self, path: &[u8]) -> Option<&IndexEntry> {
        self.entries
            .binary_search_by(|e| tree_order(&e.path, path))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// The entries strictly below directory `dir` (a contiguous range).
    pub fn descendants(&self, dir: &[u8]) -> &[IndexEntry] {
        let start = match self.entries.binary_search_by(|e| tree_order(&e.path, dir)) {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        let len = self.entries[start..]
            .iter()
            .take_while(|e| is_within(&e.path, dir))
            .count();
        &self.entries[start..start + len]
    }
}

pub(crate) fn kind_of(st: &nix::sys::stat::FileStat) -> Option<EntryKind> {
    let fmt = nix::sys::stat::SFlag::from_bits_truncate(
        st.st_mode & nix::sys::stat::SFlag::S_IFMT.bits(),
    );
    Some(match fmt {
        nix::sys::stat::SFlag::S_IFREG => EntryKind::File,
        nix::sys::stat::SFlag::S_IFDIR => EntryKind::Dir,
        nix::sys::stat::SFlag::S_IFLNK => EntryKind::Symlink,
        nix::sys::stat::SFlag::S_IFIFO => EntryKind::Fifo,
        nix::sys::stat::SFlag::S_IFCHR => EntryKind::CharDevice,
        nix::sys::stat::SFlag::S_IFBLK => EntryKind::BlockDevice,
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
