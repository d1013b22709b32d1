//! Regular files in the archive: opened at their directory's descriptor, read whole or as sparse segments, stored with exactly the size stat'ed (a file changing while read is padded or cut and counted), hard links kept.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, FileStat};
use tar::EntryType;

use super::super::index::{kind_of, IndexEntry};
use super::super::read_ahead::Ahead;
use super::super::tar_out::{archive_name, base_header, file_header, sparse_segments};
use super::super::{ArchiveError, EntryKind};
use super::{index_entry, Writer};
use crate::fs::walk::open_at;

impl<W: Write> Writer<'_, '_, W> {
    pub(super) fn file(
        &mut self,
        dirfd: RawFd,
        cname: &CStr,
        rel: Vec<u8>,
    ) -> Result<(), ArchiveError> {
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
        let Some((e, name)) = self.file_start(&rel, &st)? else {
            return Ok(());
        };
        let xattrs = self.xattrs_fd(&file, &rel);
        if let Some(hook) = &self.opts.before_file_read {
            hook(&rel);
        }
        let size = st.st_size.max(0) as u64;
        let sparse = sparse_segments(&file, &st);
        let h = file_header(&st, sparse.as_deref());
        let segments = sparse.clone().unwrap_or_else(|| vec![(0, size)]);
        self.out.append(h, &name, None, &xattrs)?;
        if let Some(segs) = &sparse {
            self.out.write_sparse_ext(segs, size)?;
        }
        let mut outcome = CopyOutcome::default();
        for (off, len) in &segments {
            self.copy_range(&file, *off, *len, &mut outcome)?;
        }
        let on_disk: u64 = segments.iter().map(|s| s.1).sum();
        self.out.pad(on_disk)?;
        let after = fstat(file.as_raw_fd()).ok();
        let changed = outcome.short || moved(&st, after.as_ref());
        self.file_end(rel, e, size, outcome.error, changed);
        Ok(())
    }

    /// A small file read on a scan thread (see [`super::read_ahead`]): stored exactly
    /// as [`file`](Self::file) would have stored it.
    pub(super) fn file_read_ahead(&mut self, rel: Vec<u8>, a: Ahead) -> Result<(), ArchiveError> {
        let Some((e, name)) = self.file_start(&rel, &a.st)? else {
            return Ok(());
        };
        self.report.xattrs_skipped += a.xattrs_skipped;
        let size = a.st.st_size.max(0) as u64;
        self.out
            .append(file_header(&a.st, None), &name, None, &a.xattrs)?;
        let have = a.data.len().min(size as usize);
        self.out.write_all(&a.data[..have])?;
        self.report.bytes_in += have as u64;
        // Shrunk or unreadable: zeros up to the stat'ed size.
        let mut left = size - have as u64;
        while left > 0 {
            let n = left.min(self.buf.len() as u64) as usize;
            self.buf[..n].fill(0);
            let buf = std::mem::take(&mut self.buf);
            let written = self.out.write_all(&buf[..n]);
            self.buf = buf;
            written?;
            left -= n as u64;
        }
        self.out.pad(size)?;
        self.progress();
        let changed = a.data.len() as u64 != size || moved(&a.st, a.after.as_ref());
        self.file_end(rel, e, size, a.error, changed);
        Ok(())
    }

    /// Before a file's data: unchanged since the parent (skipped), or a second name of a
    /// file already stored (a hard-link entry); else its index entry and archive name.
    fn file_start(
        &mut self,
        rel: &[u8],
        st: &FileStat,
    ) -> Result<Option<(IndexEntry, Vec<u8>)>, ArchiveError> {
        let e = index_entry(rel, EntryKind::File, st);
        if self.unchanged(&e) {
            self.report.unchanged_skipped += 1;
            self.report.index.push_sorted(e);
            return Ok(None);
        }
        let name = archive_name(rel, false);
        if st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.hardlinks.get(&key).cloned() {
                let h = base_header(st, EntryType::Link);
                self.out.append(h, &name, Some(&first), &[])?;
                self.report.hardlinks += 1;
                self.report.index.push_sorted(e);
                return Ok(None);
            }
            self.hardlinks.insert(key, name.clone());
        }
        Ok(Some((e, name)))
    }

    /// After a file's data: its read error, whether it changed while read, the counts.
    fn file_end(
        &mut self,
        rel: Vec<u8>,
        mut e: IndexEntry,
        size: u64,
        error: Option<io::Error>,
        changed: bool,
    ) {
        if let Some(err) = error {
            self.problem(
                &rel,
                format!("read error ({err}); the unreadable part is stored as zeros"),
            );
            e.mtime_ns = i64::MIN; // force a rewrite next time
        }
        if changed {
            self.report.changed_during_walk += 1;
            tracing::debug!(path = %String::from_utf8_lossy(&rel), "file changed while being archived");
        }
        self.report.files += 1;
        self.report.apparent_bytes += size;
        self.report.index.push_sorted(e);
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
                    self.out.write_all(&buf[..want])?;
                    left -= want as u64;
                    off += want as u64;
                    continue;
                }
                self.out.write_all(&buf[..n])?;
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
}

/// Did the file's size or mtime change between `st` and `after` (or can it not be told)?
fn moved(st: &FileStat, after: Option<&FileStat>) -> bool {
    after.is_none_or(|a| {
        a.st_size != st.st_size || a.st_mtime != st.st_mtime || a.st_mtime_nsec != st.st_mtime_nsec
    })
}

#[derive(Default)]
struct CopyOutcome {
    short: bool,
    error: Option<io::Error>,
}
