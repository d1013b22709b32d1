//! Small files read on the walk's scan threads, so that a tree of many small files is opened, stat'ed and read on every core while the archive is written in order.
//!
//! For each regular file of at most [`MAX_FILE`] bytes without holes (and, in
//! an incremental, changed since the parent: its ctime is newer than every
//! ctime the parent index saw, which a look-up per file would cost more than
//! it saves), a scan thread opens it
//! (descriptor-relative, `O_NOFOLLOW`), `fstat`s it, reads its extended
//! attributes and its data (one byte more than stat'ed, to notice growth),
//! `fstat`s it again and closes it. The writer then stores exactly what a
//! read on its own thread would have stored. At most [`BUDGET`] bytes are
//! held at once: past that, files are left to the writer.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, FileStat};

use super::index::kind_of;
use super::index::Index;
use super::tar_out::{xattrs_fd, Xattrs};
use super::EntryKind;
use crate::fs::walk::open_at;

/// Largest file read ahead.
pub(crate) const MAX_FILE: u64 = 64 * 1024;

/// Bytes of file data held by read-ahead at once, at most.
pub(crate) const BUDGET: u64 = 4 << 20;

/// A file read on a scan thread.
pub(crate) struct Ahead {
    /// `fstat` of the opened file, before the read.
    pub(crate) st: FileStat,
    pub(crate) xattrs: Xattrs,
    pub(crate) xattrs_skipped: u64,
    /// What was read: up to `st_size + 1` bytes (more than `st_size`: it grew).
    pub(crate) data: Vec<u8>,
    pub(crate) error: Option<io::Error>,
    /// `fstat` after the read.
    pub(crate) after: Option<FileStat>,
    /// Bytes charged to the budget (returned with [`ReadAhead::release`]).
    pub(crate) charge: u64,
}

/// The read-ahead of one archive: what it may skip, and its budget.
pub(crate) struct ReadAhead {
    /// In an incremental: the newest ctime of the parent index. A file changed since has a
    /// newer one (a write, chmod or rename sets it to the current time).
    parent_ctime: Option<i64>,
    in_flight: AtomicU64,
}

impl ReadAhead {
    pub(crate) fn new(parent: Option<&Index>) -> Self {
        ReadAhead {
            parent_ctime: parent.map(|p| {
                p.entries()
                    .iter()
                    .map(|e| e.ctime_ns)
                    .max()
                    .unwrap_or(i64::MIN)
            }),
            in_flight: AtomicU64::new(0),
        }
    }

    /// Give back what a consumed [`Ahead`] held.
    pub(crate) fn release(&self, charge: u64) {
        self.in_flight.fetch_sub(charge, Ordering::AcqRel);
    }

    /// Read `name` in `dir` if it is worth it; `None` leaves it to the writer
    /// (also when anything fails: the writer then meets and reports it).
    pub(crate) fn read(
        &self,
        dir: &File,
        name: &CStr,
        rel: &[u8],
        lstat: &FileStat,
    ) -> Option<Ahead> {
        let size = u64::try_from(lstat.st_size).ok()?;
        let holes = lstat.st_blocks.saturating_mul(512) < lstat.st_size;
        if kind_of(lstat) != Some(EntryKind::File) || size > MAX_FILE || holes {
            return None;
        }
        if let Some(newest) = self.parent_ctime {
            let ctime = lstat
                .st_ctime
                .saturating_mul(1_000_000_000)
                .saturating_add(lstat.st_ctime_nsec);
            if ctime <= newest {
                return None; // most likely unchanged: left to the writer's own check
            }
        }
        // Every file costs at least a block, so that empty files are bounded too.
        let charge = size.max(512);
        if self.in_flight.fetch_add(charge, Ordering::AcqRel) + charge > BUDGET {
            self.release(charge);
            return None;
        }
        let got = read_file(dir, name, rel, size, charge);
        if got.is_none() {
            self.release(charge);
        }
        got
    }
}

fn read_file(dir: &File, name: &CStr, rel: &[u8], size: u64, charge: u64) -> Option<Ahead> {
    let file = open_at(dir.as_raw_fd(), name, OFlag::O_RDONLY | OFlag::O_NONBLOCK).ok()?;
    let st = fstat(file.as_raw_fd()).ok()?;
    if kind_of(&st) != Some(EntryKind::File) || u64::try_from(st.st_size).ok()? != size {
        return None;
    }
    let (xattrs, xattrs_skipped) = xattrs_fd(&file, rel);
    let mut data = vec![0u8; size as usize + 1];
    let mut got = 0;
    let mut error = None;
    while got < data.len() {
        match file.read_at(&mut data[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    data.truncate(got);
    let after = fstat(file.as_raw_fd()).ok();
    Some(Ahead {
        st,
        xattrs,
        xattrs_skipped,
        data,
        error,
        after,
        charge,
    })
}
