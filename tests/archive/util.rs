//! Shared helpers for the archive integration tests: tree fingerprints, GNU tar (both codecs), the torture tree, archive writing.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use allspark::archive::{write_archive, CompressOptions, Compression, WriteOptions, WriteReport};

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

/// The codec of an archive file, from its magic number.
pub fn codec_of(archive: &Path) -> Compression {
    let mut magic = [0u8; 4];
    File::open(archive)
        .and_then(|mut f| f.read_exact(&mut magic))
        .expect("read the archive's magic");
    match magic {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
        m => panic!("{} is neither gzip nor zstd: {m:02x?}", archive.display()),
    }
}

/// GNU tar's option selecting the codec of `archive`, as the README's recipes write it.
fn codec_flag(archive: &Path) -> &'static str {
    match codec_of(archive) {
        Compression::Gzip => "--gzip",
        Compression::Zstd => "--zstd",
    }
}

/// Extract with GNU tar the way the README documents it (`-xpzf` or `--zstd -xpf`).
pub fn gnu_extract(archive: &Path, dest: &Path) {
    gnu_extract_with(archive, dest, &[codec_flag(archive)]);
}

/// Extract with GNU tar, selecting the codec with `codec_args` (e.g. `-I zstd`).
pub fn gnu_extract_with(archive: &Path, dest: &Path, codec_args: &[&str]) {
    fs::create_dir_all(dest).expect("mkdir");
    run(Command::new("tar")
        .args(codec_args)
        .arg("--xattrs")
        .arg("--xattrs-include=*")
        .arg("--numeric-owner")
        .arg("-xpf")
        .arg(archive)
        .arg("-C")
        .arg(dest));
}

/// Entry names as GNU tar lists them.
pub fn gnu_list(archive: &Path) -> Vec<String> {
    run(Command::new("tar")
        .arg(codec_flag(archive))
        .arg("-tf")
        .arg(archive))
    .lines()
    .map(str::to_string)
    .collect()
}

/// Write options with the default settings of `codec`.
pub fn codec_opts<'a>(codec: Compression) -> WriteOptions<'a> {
    WriteOptions {
        compression: CompressOptions::new(codec),
        ..WriteOptions::default()
    }
}

/// Archive `src` into the file `archive` with `opts`.
pub fn write_to(src: &Path, archive: &Path, opts: &WriteOptions) -> WriteReport {
    write_archive(
        src,
        File::create(archive).expect("create the archive"),
        opts,
    )
    .expect("write_archive")
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

pub use crate::support::harness::noise;

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

pub const TWO_GIB: u64 = 2 << 30;

/// Build the torture tree (deep and long names, non-UTF-8 names, owners, every
/// mode bit, symlinks, hard links, sparse files up to 2 GiB, FIFOs, a device
/// node, a socket, xattrs of several namespaces, nanosecond mtimes); returns
/// whether xattrs could be set.
pub fn build_torture(root: &Path) -> bool {
    // Deep path, well past 100 bytes (GNU long names) and 50 levels.
    let mut deep = root.to_path_buf();
    for i in 0..50 {
        deep.push(format!("level-{i:02}"));
    }
    fs::create_dir_all(&deep).expect("deep dirs");
    fs::write(deep.join("leaf.txt"), b"deep leaf\n").expect("leaf");
    let long_name = "n".repeat(200);
    fs::write(deep.join(&long_name), b"long name").expect("long name");
    // A symlink with a long target deep down.
    symlink(format!("../../{}", "x".repeat(150)), deep.join("long-link")).expect("long link");
    // A hard link whose first name (the link target) is the deep one: a GNU long link.
    fs::hard_link(deep.join("leaf.txt"), p(root, "zz-leaf-alias")).expect("deep hard link");

    // Unicode and non-UTF-8 names.
    fs::create_dir(p(root, "日本語")).expect("mkdir");
    fs::write(p(root, "日本語/ファイル.txt"), "こんにちは".as_bytes()).expect("write");
    fs::write(p(root, "ünïcödé-😀.txt"), b"unicode").expect("write");
    fs::write(
        root.join(OsStr::from_bytes(b"bad-\xff\xfe.bin")),
        b"not utf8",
    )
    .expect("write");
    fs::write(p(root, "name with spaces & %percent"), b"x").expect("write");

    // Empty dirs.
    fs::create_dir_all(p(root, "empty2/nested-empty")).expect("mkdir");
    fs::create_dir(p(root, "empty")).expect("mkdir");

    // Plain files of various sizes.
    fs::write(p(root, "zero-bytes"), b"").expect("write");
    fs::write(p(root, "one-byte"), b"1").expect("write");
    fs::write(p(root, "text-100k.txt"), text(100_000, 1)).expect("write");
    fs::write(p(root, "random-3m.bin"), noise(5, 3 << 20)).expect("write");

    // Symlinks: relative, dangling, absolute, to a directory.
    symlink("text-100k.txt", p(root, "link-rel")).expect("symlink");
    symlink("does/not/exist", p(root, "link-dangling")).expect("symlink");
    symlink("/etc/passwd", p(root, "link-abs")).expect("symlink");
    symlink("level-00", p(root, "link-dir")).expect("symlink");

    // Hard links: three names, one in a subdirectory.
    fs::create_dir_all(p(root, "hl/sub")).expect("mkdir");
    fs::write(p(root, "hl/one"), text(50_000, 7)).expect("write");
    fs::hard_link(p(root, "hl/one"), p(root, "hl/two")).expect("link");
    fs::hard_link(p(root, "hl/one"), p(root, "hl/sub/three")).expect("link");

    // Sparse files: a small one with holes inside and at the end, and 2 GiB.
    let f = File::create(p(root, "sparse-small")).expect("create");
    f.set_len(8 << 20).expect("set_len");
    f.write_at(&text(10_000, 3), 1 << 20).expect("write");
    f.write_at(b"middle", 5 << 20).expect("write");
    let f = File::create(p(root, "sparse-2g")).expect("create");
    f.set_len(TWO_GIB).expect("set_len");
    f.write_at(b"one gibibyte in", 1 << 30).expect("write");
    f.write_at(b"the end", TWO_GIB - 7).expect("write");
    drop(f);

    // Modes, including setuid/setgid/sticky.
    fs::create_dir(p(root, "modes")).expect("mkdir");
    for mode in [
        0o000, 0o400, 0o644, 0o755, 0o777, 0o4755, 0o2755, 0o1777, 0o6750, 0o7777, 0o4000, 0o1000,
    ] {
        let f = p(root, &format!("modes/m{mode:04o}"));
        fs::write(&f, format!("{mode:o}")).expect("write");
        lchown(&f, 1234, 5678);
        chmod(&f, mode); // after chown: chown clears setuid/setgid
    }
    fs::create_dir(p(root, "modes/dir-sticky")).expect("mkdir");
    chmod(&p(root, "modes/dir-sticky"), 0o1777);
    fs::create_dir(p(root, "modes/dir-setgid")).expect("mkdir");
    fs::write(p(root, "modes/dir-setgid/inside"), b"in setgid dir").expect("write");
    chmod(&p(root, "modes/dir-setgid"), 0o2750);
    fs::create_dir(p(root, "modes/dir-0000")).expect("mkdir");
    fs::write(p(root, "modes/dir-0000/locked"), b"in a 0000 dir").expect("write");
    chmod(&p(root, "modes/dir-0000"), 0o000);
    fs::create_dir(p(root, "modes/dir-0555")).expect("mkdir");
    fs::write(p(root, "modes/dir-0555/ro-parent"), b"x").expect("write");
    chmod(&p(root, "modes/dir-0555"), 0o555);

    // Owners other than root, on a directory and a symlink too.
    fs::create_dir(p(root, "owned")).expect("mkdir");
    fs::write(p(root, "owned/file"), b"owned").expect("write");
    lchown(&p(root, "owned/file"), 1234, 5678);
    symlink("file", p(root, "owned/link")).expect("symlink");
    lchown(&p(root, "owned/link"), 4321, 8765);
    lchown(&p(root, "owned"), 1234, 5678);

    // Special files.
    mkfifo(&p(root, "pipe"));
    mknod_char(&p(root, "dev-null"), 1, 3);
    let _sock = std::os::unix::net::UnixListener::bind(p(root, "sock")).expect("socket");

    // Extended attributes: text, binary with newlines, on a dir, trusted.*.
    let mut xattrs_ok = try_xattr(&p(root, "text-100k.txt"), "user.test", b"hello");
    if xattrs_ok {
        xattrs_ok &= try_xattr(
            &p(root, "one-byte"),
            "user.bin",
            b"\x00\n\xff\n12 path=evil\n",
        );
        xattrs_ok &= try_xattr(&p(root, "hl/sub"), "user.dir", b"on a directory");
        xattrs_ok &= try_xattr(&deep.join("leaf.txt"), "user.deep", b"deep");
        xattrs_ok &= try_xattr(&p(root, "modes/m0000"), "trusted.t", b"trusted value");
        xattrs_ok &= try_xattr(root, "user.root", b"on the root");
        // On a symlink itself (user.* is not allowed there).
        if let Err(e) = xattr::set(p(root, "link-rel"), "trusted.sym", b"on a symlink") {
            eprintln!("!!!!! WARNING: cannot set trusted.* on a symlink: {e}; skipped !!!!!");
            xattrs_ok = false;
        }
    }

    // Root metadata and mtimes: files with nanoseconds, dirs set last.
    lchown(root, 1234, 5678);
    chmod(root, 0o750);
    let mut n = 0i64;
    let mut stack = vec![root.to_path_buf()];
    let mut dirs = Vec::new();
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("dirent");
            let ft = e.file_type().expect("type");
            if ft.is_dir() {
                stack.push(e.path());
            } else if !std::os::unix::fs::FileTypeExt::is_socket(&ft) {
                n += 1;
                set_times(&e.path(), 1_234_567_890 + n * 1000, 123_456_789);
            }
        }
        dirs.push(d);
    }
    for (i, d) in dirs.iter().rev().enumerate() {
        set_times(d, 1_000_000_000 + i as i64 * 86_400, 5);
    }
    xattrs_ok
}
