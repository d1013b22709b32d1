//! Incremental snapshots: only changes are stored, deletions are listed, and full + incremental restores the new tree.

use crate::util;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::os::unix::fs::symlink;
use std::path::Path;

use allspark::archive::{
    apply_deletions, extract, write_archive, ExtractOptions, Index, WriteOptions, WriteReport,
};
use util::*;

fn build(root: &Path) {
    for d in 0..10 {
        let dir = root.join(format!("dir{d}"));
        fs::create_dir_all(dir.join("sub")).expect("mkdir");
        for f in 0..20 {
            fs::write(
                dir.join(format!("f{f:02}")),
                text(2000 + f * 10, d * 100 + f),
            )
            .expect("write");
        }
        fs::write(dir.join("sub/inner"), b"inner").expect("write");
    }
    fs::write(root.join("hl-a"), b"hard linked").expect("write");
    fs::hard_link(root.join("hl-a"), root.join("hl-b")).expect("link");
    symlink("dir0/f00", root.join("link")).expect("symlink");
    fs::write(root.join("becomes-dir"), b"file for now").expect("write");
    fs::create_dir(root.join("becomes-file")).expect("mkdir");
    fs::write(root.join("becomes-file/child"), b"child").expect("write");
    mkfifo(&root.join("fifo"));
    // Known past mtimes everywhere, so "changed" is only what we change.
    for (i, e) in walk(root).iter().enumerate() {
        set_times(e, 1_500_000_000 + i as i64, 0);
    }
}

fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("dirent");
            if e.file_type().expect("type").is_dir() {
                stack.push(e.path());
            }
            out.push(e.path());
        }
    }
    out.reverse(); // children before parents, so dir mtimes stick
    out
}

fn snapshot_to(src: &Path, archive: &Path, parent: Option<&Index>) -> WriteReport {
    let opts = WriteOptions {
        parent,
        ..WriteOptions::default()
    };
    write_archive(src, File::create(archive).expect("create"), &opts).expect("write_archive")
}

/// Non-directory entries of an archive, as relative paths.
fn non_dir_entries(archive: &Path) -> BTreeSet<String> {
    gnu_list(archive)
        .into_iter()
        .filter(|n| !n.ends_with('/'))
        .map(|n| n.trim_start_matches("./").to_string())
        .collect()
}

#[test]
fn incremental_stores_only_changes_and_restores_the_new_tree() {
    let work = tempdir();
    let src = work.path().join("src");
    fs::create_dir(&src).expect("mkdir");
    build(&src);

    let full = work.path().join("full.tar.zst");
    let r1 = snapshot_to(&src, &full, None);
    assert!(r1.deleted.is_empty());
    assert_eq!(r1.files, 10 * 21 + 3); // + hl-a, becomes-dir, becomes-file/child
    assert_eq!(r1.hardlinks, 1);

    // The index survives a trip through its file format.
    let idx_path = work.path().join("full.index");
    r1.index.save(&idx_path).expect("save index");
    let parent = Index::load(&idx_path).expect("load index");
    assert_eq!(parent, r1.index);

    // Nothing changed: an incremental holds directories only.
    let noop = work.path().join("noop.tar.zst");
    let r0 = snapshot_to(&src, &noop, Some(&parent));
    assert!(
        non_dir_entries(&noop).is_empty(),
        "{:?}",
        non_dir_entries(&noop)
    );
    assert!(r0.deleted.is_empty());
    assert_eq!(
        r0.unchanged_skipped,
        r1.files + r1.hardlinks + r1.symlinks + r1.specials
    );

    // About 1 % of the files change, some go, some come.
    fs::write(src.join("dir3/f07"), b"changed content").expect("write");
    fs::write(src.join("dir8/f19"), text(5000, 999)).expect("write");
    chmod(&src.join("dir5/f01"), 0o600); // metadata-only change
    fs::remove_file(src.join("dir1/f00")).expect("rm");
    fs::remove_file(src.join("dir1/f01")).expect("rm");
    fs::remove_dir_all(src.join("dir9")).expect("rm -r");
    fs::remove_file(src.join("link")).expect("rm link");
    symlink("dir0/f01", src.join("link")).expect("new link target");
    fs::write(src.join("dir2/new-file"), b"new").expect("write");
    fs::create_dir(src.join("new-dir")).expect("mkdir");
    fs::write(src.join("new-dir/inside"), b"new inside").expect("write");
    fs::remove_file(src.join("becomes-dir")).expect("rm");
    fs::create_dir(src.join("becomes-dir")).expect("mkdir");
    fs::write(src.join("becomes-dir/x"), b"x").expect("write");
    fs::remove_dir_all(src.join("becomes-file")).expect("rm -r");
    fs::write(src.join("becomes-file"), b"now a file").expect("write");
    fs::hard_link(src.join("hl-a"), src.join("hl-c")).expect("link"); // touches the inode's ctime

    let incr = work.path().join("incr.tar.zst");
    let r2 = snapshot_to(&src, &incr, Some(&parent));
    let expected: BTreeSet<String> = [
        "dir3/f07",
        "dir8/f19",
        "dir5/f01",
        "link",
        "dir2/new-file",
        "new-dir/inside",
        "becomes-dir/x",
        "becomes-file",
        "hl-a",
        "hl-b",
        "hl-c",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(non_dir_entries(&incr), expected);
    let deleted: BTreeSet<&str> = r2.deleted.iter().map(String::as_str).collect();
    let expected_deleted: BTreeSet<&str> = [
        "dir1/f00",
        "dir1/f01",
        "dir9",
        "becomes-dir",
        "becomes-file",
    ]
    .into();
    assert_eq!(deleted, expected_deleted);
    // Every directory is in the incremental, with its current metadata.
    let dirs = gnu_list(&incr)
        .into_iter()
        .filter(|n| n.ends_with('/'))
        .count();
    assert_eq!(dirs as u64, r2.dirs);
    assert_eq!(r2.index.len(), snapshot(&src).len());

    let want = snapshot(&src);

    // Restore the chain with our reader.
    let ours = work.path().join("ours");
    extract(
        File::open(&full).expect("open"),
        &ours,
        &ExtractOptions::default(),
    )
    .expect("full");
    let d = apply_deletions(&ours, &r2.deleted).expect("deletions");
    assert_eq!(d.removed, 5);
    extract(
        File::open(&incr).expect("open"),
        &ours,
        &ExtractOptions::default(),
    )
    .expect("incr");
    assert_same_tree(&want, &snapshot(&ours), "full + incremental (ours)");

    // And with plain tools, as the README documents.
    let gnu = work.path().join("gnu");
    gnu_extract(&full, &gnu);
    for path in &r2.deleted {
        run(std::process::Command::new("rm")
            .arg("-rf")
            .arg("--")
            .arg(gnu.join(path)));
    }
    gnu_extract(&incr, &gnu);
    assert_same_tree(&want, &snapshot(&gnu), "full + incremental (GNU tar)");

    // A second incremental on top of the first.
    fs::write(src.join("dir0/f05"), b"second round").expect("write");
    fs::remove_file(src.join("new-dir/inside")).expect("rm");
    let incr2 = work.path().join("incr2.tar.zst");
    let r3 = snapshot_to(&src, &incr2, Some(&r2.index));
    assert_eq!(
        non_dir_entries(&incr2),
        ["dir0/f05".to_string()].into_iter().collect()
    );
    assert_eq!(r3.deleted, vec!["new-dir/inside".to_string()]);
    apply_deletions(&ours, &r3.deleted).expect("deletions 2");
    extract(
        File::open(&incr2).expect("open"),
        &ours,
        &ExtractOptions::default(),
    )
    .expect("incr2");
    assert_same_tree(
        &snapshot(&src),
        &snapshot(&ours),
        "chain of two incrementals",
    );
}

#[test]
fn apply_deletions_refuses_unsafe_paths_and_removes_nothing() {
    let work = tempdir();
    let dest = work.path().join("dest");
    let outside = work.path().join("outside");
    fs::create_dir_all(dest.join("d")).expect("mkdir");
    fs::create_dir_all(&outside).expect("mkdir");
    fs::write(outside.join("precious"), b"keep").expect("write");
    fs::write(dest.join("d/ok"), b"x").expect("write");
    symlink(&outside, dest.join("escape")).expect("symlink");
    for bad in [
        "../outside/precious",
        "/etc/passwd",
        "escape/precious",
        "",
        "./",
        "\0zz",
    ] {
        let list = vec!["d/ok".to_string(), bad.to_string()];
        let err = apply_deletions(&dest, &list).expect_err(bad);
        assert!(err.to_string().contains("refusing to delete"), "{err}");
        assert!(dest.join("d/ok").exists(), "{bad}: removed something");
    }
    assert!(outside.join("precious").exists());
    // A symlink itself may be deleted (not followed); missing paths are counted.
    let r = apply_deletions(
        &dest,
        &["escape".into(), "d".into(), "nope".into(), "d/ok".into()],
    )
    .expect("delete");
    assert_eq!((r.removed, r.missing), (2, 2));
    assert!(outside.join("precious").exists());
    assert!(!dest.join("d").exists());
}
