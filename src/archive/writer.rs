//! Tree -> tar writer: a deterministic, descriptor-relative walk that never aborts on live data, with incremental support.
//!
//! The walk opens every directory relative to its parent with `O_NOFOLLOW`,
//! so a directory swapped for a symlink during the walk cannot lead outside
//! the tree, and paths longer than `PATH_MAX` work. Scan threads (one per
//! core) open, list and lstat directories ahead of the walk (at most
//! [`MAX_PREFETCH`] ahead, each holding its descriptor until the walk gets
//! there); the walk itself stays in one deterministic order. An incremental
//! decides from that lstat alone, merged against the parent index in tree
//! order, whether a file changed: unchanged files are neither opened nor read.
//! Per-file state kept in memory is the new [`Index`] and the hard-link map;
//! everything else streams.
//!
//! Live data: a file that vanishes between listing and opening is skipped
//! (`vanished`); a file whose size differs from what was stat'ed when it was
//! opened is stored with exactly the stat'ed size (zero-padded or cut) and
//! counted in `changed_during_walk`. Entries that cannot be read are listed in
//! `problems`. Only an error writing the output aborts.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};
use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{lseek, Whence};
use tar::{Builder, EntryType, GnuExtSparseHeader, Header};

use super::compress::{CompressOptions, CompressStats, ParallelWriter};
use super::index::{Index, IndexEntry};
use super::{encode_rel_path, ArchiveError, EntryKind};

/// Called with the number of file bytes read so far.
pub type ProgressFn = Box<dyn Fn(u64) + Send + Sync>;

/// Testing aid: called with the relative path of a regular file after it was
/// opened and stat'ed, right before its data is read.
pub type FileHook = Box<dyn Fn(&[u8]) + Send + Sync>;

/// How often (in bytes read) the progress callback is called at most.
const PROGRESS_STEP: u64 = 8 << 20;

/// Read buffer for file data.
const COPY_BUF: usize = 256 * 1024;

/// At most this many problems are listed (all are counted).
const MAX_LISTED_PROBLEMS: usize = 1000;

/// Sparse maps longer than this are not worth it: store the file densely.
const MAX_SPARSE_SEGMENTS: usize = 1 << 20;

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

/// Write the tree at `src` as an uncompressed tar stream to `out`.
///
/// Errors only if `src` cannot be opened as a directory or writing to `out`
/// fails; everything else is counted in the report.
pub fn write_tree<W: Write>(
    src: &Path,
    out: W,
    opts: &WriteOptions,
) -> Result<WriteReport, ArchiveError> {
    let (report, _out) = write_tree_inner(src, out, opts)?;
    Ok(report)
}

/// Write the tree at `src` as a tar compressed in parallel (the codec of
/// `opts.compression`) to `out_file`, then fsync the file. The report
/// carries the compression statistics (including the sha256 of the file).
pub fn write_archive(
    src: &Path,
    out_file: File,
    opts: &WriteOptions,
) -> Result<WriteReport, ArchiveError> {
    let w = ParallelWriter::with_options(out_file, &opts.compression)
        .map_err(|source| ArchiveError::Output { source })?;
    let (mut report, w) = write_tree_inner(src, w, opts)?;
    let (file, stats) = w
        .finish()
        .map_err(|source| ArchiveError::Output { source })?;
    file.sync_all()
        .map_err(|source| ArchiveError::Output { source })?;
    report.compressed = Some(stats);
    Ok(report)
}

fn write_tree_inner<W: Write>(
    src: &Path,
    out: W,
    opts: &WriteOptions,
) -> Result<(WriteReport, W), ArchiveError> {
    let root =
        File::open(src).map_err(|e| ArchiveError::io("open the source directory", src, e))?;
    let st = fstat(root.as_raw_fd())
        .map_err(|e| ArchiveError::io("stat the source directory", src, e.into()))?;
    if kind_of(&st) != Some(EntryKind::Dir) {
        return Err(ArchiveError::io(
            "archive",
            src,
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    let mut builder = Builder::new(out);
    builder.follow_symlinks(false);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let one_fs = opts.one_file_system.then_some(st.st_dev);
    std::thread::scope(|s| {
        let (jobs, queue) = bounded::<ScanJob>(MAX_PREFETCH);
        for _ in 0..threads {
            let queue = queue.clone();
            s.spawn(move || {
                for job in queue.iter() {
                    let r = scan_dir(job.parent.as_raw_fd(), &job.name, one_fs);
                    // The walker may have stopped (output error); nothing to do then.
                    let _ = job.reply.send(r);
                }
            });
        }
        let mut w = Walker {
            src,
            opts,
            out: builder,
            report: WriteReport::default(),
            hardlinks: std::collections::HashMap::new(),
            buf: vec![0u8; COPY_BUF],
            last_progress: 0,
            one_fs,
            scan: Some(jobs),
            outstanding: 0,
            parent_cursor: 0,
        };
        let walked = w.walk(root, st);
        // Closing the queue ends the scan threads.
        w.scan = None;
        walked?;
        w.finish_deleted();
        if let Some(p) = &opts.progress {
            p(w.report.bytes_in);
        }
        let Walker { out, report, .. } = w;
        let inner = out
            .into_inner()
            .map_err(|source| ArchiveError::Output { source })?;
        Ok((report, inner))
    })
}

/// Directories opened, listed and stat'ed ahead of the walk, at most: each
/// holds an open descriptor until the walk reaches it.
const MAX_PREFETCH: usize = 64;

/// A directory opened (without following symlinks), listed and every entry
/// lstat'ed, by a scan thread ahead of the walk or by the walker itself.
struct Scanned {
    dir: Arc<File>,
    /// `fstat` of the opened directory, if it worked.
    st: Option<FileStat>,
    /// Its entries, sorted by name; `None` for a directory on another
    /// filesystem under `one_file_system`.
    list: Option<Result<Vec<Child>, Errno>>,
}

/// One entry of a [`Scanned`] directory.
struct Child {
    name: Vec<u8>,
    /// Its lstat (taken when its directory was scanned).
    st: Result<FileStat, Errno>,
    /// For a subdirectory handed to a scan thread: its scan.
    scan: Option<Receiver<Result<Scanned, Errno>>>,
}

impl Child {
    fn taken() -> Child {
        Child {
            name: Vec::new(),
            st: Err(Errno::UnknownErrno),
            scan: None,
        }
    }
}

struct ScanJob {
    parent: Arc<File>,
    name: CString,
    reply: Sender<Result<Scanned, Errno>>,
}

/// Open `name` in `parent` as a directory, then list and lstat its entries.
/// `Err` when it cannot be opened.
fn scan_dir(parent: RawFd, name: &CStr, one_fs: Option<u64>) -> Result<Scanned, Errno> {
    let dir = open_at(parent, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
    let st = fstat(dir.as_raw_fd()).ok();
    let other_fs = matches!((one_fs, &st), (Some(dev), Some(s)) if s.st_dev != dev);
    let list = (!other_fs).then(|| list_and_stat(&dir));
    Ok(Scanned {
        dir: Arc::new(dir),
        st,
        list,
    })
}

/// The entries of `dir`, sorted by name, each with its lstat (one `fstatat`, no open).
fn list_and_stat(dir: &File) -> Result<Vec<Child>, Errno> {
    let names = list_dir(dir)?;
    let fd = dir.as_raw_fd();
    Ok(names
        .into_iter()
        .map(|name| {
            let st = match CString::new(name.as_slice()) {
                Ok(c) => fstatat(Some(fd), c.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW),
                Err(_) => Err(Errno::EINVAL),
            };
            Child {
                name,
                st,
                scan: None,
            }
        })
        .collect())
}

/// One directory being walked.
struct Frame {
    dir: Arc<File>,
    rel: Vec<u8>,
    children: Vec<Child>,
    /// The next child to visit.
    next: usize,
    /// The next child to consider handing to a scan thread.
    submit: usize,
}

struct Walker<'a, 'o, W: Write> {
    src: &'a Path,
    opts: &'a WriteOptions<'o>,
    out: Builder<W>,
    report: WriteReport,
    /// (dev, ino) -> archive name of the first name written in this archive.
    hardlinks: std::collections::HashMap<(u64, u64), Vec<u8>>,
    buf: Vec<u8>,
    last_progress: u64,
    /// `Some(root device)` under `one_file_system`.
    one_fs: Option<u64>,
    /// Queue of the scan threads (`None` once the walk is over).
    scan: Option<Sender<ScanJob>>,
    /// Scans handed out and not yet taken by the walk.
    outstanding: usize,
    /// Position in the parent index: the walk visits paths in tree order, so
    /// looking them up is a merge, not a search.
    parent_cursor: usize,
}

fn out_err(source: io::Error) -> ArchiveError {
    ArchiveError::Output { source }
}

fn kind_of(st: &FileStat) -> Option<EntryKind> {
    let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    Some(match fmt {
        SFlag::S_IFREG => EntryKind::File,
        SFlag::S_IFDIR => EntryKind::Dir,
        SFlag::S_IFLNK => EntryKind::Symlink,
        SFlag::S_IFIFO => EntryKind::Fifo,
        SFlag::S_IFCHR => EntryKind::CharDevice,
        SFlag::S_IFBLK => EntryKind::BlockDevice,
        _ => return None,
    })
}

fn index_entry(rel: &[u8], kind: EntryKind, st: &FileStat) -> IndexEntry {
    IndexEntry {
        path: rel.to_vec(),
        kind,
        size: if kind == EntryKind::File {
            st.st_size.max(0) as u64
        } else {
            0
        },
        mtime_ns: st
            .st_mtime
            .saturating_mul(1_000_000_000)
            .saturating_add(st.st_mtime_nsec),
        ctime_ns: st
            .st_ctime
            .saturating_mul(1_000_000_000)
            .saturating_add(st.st_ctime_nsec),
        ino: st.st_ino,
        dev: st.st_dev,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
    }
}

fn join_rel(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        let mut v = Vec::with_capacity(parent.len() + 1 + name.len());
        v.extend_from_slice(parent);
        v.push(b'/');
        v.extend_from_slice(name);
        v
    }
}

/// `./rel` (with a trailing `/` for directories); `./` for the root.
fn archive_name(rel: &[u8], dir: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(rel.len() + 3);
    v.extend_from_slice(b"./");
    v.extend_from_slice(rel);
    if dir && !rel.is_empty() {
        v.push(b'/');
    }
    v
}

fn open_at(dir: RawFd, name: &CStr, flags: OFlag) -> Result<File, Errno> {
    let base = flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NOFOLLOW;
    let fd = match openat(Some(dir), name, base | OFlag::O_NOATIME, Mode::empty()) {
        Err(Errno::EPERM) => openat(Some(dir), name, base, Mode::empty())?,
        r => r?,
    };
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn list_dir(dir: &File) -> Result<Vec<Vec<u8>>, Errno> {
    let fd = nix::unistd::dup(dir.as_raw_fd())?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let mut names = Vec::new();
    for ent in d.iter() {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    names.sort_unstable();
    Ok(names)
}

fn base_header(st: &FileStat, ty: EntryType) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(ty);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h.set_mtime(st.st_mtime.max(0) as u64);
    h.set_size(0);
    if let Some(g) = h.as_gnu_mut() {
        g.set_device_major(0);
        g.set_device_minor(0);
    }
    h
}

type Xattrs = Vec<(String, Vec<u8>)>;

impl<W: Write> Walker<'_, '_, W> {
    fn full_path(&self, rel: &[u8]) -> PathBuf {
        self.src.join(OsStr::from_bytes(rel))
    }

    fn problem(&mut self, rel: &[u8], what: impl std::fmt::Display) {
        self.report.unreadable += 1;
        let shown = if rel.is_empty() {
            ".".to_string()
        } else {
            String::from_utf8_lossy(rel).into_owned()
        };
        tracing::warn!(path = %shown, "{what}");
        if self.report.problems.len() < MAX_LISTED_PROBLEMS {
            self.report.problems.push(format!("{shown}: {what}"));
        }
    }

    fn progress(&mut self) {
        if let Some(p) = &self.opts.progress {
            if self.report.bytes_in - self.last_progress >= PROGRESS_STEP {
                self.last_progress = self.report.bytes_in;
                p(self.report.bytes_in);
            }
        }
    }

    /// Keep the parent's records for `rel` and below: we could not look at
    /// them, so they must not be reported as deleted.
    fn carry_over(&mut self, rel: &[u8], include_self: bool) {
        let Some(parent) = self.opts.parent else {
            return;
        };
        if include_self {
            if let Some(e) = parent.get(rel) {
                self.report.index.push_sorted(e.clone());
            }
        }
        for e in parent.descendants(rel) {
            self.report.index.push_sorted(e.clone());
        }
    }

    /// True if the parent index has `e` in the same state. Called in tree order.
    fn unchanged(&mut self, e: &IndexEntry) -> bool {
        let Some(parent) = self.opts.parent else {
            return false;
        };
        let entries = parent.entries();
        while let Some(old) = entries.get(self.parent_cursor) {
            match super::index::tree_order(&old.path, &e.path) {
                std::cmp::Ordering::Less => self.parent_cursor += 1,
                std::cmp::Ordering::Equal => return old.same_state(e),
                std::cmp::Ordering::Greater => return false,
            }
        }
        false
    }

    /// Hand the next subdirectories of `frame` to the scan threads, up to the
    /// prefetch limit.
    fn prefetch(&mut self, frame: &mut Frame) {
        let Some(jobs) = &self.scan else {
            return;
        };
        frame.submit = frame.submit.max(frame.next);
        while self.outstanding < MAX_PREFETCH && frame.submit < frame.children.len() {
            let c = &mut frame.children[frame.submit];
            frame.submit += 1;
            let is_dir = matches!(&c.st, Ok(st) if kind_of(st) == Some(EntryKind::Dir));
            let Ok(name) = CString::new(c.name.as_slice()) else {
                continue;
            };
            if !is_dir {
                continue;
            }
            let (reply, rx) = bounded(1);
            let job = ScanJob {
                parent: frame.dir.clone(),
                name,
                reply,
            };
            if jobs.try_send(job).is_err() {
                // Queue full: the walker scans this one itself when it gets there.
                frame.submit -= 1;
                return;
            }
            c.scan = Some(rx);
            self.outstanding += 1;
        }
    }

    fn walk(&mut self, root: File, st: FileStat) -> Result<(), ArchiveError> {
        let list = Some(list_and_stat(&root));
        let root = Scanned {
            dir: Arc::new(root),
            st: Some(st),
            list,
        };
        let mut stack: Vec<Frame> = Vec::new();
        if let Some(frame) = self.enter_dir(root, st, Vec::new())? {
            stack.push(frame);
        }
        while let Some(top) = stack.last_mut() {
            self.prefetch(top);
            let Some(slot) = top.children.get_mut(top.next) else {
                stack.pop();
                continue;
            };
            let child = std::mem::replace(slot, Child::taken());
            top.next += 1;
            let rel = join_rel(&top.rel, &child.name);
            let parent = top.dir.clone();
            if let Some(frame) = self.visit(&parent, child, rel)? {
                stack.push(frame);
            }
        }
        Ok(())
    }

    /// Write a directory entry and make a frame of its children.
    fn enter_dir(
        &mut self,
        scanned: Scanned,
        lstat: FileStat,
        rel: Vec<u8>,
    ) -> Result<Option<Frame>, ArchiveError> {
        let st = scanned.st.unwrap_or(lstat);
        let xattrs = self.xattrs_fd(&scanned.dir, &rel);
        let h = base_header(&st, EntryType::Directory);
        self.append(h, &archive_name(&rel, true), None, &xattrs)?;
        self.report.dirs += 1;
        self.report
            .index
            .push_sorted(index_entry(&rel, EntryKind::Dir, &st));
        match scanned.list {
            None => Ok(None),
            Some(Ok(children)) => Ok(Some(Frame {
                dir: scanned.dir,
                rel,
                children,
                next: 0,
                submit: 0,
            })),
            Some(Err(e)) => {
                self.problem(&rel, format!("cannot list directory: {e}"));
                self.carry_over(&rel, false);
                Ok(None)
            }
        }
    }

    fn visit(
        &mut self,
        parent: &File,
        child: Child,
        rel: Vec<u8>,
    ) -> Result<Option<Frame>, ArchiveError> {
        let dirfd = parent.as_raw_fd();
        let Ok(cname) = CString::new(child.name.as_slice()) else {
            self.problem(&rel, "name contains a NUL byte");
            return Ok(None);
        };
        let st = match child.st {
            Ok(st) => st,
            Err(Errno::ENOENT) => {
                self.report.vanished += 1;
                return Ok(None);
            }
            Err(e) => {
                self.problem(&rel, format!("cannot stat: {e}"));
                self.carry_over(&rel, true);
                return Ok(None);
            }
        };
        let Some(kind) = kind_of(&st) else {
            // Sockets (and anything unknown) cannot be archived.
            self.report.sockets_skipped += 1;
            return Ok(None);
        };
        match kind {
            EntryKind::Dir => {
                let scanned = match child.scan {
                    Some(rx) => {
                        self.outstanding -= 1;
                        rx.recv()
                            .unwrap_or_else(|_| scan_dir(dirfd, &cname, self.one_fs))
                    }
                    None => scan_dir(dirfd, &cname, self.one_fs),
                };
                match scanned {
                    Ok(scanned) => self.enter_dir(scanned, st, rel),
                    Err(Errno::ENOENT) => {
                        self.report.vanished += 1;
                        Ok(None)
                    }
                    Err(Errno::ENOTDIR | Errno::ELOOP) => {
                        // Replaced by something else since the stat.
                        self.report.changed_during_walk += 1;
                        self.carry_over(&rel, true);
                        Ok(None)
                    }
                    Err(e) => {
                        // Store what we know, keep the parent's view of the contents.
                        self.problem(&rel, format!("cannot open directory: {e}"));
                        let h = base_header(&st, EntryType::Directory);
                        self.append(h, &archive_name(&rel, true), None, &[])?;
                        self.report.dirs += 1;
                        self.report
                            .index
                            .push_sorted(index_entry(&rel, EntryKind::Dir, &st));
                        self.carry_over(&rel, false);
                        Ok(None)
                    }
                }
            }
            EntryKind::File => {
                // Unchanged since the parent: decided on the lstat alone, the
                // file is neither opened nor read.
                let e = index_entry(&rel, EntryKind::File, &st);
                if self.unchanged(&e) {
                    self.report.unchanged_skipped += 1;
                    self.report.index.push_sorted(e);
                    return Ok(None);
                }
                self.file(dirfd, &cname, rel)?;
                Ok(None)
            }
            EntryKind::Symlink => {
                self.symlink(dirfd, &cname, rel, st)?;
                Ok(None)
            }
            EntryKind::Fifo | EntryKind::CharDevice | EntryKind::BlockDevice => {
                self.special(dirfd, &cname, rel, st, kind)?;
                Ok(None)
            }
        }
    }

    fn symlink(
        &mut self,
        dirfd: RawFd,
        cname: &CStr,
        rel: Vec<u8>,
        st: FileStat,
    ) -> Result<(), ArchiveError> {
        let e = index_entry(&rel, EntryKind::Symlink, &st);
        if self.unchanged(&e) {
            self.report.unchanged_skipped += 1;
            self.report.index.push_sorted(e);
            return Ok(());
        }
        let target = match readlinkat(Some(dirfd), cname) {
            Ok(t) => t,
            Err(Errno::ENOENT) => {
                self.report.vanished += 1;
                return Ok(());
            }
            Err(Errno::EINVAL) => {
                self.report.changed_during_walk += 1;
                self.carry_over(&rel, true);
                return Ok(());
            }
            Err(err) => {
                self.problem(&rel, format!("cannot read symlink: {err}"));
                self.carry_over(&rel, true);
                return Ok(());
            }
        };
        let xattrs = self.xattrs_path(dirfd, cname, &rel);
        let h = base_header(&st, EntryType::Symlink);
        self.append(
            h,
            &archive_name(&rel, false),
            Some(target.as_bytes()),
            &xattrs,
        )?;
        self.report.symlinks += 1;
        self.report.index.push_sorted(e);
        Ok(())
    }

    fn special(
        &mut self,
        dirfd: RawFd,
        cname: &CStr,
        rel: Vec<u8>,
        st: FileStat,
        kind: EntryKind,
    ) -> Result<(), ArchiveError> {
        let e = index_entry(&rel, kind, &st);
        if self.unchanged(&e) {
            self.report.unchanged_skipped += 1;
            self.report.index.push_sorted(e);
            return Ok(());
        }
        let ty = match kind {
            EntryKind::Fifo => EntryType::Fifo,
            EntryKind::CharDevice => EntryType::Char,
            _ => EntryType::Block,
        };
        let mut h = base_header(&st, ty);
        if kind != EntryKind::Fifo {
            let major = nix::sys::stat::major(st.st_rdev);
            let minor = nix::sys::stat::minor(st.st_rdev);
            if let Some(g) = h.as_gnu_mut() {
                // The fields hold 7 octal digits; larger numbers do not fit in tar.
                if major > 0o7777777 || minor > 0o7777777 {
                    self.problem(&rel, "device number too large for tar; skipped");
                    return Ok(());
                }
                g.set_device_major(major as u32);
                g.set_device_minor(minor as u32);
            }
        }
        let xattrs = self.xattrs_path(dirfd, cname, &rel);
        self.append(h, &archive_name(&rel, false), None, &xattrs)?;
        self.report.specials += 1;
        self.report.index.push_sorted(e);
        Ok(())
    }

    fn file(&mut self, dirfd: RawFd, cname: &CStr, rel: Vec<u8>) -> Result<(), ArchiveError> {
        let file = match open_at(dirfd, cname, OFlag::O_RDONLY | OFlag::O_NONBLOCK) {
            Ok(f) => f,
            Err(Errno::ENOENT) => {
                self.report.vanished += 1;
                return Ok(());
            }
            Err(Errno::ELOOP) => {
                self.report.changed_during_walk += 1;
                self.carry_over(&rel, true);
                return Ok(());
            }
            Err(e) => {
                self.problem(&rel, format!("cannot open: {e}"));
                self.carry_over(&rel, true);
                return Ok(());
            }
        };
        let st = match fstat(file.as_raw_fd()) {
            Ok(st) => st,
            Err(e) => {
                self.problem(&rel, format!("cannot stat: {e}"));
                self.carry_over(&rel, true);
                return Ok(());
            }
        };
        if kind_of(&st) != Some(EntryKind::File) {
            // Swapped for something else between the listing and the open.
            self.report.changed_during_walk += 1;
            self.carry_over(&rel, true);
            return Ok(());
        }
        let mut e = index_entry(&rel, EntryKind::File, &st);
        if self.unchanged(&e) {
            self.report.unchanged_skipped += 1;
            self.report.index.push_sorted(e);
            return Ok(());
        }
        let name = archive_name(&rel, false);
        if st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.hardlinks.get(&key).cloned() {
                let h = base_header(&st, EntryType::Link);
                self.append(h, &name, Some(&first), &[])?;
                self.report.hardlinks += 1;
                self.report.index.push_sorted(e);
                return Ok(());
            }
            self.hardlinks.insert(key, name.clone());
        }
        let xattrs = self.xattrs_fd(&file, &rel);
        if let Some(hook) = &self.opts.before_file_read {
            hook(&rel);
        }
        let size = st.st_size.max(0) as u64;
        let sparse = sparse_segments(&file, &st);
        let mut h = base_header(&st, EntryType::Regular);
        let segments = match &sparse {
            Some(segs) => {
                let on_disk: u64 = segs.iter().map(|s| s.1).sum();
                h.set_entry_type(EntryType::GNUSparse);
                h.set_size(on_disk);
                if let Some(g) = h.as_gnu_mut() {
                    g.set_real_size(size);
                    let mut all = segs.iter().copied().chain([(size, 0)]);
                    for slot in g.sparse.iter_mut() {
                        if let Some((off, len)) = all.next() {
                            slot.set_offset(off);
                            slot.set_length(len);
                        }
                    }
                    g.set_is_extended(segs.len() + 1 > g.sparse.len());
                }
                segs.clone()
            }
            None => {
                h.set_size(size);
                vec![(0, size)]
            }
        };
        self.append(h, &name, None, &xattrs)?;
        if let Some(segs) = &sparse {
            self.write_sparse_ext(segs, size)?;
        }
        let mut outcome = CopyOutcome::default();
        for (off, len) in &segments {
            self.copy_range(&file, *off, *len, &mut outcome)?;
        }
        let on_disk: u64 = segments.iter().map(|s| s.1).sum();
        pad(self.out.get_mut(), on_disk)?;
        if let Some(err) = outcome.error {
            self.problem(
                &rel,
                format!("read error ({err}); the unreadable part is stored as zeros"),
            );
            e.mtime_ns = i64::MIN; // force a rewrite next time
        }
        let after = fstat(file.as_raw_fd()).ok();
        let changed = outcome.short
            || after.is_none_or(|a| {
                a.st_size != st.st_size
                    || a.st_mtime != st.st_mtime
                    || a.st_mtime_nsec != st.st_mtime_nsec
            });
        if changed {
            self.report.changed_during_walk += 1;
            tracing::debug!(path = %String::from_utf8_lossy(&rel), "file changed while being archived");
        }
        self.report.files += 1;
        self.report.apparent_bytes += size;
        self.report.index.push_sorted(e);
        Ok(())
    }

    /// Copy exactly `len` bytes of `file` from `off`: zeros replace what is
    /// missing (shrunk file, read error); extra data (grown file) is ignored.
    fn copy_range(
        &mut self,
        file: &File,
        mut off: u64,
        len: u64,
        outcome: &mut CopyOutcome,
    ) -> Result<(), ArchiveError> {
        let mut left = len;
        let mut buf = std::mem::take(&mut self.buf);
        let res = (|| {
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let n = if outcome.short || outcome.error.is_some() {
                    0
                } else {
                    loop {
                        match file.read_at(&mut buf[..want], off) {
                            Ok(n) => break n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => {
                                outcome.error = Some(e);
                                break 0;
                            }
                        }
                    }
                };
                if n == 0 {
                    if outcome.error.is_none() {
                        outcome.short = true;
                    }
                    buf[..want].fill(0);
                    self.out
                        .get_mut()
                        .write_all(&buf[..want])
                        .map_err(out_err)?;
                    left -= want as u64;
                    off += want as u64;
                    continue;
                }
                self.out.get_mut().write_all(&buf[..n]).map_err(out_err)?;
                left -= n as u64;
                off += n as u64;
                self.report.bytes_in += n as u64;
                self.progress();
            }
            Ok(())
        })();
        self.buf = buf;
        res
    }

    fn write_sparse_ext(&mut self, segs: &[(u64, u64)], size: u64) -> Result<(), ArchiveError> {
        let total = segs.len() + 1; // plus the final (size, 0) marker
        let in_main = 4;
        if total <= in_main {
            return Ok(());
        }
        let mut rest = segs
            .iter()
            .copied()
            .chain([(size, 0)])
            .skip(in_main)
            .peekable();
        while rest.peek().is_some() {
            let mut ext = GnuExtSparseHeader::new();
            for slot in ext.sparse.iter_mut() {
                match rest.next() {
                    Some((off, len)) => {
                        slot.set_offset(off);
                        slot.set_length(len);
                    }
                    None => break,
                }
            }
            ext.set_is_extended(rest.peek().is_some());
            self.out
                .get_mut()
                .write_all(ext.as_bytes())
                .map_err(out_err)?;
        }
        Ok(())
    }

    /// PAX xattr header, long-name entries, then the header `h` itself (the
    /// caller writes any data and padding).
    fn append(
        &mut self,
        h: Header,
        name: &[u8],
        link: Option<&[u8]>,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<(), ArchiveError> {
        let h = self.prepare(h, name, link, xattrs)?;
        self.out.get_mut().write_all(h.as_bytes()).map_err(out_err)
    }

    fn prepare(
        &mut self,
        mut h: Header,
        name: &[u8],
        link: Option<&[u8]>,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<Header, ArchiveError> {
        if !xattrs.is_empty() {
            let data = pax_records(xattrs.iter().map(|(k, v)| {
                let mut key = b"SCHILY.xattr.".to_vec();
                key.extend_from_slice(k.as_bytes());
                (key, v.as_slice())
            }));
            let mut ph = Header::new_ustar();
            set_field(&mut ph.as_old_mut().name, b"././@PaxHeader");
            ph.set_mode(0o644);
            ph.set_uid(0);
            ph.set_gid(0);
            ph.set_mtime(0);
            ph.set_size(data.len() as u64);
            ph.set_entry_type(EntryType::XHeader);
            ph.set_cksum();
            self.out.append(&ph, &data[..]).map_err(out_err)?;
        }
        if name.len() > 100 {
            self.long_entry(b'L', name)?;
        }
        set_field(&mut h.as_old_mut().name, &name[..name.len().min(100)]);
        if let Some(link) = link {
            if link.len() > 100 {
                self.long_entry(b'K', link)?;
            }
            set_field(&mut h.as_old_mut().linkname, &link[..link.len().min(100)]);
        }
        h.set_cksum();
        Ok(h)
    }

    fn long_entry(&mut self, ty: u8, data: &[u8]) -> Result<(), ArchiveError> {
        let mut h = Header::new_gnu();
        set_field(&mut h.as_old_mut().name, b"././@LongLink");
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64 + 1);
        h.set_entry_type(EntryType::new(ty));
        h.set_cksum();
        self.out
            .append(&h, io::Read::chain(data, &[0u8][..]))
            .map_err(out_err)
    }

    fn xattrs_fd(&mut self, f: &File, rel: &[u8]) -> Xattrs {
        use xattr::FileExt;
        let names = match f.list_xattr() {
            Ok(n) => n,
            Err(e) if is_unsupported(&e) => return Vec::new(),
            Err(e) => {
                self.report.xattrs_skipped += 1;
                tracing::debug!(path = %String::from_utf8_lossy(rel), "cannot list xattrs: {e}");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for n in names {
            match f.get_xattr(&n) {
                Ok(Some(v)) => self.keep_xattr(&mut out, &n, v),
                Ok(None) => {}
                Err(_) => self.report.xattrs_skipped += 1,
            }
        }
        out.sort();
        out
    }

    fn xattrs_path(&mut self, dirfd: RawFd, cname: &CStr, rel: &[u8]) -> Xattrs {
        // Through /proc the (possibly very long) path is resolved from the
        // open directory; the final name is not followed (l*xattr).
        let mut proc_path = PathBuf::from(format!("/proc/self/fd/{dirfd}"));
        proc_path.push(OsStr::from_bytes(cname.to_bytes()));
        let (names, path) = match xattr::list(&proc_path) {
            Ok(n) => (n, proc_path),
            Err(e) if is_unsupported(&e) => return Vec::new(),
            Err(_) => {
                let full = self.full_path(rel);
                match xattr::list(&full) {
                    Ok(n) => (n, full),
                    Err(_) => return Vec::new(),
                }
            }
        };
        let mut out = Vec::new();
        for n in names {
            match xattr::get(&path, &n) {
                Ok(Some(v)) => self.keep_xattr(&mut out, &n, v),
                Ok(None) => {}
                Err(_) => self.report.xattrs_skipped += 1,
            }
        }
        out.sort();
        out
    }

    fn keep_xattr(&mut self, out: &mut Xattrs, name: &OsStr, value: Vec<u8>) {
        match name.to_str() {
            // PAX keywords are UTF-8; a name that is not cannot be stored.
            Some(n) if !n.contains('=') => out.push((n.to_string(), value)),
            _ => self.report.xattrs_skipped += 1,
        }
    }

    /// Compute `deleted` from the parent index and the new one.
    fn finish_deleted(&mut self) {
        let Some(parent) = self.opts.parent else {
            return;
        };
        let new = self.report.index.entries();
        let mut deleted = Vec::new();
        let mut last_deleted: Option<&[u8]> = None;
        let mut j = 0usize;
        for old in parent.entries() {
            if let Some(d) = last_deleted {
                if super::index::is_within(&old.path, d) {
                    continue;
                }
            }
            while j < new.len()
                && super::index::tree_order(&new[j].path, &old.path) == std::cmp::Ordering::Less
            {
                j += 1;
            }
            let gone = match new.get(j) {
                Some(n) if n.path == old.path => n.kind != old.kind,
                _ => true,
            };
            if gone && !old.path.is_empty() {
                deleted.push(encode_rel_path(&old.path));
                last_deleted = Some(&old.path);
            }
        }
        self.report.deleted = deleted;
    }
}

#[derive(Default)]
struct CopyOutcome {
    short: bool,
    error: Option<io::Error>,
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENOSYS))
}

fn set_field(field: &mut [u8], value: &[u8]) {
    field.fill(0);
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

fn pad(out: &mut dyn Write, len: u64) -> Result<(), ArchiveError> {
    let rem = (512 - (len % 512)) % 512;
    if rem > 0 {
        out.write_all(&[0u8; 512][..rem as usize])
            .map_err(out_err)?;
    }
    Ok(())
}

/// PAX records `"<len> <key>=<value>\n"`, where len counts the whole record.
pub(crate) fn pax_records<'v>(records: impl Iterator<Item = (Vec<u8>, &'v [u8])>) -> Vec<u8> {
    let mut data = Vec::new();
    for (key, value) in records {
        let rest = 3 + key.len() + value.len(); // ' ', '=', '\n'
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        data.extend_from_slice(len.to_string().as_bytes());
        data.push(b' ');
        data.extend_from_slice(&key);
        data.push(b'=');
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    data
}

/// Data segments `(offset, len)` of a file with holes, or `None` to store it
/// densely. Segments are clipped to the stat'ed size; every segment but the
/// last has a length that is a multiple of 512 (required by the GNU format).
fn sparse_segments(f: &File, st: &FileStat) -> Option<Vec<(u64, u64)>> {
    let size = st.st_size;
    if size <= 0 {
        return None;
    }
    if st.st_blocks == 0 {
        return Some(Vec::new());
    }
    // Enough blocks for every byte: no holes worth looking for.
    if st.st_blocks.saturating_mul(512) >= size {
        return None;
    }
    let fd = f.as_raw_fd();
    let mut segs: Vec<(u64, u64)> = Vec::new();
    let mut pos: i64 = 0;
    while pos < size {
        let data = match lseek(fd, pos, Whence::SeekData) {
            Ok(o) => o,
            Err(Errno::ENXIO) => break,
            Err(_) => return None,
        };
        if data >= size {
            break;
        }
        if data < pos {
            return None;
        }
        let hole = match lseek(fd, data, Whence::SeekHole) {
            Ok(o) => o,
            Err(_) => return None,
        };
        let end = hole.min(size);
        if end <= data {
            return None;
        }
        segs.push((data as u64, (end - data) as u64));
        if segs.len() > MAX_SPARSE_SEGMENTS {
            return None;
        }
        pos = end;
    }
    if segs.len() == 1 && segs[0] == (0, size as u64) {
        return None;
    }
    if segs.len() > 1 && segs[..segs.len() - 1].iter().any(|s| s.1 % 512 != 0) {
        return None;
    }
    Some(segs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_are_self_consistent() {
        for vlen in [
            0usize, 1, 5, 6, 7, 90, 94, 95, 96, 97, 994, 995, 996, 9990, 100_000,
        ] {
            let v = vec![b'x'; vlen];
            let data = pax_records([(b"SCHILY.xattr.user.k".to_vec(), &v[..])].into_iter());
            let sp = data.iter().position(|&b| b == b' ').expect("space");
            let len: usize = std::str::from_utf8(&data[..sp])
                .expect("utf8")
                .parse()
                .expect("num");
            assert_eq!(len, data.len(), "value length {vlen}");
        }
    }

    #[test]
    fn names_and_order_of_a_small_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir(root.join("b")).expect("mkdir");
        std::fs::write(root.join("b/x"), b"hello").expect("write");
        std::fs::write(root.join("a"), b"").expect("write");
        std::fs::write(root.join("b-"), b"1").expect("write");
        std::os::unix::net::UnixListener::bind(root.join("sock")).expect("socket");
        let mut out = Vec::new();
        let report = write_tree(root, &mut out, &WriteOptions::default()).expect("write_tree");
        let mut ar = tar::Archive::new(&out[..]);
        let names: Vec<String> = ar
            .entries()
            .expect("entries")
            .map(|e| String::from_utf8_lossy(&e.expect("entry").path_bytes()).into_owned())
            .collect();
        assert_eq!(names, ["./", "./a", "./b/", "./b/x", "./b-"]);
        assert_eq!(report.sockets_skipped, 1);
        assert_eq!(report.files, 3);
        assert_eq!(report.dirs, 2);
        assert_eq!(report.bytes_in, 6);
        let idx: Vec<&[u8]> = report.index.entries().iter().map(|e| &e.path[..]).collect();
        assert_eq!(idx, [&b""[..], b"a", b"b", b"b/x", b"b-"]);
    }

    #[test]
    fn missing_source_is_an_error_naming_it() {
        let r = write_tree(
            Path::new("/nonexistent/allspark-test"),
            Vec::new(),
            &WriteOptions::default(),
        );
        let msg = r.expect_err("missing source").to_string();
        assert!(msg.contains("/nonexistent/allspark-test"), "{msg}");
    }

    #[test]
    fn output_errors_are_fatal() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "no space"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f"), b"x").expect("write");
        let err = write_tree(dir.path(), Full, &WriteOptions::default()).expect_err("full");
        assert!(matches!(err, ArchiveError::Output { .. }), "{err}");
    }

    #[test]
    fn sparse_detection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("s");
        let f = File::create(&p).expect("create");
        f.set_len(10 << 20).expect("set_len");
        f.write_at(&[1u8; 4096], 4 << 20).expect("write");
        f.write_at(b"tail", (10 << 20) - 4).expect("write");
        let st = fstat(f.as_raw_fd()).expect("fstat");
        let segs = sparse_segments(&f, &st).expect("sparse");
        assert_eq!(segs.first(), Some(&(4 << 20, 4096)));
        assert_eq!(segs.last().map(|s| s.0 + s.1), Some(10 << 20));
        let dense = dir.path().join("d");
        std::fs::write(&dense, vec![7u8; 100_000]).expect("write");
        let f = File::open(&dense).expect("open");
        let st = fstat(f.as_raw_fd()).expect("fstat");
        assert!(sparse_segments(&f, &st).is_none());
    }
}
