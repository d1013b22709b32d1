//! Hand-built hostile archives: every one is refused with a clear error and nothing is written outside the destination.

use crate::util;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::support::harness::gzip;
use allspark::archive::{extract, ArchiveError, ExtractOptions, ExtractReport};
use tar::{EntryType, Header};
use util::*;

/// A header with raw name bytes (bypassing tar-rs's own path checks).
fn hdr(name: &[u8], ty: EntryType, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_mode(if ty == EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_500_000_000);
    h.set_size(size);
    h.set_entry_type(ty);
    h.set_cksum();
    h
}

fn link_hdr(name: &[u8], ty: EntryType, target: &[u8]) -> Header {
    let mut h = hdr(name, ty, 0);
    h.as_old_mut().linkname[..target.len()].copy_from_slice(target);
    h.set_cksum();
    h
}

struct Raw(Vec<u8>);

impl Raw {
    fn new() -> Raw {
        Raw(Vec::new())
    }
    fn entry(mut self, h: &Header, data: &[u8]) -> Raw {
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    fn file(self, name: &[u8], data: &[u8]) -> Raw {
        self.entry(&hdr(name, EntryType::Regular, data.len() as u64), data)
    }
    /// Only a header (claims whatever size; the data is not there).
    fn header_only(mut self, h: &Header) -> Raw {
        self.0.extend_from_slice(h.as_bytes());
        self
    }
    fn end(mut self) -> Vec<u8> {
        self.0.extend([0u8; 1024]);
        gzip(&self.0)
    }
    fn end_raw(self) -> Vec<u8> {
        gzip(&self.0)
    }
}

fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let rest = 3 + k.len() + v.len();
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {k}=").as_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

fn pax_hdr(size: u64) -> Header {
    let mut h = Header::new_ustar();
    h.set_size(size);
    h.set_entry_type(EntryType::XHeader);
    h.set_mode(0o644);
    h.set_cksum();
    h
}

struct Scene {
    _dir: tempfile::TempDir,
    work: PathBuf,
    dest: PathBuf,
    outside: PathBuf,
}

fn scene() -> Scene {
    let dir = tempdir();
    let work = dir.path().to_path_buf();
    let dest = work.join("dest");
    let outside = work.join("outside");
    fs::create_dir(&dest).expect("mkdir dest");
    fs::create_dir(&outside).expect("mkdir outside");
    fs::write(outside.join("precious"), b"keep me").expect("write");
    Scene {
        _dir: dir,
        work,
        dest,
        outside,
    }
}

impl Scene {
    fn run(&self, archive: &[u8], opts: &ExtractOptions) -> Result<ExtractReport, ArchiveError> {
        extract(archive, &self.dest, opts)
    }

    /// Nothing appeared or changed outside `dest`.
    fn assert_outside_untouched(&self) {
        let mut names: Vec<String> = fs::read_dir(&self.work)
            .expect("read work")
            .map(|e| {
                e.expect("dirent")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["dest", "outside"],
            "something was written next to dest"
        );
        let out: Vec<String> = fs::read_dir(&self.outside)
            .expect("read outside")
            .map(|e| {
                e.expect("dirent")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(out, ["precious"], "something was written outside");
        let m = fs::metadata(self.outside.join("precious")).expect("stat");
        assert_eq!(m.nlink(), 1, "precious got hard-linked");
        assert_eq!(read_all(&self.outside.join("precious")), b"keep me");
        assert_eq!(
            fs::read_to_string("/etc/passwd")
                .map(|s| s.contains("root"))
                .ok(),
            Some(true)
        );
    }
}

fn expect_refused(r: Result<ExtractReport, ArchiveError>, entry: &str, reason: &str) -> String {
    match r {
        Err(ArchiveError::Refused {
            entry: e,
            reason: why,
        }) => {
            assert!(e.contains(entry), "refused entry `{e}`, expected `{entry}`");
            assert!(why.contains(reason), "reason `{why}` lacks `{reason}`");
            let msg = ArchiveError::Refused {
                entry: e,
                reason: why,
            }
            .to_string();
            assert!(msg.contains("refusing archive entry"), "{msg}");
            msg
        }
        other => panic!("expected a refusal of `{entry}`, got {other:?}"),
    }
}

fn both_modes(s: &Scene, archive: &[u8], entry: &str, reason: &str) {
    for verify_only in [true, false] {
        let opts = ExtractOptions {
            verify_only,
            ..ExtractOptions::default()
        };
        expect_refused(s.run(archive, &opts), entry, reason);
        s.assert_outside_untouched();
    }
}

#[test]
fn dotdot_paths_are_refused() {
    let s = scene();
    let a = Raw::new()
        .file(b"ok", b"fine")
        .file(b"../evil", b"pwned")
        .end();
    both_modes(&s, &a, "../evil", "..");
    let a = Raw::new().file(b"./a/../../outside/evil", b"pwned").end();
    both_modes(&s, &a, "../../outside/evil", "..");
}

#[test]
fn absolute_paths_are_refused() {
    let s = scene();
    let abs = format!("{}/abs-evil", s.outside.display());
    let a = Raw::new().file(abs.as_bytes(), b"pwned").end();
    both_modes(&s, &a, "abs-evil", "absolute");
    assert!(!s.dest.join(abs.trim_start_matches('/')).exists());
}

#[test]
fn pax_and_gnu_long_names_are_checked_too() {
    let s = scene();
    let data = pax(&[("path", b"../evil")]);
    let a = Raw::new()
        .entry(&pax_hdr(data.len() as u64), &data)
        .file(b"innocent", b"pwned")
        .end();
    both_modes(&s, &a, "../evil", "..");
    let mut long = b"a/".repeat(60);
    long.extend_from_slice(b"../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../evil");
    let mut l = hdr(
        b"././@LongLink",
        EntryType::GNULongName,
        long.len() as u64 + 1,
    );
    l.set_cksum();
    let mut data = long.clone();
    data.push(0);
    let a = Raw::new().entry(&l, &data).file(b"short", b"pwned").end();
    both_modes(&s, &a, "../evil", "..");
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let s = scene();
    let target = s.outside.to_string_lossy().into_owned();
    let a = Raw::new()
        .entry(
            &link_hdr(b"link", EntryType::Symlink, target.as_bytes()),
            &[],
        )
        .file(b"link/evil", b"pwned")
        .end();
    both_modes(&s, &a, "link/evil", "symlink");
    // A relative symlink leading out, and a directory created through it.
    let s = scene();
    let a = Raw::new()
        .entry(&link_hdr(b"up", EntryType::Symlink, b"../outside"), &[])
        .entry(&hdr(b"up/newdir/", EntryType::Directory, 0), &[])
        .end();
    both_modes(&s, &a, "up/newdir", "symlink");
    // A later directory entry of the same name replaces the symlink: safe.
    let s = scene();
    let a = Raw::new()
        .entry(
            &link_hdr(b"link", EntryType::Symlink, target.as_bytes()),
            &[],
        )
        .entry(&hdr(b"link/", EntryType::Directory, 0), &[])
        .file(b"link/inside", b"stays inside")
        .end();
    s.run(&a, &ExtractOptions::default()).expect("extract");
    s.assert_outside_untouched();
    assert_eq!(read_all(&s.dest.join("link/inside")), b"stays inside");
}

#[test]
fn hardlinks_leaving_the_tree_are_refused() {
    let s = scene();
    let a = Raw::new()
        .entry(&link_hdr(b"hl", EntryType::Link, b"../../etc/passwd"), &[])
        .end();
    both_modes(&s, &a, "hl", "..");
    let a = Raw::new()
        .entry(&link_hdr(b"hl", EntryType::Link, b"/etc/passwd"), &[])
        .end();
    both_modes(&s, &a, "hl", "absolute");
    let a = Raw::new()
        .entry(
            &link_hdr(b"hl", EntryType::Link, b"../outside/precious"),
            &[],
        )
        .end();
    both_modes(&s, &a, "hl", "..");
    // Through a symlink that points outside.
    let target = s.outside.to_string_lossy().into_owned();
    let a = Raw::new()
        .entry(&link_hdr(b"s", EntryType::Symlink, target.as_bytes()), &[])
        .entry(&link_hdr(b"h", EntryType::Link, b"s/precious"), &[])
        .end();
    both_modes(&s, &a, "h", "symlink");
    // To something that is not there.
    let s = scene();
    let a = Raw::new()
        .entry(&link_hdr(b"h", EntryType::Link, b"nothing-here"), &[])
        .end();
    expect_refused(s.run(&a, &ExtractOptions::default()), "h", "does not exist");
    s.assert_outside_untouched();
}

#[test]
fn device_nodes_are_refused_unless_allowed() {
    let s = scene();
    let mut h = hdr(b"null", EntryType::Char, 0);
    h.set_device_major(1).expect("major");
    h.set_device_minor(3).expect("minor");
    h.set_cksum();
    let a = Raw::new().entry(&h, &[]).end();
    both_modes(&s, &a, "null", "device");
    assert!(!s.dest.join("null").exists());
    let r = s
        .run(
            &a,
            &ExtractOptions {
                allow_devices: true,
                ..ExtractOptions::default()
            },
        )
        .expect("allowed");
    assert_eq!(r.specials, 1);
    let m = fs::symlink_metadata(s.dest.join("null")).expect("created");
    assert_eq!(m.rdev(), libc::makedev(1, 3));
}

#[test]
fn huge_headers_are_refused_without_allocating() {
    let s = scene();
    // A real 2 MiB PAX header.
    let big = vec![b'a'; 2 << 20];
    let data = pax(&[("comment", &big)]);
    let a = Raw::new()
        .entry(&pax_hdr(data.len() as u64), &data)
        .file(b"f", b"x")
        .end();
    let msg = expect_refused(
        s.run(&a, &ExtractOptions::default()),
        "",
        "PAX extended header",
    );
    assert!(msg.contains("exceeds"), "{msg}");
    // A PAX header claiming 8 GiB with nothing behind it.
    let a = Raw::new().header_only(&pax_hdr(8 << 30)).end_raw();
    expect_refused(
        s.run(&a, &ExtractOptions::default()),
        "",
        "PAX extended header",
    );
    // A GNU long name claiming 1 GiB.
    let l = hdr(b"././@LongLink", EntryType::GNULongName, 1 << 30);
    let a = Raw::new().header_only(&l).end_raw();
    expect_refused(s.run(&a, &ExtractOptions::default()), "", "long name");
    // A file claiming a petabyte, and a sparse file claiming an exabyte.
    let a = Raw::new()
        .header_only(&hdr(b"huge", EntryType::Regular, 1 << 50))
        .end_raw();
    expect_refused(s.run(&a, &ExtractOptions::default()), "huge", "claims");
    let mut sp = hdr(b"sparse", EntryType::GNUSparse, 0);
    if let Some(g) = sp.as_gnu_mut() {
        g.set_real_size(1 << 60);
        g.sparse[0].set_offset(1 << 60);
        g.sparse[0].set_length(0);
    }
    sp.set_cksum();
    let a = Raw::new().entry(&sp, &[]).end();
    expect_refused(s.run(&a, &ExtractOptions::default()), "sparse", "claims");
    s.assert_outside_untouched();
    assert_eq!(fs::read_dir(&s.dest).expect("dest").count(), 0);
}

#[test]
fn damaged_archives_are_reported_as_corrupt() {
    let s = scene();
    let good = Raw::new()
        .file(b"a", &text(200_000, 1))
        .file(b"b", b"second")
        .end();
    assert!(s.run(&good, &ExtractOptions::default()).is_ok());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("bad crc", {
            let mut g = good.clone();
            let n = g.len();
            g[n - 6] ^= 0xff; // inside the crc32 trailer
            g
        }),
        ("trailing garbage", {
            let mut g = good.clone();
            g.extend_from_slice(b"garbage after the end");
            g
        }),
        ("not gzip", b"plain text, not an archive".to_vec()),
    ];
    for (what, data) in cases {
        for verify_only in [true, false] {
            let r = s.run(
                &data,
                &ExtractOptions {
                    verify_only,
                    ..ExtractOptions::default()
                },
            );
            match r {
                Err(ArchiveError::Corrupt { .. }) => {}
                other => {
                    panic!("{what} (verify_only={verify_only}): expected Corrupt, got {other:?}")
                }
            }
        }
    }
    s.assert_outside_untouched();
}

#[test]
fn skip_refused_extracts_the_rest_and_lists_refusals() {
    let s = scene();
    let a = Raw::new()
        .file(b"../evil", b"pwned")
        .file(b"good", b"good data")
        .file(b"/abs", b"pwned")
        .end();
    let r = s
        .run(
            &a,
            &ExtractOptions {
                skip_refused: true,
                ..ExtractOptions::default()
            },
        )
        .expect("extract with skip_refused");
    assert_eq!(r.refused, 2);
    assert_eq!(r.refused_entries.len(), 2);
    assert!(
        r.refused_entries[0].starts_with("../evil"),
        "{:?}",
        r.refused_entries
    );
    assert_eq!(read_all(&s.dest.join("good")), b"good data");
    assert!(!s.dest.join("abs").exists());
    s.assert_outside_untouched();
}

#[test]
fn refusal_happens_before_any_write_of_that_entry() {
    // The destination must not even get the refused entry's parents.
    let s = scene();
    let a = Raw::new().file(b"a/b/../../../x", b"pwned").end();
    assert!(s.run(&a, &ExtractOptions::default()).is_err());
    assert!(!Path::new(&s.dest.join("a")).exists());
}

#[test]
fn mangled_archives_never_panic_or_escape() {
    use allspark::archive::{write_tree, WriteOptions};
    // A small but varied real archive, uncompressed so we can mangle the tar
    // layer and still hand the reader valid gzip.
    let s = scene();
    let src = s.work.join("src");
    fs::create_dir_all(src.join("d/e")).expect("mkdir");
    fs::write(src.join("d/e/f"), text(3000, 1)).expect("write");
    fs::write(src.join("long".repeat(40)), b"long name").expect("write");
    fs::hard_link(src.join("d/e/f"), src.join("hard")).expect("link");
    std::os::unix::fs::symlink("d/e", src.join("sym")).expect("symlink");
    let _ = xattr::set(src.join("d"), "user.x", b"1\n2");
    let sp = fs::File::create(src.join("sparse")).expect("create");
    sp.set_len(1 << 20).expect("set_len");
    std::os::unix::fs::FileExt::write_at(&sp, b"x", 4096 * 10).expect("write");
    drop(sp);
    let mut tar = Vec::new();
    write_tree(&src, &mut tar, &WriteOptions::default()).expect("write_tree");
    fs::remove_dir_all(&src).expect("cleanup src");

    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..300 {
        let mut t = tar.clone();
        let flips = 1 + (rnd() % 4) as usize;
        for _ in 0..flips {
            // Mostly hit header blocks, where the interesting fields are.
            let block = (rnd() as usize % (t.len() / 512)) * 512;
            let off = block + (rnd() as usize % 512);
            t[off] = match rnd() % 4 {
                0 => 0,
                1 => b'/',
                2 => b'.',
                _ => rnd() as u8,
            };
            if rnd() % 3 != 0 {
                // Fix the checksum so the mangled header gets past tar-rs's check.
                let mut h = Header::new_old();
                h.as_mut_bytes().copy_from_slice(&t[block..block + 512]);
                h.set_cksum();
                t[block..block + 512].copy_from_slice(h.as_bytes());
            }
        }
        if i % 7 == 0 {
            let cut = rnd() as usize % t.len();
            t.truncate(cut);
        }
        let dest = s.work.join("dest");
        let _ = fs::remove_dir_all(&dest);
        for verify_only in [true, false] {
            let _ = extract(
                &gzip(&t)[..],
                &dest,
                &ExtractOptions {
                    verify_only,
                    skip_refused: i % 2 == 0,
                    ..ExtractOptions::default()
                },
            );
        }
        let _ = fs::remove_dir_all(&dest);
        fs::create_dir(&dest).expect("recreate dest");
        s.assert_outside_untouched();
    }
}
