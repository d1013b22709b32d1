//! Torture-tree roundtrip: write_tree_gz, then extract with our reader and with GNU tar, compare everything.

use crate::util;

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, MetadataExt};
use std::path::Path;

use allspark::archive::{extract, write_tree_gz, ExtractOptions, WriteOptions};
use util::*;

const TWO_GIB: u64 = 2 << 30;

/// Build the torture tree; returns whether xattrs could be set.
fn build_torture(root: &Path) -> bool {
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
    fs::write(p(root, "random-3m.bin"), noise(3 << 20, 5)).expect("write");

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

#[test]
fn torture_tree_roundtrips_with_our_reader_and_gnu_tar() {
    let work = tempdir();
    let src = work.path().join("src");
    fs::create_dir(&src).expect("mkdir src");
    let xattrs_ok = build_torture(&src);
    let before = snapshot(&src);
    // The fixture is what we think it is (so the comparisons below mean something).
    let get = |k: &[u8]| {
        before
            .get(k)
            .unwrap_or_else(|| panic!("fixture lacks {k:?}"))
    };
    assert_eq!(
        (get(b"").mode, get(b"").uid, get(b"").gid),
        (0o750, 1234, 5678)
    );
    assert_eq!(get(b"modes/m4755").mode, 0o4755);
    assert_eq!(get(b"modes/m7777").mode, 0o7777);
    assert_eq!(get(b"modes/dir-setgid").mode, 0o2750);
    assert_eq!(get(b"owned/link").uid, 4321);
    assert_eq!(
        get(b"hl/sub/three").link_group.as_deref(),
        Some(&b"hl/one"[..])
    );
    assert_eq!(get(b"sparse-2g").size, TWO_GIB);
    assert_eq!(
        get(b"link-abs").link_target.as_deref(),
        Some(&b"/etc/passwd"[..])
    );
    assert_eq!(get(b"pipe").kind, "fifo");
    assert_eq!(get(b"dev-null").kind, "char");
    assert_eq!(get(b"empty").mtime % 86_400, 1_000_000_000 % 86_400);
    assert!(get("日本語".as_bytes()).mtime < 1_100_000_000);
    assert!(before.contains_key(&b"bad-\xff\xfe.bin"[..]));
    assert!(before.keys().any(|k| k.len() > 450), "deep path missing");
    if xattrs_ok {
        assert_eq!(get(b"one-byte").xattrs.len(), 1);
        assert_eq!(get(b"modes/m0000").xattrs[0].0, b"trusted.t");
        assert_eq!(get(b"link-rel").xattrs.len(), 1);
    }

    let archive = work.path().join("snap.tar.gz");
    let out = File::create(&archive).expect("create archive");
    let report = write_tree_gz(&src, out, &WriteOptions::default()).expect("write_tree_gz");
    let gz = report.gz.clone().expect("gz stats");

    // Counts.
    assert_eq!(report.sockets_skipped, 1, "{report:?}");
    assert_eq!(report.hardlinks, 3);
    assert_eq!(report.specials, 2);
    assert_eq!(report.unreadable, 0, "{:?}", report.problems);
    assert_eq!(report.vanished + report.changed_during_walk, 0);
    assert_eq!(report.index.len() as u64, before.len() as u64);
    // The 2 GiB sparse file must not be stored as 2 GiB.
    let size = fs::metadata(&archive).expect("stat archive").len();
    assert_eq!(size, gz.bytes_out);
    assert!(size < 8 << 20, "archive is {size} bytes");
    assert!(
        gz.bytes_in < 16 << 20,
        "tar stream is {} bytes",
        gz.bytes_in
    );
    assert!(
        gz.stored_members >= 2,
        "random data should be stored: {gz:?}"
    );
    assert_eq!(
        gz.sha256,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            fs::read(&archive).expect("read")
        ))
    );

    // Entry names: root first, deterministic order.
    let names = gnu_list(&archive);
    assert_eq!(names[0], "./");
    assert!(names.contains(&"./hl/two".to_string()));
    assert!(!names.iter().any(|n| n.ends_with("sock")));

    // Our reader.
    let ours = work.path().join("ours");
    let r = extract(
        File::open(&archive).expect("open"),
        &ours,
        &ExtractOptions {
            allow_devices: true,
            ..ExtractOptions::default()
        },
    )
    .expect("extract");
    assert_eq!(r.xattr_errors, 0, "{:?}", r.xattr_error_list);
    assert_eq!(r.hardlinks, 3);
    assert_eq!(r.sha256, gz.sha256);
    assert_eq!(r.compressed_bytes, size);
    let mut after = snapshot(&ours);
    if !xattrs_ok {
        strip_xattrs(&mut after);
    }
    assert_same_tree(&before, &after, "our extract");
    // The comparison can fail: a directory mtime or an xattr off is noticed.
    set_times(&ours.join("modes/dir-setgid"), 1_600_000_000, 0);
    assert_ne!(
        snapshot(&ours),
        after,
        "comparator missed a directory mtime"
    );
    set_times(
        &ours.join("modes/dir-setgid"),
        before[&b"modes/dir-setgid"[..]].mtime,
        0,
    );
    if xattrs_ok {
        xattr::remove(ours.join("hl/sub"), "user.dir").expect("remove xattr");
        assert_ne!(snapshot(&ours), after, "comparator missed an xattr");
        xattr::set(ours.join("hl/sub"), "user.dir", b"on a directory").expect("xattr");
    }
    assert_same_tree(&after, &snapshot(&ours), "after undoing the tampering");
    let restored_sparse = fs::metadata(ours.join("sparse-2g")).expect("stat");
    assert!(
        restored_sparse.blocks() * 512 < 1 << 20,
        "restored 2 GiB file is not sparse"
    );

    // GNU tar, as documented.
    let gnu = work.path().join("gnu");
    gnu_extract(&archive, &gnu);
    let mut after = snapshot(&gnu);
    if !xattrs_ok {
        strip_xattrs(&mut after);
    }
    assert_same_tree(&before, &after, "GNU tar extract");

    // verify_only reads everything and writes nothing.
    let nowhere = work.path().join("never-created");
    let v = extract(
        File::open(&archive).expect("open"),
        &nowhere,
        &ExtractOptions {
            verify_only: true,
            allow_devices: true,
            ..ExtractOptions::default()
        },
    )
    .expect("verify");
    assert!(!nowhere.exists());
    assert_eq!(v.entries, r.entries);
    assert_eq!(v.bytes, r.bytes);
    assert_eq!(v.sha256, gz.sha256);
}

fn strip_xattrs(t: &mut Tree) {
    for m in t.values_mut() {
        m.xattrs.clear();
    }
}

#[test]
fn devices_are_refused_by_default() {
    let work = tempdir();
    let src = work.path().join("src");
    fs::create_dir(&src).expect("mkdir");
    mknod_char(&src.join("null"), 1, 3);
    let archive = work.path().join("a.tar.gz");
    write_tree_gz(
        &src,
        File::create(&archive).expect("create"),
        &WriteOptions::default(),
    )
    .expect("write");
    let err = extract(
        File::open(&archive).expect("open"),
        &work.path().join("out"),
        &ExtractOptions::default(),
    )
    .expect_err("device refused");
    let msg = err.to_string();
    assert!(msg.contains("./null") && msg.contains("device"), "{msg}");
    assert!(!work.path().join("out/null").exists());
}

#[test]
fn progress_is_reported_and_options_are_honoured() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let work = tempdir();
    let src = work.path().join("src");
    fs::create_dir(&src).expect("mkdir");
    fs::write(src.join("big"), text(20 << 20, 0)).expect("write");
    let seen = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let (s, c) = (seen.clone(), calls.clone());
    let opts = WriteOptions {
        progress: Some(Box::new(move |n| {
            s.store(n, Ordering::SeqCst);
            c.fetch_add(1, Ordering::SeqCst);
        })),
        gzip: allspark::archive::PgzOptions {
            level: 1,
            threads: 2,
            chunk_size: 256 * 1024,
        },
        ..WriteOptions::default()
    };
    let archive = work.path().join("a.tar.gz");
    let report =
        write_tree_gz(&src, File::create(&archive).expect("create"), &opts).expect("write");
    assert_eq!(seen.load(Ordering::SeqCst), 20 << 20);
    assert!(calls.load(Ordering::SeqCst) >= 3);
    assert_eq!(report.bytes_in, 20 << 20);
    let gz = report.gz.expect("gz");
    assert!(gz.members > 80, "{gz:?}");
    gnu_extract(&archive, &work.path().join("out"));
    assert_eq!(read_all(&work.path().join("out/big")), text(20 << 20, 0));
}

/// Archives made by plain GNU tar (e.g. by the old backup script) restore too.
#[test]
fn gnu_tar_archives_extract_with_our_reader() {
    let work = tempdir();
    let src = work.path().join("src");
    fs::create_dir(&src).expect("mkdir");
    let mut deep = src.clone();
    for i in 0..30 {
        deep.push(format!("d{i:02}-{}", "x".repeat(5)));
    }
    fs::create_dir_all(&deep).expect("mkdir deep");
    fs::write(deep.join("leaf"), b"leaf").expect("write");
    fs::write(src.join("a"), text(50_000, 3)).expect("write");
    fs::hard_link(src.join("a"), src.join("b")).expect("link");
    symlink("/nowhere", src.join("dangling")).expect("symlink");
    lchown(&src.join("a"), 1234, 5678);
    chmod(&src.join("a"), 0o4750);
    let xattrs_ok = try_xattr(&src.join("a"), "user.k", b"v\nwith newline");
    let sparse = File::create(src.join("sparse")).expect("create");
    sparse.set_len(8 << 20).expect("set_len");
    sparse.write_at(b"data", 3 << 20).expect("write");
    drop(sparse);
    mkfifo(&src.join("fifo"));
    set_times(&src.join("a"), 1_400_000_000, 0);
    set_times(&deep, 1_300_000_000, 0);
    set_times(&src, 1_200_000_000, 0);
    let mut want = snapshot(&src);
    if !xattrs_ok {
        for m in want.values_mut() {
            m.xattrs.clear();
        }
    }

    // Old GNU format with old-GNU sparse entries (no xattrs: GNU tar would
    // switch to PAX headers), and POSIX format with xattrs.
    for (format, flag) in [("gnu", "--sparse"), ("posix", "--xattrs")] {
        let archive = work.path().join(format!("{format}.tar.gz"));
        let include = if flag == "--xattrs" {
            "--xattrs-include=*"
        } else {
            "--numeric-owner"
        };
        run(std::process::Command::new("tar")
            .arg(format!("--format={format}"))
            .arg(flag)
            .arg(include)
            .arg("-czf")
            .arg(&archive)
            .arg("-C")
            .arg(&src)
            .arg("."));
        let dest = work.path().join(format!("out-{format}"));
        extract(
            File::open(&archive).expect("open"),
            &dest,
            &ExtractOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{format}: {e}"));
        let mut expected = want.clone();
        if flag != "--xattrs" {
            for m in expected.values_mut() {
                m.xattrs.clear();
            }
        }
        assert_same_tree(
            &expected,
            &snapshot(&dest),
            &format!("GNU tar --format={format}"),
        );
        if flag == "--sparse" {
            let blocks = fs::metadata(dest.join("sparse")).expect("stat").blocks();
            assert!(
                blocks * 512 < 1 << 20,
                "old-GNU sparse entry restored dense"
            );
        }
    }

    // GNU tar's PAX sparse format is refused with a clear message, not mangled.
    let archive = work.path().join("posix-sparse.tar.gz");
    run(std::process::Command::new("tar")
        .arg("--format=posix")
        .arg("--sparse")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .arg("sparse"));
    let err = extract(
        File::open(&archive).expect("open"),
        &work.path().join("out-posix-sparse"),
        &ExtractOptions::default(),
    )
    .expect_err("PAX sparse must be refused");
    assert!(err.to_string().contains("GNU tar"), "{err}");
}
