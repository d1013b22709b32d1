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

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use super::decode::{self, Decoded};
use super::guard::{parse_pax, Guard, Limits, Shared};
use super::{clean_components, decode_rel_path, ArchiveError, Compression};

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

/// What [`apply_deletions`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeletionReport {
    /// Paths removed (a directory with its contents counts once).
    pub removed: u64,
    /// Paths that did not exist.
    pub missing: u64,
}

/// Metadata applied after all entries.
struct DirMeta {
    path: PathBuf,
    depth: usize,
    mode: u32,
    mtime: i64,
}

struct RootMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    pax: Option<Vec<u8>>,
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

    /// Check that no existing ancestor of `comps` (inside the destination)
    /// is a symlink or a non-directory. `Err(reason)` to refuse.
    fn check_parents(&self, comps: &[&[u8]]) -> Result<Result<(), String>, ArchiveError> {
        let parents = &comps[..comps.len().saturating_sub(1)];
        if self.opts.verify_only {
            for i in 1..=parents.len() {
                let prefix = join_comps(&parents[..i]);
                if self.symlinks_seen.contains(&prefix) {
                    return Ok(Err(format!(
                        "its parent `{}` is a symlink in the archive; writing through it could escape the destination",
                        lossy(&prefix)
                    )));
                }
            }
            return Ok(Ok(()));
        }
        let mut p = self.base.clone();
        for (i, c) in parents.iter().enumerate() {
            p.push(OsStr::from_bytes(c));
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Ok(Err(format!(
                    "its parent `{}` is a symlink; writing through it could escape the destination",
                    lossy(&join_comps(&parents[..=i]))
                )))
                }
                Ok(m) if m.is_dir() => continue,
                Ok(_) => {
                    return Ok(Err(format!(
                        "its parent `{}` is not a directory",
                        lossy(&join_comps(&parents[..=i]))
                    )))
                }
                Err(e) if is_not_found(&e) => return Ok(Ok(())),
                Err(e) => return Err(ArchiveError::io("inspect", &p, e)),
            }
        }
        Ok(Ok(()))
    }

    /// Create missing parents of `path` (their ancestors were checked).
    fn make_parents(&self, path: &Path) -> Result<(), ArchiveError> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| ArchiveError::io("create directory", parent, e))?;
        }
        Ok(())
    }

    /// Make room for a non-directory at `path`: remove an existing
    /// non-directory; refuse to replace a directory.
    fn clear_for_nondir(&self, path: &Path, shown: &str) -> Result<(), ArchiveError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Err(ArchiveError::io(
                format!("replace the directory with archive entry `{shown}` at"),
                path,
                io::Error::new(
                    io::ErrorKind::IsADirectory,
                    "a directory is in the way; when applying an incremental, apply its deletions first",
                ),
            )),
            Ok(_) => fs::remove_file(path).map_err(|e| ArchiveError::io("replace", path, e)),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(ArchiveError::io("inspect", path, e)),
        }
    }

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
        let comps = match clean_components(&path_bytes) {
            Ok(c) => c,
            Err(why) => return self.refuse(&shown, why),
        };
        let rel = join_comps(&comps);
        let h = entry.header();
        let (size, mode, uid, gid, mtime) = match (h.size(), h.mode(), h.uid(), h.gid(), h.mtime())
        {
            (Ok(s), Ok(m), Ok(u), Ok(g), Ok(t)) => (s, m, u, g, t),
            _ => {
                return self.refuse(
                    &shown,
                    "its header has a malformed size, mode, owner or mtime",
                )
            }
        };
        if size > self.opts.max_file_size {
            return self.refuse(
                &shown,
                format!(
                    "it claims {size} bytes, more than the limit of {} bytes",
                    self.opts.max_file_size
                ),
            );
        }
        let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
            return self.refuse(&shown, "its owner id does not fit in 32 bits");
        };
        let mode = mode & 0o7777;
        let mtime = i64::try_from(mtime).unwrap_or(i64::MAX);
        if let Some(p) = pax {
            match parse_pax(p) {
                Err(e) => {
                    return self.refuse(&shown, format!("malformed PAX extended header: {e}"))
                }
                // GNU tar's PAX sparse formats (0.x/1.0) are not understood by
                // tar-rs: it would write the sparse map into the file.
                Ok(recs) if recs.iter().any(|(k, _)| k.starts_with(b"GNU.sparse.")) => {
                    return self.refuse(
                        &shown,
                        "it uses GNU tar's PAX sparse format, which this reader does not support; extract this archive with GNU tar",
                    );
                }
                Ok(_) => {}
            }
        }

        match ty {
            EntryType::Directory => {
                if comps.is_empty() {
                    self.report.dirs += 1;
                    self.root = Some(RootMeta {
                        mode,
                        uid,
                        gid,
                        mtime,
                        pax: pax.map(<[u8]>::to_vec),
                    });
                    return Ok(());
                }
                self.dir(&comps, &rel, &shown, mode, uid, gid, mtime, pax)
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                if comps.is_empty() || path_bytes.ends_with(b"/") {
                    return self.refuse(&shown, "a file entry with a directory name");
                }
                if let Err(why) = self.check_parents(&comps)? {
                    return self.refuse(&shown, why);
                }
                self.symlinks_seen.remove(&rel);
                self.report.files += 1;
                self.report.bytes += size;
                if self.opts.verify_only {
                    return Ok(());
                }
                let path = self.abs(&comps);
                self.clear_for_nondir(&path, &shown)?;
                self.unpack(entry, &path)?;
                if mtime == 0 {
                    // tar-rs turns mtime 0 into 1; put the real value back.
                    set_mtime(&path, 0)?;
                }
                self.apply_xattrs(&path, pax);
                Ok(())
            }
            EntryType::Symlink => {
                if comps.is_empty() {
                    return self.refuse(&shown, "a symlink in place of the destination directory");
                }
                match entry.link_name_bytes() {
                    Some(t) if !t.is_empty() => {}
                    _ => return self.refuse(&shown, "a symlink without a target"),
                }
                if let Err(why) = self.check_parents(&comps)? {
                    return self.refuse(&shown, why);
                }
                self.report.symlinks += 1;
                if self.opts.verify_only {
                    self.symlinks_seen.insert(rel);
                    return Ok(());
                }
                let path = self.abs(&comps);
                self.clear_for_nondir(&path, &shown)?;
                self.unpack(entry, &path)?;
                self.apply_xattrs(&path, pax);
                Ok(())
            }
            EntryType::Link => {
                if comps.is_empty() {
                    return self
                        .refuse(&shown, "a hard link in place of the destination directory");
                }
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                let Some(target) = target.filter(|t| !t.is_empty()) else {
                    return self.refuse(&shown, "a hard link without a target");
                };
                let tcomps = match clean_components(&target) {
                    Ok(c) if !c.is_empty() => c,
                    Ok(_) => {
                        return self.refuse(&shown, "a hard link to the destination directory")
                    }
                    Err(why) => {
                        return self.refuse(
                            &shown,
                            format!("its hard link target `{}`: {why}", lossy(&target)),
                        )
                    }
                };
                if let Err(why) = self.check_link_target(&tcomps)? {
                    return self.refuse(&shown, why);
                }
                if let Err(why) = self.check_parents(&comps)? {
                    return self.refuse(&shown, why);
                }
                self.symlinks_seen.remove(&rel);
                self.report.hardlinks += 1;
                if self.opts.verify_only {
                    return Ok(());
                }
                let path = self.abs(&comps);
                self.clear_for_nondir(&path, &shown)?;
                self.unpack(entry, &path)
            }
            EntryType::Fifo | EntryType::Char | EntryType::Block => {
                if ty != EntryType::Fifo && !self.opts.allow_devices {
                    if self.opts.skip_devices {
                        self.report.devices_skipped += 1;
                        tracing::warn!(entry = %shown, "device node not restored: allspark never creates device nodes (GNU tar can restore it from the archive)");
                        return Ok(());
                    }
                    return self.refuse(
                        &shown,
                        "device nodes are not restored unless explicitly allowed",
                    );
                }
                if comps.is_empty() {
                    return self.refuse(
                        &shown,
                        "a special file in place of the destination directory",
                    );
                }
                if let Err(why) = self.check_parents(&comps)? {
                    return self.refuse(&shown, why);
                }
                self.symlinks_seen.remove(&rel);
                self.report.specials += 1;
                if self.opts.verify_only {
                    return Ok(());
                }
                let dev = match ty {
                    EntryType::Fifo => 0,
                    _ => {
                        let major = entry.header().device_major().ok().flatten();
                        let minor = entry.header().device_minor().ok().flatten();
                        match (major, minor) {
                            (Some(a), Some(b)) => nix::sys::stat::makedev(a.into(), b.into()),
                            _ => return self.refuse(&shown, "malformed device numbers"),
                        }
                    }
                };
                let kind = match ty {
                    EntryType::Fifo => SFlag::S_IFIFO,
                    EntryType::Char => SFlag::S_IFCHR,
                    _ => SFlag::S_IFBLK,
                };
                let path = self.abs(&comps);
                self.make_parents(&path)?;
                self.clear_for_nondir(&path, &shown)?;
                mknod(&path, kind, Mode::from_bits_truncate(0o600), dev)
                    .map_err(|e| ArchiveError::io("create special file", &path, e.into()))?;
                self.set_owner_mode(&path, uid, gid, mode)?;
                self.apply_xattrs(&path, pax);
                set_mtime(&path, mtime)
            }
            EntryType::XGlobalHeader => {
                self.report.pax_globals += 1;
                Ok(())
            }
            other => self.refuse(&shown, format!("unsupported entry type {other:?}")),
        }
    }

    /// A hard-link target must be an existing regular file reached without
    /// symlinks (in verify mode: not through a symlink seen in the archive).
    fn check_link_target(&self, tcomps: &[&[u8]]) -> Result<Result<(), String>, ArchiveError> {
        let shown = lossy(&join_comps(tcomps));
        if self.opts.verify_only {
            for i in 1..=tcomps.len() {
                if self.symlinks_seen.contains(&join_comps(&tcomps[..i])) {
                    return Ok(Err(format!(
                        "its hard link target `{shown}` goes through a symlink"
                    )));
                }
            }
            return Ok(Ok(()));
        }
        let mut p = self.base.clone();
        for (i, c) in tcomps.iter().enumerate() {
            p.push(OsStr::from_bytes(c));
            let last = i + 1 == tcomps.len();
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Ok(Err(format!(
                        "its hard link target `{shown}` goes through or is a symlink"
                    )))
                }
                Ok(m) if !last && m.is_dir() => continue,
                Ok(m) if last && m.is_file() => return Ok(Ok(())),
                Ok(_) => {
                    return Ok(Err(format!(
                        "its hard link target `{shown}` is not a regular file inside the destination"
                    )))
                }
                Err(e) if is_not_found(&e) => {
                    return Ok(Err(format!(
                        "its hard link target `{shown}` does not exist (it must come earlier in the archive)"
                    )))
                }
                Err(e) => return Err(ArchiveError::io("inspect", &p, e)),
            }
        }
        Ok(Ok(()))
    }

    fn unpack<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
    ) -> Result<(), ArchiveError> {
        match entry.unpack_in(&self.base) {
            Ok(true) => Ok(()),
            Ok(false) => Err(ArchiveError::Refused {
                entry: self.last_entry.clone(),
                reason: "tar-rs refused to unpack it outside the destination".into(),
            }),
            Err(e) => Err(self.unpack_error(path, e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dir(
        &mut self,
        comps: &[&[u8]],
        rel: &[u8],
        shown: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: i64,
        pax: Option<&[u8]>,
    ) -> Result<(), ArchiveError> {
        if let Err(why) = self.check_parents(comps)? {
            return self.refuse(shown, why);
        }
        self.symlinks_seen.remove(rel);
        self.report.dirs += 1;
        if self.opts.verify_only {
            return Ok(());
        }
        let path = self.abs(comps);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                // A file or symlink where the archive has a directory: replace it.
                fs::remove_file(&path).map_err(|e| ArchiveError::io("replace", &path, e))?;
                self.mkdir(&path)?;
            }
            Err(e) if is_not_found(&e) => {
                self.make_parents(&path)?;
                self.mkdir(&path)?;
            }
            Err(e) => return Err(ArchiveError::io("inspect", &path, e)),
        }
        if self.opts.preserve_ownership {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                .map_err(|e| ArchiveError::io("set the owner of", &path, e))?;
        }
        self.apply_xattrs(&path, pax);
        self.dirs.push(DirMeta {
            path,
            depth: comps.len(),
            mode,
            mtime,
        });
        Ok(())
    }

    fn mkdir(&self, path: &Path) -> Result<(), ArchiveError> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(|e| ArchiveError::io("create directory", path, e))
    }

    fn set_owner_mode(
        &self,
        path: &Path,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> Result<(), ArchiveError> {
        if self.opts.preserve_ownership {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid))
                .map_err(|e| ArchiveError::io("set the owner of", path, e))?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| ArchiveError::io("set the mode of", path, e))
    }

    fn apply_xattrs(&mut self, path: &Path, pax: Option<&[u8]>) {
        let Some(pax) = pax else {
            return;
        };
        // Already validated in `handle`.
        let Ok(records) = parse_pax(pax) else {
            return;
        };
        for (key, value) in records {
            let Some(name) = key.strip_prefix(b"SCHILY.xattr.") else {
                continue;
            };
            if let Err(e) = xattr::set(path, OsStr::from_bytes(name), value) {
                self.report.xattr_errors += 1;
                let msg = format!("{}: {}: {e}", path.display(), lossy(name));
                tracing::warn!("cannot restore extended attribute: {msg}");
                if self.report.xattr_error_list.len() < MAX_LISTED {
                    self.report.xattr_error_list.push(msg);
                }
            }
        }
    }

    /// Directory modes and mtimes (deepest first), then the root.
    fn finish(&mut self) -> Result<(), ArchiveError> {
        if self.opts.verify_only {
            return Ok(());
        }
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.depth));
        for d in &dirs {
            match fs::symlink_metadata(&d.path) {
                Ok(m) if m.is_dir() => {}
                _ => continue, // replaced later in the archive
            }
            fs::set_permissions(&d.path, fs::Permissions::from_mode(d.mode))
                .map_err(|e| ArchiveError::io("set the mode of", &d.path, e))?;
            set_mtime(&d.path, d.mtime)?;
        }
        if let Some(root) = self.root.take() {
            let base = self.base.clone();
            if self.opts.preserve_ownership {
                std::os::unix::fs::lchown(&base, Some(root.uid), Some(root.gid))
                    .map_err(|e| ArchiveError::io("set the owner of", &base, e))?;
            }
            self.apply_xattrs(&base, root.pax.as_deref());
            fs::set_permissions(&base, fs::Permissions::from_mode(root.mode))
                .map_err(|e| ArchiveError::io("set the mode of", &base, e))?;
            set_mtime(&base, root.mtime)?;
        }
        Ok(())
    }
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

/// Remove the listed relative paths (as found in a manifest's `deleted`)
/// below `dest`. Directories are removed with their contents; paths that do
/// not exist are counted, not errors. A path that is absolute, contains
/// `..`, or leads through a symlink is refused before anything is removed.
pub fn apply_deletions(dest: &Path, deleted: &[String]) -> Result<DeletionReport, ArchiveError> {
    let base = destination(dest, false)?;
    // First check every path, then remove: a bad list removes nothing.
    let mut targets: Vec<Option<(PathBuf, bool)>> = Vec::with_capacity(deleted.len());
    for s in deleted {
        let bad = |reason: String| ArchiveError::BadDeletion {
            path: s.escape_debug().to_string(),
            reason,
        };
        let bytes = decode_rel_path(s).ok_or_else(|| bad("malformed hex encoding".into()))?;
        let comps = clean_components(&bytes).map_err(|r| bad(r.into()))?;
        if comps.is_empty() {
            return Err(bad("it names the destination directory itself".into()));
        }
        targets.push(locate(&base, &comps).map_err(|e| match e {
            Located::Symlink(parent) => bad(format!("its parent `{parent}` is a symlink")),
            Located::Io(p, e) => ArchiveError::io("inspect", &p, e),
        })?);
    }
    let mut report = DeletionReport::default();
    for t in targets {
        let Some((p, is_dir)) = t else {
            report.missing += 1;
            continue;
        };
        let r = if is_dir {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        match r {
            Ok(()) => report.removed += 1,
            // Listed twice, or inside a directory removed before.
            Err(e) if is_not_found(&e) => report.missing += 1,
            Err(e) => return Err(ArchiveError::io("delete", &p, e)),
        }
    }
    Ok(report)
}

enum Located {
    Symlink(String),
    Io(PathBuf, io::Error),
}

/// Find `comps` below `base` without following symlinks: `None` if it does
/// not exist, else the path and whether it is a directory.
fn locate(base: &Path, comps: &[&[u8]]) -> Result<Option<(PathBuf, bool)>, Located> {
    let mut p = base.to_path_buf();
    for (i, c) in comps.iter().enumerate() {
        p.push(OsStr::from_bytes(c));
        let last = i + 1 == comps.len();
        match fs::symlink_metadata(&p) {
            Ok(m) if last => return Ok(Some((p, m.is_dir()))),
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Located::Symlink(lossy(&comps[..=i].join(&b'/'))))
            }
            Ok(m) if m.is_dir() => continue,
            Ok(_) => return Ok(None),
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(Located::Io(p, e)),
        }
    }
    Ok(None)
}
