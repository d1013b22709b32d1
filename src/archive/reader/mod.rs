//! Safe extraction (and verification) of `.tar.zst` and `.tar.gz` archives, decompressed on every core, and deletion lists of incremental snapshots.
//!
//! Extraction goes through `tar::Archive` with ownership, permissions and
//! mtimes preserved and `Entry::unpack_in` for files, symlinks and hard links,
//! after our own checks:
//!
//! * paths with `..`, absolute paths, and entries whose parent path passes
//!   through a symlink are refused;
//! * hard links must point to an existing regular file inside the
//!   destination, by a relative path that passes through no symlink;
//! * device nodes are refused unless [`ExtractOptions::allow_devices`] (or
//!   skipped with a warning under [`ExtractOptions::skip_devices`]);
//! * GNU tar's PAX sparse format (`GNU.sparse.*` records, written by GNU tar
//!   in POSIX format with `--sparse`) is refused: tar-rs would store the
//!   sparse map inside the file. Old-GNU sparse entries (ours) are fine;
//! * PAX headers over [`ExtractOptions::max_pax_size`], long names over
//!   [`ExtractOptions::max_name_size`] and files claiming more than
//!   [`ExtractOptions::max_file_size`] are refused, and nothing is ever
//!   allocated according to a header's size.
//!
//! Directories, FIFOs and device nodes are created here (tar-rs would restore
//! FIFOs as regular files and skips extended attributes on directories).
//! Extended attributes are applied here for every entry kind, from our own
//! PAX parser (tar-rs's splits binary values at newlines); an attribute that
//! cannot be set is listed in the report instead of aborting the restore.
//! Directory modes and mtimes are applied after everything else, deepest
//! first, and the root entry's owner, mode and mtime go onto the destination.
//!
//! Setuid and setgid bits are restored: archives are copies of our own
//! volumes, and a restore that dropped them would break the programs in them.

mod deletions;
mod entries;
mod tree;

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use super::decode::{self, Decoded};
use super::guard::{parse_pax, Guard, Limits, Shared};
use super::{clean_components, ArchiveError, Compression};

pub use deletions::{apply_deletions, DeletionReport};
use tree::{DirMeta, RootMeta};

/// At most this many problems (xattrs, refused entries) are listed.
const MAX_LISTED: usize = 1000;

/// Options of [`extract`].
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Create character and block device nodes (refused by default).
    pub allow_devices: bool,
    /// Skip device nodes (with a warning naming each, counted in the report) instead of
    /// refusing the archive; ignored when `allow_devices` is set.
    pub skip_devices: bool,
    /// Read and check everything without writing anything: every byte is
    /// decompressed (so every gzip member's crc32 is checked), every header
    /// parsed and every path checked (symlink write-through is detected
    /// against the symlinks seen earlier in the archive); `dest` is not touched.
    pub verify_only: bool,
    /// Restore numeric owners (needs root). Default `true`.
    pub preserve_ownership: bool,
    /// Skip refused entries and list them in the report instead of failing.
    /// Default `false`: the first refused entry aborts with an error.
    pub skip_refused: bool,
    /// Largest PAX extended header accepted. Default 1 MiB.
    pub max_pax_size: u64,
    /// Largest GNU long name accepted. Default 64 KiB.
    pub max_name_size: u64,
    /// Largest file size a header may claim. Default 16 TiB.
    pub max_file_size: u64,
    /// Threads decompressing gzip members or zstd frames while the calling
    /// thread extracts. Default: available cores.
    pub threads: usize,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            allow_devices: false,
            skip_devices: false,
            verify_only: false,
            preserve_ownership: true,
            skip_refused: false,
            max_pax_size: 1 << 20,
            max_name_size: 64 << 10,
            max_file_size: 16 << 40,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }
}

/// What [`extract`] read (and wrote).
#[derive(Debug, Clone, Default)]
pub struct ExtractReport {
    /// Entries seen (all kinds, refused ones included).
    pub entries: u64,
    /// Regular files.
    pub files: u64,
    /// Directories (the root included).
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Hard links.
    pub hardlinks: u64,
    /// FIFOs and device nodes.
    pub specials: u64,
    /// Device nodes skipped under [`ExtractOptions::skip_devices`].
    pub devices_skipped: u64,
    /// Apparent size of the regular files.
    pub bytes: u64,
    /// Codec of the archive, detected from its first bytes.
    pub codec: Option<Compression>,
    /// Compressed bytes read (the whole input).
    pub compressed_bytes: u64,
    /// sha256 (hex) of the compressed input, computed while it was read.
    pub sha256: String,
    /// Gzip members or zstd frames decompressed on the worker threads.
    pub parallel_pieces: u64,
    /// Part of the archive was decompressed as one stream (written by another
    /// tool or by an allspark version whose gzip members did not record their length).
    pub streamed: bool,
    /// Number of refused entries (only non-zero with `skip_refused`).
    pub refused: u64,
    /// `entry: reason` of the first refused entries.
    pub refused_entries: Vec<String>,
    /// Extended attributes that could not be set.
    pub xattr_errors: u64,
    /// `path: attribute: error` of the first such failures.
    pub xattr_error_list: Vec<String>,
    /// PAX global headers seen (ignored).
    pub pax_globals: u64,
}

/// Extract the compressed tar `archive` (zstd or gzip, detected from its first bytes) into `dest` (created if
/// missing). `dest` is normally a fresh staging directory; when it already
/// holds a tree (applying an incremental on top), entries replace what is
/// there, but a directory is never replaced by a non-directory (apply the
/// incremental's deletions first).
pub fn extract<R: Read + Send>(
    archive: R,
    dest: &Path,
    opts: &ExtractOptions,
) -> Result<ExtractReport, ArchiveError> {
    let base = if opts.verify_only {
        PathBuf::new()
    } else {
        let base = destination(dest, true)?;
        if !base.is_dir() {
            return Err(ArchiveError::io(
                "extract into",
                dest,
                io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        base
    };
    let (result, summary) = decode::decode(archive, opts.threads, |decoded| {
        extract_stream(decoded, base, opts)
    });
    let mut report = result?;
    let summary = summary.map_err(|e| ArchiveError::Corrupt {
        entry: String::new(),
        detail: e.to_string(),
    })?;
    report.codec = Some(summary.codec);
    report.compressed_bytes = summary.compressed_bytes;
    report.sha256 = summary.sha256;
    report.parallel_pieces = summary.parallel_pieces;
    report.streamed = summary.streamed;
    Ok(report)
}

/// The tar part of [`extract`], on the decoded stream.
fn extract_stream(
    decoded: &mut Decoded,
    base: PathBuf,
    opts: &ExtractOptions,
) -> Result<ExtractReport, ArchiveError> {
    let shared = Rc::new(RefCell::new(Shared::default()));
    let limits = Limits {
        max_pax: opts.max_pax_size,
        max_long_name: opts.max_name_size,
        max_sparse_blocks: 50_000,
    };
    let guard = Guard::new(decoded, shared.clone(), limits);
    let mut ar = tar::Archive::new(guard);
    ar.set_preserve_ownerships(opts.preserve_ownership);
    ar.set_preserve_permissions(true);
    ar.set_preserve_mtime(true);
    // Applied by us, see the module docs.
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);

    let mut x = Extractor {
        base,
        opts,
        report: ExtractReport::default(),
        dirs: Vec::new(),
        root: None,
        symlinks_seen: HashSet::new(),
        last_entry: String::new(),
        shared: shared.clone(),
    };
    {
        let entries = ar.entries().map_err(|e| x.stream_error(e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| x.stream_error(e))?;
            let pax = shared.borrow_mut().current_pax.take();
            x.handle(&mut entry, pax.as_deref())?;
        }
    }
    // Read the rest (end-of-archive padding, the last members or frames):
    // this checks every remaining crc or checksum and rejects trailing garbage,
    // before any directory metadata is applied.
    shared.borrow_mut().stop_tracking = true;
    let mut rest = ar.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| x.stream_error(e))?;
    x.finish()?;
    Ok(x.report)
}

struct Extractor<'a> {
    base: PathBuf,
    opts: &'a ExtractOptions,
    report: ExtractReport,
    dirs: Vec<DirMeta>,
    root: Option<RootMeta>,
    /// verify_only: symlink paths seen, to detect write-through lexically.
    symlinks_seen: HashSet<Vec<u8>>,
    last_entry: String,
    shared: Rc<RefCell<Shared>>,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn join_comps(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

/// tar-rs wraps the error of an unpack in layers that only say "failed to unpack `path`":
/// bring the innermost cause (e.g. "No space left on device") into the message.
fn with_cause(e: io::Error) -> io::Error {
    let mut cause = None;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = match e.get_ref() {
        Some(inner) => inner.source(),
        None => None,
    };
    while let Some(c) = cur {
        cause = Some(c.to_string());
        cur = c.source();
    }
    match cause {
        Some(c) if !e.to_string().contains(&c) => io::Error::new(e.kind(), format!("{e}: {c}")),
        _ => e,
    }
}

fn is_not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

impl Extractor<'_> {
    /// Map an error from reading the archive stream.
    fn stream_error(&self, e: io::Error) -> ArchiveError {
        let sh = self.shared.borrow();
        if let Some(reason) = &sh.refusal {
            return ArchiveError::Refused {
                entry: format!("(the entry after `{}`)", self.last_entry),
                reason: reason.clone(),
            };
        }
        // The decompression error itself (which names the damaged member or
        // frame), not tar-rs's "failed to unpack" wrapper around it.
        let detail = sh.stream_error.clone().unwrap_or_else(|| e.to_string());
        ArchiveError::Corrupt {
            entry: self.last_entry.clone(),
            detail,
        }
    }

    /// Map an error from unpacking an entry: the stream or the destination.
    fn unpack_error(&self, path: &Path, e: io::Error) -> ArchiveError {
        let stream =
            self.shared.borrow().stream_error.is_some() || self.shared.borrow().refusal.is_some();
        if stream {
            self.stream_error(e)
        } else {
            ArchiveError::io("extract", path, with_cause(e))
        }
    }

    fn refuse(&mut self, entry: &str, reason: impl Into<String>) -> Result<(), ArchiveError> {
        let reason = reason.into();
        if self.opts.skip_refused {
            self.report.refused += 1;
            tracing::warn!(entry, "refused archive entry: {reason}");
            if self.report.refused_entries.len() < MAX_LISTED {
                self.report
                    .refused_entries
                    .push(format!("{entry}: {reason}"));
            }
            Ok(())
        } else {
            Err(ArchiveError::Refused {
                entry: entry.to_string(),
                reason,
            })
        }
    }

    fn abs(&self, comps: &[&[u8]]) -> PathBuf {
        let mut p = self.base.clone();
        for c in comps {
            p.push(OsStr::from_bytes(c));
        }
        p
    }

    /// One archive entry: its header checked once, then handed to the code of its kind.
    fn handle<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        pax: Option<&[u8]>,
    ) -> Result<(), ArchiveError> {
        self.report.entries += 1;
        let path_bytes = entry.path_bytes().into_owned();
        let shown = lossy(&path_bytes);
        self.last_entry = shown.clone();
        let ty = entry.header().entry_type();
        let m = match check_header(entry.header(), &path_bytes, pax, self.opts.max_file_size) {
            Ok(comps) => Meta {
                shown,
                pax,
                ..comps
            },
            Err(why) => return self.refuse(&shown, why),
        };
        match ty {
            EntryType::Directory => self.directory(&m),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                if m.comps.is_empty() || path_bytes.ends_with(b"/") {
                    return self.refuse(&m.shown, "a file entry with a directory name");
                }
                self.regular(entry, &m)
            }
            EntryType::Symlink => self.symlink(entry, &m),
            EntryType::Link => self.hardlink(entry, &m),
            EntryType::Fifo | EntryType::Char | EntryType::Block => self.special(entry, ty, &m),
            EntryType::XGlobalHeader => {
                self.report.pax_globals += 1;
                Ok(())
            }
            other => self.refuse(&m.shown, format!("unsupported entry type {other:?}")),
        }
    }
}

/// An entry's checked header: what every kind of entry needs.
struct Meta<'e> {
    /// The path as shown in messages (lossy UTF-8).
    shown: String,
    /// The cleaned path components (empty: the destination directory itself).
    comps: Vec<&'e [u8]>,
    /// The components joined with `/`.
    rel: Vec<u8>,
    size: u64,
    /// Permission bits (`& 0o7777`).
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    /// The entry's PAX extended header (already checked).
    pax: Option<&'e [u8]>,
}

/// Check an entry's path, numeric fields and PAX header; `Err(reason)` to refuse it.
fn check_header<'e>(
    h: &tar::Header,
    path_bytes: &'e [u8],
    pax: Option<&[u8]>,
    max_file_size: u64,
) -> Result<Meta<'e>, String> {
    let comps = clean_components(path_bytes)?;
    let rel = join_comps(&comps);
    let (size, mode, uid, gid, mtime) = match (h.size(), h.mode(), h.uid(), h.gid(), h.mtime()) {
        (Ok(s), Ok(m), Ok(u), Ok(g), Ok(t)) => (s, m, u, g, t),
        _ => return Err("its header has a malformed size, mode, owner or mtime".into()),
    };
    if size > max_file_size {
        return Err(format!(
            "it claims {size} bytes, more than the limit of {max_file_size} bytes"
        ));
    }
    let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
        return Err("its owner id does not fit in 32 bits".into());
    };
    if let Some(p) = pax {
        match parse_pax(p) {
            Err(e) => return Err(format!("malformed PAX extended header: {e}")),
            // GNU tar's PAX sparse formats (0.x/1.0) are not understood by
            // tar-rs: it would write the sparse map into the file.
            Ok(recs) if recs.iter().any(|(k, _)| k.starts_with(b"GNU.sparse.")) => {
                return Err("it uses GNU tar's PAX sparse format, which this reader does not support; extract this archive with GNU tar".into());
            }
            Ok(_) => {}
        }
    }
    Ok(Meta {
        shown: String::new(),
        comps,
        rel,
        size,
        mode: mode & 0o7777,
        uid,
        gid,
        mtime: i64::try_from(mtime).unwrap_or(i64::MAX),
        pax: None,
    })
}

/// The base every entry is written under. A descriptor's path (`/proc/self/fd/N`, see
/// [`crate::fs::beneath::Dir::proc_path`]) names exactly the directory the caller opened, so it
/// is used as is and never resolved to a name again (a container renaming the directory cannot
/// redirect the extraction); any other path is created if asked and resolved once.
fn destination(dest: &Path, create: bool) -> Result<PathBuf, ArchiveError> {
    if dest.starts_with("/proc/self/fd") {
        // "N/." so that calls which do not follow a final symlink (lchown, lsetxattr,
        // utimensat(AT_SYMLINK_NOFOLLOW) on the root) act on the directory, not on the link.
        return Ok(dest.join("."));
    }
    if create {
        fs::create_dir_all(dest)
            .map_err(|e| ArchiveError::io("create the destination directory", dest, e))?;
    }
    dest.canonicalize()
        .map_err(|e| ArchiveError::io("resolve the destination directory", dest, e))
}

fn set_mtime(path: &Path, mtime: i64) -> Result<(), ArchiveError> {
    let t = TimeSpec::new(mtime, 0);
    utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| ArchiveError::io("set the mtime of", path, e.into()))
}
