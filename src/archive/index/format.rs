//! The index's file format (described in the docs of [`index`](super)): writing and reading the
//! text, saving it zstd-compressed and loading either form, and the escaping of paths.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use super::{tree_order, EntryKind, Index, IndexEntry};
use crate::archive::ArchiveError;

const MAGIC: &str = "allspark-index 1";

/// The first bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// zstd level of saved indexes: the fastest, still ~8x smaller than the text.
const INDEX_ZSTD_LEVEL: i32 = 1;

impl Index {
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
