//! Shared helpers for the archive integration tests: tree fingerprints, GNU tar, torture trees.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Everything we promise to restore about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub size: u64,
    /// Fingerprint of the content: non-zero 4 KiB blocks with their offsets.
    pub content: Option<u64>,
    pub link_target: Option<Vec<u8>>,
    pub rdev: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Smallest path sharing this inode (hard links), if nlink > 1.
    pub link_group: Option<Vec<u8>>,
}

pub type Tree = BTreeMap<Vec<u8>, Meta>;

fn kind(ft: &fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else {
        "socket"
    }
}

/// Content fingerprint that does not read holes: data segments are found
/// with SEEK_DATA/SEEK_HOLE and all-zero blocks are ignored, so a sparse file
/// and a dense file with the same bytes compare equal.
pub fn content_fingerprint(path: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let f = File::open(path).expect("open for fingerprint");
    let size = f.metadata().expect("meta").len() as i64;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    size.hash(&mut h);
    let fd = f.as_raw_fd();
    let mut pos = 0i64;
    let mut buf = vec![0u8; 4096];
    while pos < size {
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 || data >= size {
            break;
        }
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) }.min(size);
        let mut off = data - data % 4096;
        while off < hole {
            let n = f.read_at(&mut buf, off as u64).expect("read");
            if n == 0 {
                break;
            }
            if buf[..n].iter().any(|&b| b != 0) {
                off.hash(&mut h);
                buf[..n].hash(&mut h);
            }
            off += n as i64;
        }
        pos = hole.max(data + 1);
    }
    h.finish()
}

/// Fingerprint of a whole tree (root is the empty path). Sockets are left out.
pub fn snapshot(root: &Path) -> Tree {
    let mut out = Tree::new();
    let mut inodes: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut stack = vec![Vec::<u8>::new()];
    let mut all = Vec::new();
    while let Some(rel) = stack.pop() {
        let p = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(OsStr::from_bytes(&rel))
        };
        let m = fs::symlink_metadata(&p).expect("lstat");
        let ft = m.file_type();
        if ft.is_socket() {
            continue;
        }
        if ft.is_dir() {
            for e in fs::read_dir(&p).expect("read_dir") {
                let e = e.expect("dirent");
                let mut child = rel.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(e.file_name().as_bytes());
                stack.push(child);
            }
        }
        if ft.is_file() && m.nlink() > 1 {
            let e = inodes.entry(m.ino()).or_insert_with(|| rel.clone());
            if rel < *e {
                *e = rel.clone();
            }
        }
        all.push((rel, p, m));
    }
    for (rel, p, m) in all {
        let ft = m.file_type();
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = xattr::list(&p)
            .map(|names| {
                names
                    .filter_map(|n| {
                        let v = xattr::get(&p, &n).ok().flatten()?;
                        Some((n.as_bytes().to_vec(), v))
                    })
                    .collect()
            })
            .unwrap_or_default();
        xattrs.sort();
        let meta = Meta {
            kind: kind(&ft),
            mode: if ft.is_symlink() {
                0
            } else {
                m.mode() & 0o7777
            },
            uid: m.uid(),
            gid: m.gid(),
            mtime: m.mtime(),
            size: if ft.is_file() { m.len() } else { 0 },
            content: ft.is_file().then(|| content_fingerprint(&p)),
            link_target: ft.is_symlink().then(|| {
                fs::read_link(&p)
                    .expect("readlink")
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            }),
            rdev: if ft.is_char_device() || ft.is_block_device() {
                m.rdev()
            } else {
                0
            },
            xattrs,
            link_group: if ft.is_file() && m.nlink() > 1 {
                inodes.get(&m.ino()).cloned()
            } else {
                None
            },
        };
        out.insert(rel, meta);
    }
    out
}

/// Assert two trees are identical, listing every difference.
pub fn assert_same_tree(expected: &Tree, actual: &Tree, what: &str) {
    let mut diffs = Vec::new();
    for (k, v) in expected {
        match actual.get(k) {
            None => diffs.push(format!("missing: {}", String::from_utf8_lossy(k))),
            Some(a) if a != v => diffs.push(format!(
                "differs: {}\n   expected {v:?}\n   actual   {a:?}",
                String::from_utf8_lossy(k)
            )),
            _ => {}
        }
    }
    for k in actual.keys() {
        if !expected.contains_key(k) {
            diffs.push(format!("extra: {}", String::from_utf8_lossy(k)));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Extract with GNU tar the way the README documents it.
pub fn gnu_extract(archive: &Path, dest: &Path) {
    fs::create_dir_all(dest).expect("mkdir");
    run(Command::new("tar")
        .arg("--xattrs")
        .arg("--xattrs-include=*")
        .arg("--numeric-owner")
        .arg("-xpzf")
        .arg(archive)
        .arg("-C")
        .arg(dest));
}

/// Entry names as GNU tar lists them.
pub fn gnu_list(archive: &Path) -> Vec<String> {
    run(Command::new("tar").arg("-tzf").arg(archive))
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn set_times(p: &Path, secs: i64, nsec: i64) {
    let c = CString::new(p.as_os_str().as_bytes()).expect("cstring");
    let ts = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nsec,
        },
    ];
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", p.display());
}

pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
}

pub fn lchown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).expect("lchown");
}

pub fn mkfifo(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).expect("cstring");
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0, "mkfifo");
}

pub fn mknod_char(p: &Path, major: u32, minor: u32) {
    let c = CString::new(p.as_os_str().as_bytes()).expect("cstring");
    let dev = libc::makedev(major, minor);
    assert_eq!(
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o620, dev) },
        0,
        "mknod"
    );
}

/// Deterministic pseudo-random bytes.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(n);
    v
}

pub fn text(n: usize, seed: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 32);
    let mut i = seed;
    while v.len() < n {
        v.extend_from_slice(format!("line {i} of some compressible text\n").as_bytes());
        i += 1;
    }
    v.truncate(n);
    v
}

/// Try to set a user xattr; false (with a loud message) if the filesystem refuses.
pub fn try_xattr(p: &Path, name: &str, value: &[u8]) -> bool {
    match xattr::set(p, name, value) {
        Ok(()) => true,
        Err(e) => {
            eprintln!(
                "!!!!! WARNING: cannot set xattr {name} on {}: {e}; xattr checks are SKIPPED !!!!!",
                p.display()
            );
            false
        }
    }
}

pub fn tempdir() -> tempfile::TempDir {
    // Keep test trees off tmpfs if /tmp is one (sparse + xattrs need a real fs).
    tempfile::Builder::new()
        .prefix("allspark-archive-test")
        .tempdir_in(std::env::temp_dir())
        .expect("tempdir")
}

pub fn p(root: &Path, rel: &str) -> PathBuf {
    root.join(rel)
}

pub fn read_all(p: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(p)
        .expect("open")
        .read_to_end(&mut v)
        .expect("read");
    v
}
