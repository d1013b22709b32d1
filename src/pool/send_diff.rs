//! What changed between two read-only snapshots, from the kernel's metadata-only send stream: the paths it touches, so an incremental archive walks only the directories they concern.
//!
//! The stream (`btrfs-stream\0`, le32 version, then commands: le32 length, le16 type, le32
//! crc32c, attributes as le16 type, le16 length, value) is asked of the kernel with
//! [`btrfs::send_no_data`] and read here as it is written. Only the path attributes matter:
//! a command that makes, removes or renames a name marks its path as a new subtree (everything
//! below it is new to the parent archive), one that changes an inode (times, mode, owner,
//! xattrs, extents) marks that path alone. Orphan names (`o<ino>-<gen>-<n>`, the kernel's
//! temporary names) are paths like any other. Anything unexpected (bad magic, an unknown
//! version or command, a truncated command, a bad checksum) is an error: the caller then walks
//! the whole tree.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::BorrowedFd;

use super::btrfs;
use crate::archive::index::{EntryKind, Index};

const MAGIC: &[u8; 13] = b"btrfs-stream\0";
const VERSION: u32 = 1;
/// A version 1 command fits the kernel's 64 KiB send buffer.
const MAX_COMMAND: usize = 64 << 10;

// Command types (btrfs-progs `send.h`, version 1).
const C_SUBVOL: u16 = 1;
const C_SNAPSHOT: u16 = 2;
const C_MKFILE: u16 = 3;
const C_SYMLINK: u16 = 8;
const C_RENAME: u16 = 9;
const C_LINK: u16 = 10;
const C_UNLINK: u16 = 11;
const C_RMDIR: u16 = 12;
const C_SET_XATTR: u16 = 13;
const C_UTIMES: u16 = 20;
const C_END: u16 = 21;
const C_UPDATE_EXTENT: u16 = 22;

// Attribute types.
const A_PATH: u16 = 15;
const A_PATH_TO: u16 = 16;
const A_PATH_LINK: u16 = 17;

/// The paths a send stream touches, with what a walk may skip because of them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touched {
    /// Every touched path and each of its ancestors: the directories a walk must list.
    listed: HashSet<Vec<u8>>,
    /// Paths where a name was made, removed or renamed: everything below them must be walked.
    subtrees: HashSet<Vec<u8>>,
}

impl Touched {
    /// The inode at `path` changed: walk it and its ancestors.
    fn inode(&mut self, path: &[u8]) {
        let mut p = path;
        while self.listed.insert(p.to_vec()) && !p.is_empty() {
            p = parent(p);
        }
    }

    /// A name at `path` was made, removed or renamed: walk it, its ancestors and all below it.
    fn name(&mut self, path: &[u8]) {
        self.inode(path);
        self.subtrees.insert(path.to_vec());
    }

    /// Can a walk of the newer snapshot skip directory `dir` (a path relative to the root),
    /// taking its entries from the parent archive's index? True when `dir` is neither a touched
    /// path, an ancestor of one, nor below a path where a name changed.
    pub fn skips(&self, dir: &[u8]) -> bool {
        if self.listed.contains(dir) {
            return false;
        }
        let mut p = dir;
        loop {
            if self.subtrees.contains(p) {
                return false;
            }
            if p.is_empty() {
                return true;
            }
            p = parent(p);
        }
    }

    /// Also touch what the parent archive's index says a skip would miss: every name of an
    /// inode with several names (a change to it is sent under one of them only, while the
    /// others' `lstat` changes too), and every file whose last read failed (written again next
    /// time, see `archive::entries`).
    pub fn add_index_hazards(&mut self, parent_index: &Index) {
        let mut seen = HashSet::new();
        let mut linked = HashSet::new();
        for e in parent_index.entries() {
            if e.kind != EntryKind::Dir && !seen.insert(e.ino) {
                linked.insert(e.ino);
            }
        }
        for e in parent_index.entries() {
            if e.kind != EntryKind::Dir && (linked.contains(&e.ino) || e.mtime_ns == i64::MIN) {
                self.inode(&e.path);
            }
        }
    }

    /// How many paths must be listed (touched paths and their ancestors).
    pub fn len(&self) -> usize {
        self.listed.len()
    }

    /// True when the stream touched nothing.
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }
}

/// `a/b/c` -> `a/b`; `a` -> the root (empty).
fn parent(p: &[u8]) -> &[u8] {
    p.iter()
        .rposition(|&c| c == b'/')
        .map_or(&[][..], |i| &p[..i])
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Fill `buf` from `r`; `Ok(false)` at a clean end of stream (nothing read).
fn read_full(r: &mut impl Read, buf: &mut [u8], what: &str) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(invalid(format!("send stream truncated in {what}"))),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Read a whole metadata-only send stream (one subvolume, ending with its `end` command) into
/// the paths it touches.
pub fn parse(mut r: impl Read) -> io::Result<Touched> {
    let mut head = [0u8; 17];
    if !read_full(&mut r, &mut head, "its header")? || &head[..13] != MAGIC {
        return Err(invalid("not a btrfs send stream (bad magic)"));
    }
    let version = u32::from_le_bytes([head[13], head[14], head[15], head[16]]);
    if version != VERSION {
        return Err(invalid(format!("send stream version {version} unknown")));
    }
    let mut touched = Touched::default();
    let mut cmd = Vec::new();
    loop {
        let mut h = [0u8; 10];
        if !read_full(&mut r, &mut h, "a command header")? {
            return Err(invalid("send stream truncated: no end command"));
        }
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let kind = u16::from_le_bytes([h[4], h[5]]);
        let crc = u32::from_le_bytes([h[6], h[7], h[8], h[9]]);
        if len > MAX_COMMAND {
            return Err(invalid(format!("send stream command of {len} bytes")));
        }
        cmd.clear();
        cmd.extend_from_slice(&h);
        cmd[6..10].fill(0);
        cmd.resize(10 + len, 0);
        if len > 0 && !read_full(&mut r, &mut cmd[10..], "a command")? {
            return Err(invalid("send stream truncated in a command"));
        }
        if crc32c(&cmd) != crc {
            return Err(invalid(format!("send stream command {kind}: bad checksum")));
        }
        if kind == C_END {
            let mut more = [0u8; 1];
            if read_full(&mut r, &mut more, "the end")? {
                return Err(invalid("send stream goes on after its end command"));
            }
            return Ok(touched);
        }
        command(&mut touched, kind, &cmd[10..])?;
    }
}

/// Record the paths of one command (its type and attributes).
fn command(t: &mut Touched, kind: u16, attrs: &[u8]) -> io::Result<()> {
    let (mut path, mut to, mut link) = (None, None, None);
    let mut rest = attrs;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(invalid(format!(
                "send stream command {kind}: truncated attribute"
            )));
        }
        let ty = u16::from_le_bytes([rest[0], rest[1]]);
        let len = u16::from_le_bytes([rest[2], rest[3]]) as usize;
        let Some(value) = rest.get(4..4 + len) else {
            return Err(invalid(format!(
                "send stream command {kind}: truncated attribute {ty}"
            )));
        };
        match ty {
            A_PATH => path = Some(checked(value)?),
            A_PATH_TO => to = Some(checked(value)?),
            A_PATH_LINK => link = Some(checked(value)?),
            _ => {}
        }
        rest = &rest[4 + len..];
    }
    fn need<'p>(p: Option<&'p [u8]>, kind: u16, what: &str) -> io::Result<&'p [u8]> {
        p.ok_or_else(|| invalid(format!("send stream command {kind} without {what}")))
    }
    match kind {
        // The name of the subvolume sent, not a path inside it.
        C_SUBVOL | C_SNAPSHOT => {}
        C_MKFILE..=C_SYMLINK | C_UNLINK | C_RMDIR => t.name(need(path, kind, "a path")?),
        C_RENAME => {
            t.name(need(path, kind, "a path")?);
            t.name(need(to, kind, "a destination")?);
        }
        C_LINK => {
            t.name(need(path, kind, "a path")?);
            t.inode(need(link, kind, "a link target")?);
        }
        C_SET_XATTR..=C_UTIMES | C_UPDATE_EXTENT => t.inode(need(path, kind, "a path")?),
        _ => return Err(invalid(format!("send stream command {kind} unknown"))),
    }
    Ok(())
}

/// A path of the stream, relative to the subvolume's root (empty for the root itself).
fn checked(p: &[u8]) -> io::Result<&[u8]> {
    let bad = p.contains(&0)
        || (!p.is_empty()
            && p.split(|&c| c == b'/')
                .any(|c| c.is_empty() || c == b"." || c == b".."));
    if bad {
        return Err(invalid(format!(
            "send stream path {:?} is not relative",
            String::from_utf8_lossy(p)
        )));
    }
    Ok(p)
}

/// CRC-32C as btrfs computes a command's checksum: seed 0, no inversion before or after
/// (the `crc32c` crate computes the standard form, inverted on both sides).
fn crc32c(data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!0, data)
}

/// The paths touched between the read-only snapshot open as `older` and the read-only snapshot
/// open as `newer` (of the same filesystem), from the kernel's send stream read as it is
/// written by another thread.
pub fn between(older: BorrowedFd<'_>, newer: BorrowedFd<'_>) -> io::Result<Touched> {
    let parent_root = btrfs::subvolume_id(older)?;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    std::thread::scope(|s| {
        // The write end is dropped when the kernel is done, which ends the reader's stream;
        // a reader that gives up drops the read end, which stops the kernel (EPIPE).
        let sender = s.spawn(move || btrfs::send_no_data(newer, parent_root, wr));
        let parsed = parse(BufReader::with_capacity(1 << 16, File::from(rd)));
        let sent = sender
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the send thread panicked")));
        sent.map_err(|e| io::Error::new(e.kind(), format!("btrfs send: {e}")))?;
        parsed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command as the kernel frames it: header, attributes, checksum over both.
    fn cmd(kind: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (ty, v) in attrs {
            body.extend_from_slice(&ty.to_le_bytes());
            body.extend_from_slice(&(v.len() as u16).to_le_bytes());
            body.extend_from_slice(v);
        }
        let mut c = Vec::new();
        c.extend_from_slice(&(body.len() as u32).to_le_bytes());
        c.extend_from_slice(&kind.to_le_bytes());
        c.extend_from_slice(&[0; 4]);
        c.extend_from_slice(&body);
        let crc = crc32c(&c);
        c[6..10].copy_from_slice(&crc.to_le_bytes());
        c
    }

    fn stream(cmds: &[Vec<u8>]) -> Vec<u8> {
        let mut s = MAGIC.to_vec();
        s.extend_from_slice(&1u32.to_le_bytes());
        s.extend_from_slice(&cmd(C_SNAPSHOT, &[(A_PATH, b"snap-name"), (1, &[7; 16])]));
        for c in cmds {
            s.extend_from_slice(c);
        }
        s.extend_from_slice(&cmd(C_END, &[]));
        s
    }

    fn err(s: &[u8]) -> String {
        parse(s).expect_err("a bad stream").to_string()
    }

    #[test]
    fn crc32c_is_castagnoli_without_inversions() {
        // The standard check value (inverted before and after) and btrfs' raw form of it.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0x58E3_FA20);
    }

    #[test]
    fn names_mark_subtrees_and_inode_changes_only_their_path() {
        let s = stream(&[
            cmd(C_UTIMES, &[(A_PATH, b"")]),
            cmd(C_MKFILE, &[(A_PATH, b"o261-7-0")]),
            cmd(C_RENAME, &[(A_PATH, b"o261-7-0"), (A_PATH_TO, b"new/f")]),
            cmd(C_RENAME, &[(A_PATH, b"old/dir"), (A_PATH_TO, b"moved")]),
            cmd(C_LINK, &[(A_PATH, b"l/two"), (A_PATH_LINK, b"l/one")]),
            cmd(C_UPDATE_EXTENT, &[(A_PATH, b"data/file"), (18, &[0; 8])]),
            cmd(C_CHMOD_FOR_TEST, &[(A_PATH, b"deep/a/b")]),
        ]);
        let t = parse(&s[..]).expect("parse");
        // Ancestors of touched paths are walked, the root always.
        for walked in [
            &b""[..],
            b"new",
            b"old",
            b"old/dir",
            b"moved",
            b"l",
            b"data",
            b"deep/a",
        ] {
            assert!(!t.skips(walked), "{}", String::from_utf8_lossy(walked));
        }
        // Below a renamed or new name everything is walked; below an inode change, nothing.
        assert!(!t.skips(b"moved/sub/deeper"));
        assert!(!t.skips(b"o261-7-0/x"));
        assert!(!t.skips(b"deep/a/b"));
        assert!(t.skips(b"deep/a/b/c"));
        assert!(t.skips(b"data/other"));
        assert!(t.skips(b"untouched"));
        assert!(t.skips(b"l/one/x"));
        // The subvolume's own name is no path inside it.
        assert!(t.skips(b"snap-name"));
    }
    const C_CHMOD_FOR_TEST: u16 = 18;

    #[test]
    fn bad_streams_are_errors() {
        let good = stream(&[cmd(C_MKFILE, &[(A_PATH, b"f")])]);
        assert!(parse(&good[..]).is_ok());
        let mut bad_magic = good.clone();
        bad_magic[0] = b'B';
        assert!(err(&bad_magic).contains("bad magic"));
        let mut v2 = good.clone();
        v2[13] = 2;
        assert!(err(&v2).contains("version 2 unknown"));
        for cut in [5, 17, 20, good.len() - 3] {
            assert!(err(&good[..cut]).contains("truncated"), "cut at {cut}");
        }
        let no_end = &good[..good.len() - 10];
        assert!(err(no_end).contains("no end command"));
        let mut flipped = good.clone();
        let at = good.len() - 12; // inside the mkfile's path
        flipped[at] ^= 1;
        assert!(err(&flipped).contains("bad checksum"));
        let mut after_end = good.clone();
        after_end.push(0);
        assert!(err(&after_end).contains("after its end"));
        let unknown = stream(&[cmd(40, &[(A_PATH, b"f")])]);
        assert!(err(&unknown).contains("command 40 unknown"));
        let pathless = stream(&[cmd(C_UNLINK, &[])]);
        assert!(err(&pathless).contains("without a path"));
        let absolute = stream(&[cmd(C_UNLINK, &[(A_PATH, b"/etc")])]);
        assert!(err(&absolute).contains("not relative"));
        let dotdot = stream(&[cmd(C_UNLINK, &[(A_PATH, b"a/../b")])]);
        assert!(err(&dotdot).contains("not relative"));
        let mut short_attr = cmd(C_UNLINK, &[(A_PATH, b"abc")]);
        short_attr[0] -= 1; // the attribute runs past the command
        short_attr.pop();
        let c = crc32c(&{
            let mut z = short_attr.clone();
            z[6..10].fill(0);
            z
        });
        short_attr[6..10].copy_from_slice(&c.to_le_bytes());
        assert!(err(&stream(&[short_attr])).contains("truncated attribute"));
        assert!(err(b"").contains("bad magic"));
    }

    #[test]
    fn index_hazards_touch_every_name_of_a_linked_inode_and_failed_reads() {
        let e = |path: &str, kind, ino, mtime_ns| crate::archive::index::IndexEntry {
            path: path.as_bytes().to_vec(),
            kind,
            size: 0,
            mtime_ns,
            ctime_ns: 0,
            ino,
            dev: 1,
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        let idx = Index::from_entries(vec![
            e("", EntryKind::Dir, 256, 1),
            e("a", EntryKind::Dir, 257, 1),
            e("a/x", EntryKind::File, 300, 1),
            e("b", EntryKind::Dir, 258, 1),
            e("b/y", EntryKind::File, 300, 1),
            e("c", EntryKind::Dir, 259, 1),
            e("c/z", EntryKind::File, 301, i64::MIN),
            e("d", EntryKind::Dir, 260, 1),
            e("d/w", EntryKind::File, 302, 1),
        ]);
        let mut t = Touched::default();
        t.add_index_hazards(&idx);
        assert!(!t.skips(b"a") && !t.skips(b"b") && !t.skips(b"c"));
        assert!(t.skips(b"d"));
    }
}
