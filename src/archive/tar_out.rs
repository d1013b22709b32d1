//! The tar framing the writer emits: GNU headers, PAX xattr records, long names, sparse maps, and the reading of extended attributes and holes they describe.

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::FileStat;
use nix::unistd::{lseek, Whence};
use tar::{Builder, EntryType, GnuExtSparseHeader, Header};

use super::ArchiveError;

/// Sparse maps longer than this are not worth it: store the file densely.
const MAX_SPARSE_SEGMENTS: usize = 1 << 20;

/// Extended attributes of one entry: (name, value), sorted by name.
pub(crate) type Xattrs = Vec<(String, Vec<u8>)>;

pub(crate) fn out_err(source: io::Error) -> ArchiveError {
    ArchiveError::Output { source }
}

/// The tar stream being written.
pub(crate) struct TarOut<W: Write> {
    out: Builder<W>,
}

impl<W: Write> TarOut<W> {
    pub(crate) fn new(out: W) -> TarOut<W> {
        let mut out = Builder::new(out);
        out.follow_symlinks(false);
        TarOut { out }
    }

    /// The end-of-archive blocks written, the inner writer back.
    pub(crate) fn finish(self) -> Result<W, ArchiveError> {
        self.out.into_inner().map_err(out_err)
    }

    /// Raw bytes (file data) into the stream.
    pub(crate) fn write_all(&mut self, data: &[u8]) -> Result<(), ArchiveError> {
        self.out.get_mut().write_all(data).map_err(out_err)
    }

    /// Zeros up to the next 512-byte block after `len` bytes of data.
    pub(crate) fn pad(&mut self, len: u64) -> Result<(), ArchiveError> {
        let rem = (512 - (len % 512)) % 512;
        if rem > 0 {
            self.write_all(&[0u8; 512][..rem as usize])?;
        }
        Ok(())
    }

    /// PAX xattr header, long-name entries, then the header `h` itself (the
    /// caller writes any data and padding).
    pub(crate) fn append(
        &mut self,
        mut h: Header,
        name: &[u8],
        link: Option<&[u8]>,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<(), ArchiveError> {
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
        self.write_all(h.as_bytes())
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

    /// The GNU sparse map entries that do not fit in the main header.
    pub(crate) fn write_sparse_ext(
        &mut self,
        segs: &[(u64, u64)],
        size: u64,
    ) -> Result<(), ArchiveError> {
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
            self.write_all(ext.as_bytes())?;
        }
        Ok(())
    }
}

/// A GNU header with the stat's mode, numeric owner and mtime, size 0.
pub(crate) fn base_header(st: &FileStat, ty: EntryType) -> Header {
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

/// The main header of a regular file: sparse (type `S`, with the first
/// segments of its map) when `sparse` is given, else dense.
pub(crate) fn file_header(st: &FileStat, sparse: Option<&[(u64, u64)]>) -> Header {
    let size = st.st_size.max(0) as u64;
    let mut h = base_header(st, EntryType::Regular);
    match sparse {
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
        }
        None => h.set_size(size),
    }
    h
}

/// `./rel` (with a trailing `/` for directories); `./` for the root.
pub(crate) fn archive_name(rel: &[u8], dir: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(rel.len() + 3);
    v.extend_from_slice(b"./");
    v.extend_from_slice(rel);
    if dir && !rel.is_empty() {
        v.push(b'/');
    }
    v
}

fn set_field(field: &mut [u8], value: &[u8]) {
    field.fill(0);
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
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
pub(crate) fn sparse_segments(f: &File, st: &FileStat) -> Option<Vec<(u64, u64)>> {
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

fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENOSYS))
}

/// Keep an attribute whose name can be a PAX keyword (UTF-8, no `=`); false if not.
fn keep_xattr(out: &mut Xattrs, name: &OsStr, value: Vec<u8>) -> bool {
    match name.to_str() {
        Some(n) if !n.contains('=') => {
            out.push((n.to_string(), value));
            true
        }
        _ => false,
    }
}

/// The extended attributes of an open file, and how many could not be stored.
pub(crate) fn xattrs_fd(f: &File, rel: &[u8]) -> (Xattrs, u64) {
    use xattr::FileExt;
    let names = match f.list_xattr() {
        Ok(n) => n,
        Err(e) if is_unsupported(&e) => return (Vec::new(), 0),
        Err(e) => {
            tracing::debug!(path = %String::from_utf8_lossy(rel), "cannot list xattrs: {e}");
            return (Vec::new(), 1);
        }
    };
    let (mut out, mut skipped) = (Vec::new(), 0);
    for n in names {
        match f.get_xattr(&n) {
            Ok(Some(v)) => skipped += u64::from(!keep_xattr(&mut out, &n, v)),
            Ok(None) => {}
            Err(_) => skipped += 1,
        }
    }
    out.sort();
    (out, skipped)
}

/// The extended attributes of `name` in the open directory `dirfd` (not
/// followed if a symlink), and how many could not be stored; `full` is its
/// path, tried when `/proc` is not mounted.
pub(crate) fn xattrs_at(dirfd: RawFd, cname: &CStr, full: &Path) -> (Xattrs, u64) {
    // Through /proc the (possibly very long) path is resolved from the
    // open directory; the final name is not followed (l*xattr).
    let mut proc_path = PathBuf::from(format!("/proc/self/fd/{dirfd}"));
    proc_path.push(OsStr::from_bytes(cname.to_bytes()));
    let (names, path) = match xattr::list(&proc_path) {
        Ok(n) => (n, proc_path),
        Err(e) if is_unsupported(&e) => return (Vec::new(), 0),
        Err(_) => match xattr::list(full) {
            Ok(n) => (n, full.to_path_buf()),
            Err(_) => return (Vec::new(), 0),
        },
    };
    let (mut out, mut skipped) = (Vec::new(), 0);
    for n in names {
        match xattr::get(&path, &n) {
            Ok(Some(v)) => skipped += u64::from(!keep_xattr(&mut out, &n, v)),
            Ok(None) => {}
            Err(_) => skipped += 1,
        }
    }
    out.sort();
    (out, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::fstat;
    use std::os::unix::fs::FileExt;

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
