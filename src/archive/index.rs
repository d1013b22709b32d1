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
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use super::ArchiveError;

const MAGIC: &str = "allspark-index 1";

/// The first bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// zstd level of saved indexes: the fastest, still ~8x smaller than the text.
const INDEX_ZSTD_LEVEL: i32 = 1;

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
pub fn tree_order(a: &[u8], b: &[u8]) -> Ordering {
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
pub fn is_within(path: &[u8], dir: &[u8]) -> bool {
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

    /// Write the index in the line format described in the module docs.
    pub fn write_to<W: Write>(&self, w: W) -> io::Result<()> {
        let mut w = BufWriter::new(w);
        writeln!(w, "{MAGIC}")?;
        let mut line = Vec::with_capacity(256);
        for e in &self.entries {
            line.clear();
            write!(
                line,
                "{} {} {} {} {} {} {:o} {} {} ",
                e.kind.code(),
                e.size,
                e.mtime_ns,
                e.ctime_ns,
                e.ino,
                e.dev,
                e.mode,
                e.uid,
                e.gid
            )?;
            if e.path.is_empty() {
                line.push(b'.');
            } else {
                escape_into(&e.path, &mut line);
            }
            line.push(b'\n');
            w.write_all(&line)?;
        }
        writeln!(w, "end {}", self.entries.len())?;
        w.flush()
    }

    /// Read an index written by [`write_to`](Self::write_to). `source` names
    /// the input in error messages.
    pub fn read_from<R: BufRead>(mut r: R, source: &Path) -> Result<Index, ArchiveError> {
        let corrupt = |line: usize, detail: String| ArchiveError::CorruptIndex {
            path: source.to_path_buf(),
            line,
            detail,
        };
        let mut buf = Vec::with_capacity(256);
        let mut lineno = 0usize;
        let mut entries: Vec<IndexEntry> = Vec::new();
        let mut ended = false;
        loop {
            buf.clear();
            let n = r
                .read_until(b'\n', &mut buf)
                .map_err(|e| ArchiveError::io("read the index", source, e))?;
            if n == 0 {
                break;
            }
            lineno += 1;
            if buf.last() != Some(&b'\n') {
                return Err(corrupt(
                    lineno,
                    "the file ends in the middle of a line".into(),
                ));
            }
            buf.pop();
            if ended {
                return Err(corrupt(lineno, "data after the `end` line".into()));
            }
            if lineno == 1 {
                if buf != MAGIC.as_bytes() {
                    return Err(corrupt(lineno, format!("expected the header `{MAGIC}`")));
                }
                continue;
            }
            if let Some(count) = buf.strip_prefix(b"end ") {
                let count: usize = std::str::from_utf8(count)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| corrupt(lineno, "malformed `end` line".into()))?;
                if count != entries.len() {
                    return Err(corrupt(
                        lineno,
                        format!("`end` says {count} entries but {} were read", entries.len()),
                    ));
                }
                ended = true;
                continue;
            }
            let e = parse_line(&buf).map_err(|d| corrupt(lineno, d))?;
            if let Some(last) = entries.last() {
                if tree_order(&last.path, &e.path) != Ordering::Less {
                    return Err(corrupt(lineno, "paths are not in tree order".into()));
                }
            }
            entries.push(e);
        }
        if lineno == 0 {
            return Err(corrupt(0, "the file is empty".into()));
        }
        if !ended {
            return Err(corrupt(
                lineno,
                "the `end` line is missing (the file is truncated)".into(),
            ));
        }
        Ok(Index { entries })
    }

    /// Write to `path` atomically enough for our use: zstd-compressed (a 200 000-entry index
    /// is ~25 MB of text, ~3 MB compressed: less to write and fsync), to a temp file in the
    /// same directory, fsynced, then renamed over `path`.
    pub fn save(&self, path: &Path) -> Result<(), ArchiveError> {
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let tmp = tempfile::NamedTempFile::new_in(dir)
            .map_err(|e| ArchiveError::io("create a temporary index file in", dir, e))?;
        let written =
            zstd::stream::Encoder::new(tmp.as_file(), INDEX_ZSTD_LEVEL).and_then(|mut z| {
                self.write_to(&mut z)?;
                z.finish().map(drop)
            });
        written.map_err(|e| ArchiveError::io("write the index", tmp.path(), e))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| ArchiveError::io("fsync the index", tmp.path(), e))?;
        tmp.persist(path)
            .map_err(|e| ArchiveError::io("rename the index into place at", path, e.error))?;
        Ok(())
    }

    /// Read an index file, zstd-compressed or (as older versions wrote it) plain text.
    pub fn load(path: &Path) -> Result<Index, ArchiveError> {
        let f = File::open(path).map_err(|e| ArchiveError::io("open the index", path, e))?;
        Index::read_any(BufReader::new(f), path)
    }

    /// [`read_from`](Self::read_from) of the text itself or of its zstd compression (what
    /// [`save`](Self::save) writes).
    pub fn read_any<R: BufRead>(mut r: R, source: &Path) -> Result<Index, ArchiveError> {
        let head = r
            .fill_buf()
            .map_err(|e| ArchiveError::io("read the index", source, e))?;
        if !head.starts_with(&ZSTD_MAGIC) {
            return Index::read_from(r, source);
        }
        let z = zstd::stream::Decoder::with_buffer(r)
            .map_err(|e| ArchiveError::io("read the index", source, e))?;
        Index::read_from(BufReader::with_capacity(1 << 16, z), source)
    }
}

/// A byte written as itself in the index (everything else is `%XX`).
fn plain(b: u8) -> bool {
    b > b' ' && b < 0x7f && b != b'%'
}

fn escape_into(path: &[u8], out: &mut Vec<u8>) {
    if path.iter().all(|&b| plain(b)) {
        out.extend_from_slice(path);
        return;
    }
    for &b in path {
        if plain(b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
}

fn unescape(s: &[u8]) -> Result<Vec<u8>, String> {
    if s.iter().all(|&b| plain(b)) {
        return Ok(s.to_vec());
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "bad %-escape in the path".to_string())?;
            out.push(hex);
            i += 3;
        } else if b > b' ' && b < 0x7f {
            out.push(b);
            i += 1;
        } else {
            return Err("unescaped control or non-ASCII byte in the path".into());
        }
    }
    Ok(out)
}

/// A decimal field (`-` allowed when `signed`), parsed from bytes without
/// going through `str`; `None` if malformed or out of range.
fn decimal(f: &[u8], signed: bool) -> Option<i128> {
    let (neg, digits) = match f.split_first() {
        Some((b'-', rest)) if signed => (true, rest),
        _ => (false, f),
    };
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut v: i128 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i128::from(d - b'0');
    }
    Some(if neg { -v } else { v })
}

fn parse_line(line: &[u8]) -> Result<IndexEntry, String> {
    let mut fields = line.splitn(10, |&c| c == b' ');
    let mut next = |name: &str| -> Result<&[u8], String> {
        fields
            .next()
            .ok_or_else(|| format!("missing field `{name}`"))
    };
    fn num<T: TryFrom<i128>>(f: &[u8], name: &str, signed: bool) -> Result<T, String> {
        decimal(f, signed)
            .and_then(|v| T::try_from(v).ok())
            .ok_or_else(|| {
                format!(
                    "field `{name}` is not a number: {:?}",
                    String::from_utf8_lossy(f)
                )
            })
    }
    let kind = next("kind")?;
    let kind = std::str::from_utf8(kind)
        .ok()
        .and_then(EntryKind::from_code)
        .ok_or_else(|| format!("unknown kind {:?}", String::from_utf8_lossy(kind)))?;
    let size = num(next("size")?, "size", false)?;
    let mtime_ns = num(next("mtime_ns")?, "mtime_ns", true)?;
    let ctime_ns = num(next("ctime_ns")?, "ctime_ns", true)?;
    let ino = num(next("ino")?, "ino", false)?;
    let dev = num(next("dev")?, "dev", false)?;
    let mode_s = next("mode")?;
    let mode = std::str::from_utf8(mode_s)
        .ok()
        .filter(|m| !m.is_empty() && m.bytes().all(|b| (b'0'..=b'7').contains(&b)))
        .and_then(|m| u32::from_str_radix(m, 8).ok())
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| {
            format!(
                "field `mode` is not an octal mode: {:?}",
                String::from_utf8_lossy(mode_s)
            )
        })?;
    let uid = num(next("uid")?, "uid", false)?;
    let gid = num(next("gid")?, "gid", false)?;
    let raw_path = fields.next().ok_or("missing field `path`")?;
    let path = if raw_path == b"." {
        Vec::new()
    } else {
        let p = unescape(raw_path)?;
        if p.is_empty()
            || p.starts_with(b"/")
            || p.ends_with(b"/")
            || p.split(|&c| c == b'/')
                .any(|c| c.is_empty() || c == b"." || c == b"..")
            || p.contains(&0)
        {
            return Err("the path is not a clean relative path".into());
        }
        p
    };
    Ok(IndexEntry {
        path,
        kind,
        size,
        mtime_ns,
        ctime_ns,
        ino,
        dev,
        mode,
        uid,
        gid,
    })
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
mod tests {
    use super::*;

    fn entry(path: &[u8], kind: EntryKind) -> IndexEntry {
        IndexEntry {
            path: path.to_vec(),
            kind,
            size: 42,
            mtime_ns: -1_000_000_001,
            ctime_ns: 1_700_000_000_123_456_789,
            ino: 99,
            dev: 2049,
            mode: 0o4755,
            uid: 1234,
            gid: 5678,
        }
    }

    fn sample() -> Index {
        Index::from_entries(vec![
            entry(b"", EntryKind::Dir),
            entry(b"a", EntryKind::Dir),
            entry(b"a/b", EntryKind::File),
            entry(b"a-c", EntryKind::File),
            entry(b"a/z", EntryKind::Symlink),
            entry(b"sp ace%\n\xff\x01", EntryKind::Fifo),
            entry("ünï".as_bytes(), EntryKind::CharDevice),
        ])
    }

    #[test]
    fn tree_order_puts_subtrees_together() {
        let idx = sample();
        let paths: Vec<&[u8]> = idx.entries().iter().map(|e| e.path.as_slice()).collect();
        assert_eq!(paths[..5], [&b""[..], b"a", b"a/b", b"a/z", b"a-c"]);
        assert_eq!(idx.descendants(b"a").len(), 2);
        assert_eq!(idx.descendants(b"").len(), idx.len() - 1);
        assert!(idx.descendants(b"a/b").is_empty());
        assert_eq!(idx.get(b"a/z").map(|e| e.kind), Some(EntryKind::Symlink));
        assert!(idx.get(b"a/y").is_none());
    }

    #[test]
    fn roundtrip_through_text() {
        let idx = sample();
        let mut buf = Vec::new();
        idx.write_to(&mut buf).expect("write");
        assert!(buf.is_ascii());
        let back = Index::read_from(&buf[..], Path::new("mem")).expect("read");
        assert_eq!(back, idx);
    }

    #[test]
    fn save_and_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("index");
        sample().save(&p).expect("save");
        assert_eq!(Index::load(&p).expect("load"), sample());
    }

    #[test]
    fn corrupt_inputs_are_errors_not_panics() {
        let mut good = Vec::new();
        sample().write_to(&mut good).expect("write");
        let text = String::from_utf8(good.clone()).expect("ascii");
        let lines: Vec<&str> = text.lines().collect();
        let mut cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"garbage\n".to_vec(),
            good[..good.len() - 1].to_vec(), // no final newline
            lines[..lines.len() - 1].join("\n").into(), // no end line
            format!("{}\nend 3\n", lines[..lines.len() - 1].join("\n")).into(),
            text.replace(" 4755 ", " 9999 ").into(),
            text.replace("%FF", "%G1").into(),
            text.replace("f 42", "x 42").into(),
            text.replace("d 42", "d -5").into(),
            format!("{}\n{}\n", text.trim_end(), lines[1]).into(),
        ];
        // Swap two entry lines: order violation.
        let mut swapped: Vec<&str> = lines.clone();
        swapped.swap(2, 3);
        cases.push(format!("{}\n", swapped.join("\n")).into());
        // Every truncation point.
        for cut in 0..good.len() {
            cases.push(good[..cut].to_vec());
        }
        for (i, c) in cases.iter().enumerate() {
            let r = Index::read_from(&c[..], Path::new("idx"));
            assert!(
                r.is_err(),
                "case {i} parsed: {:?}",
                String::from_utf8_lossy(c)
            );
        }
        let msg = Index::read_from(&b"allspark-index 1\n"[..], Path::new("/x/idx"))
            .expect_err("truncated")
            .to_string();
        assert!(msg.contains("/x/idx") && msg.contains("end"), "{msg}");
    }

    #[test]
    fn unsafe_paths_in_index_are_rejected() {
        for p in ["../x", "/abs", "a//b", "a/./b", "a/"] {
            let text = format!("allspark-index 1\nf 1 1 1 1 1 644 0 0 {p}\nend 1\n");
            assert!(
                Index::read_from(text.as_bytes(), Path::new("i")).is_err(),
                "{p}"
            );
        }
    }

    #[test]
    fn same_state_ignores_dev_only() {
        let a = entry(b"x", EntryKind::File);
        let mut b = a.clone();
        b.dev = 7;
        assert!(a.same_state(&b));
        b.ctime_ns += 1;
        assert!(!a.same_state(&b));
    }
}
