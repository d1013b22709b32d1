//! What each entry of the walk becomes in a tar archive: directories, files (sparse, hard-linked, changing while read), symlinks, special files; and the incremental bookkeeping against the parent index.

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::readlinkat;
use nix::sys::stat::FileStat;
use tar::EntryType;

use super::index::kind_of;
use super::index::IndexEntry;
use super::read_ahead::{Ahead, ReadAhead};
use super::tar_out::{archive_name, base_header, TarOut, Xattrs};
use super::write_options::{WriteOptions, WriteReport};
use super::{encode_rel_path, ArchiveError, EntryKind};
use crate::fs::walk::{DirView, Failure, Listing, Visitor};

mod file;

/// How often (in bytes read) the progress callback is called at most.
const PROGRESS_STEP: u64 = 8 << 20;

/// Read buffer for file data.
const COPY_BUF: usize = 256 * 1024;

/// At most this many problems are listed (all are counted).
const MAX_LISTED_PROBLEMS: usize = 1000;

/// The walk's visitor: writes each entry it is handed.
pub(super) struct Writer<'a, 'o, W: Write> {
    src: &'a Path,
    opts: &'a WriteOptions<'o>,
    out: TarOut<W>,
    report: WriteReport,
    /// (dev, ino) -> archive name of the first name written in this archive.
    hardlinks: std::collections::HashMap<(u64, u64), Vec<u8>>,
    buf: Vec<u8>,
    last_progress: u64,
    /// Position in the parent index: the walk visits paths in tree order, so
    /// looking them up is a merge, not a search.
    parent_cursor: usize,
    /// The read-ahead whose files this writer consumes, if any.
    read_ahead: Option<&'a ReadAhead>,
}

pub(crate) fn index_entry(rel: &[u8], kind: EntryKind, st: &FileStat) -> IndexEntry {
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

impl<W: Write> Visitor for Writer<'_, '_, W> {
    type Error = ArchiveError;
    type Ahead = Ahead;

    /// A directory entry; its children follow unless it could not be listed.
    fn dir(&mut self, d: &DirView<'_, Ahead>) -> Result<bool, ArchiveError> {
        let xattrs = self.xattrs_fd(d.file, d.rel);
        let h = base_header(d.st, EntryType::Directory);
        self.out
            .append(h, &archive_name(d.rel, true), None, &xattrs)?;
        self.report.dirs += 1;
        self.report
            .index
            .push_sorted(index_entry(d.rel, EntryKind::Dir, d.st));
        match d.listing {
            Listing::Read | Listing::Reused => Ok(true),
            Listing::OtherFs => Ok(false),
            Listing::Skipped => {
                self.unchanged_below(d.rel, d.st.st_dev);
                Ok(false)
            }
            Listing::Failed(e) => {
                self.problem(d.rel, format!("cannot list directory: {e}"));
                self.carry_over(d.rel, false);
                Ok(false)
            }
        }
    }

    fn entry(
        &mut self,
        parent: &File,
        cname: &CStr,
        rel: &[u8],
        st: &FileStat,
        ahead: Option<Ahead>,
    ) -> Result<(), ArchiveError> {
        let dirfd = parent.as_raw_fd();
        let rel = rel.to_vec();
        if let (Some(a), Some(r)) = (&ahead, self.read_ahead) {
            r.release(a.charge);
        }
        match kind_of(st) {
            // Sockets (and anything unknown) cannot be archived.
            None => self.report.sockets_skipped += 1,
            Some(EntryKind::File) => {
                // Unchanged since the parent: decided on the lstat alone, the
                // file is neither opened nor read.
                let e = index_entry(&rel, EntryKind::File, st);
                if self.unchanged(&e) {
                    self.report.unchanged_skipped += 1;
                    self.report.index.push_sorted(e);
                    return Ok(());
                }
                match ahead {
                    Some(a) => self.file_read_ahead(rel, a)?,
                    None => self.file(dirfd, cname, rel)?,
                }
            }
            Some(EntryKind::Symlink) => self.symlink(dirfd, cname, rel, *st)?,
            Some(kind) => self.special(dirfd, cname, rel, *st, kind)?,
        }
        Ok(())
    }

    fn failed(
        &mut self,
        rel: &[u8],
        lstat: Option<&FileStat>,
        why: Failure,
    ) -> Result<(), ArchiveError> {
        match why {
            Failure::Name => self.problem(rel, "name contains a NUL byte"),
            Failure::Stat(Errno::ENOENT) | Failure::Open(Errno::ENOENT) => {
                self.report.vanished += 1
            }
            Failure::Stat(e) => {
                self.problem(rel, format!("cannot stat: {e}"));
                self.carry_over(rel, true);
            }
            Failure::Open(Errno::ENOTDIR | Errno::ELOOP) => {
                // Replaced by something else since the stat.
                self.report.changed_during_walk += 1;
                self.carry_over(rel, true);
            }
            Failure::Open(e) => {
                // Store what we know, keep the parent's view of the contents.
                self.problem(rel, format!("cannot open directory: {e}"));
                if let Some(st) = lstat {
                    let h = base_header(st, EntryType::Directory);
                    self.out.append(h, &archive_name(rel, true), None, &[])?;
                    self.report.dirs += 1;
                    self.report
                        .index
                        .push_sorted(index_entry(rel, EntryKind::Dir, st));
                }
                self.carry_over(rel, false);
            }
        }
        Ok(())
    }
}

impl<'a, 'o, W: Write> Writer<'a, 'o, W> {
    pub(super) fn new(
        src: &'a Path,
        opts: &'a WriteOptions<'o>,
        out: TarOut<W>,
        read_ahead: Option<&'a ReadAhead>,
    ) -> Self {
        Writer {
            read_ahead,
            src,
            opts,
            out,
            report: WriteReport::default(),
            hardlinks: std::collections::HashMap::new(),
            buf: vec![0u8; COPY_BUF],
            last_progress: 0,
            parent_cursor: 0,
        }
    }

    /// After the walk: the deleted paths, the last progress call, the stream's end.
    pub(super) fn finish(mut self) -> Result<(WriteReport, W), ArchiveError> {
        self.finish_deleted();
        if let Some(p) = &self.opts.progress {
            p(self.report.bytes_in);
        }
        Ok((self.report, self.out.finish()?))
    }

    fn full_path(&self, rel: &[u8]) -> PathBuf {
        self.src.join(OsStr::from_bytes(rel))
    }

    fn xattrs_fd(&mut self, f: &File, rel: &[u8]) -> Xattrs {
        let (x, skipped) = super::tar_out::xattrs_fd(f, rel);
        self.report.xattrs_skipped += skipped;
        x
    }

    fn xattrs_at(&mut self, dirfd: RawFd, cname: &CStr, rel: &[u8]) -> Xattrs {
        let (x, skipped) = super::tar_out::xattrs_at(dirfd, cname, &self.full_path(rel));
        self.report.xattrs_skipped += skipped;
        x
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

    /// Everything below `rel`, known unchanged since the parent (see
    /// [`WriteOptions::skip_dir`]): the parent's records, on this tree's device `dev` as a walk
    /// would have seen them.
    fn unchanged_below(&mut self, rel: &[u8], dev: u64) {
        let Some(parent) = self.opts.parent else {
            return;
        };
        let old_dev = parent.get(b"").map(|root| root.dev);
        for e in parent.descendants(rel) {
            let mut e = e.clone();
            if Some(e.dev) == old_dev {
                e.dev = dev;
            }
            if e.kind != EntryKind::Dir {
                self.report.unchanged_skipped += 1;
            }
            self.report.index.push_sorted(e);
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
        let xattrs = self.xattrs_at(dirfd, cname, &rel);
        let h = base_header(&st, EntryType::Symlink);
        self.out.append(
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
        let xattrs = self.xattrs_at(dirfd, cname, &rel);
        self.out
            .append(h, &archive_name(&rel, false), None, &xattrs)?;
        self.report.specials += 1;
        self.report.index.push_sorted(e);
        Ok(())
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
