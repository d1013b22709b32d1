//! Torture-tree round trips of both codecs: write_archive, then extract with our reader and with GNU tar (every README recipe), compare everything.

use crate::util;

use std::fs::{self, File};
use std::os::unix::fs::{symlink, FileExt, MetadataExt};

use allspark::archive::{extract, CompressOptions, Compression, ExtractOptions, WriteOptions};
use util::*;

#[test]
fn torture_tree_roundtrips_through_gzip_with_our_reader_and_gnu_tar() {
    torture_roundtrip(Compression::Gzip, &[&["-z"], &["-I", "gzip"]]);
}

#[test]
fn torture_tree_roundtrips_through_zstd_with_our_reader_and_gnu_tar() {
    torture_roundtrip(Compression::Zstd, &[&["--zstd"], &["-I", "zstd"]]);
}

/// The torture tree archived with `codec`, restored by our reader (in
/// parallel) and by GNU tar with each of `gnu_recipes` (the codec options of
/// the README's restore recipes): everything comes back.
fn torture_roundtrip(codec: Compression, gnu_recipes: &[&[&str]]) {
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

    let archive = work.path().join(format!("snap.{}", codec.archive_suffix()));
    // 1 MiB chunks for both codecs: the 3 MiB random file fills whole chunks.
    let mut opts = codec_opts(codec);
    opts.compression.chunk_size = 1 << 20;
    let report = write_to(&src, &archive, &opts);
    let gz = report.compressed.clone().expect("compression stats");
    assert_eq!(gz.codec, codec);
    assert_eq!(codec_of(&archive), codec);

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
        gz.stored_chunks >= 1,
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
    assert_eq!(r.codec, Some(codec));
    assert!(!r.streamed, "our archives are decoded in parallel: {r:?}");
    assert_eq!(r.parallel_pieces, gz.chunks);
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
    for (i, recipe) in gnu_recipes.iter().enumerate() {
        let gnu = work.path().join(format!("gnu-{i}"));
        gnu_extract_with(&archive, &gnu, recipe);
        let mut after = snapshot(&gnu);
        if !xattrs_ok {
            strip_xattrs(&mut after);
        }
        assert_same_tree(&before, &after, &format!("GNU tar {recipe:?} extract"));
    }

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
    let archive = work.path().join("a.tar.zst");
    write_to(&src, &archive, &WriteOptions::default());
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
        compression: CompressOptions {
            codec: Compression::Gzip,
            level: 1,
            threads: 2,
            chunk_size: 256 * 1024,
        },
        ..WriteOptions::default()
    };
    let archive = work.path().join("a.tar.gz");
    let report = write_to(&src, &archive, &opts);
    assert_eq!(seen.load(Ordering::SeqCst), 20 << 20);
    assert!(calls.load(Ordering::SeqCst) >= 3);
    assert_eq!(report.bytes_in, 20 << 20);
    let gz = report.compressed.expect("compression stats");
    assert!(gz.chunks > 80, "{gz:?}");
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
