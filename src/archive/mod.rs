//! Archive engine for snapshots and backups: directory tree <-> one standard `.tar.zst` or `.tar.gz`, compressed and decompressed on every core, extracted safely.
//!
//! # Format
//!
//! An archive is a plain tar stream (GNU/PAX headers) compressed as a series
//! of independent zstd frames or gzip members (see [`compress`]). Any zstd or
//! gzip reader decodes it as one stream, so GNU tar reads it directly:
//!
//! ```text
//! tar --zstd  --xattrs --xattrs-include='*' --numeric-owner -xpf full.tar.zst -C dir
//! tar -I zstd --xattrs --xattrs-include='*' --numeric-owner -xpf full.tar.zst -C dir
//! tar -z      --xattrs --xattrs-include='*' --numeric-owner -xpf full.tar.gz  -C dir
//! ```
//!
//! * The first entry is the tree root itself, `./`, so the root's owner, mode
//!   and mtime come back. Every other entry is `./relative/path` (directories
//!   with a trailing `/`), in a deterministic depth-first order with the
//!   names of each directory sorted bytewise.
//! * Owners are numeric only (user and group names are left empty); modes
//!   include setuid, setgid and sticky; mtimes are whole seconds, for
//!   directories too.
//! * Symlinks are stored as links with their target verbatim (dangling and
//!   absolute targets included). Regular files with several names are stored
//!   once; later names are hard-link entries pointing at the first name *in
//!   the same archive*.
//! * Files with holes are stored as GNU sparse entries (type `S`): only their
//!   data is in the archive.
//! * Extended attributes of every namespace that can be read (`user.*`,
//!   `trusted.*`, `security.*`, `system.*` such as POSIX ACLs) are PAX
//!   `SCHILY.xattr.<name>` records in a PAX header right before the entry.
//! * FIFOs and device nodes are tar FIFO/char/block entries; sockets are not
//!   stored (they are counted in the [`WriteReport`]).
//! * Names longer than 100 bytes use GNU long-name (`L`/`K`) entries. Names
//!   are raw bytes, so non-UTF-8 names round-trip.
//!
//! # Incremental archives and restoring a chain
//!
//! [`write_tree`] with a parent [`Index`] writes only what changed since the
//! parent (directories are always written: they are cheap and carry their
//! mode and mtime) and returns the paths that disappeared in
//! [`WriteReport::deleted`], which the caller stores in the snapshot manifest.
//! A path whose kind changed (file became directory, ...) is listed there too,
//! and only the top-most deleted directory is listed, not its contents.
//!
//! Restoring a chain never needs this program:
//!
//! ```text
//! tar --zstd --xattrs --xattrs-include='*' --numeric-owner -xpf full.tar.zst -C dir
//! # then for every incremental, oldest first:
//! #   1. delete each path of its manifest's `deleted` list:  rm -rf -- "dir/<path>"
//! #   2. tar --zstd --xattrs --xattrs-include='*' --numeric-owner -xpf incr.tar.zst -C dir
//! # (each archive with its own codec: -z for a .tar.gz)
//! ```
//!
//! Deleted paths are relative, `/`-separated strings. A name that is not
//! valid UTF-8 is written as a NUL character followed by the hex of its bytes
//! (see [`encode_rel_path`]); [`apply_deletions`] understands both forms.
//!
//! # Extracting
//!
//! [`extract`] refuses entries that would escape the destination (`..`,
//! absolute paths, writing through a symlink, hard links leaving the tree),
//! device nodes unless allowed, and headers with absurd sizes; it restores
//! directory mtimes and modes after their contents and the root's metadata
//! onto the destination itself. Setuid and setgid bits are restored as
//! archived: an archive is a copy of our own volume, and dropping them would
//! break the restored programs. It detects the codec from the first bytes,
//! decompresses members or frames on every core while it extracts in order,
//! and computes the archive's sha256 on the way ([`ExtractReport::sha256`]),
//! so callers check it without reading the file twice.

pub(crate) mod compress;
pub(crate) mod index;
pub(crate) mod reader;
pub(crate) mod writer;

mod decode;
mod entries;
mod guard;
mod gzip;
mod read_ahead;
mod tar_out;
mod write_options;
mod zst;

use std::io;
use std::path::{Path, PathBuf};

pub use crate::core::options::Compression;
pub use compress::{CompressOptions, CompressStats, ParallelWriter};
pub use index::{EntryKind, Index, IndexEntry};
pub use reader::{apply_deletions, extract, DeletionReport, ExtractOptions, ExtractReport};
pub use write_options::{FileHook, ProgressFn};
pub use write_options::{WriteOptions, WriteReport};
pub use writer::{write_archive, write_tree};

/// Everything that can go wrong while writing or reading an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A filesystem operation on a named path failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "open the source directory".
        action: String,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Writing the archive (the output stream) failed; the archive is unusable.
    #[error(
        "writing the archive failed: {source}; check free space and permissions where the archive is written, then retry"
    )]
    Output {
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An archive entry was refused because extracting it would be unsafe.
    #[error(
        "refusing archive entry `{entry}`: {reason}; the archive was not made by allspark or was tampered with, nothing outside the destination was written"
    )]
    Refused {
        /// The entry's path as stored in the archive (lossy UTF-8).
        entry: String,
        /// Why it was refused.
        reason: String,
    },
    /// The archive cannot be decoded (bad gzip data, bad tar header, truncation).
    #[error(
        "the archive is damaged or truncated ({detail}) after entry `{entry}`; restore from another copy"
    )]
    Corrupt {
        /// The last entry read successfully (empty if none).
        entry: String,
        /// What was wrong.
        detail: String,
    },
    /// An index file cannot be parsed.
    #[error(
        "the index file {} is corrupt at line {line}: {detail}; delete it so that the next snapshot is a full one",
        path.display()
    )]
    CorruptIndex {
        /// The index file.
        path: PathBuf,
        /// 1-based line number (0: the file as a whole).
        line: usize,
        /// What was wrong.
        detail: String,
    },
    /// A path given to [`apply_deletions`] is not a safe relative path.
    #[error("refusing to delete `{path}`: {reason}")]
    BadDeletion {
        /// The path as given.
        path: String,
        /// Why it was refused.
        reason: String,
    },
}

impl ArchiveError {
    pub(crate) fn io(action: impl Into<String>, path: &Path, source: io::Error) -> ArchiveError {
        ArchiveError::Io {
            action: action.into(),
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Encode a relative path (raw bytes) as a string for manifests: the path
/// itself when it is valid UTF-8 and free of NUL, otherwise a NUL character
/// followed by the lowercase hex of the bytes.
pub fn encode_rel_path(path: &[u8]) -> String {
    match std::str::from_utf8(path) {
        Ok(s) if !s.contains('\0') => s.to_string(),
        _ => format!("\0{}", hex::encode(path)),
    }
}

/// Inverse of [`encode_rel_path`]; `None` if the hex form is malformed.
pub fn decode_rel_path(s: &str) -> Option<Vec<u8>> {
    match s.strip_prefix('\0') {
        Some(h) => hex::decode(h).ok(),
        None => Some(s.as_bytes().to_vec()),
    }
}

/// Split a relative path into its components, refusing anything that is not
/// a plain relative path. Leading `./` and empty components are ignored; an
/// empty result means the root.
pub(crate) fn clean_components(path: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if path.starts_with(b"/") {
        return Err("it is an absolute path");
    }
    if path.contains(&0) {
        return Err("it contains a NUL byte");
    }
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => continue,
            b".." => return Err("it contains a `..` component"),
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_path_encoding_roundtrips() {
        for p in [&b"a/b.txt"[..], b"caf\xc3\xa9", b"bad\xff\xfename", b""] {
            let s = encode_rel_path(p);
            assert_eq!(decode_rel_path(&s).as_deref(), Some(p));
        }
        assert_eq!(encode_rel_path(b"a/b"), "a/b");
        assert!(encode_rel_path(b"\xff").starts_with('\0'));
        assert_eq!(decode_rel_path("\0zz"), None);
    }

    #[test]
    fn clean_components_refuses_escapes() {
        assert_eq!(
            clean_components(b"./a//b/./c/").expect("clean"),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert!(clean_components(b"./").expect("root").is_empty());
        assert!(clean_components(b"/etc/passwd").is_err());
        assert!(clean_components(b"a/../../b").is_err());
        assert!(clean_components(b"..").is_err());
    }
}
