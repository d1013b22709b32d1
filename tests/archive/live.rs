//! Live data: files that grow, shrink or vanish while the tree is archived never abort the snapshot.

use crate::util;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use allspark::archive::{extract, write_archive, ExtractOptions, WriteOptions};
use util::*;

const MIB: usize = 1 << 20;

#[test]
fn files_changing_during_the_walk_do_not_abort() {
    let work = tempdir();
    let src = work.path().join("src");
    fs::create_dir_all(src.join("zz-dir/sub")).expect("mkdir");
    let grow = text(MIB, 1);
    let shrink = text(MIB, 2);
    fs::write(src.join("a-grow"), &grow).expect("write");
    fs::write(src.join("b-shrink"), &shrink).expect("write");
    fs::write(src.join("c-steady"), b"steady").expect("write");
    fs::write(src.join("y-vanish"), b"going away").expect("write");
    fs::write(src.join("zz-dir/sub/deep"), b"also going away").expect("write");
    // A sparse file that shrinks under us (sparse path, different code).
    let sp = File::create(src.join("d-sparse-shrink")).expect("create");
    sp.set_len(8 << 20).expect("set_len");
    std::os::unix::fs::FileExt::write_at(&sp, &[7u8; 8192], 6 << 20).expect("write");
    drop(sp);

    let src_hook = src.clone();
    let fired = Arc::new(AtomicBool::new(false));
    let fired2 = fired.clone();
    let hook = move |rel: &[u8]| {
        let path: PathBuf = src_hook.join(std::str::from_utf8(rel).expect("utf8"));
        match rel {
            b"a-grow" => {
                let mut f = OpenOptions::new().append(true).open(&path).expect("open");
                f.write_all(&vec![b'+'; 300_000]).expect("append");
            }
            b"b-shrink" => {
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .expect("open")
                    .set_len(1000)
                    .expect("truncate");
                // Later entries disappear before the walk reaches them.
                fs::remove_file(src_hook.join("y-vanish")).expect("rm");
                fs::remove_dir_all(src_hook.join("zz-dir")).expect("rm -r");
                fired2.store(true, Ordering::SeqCst);
            }
            b"d-sparse-shrink" => {
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .expect("open")
                    .set_len(100)
                    .expect("truncate");
            }
            _ => {}
        }
    };
    let opts = WriteOptions {
        before_file_read: Some(Box::new(hook)),
        ..WriteOptions::default()
    };
    let archive = work.path().join("live.tar.zst");
    let report = write_archive(&src, File::create(&archive).expect("create"), &opts)
        .expect("a changing tree must not abort the snapshot");
    assert!(fired.load(Ordering::SeqCst));
    assert_eq!(report.changed_during_walk, 3, "{report:?}");
    // y-vanish is opened when the walk reaches it: vanished. zz-dir is scanned
    // ahead of the walk by another thread, before, during or after its removal:
    // stored as seen (its file then vanishes), or vanished itself.
    assert!((1..=2).contains(&report.vanished), "{report:?}");
    assert!(report.index.get(b"zz-dir/sub/deep").is_none());
    assert_eq!(report.unreadable, 0, "{:?}", report.problems);
    assert!(report.index.get(b"y-vanish").is_none());

    // GNU tar reads it without complaint.
    let gnu = work.path().join("gnu");
    gnu_extract(&archive, &gnu);
    // Stored with exactly the size stat'ed: the grown file is cut at its old
    // size, the shrunk one is zero-padded back to it.
    assert_eq!(read_all(&gnu.join("a-grow")), grow);
    let restored = read_all(&gnu.join("b-shrink"));
    assert_eq!(restored.len(), MIB);
    assert_eq!(&restored[..1000], &shrink[..1000]);
    assert!(restored[1000..].iter().all(|&b| b == 0));
    let sparse = read_all(&gnu.join("d-sparse-shrink"));
    assert_eq!(sparse.len(), 8 << 20);
    assert!(sparse.iter().all(|&b| b == 0));
    assert_eq!(read_all(&gnu.join("c-steady")), b"steady");
    assert!(!gnu.join("y-vanish").exists());
    // The scan threads may have listed zz-dir before it was removed: it is then
    // stored as the (empty) directory they saw, never with the vanished file.
    assert!(!gnu.join("zz-dir/sub/deep").exists());

    // And so does our reader, with identical results.
    let ours = work.path().join("ours");
    extract(
        File::open(&archive).expect("open"),
        &ours,
        &ExtractOptions::default(),
    )
    .expect("extract");
    assert_same_tree(&snapshot(&gnu), &snapshot(&ours), "ours vs GNU tar");

    // The next incremental stores the changed files again.
    let incr = work.path().join("incr.tar.zst");
    let r2 = write_archive(
        &src,
        File::create(&incr).expect("create"),
        &WriteOptions {
            parent: Some(&report.index),
            ..WriteOptions::default()
        },
    )
    .expect("incremental");
    let names: Vec<String> = gnu_list(&incr)
        .into_iter()
        .filter(|n| !n.ends_with('/'))
        .collect();
    assert_eq!(names, ["./a-grow", "./b-shrink", "./d-sparse-shrink"]);
    assert_eq!(r2.changed_during_walk, 0);
}

#[test]
fn a_writer_thread_hammering_files_never_breaks_the_archive() {
    let work = tempdir();
    let src = work.path().join("src");
    fs::create_dir(&src).expect("mkdir");
    for i in 0..40 {
        fs::write(src.join(format!("f{i:02}")), text(100_000, i)).expect("write");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let src2 = src.clone();
    let writer = std::thread::spawn(move || {
        let pool = text(200_000, 77);
        let mut n = 0usize;
        while !stop2.load(Ordering::SeqCst) {
            let p = src2.join(format!("f{:02}", n % 40));
            let len = (n * 7919) % 200_000;
            let _ = fs::write(&p, &pool[..len]);
            if n.is_multiple_of(5) {
                let _ = fs::remove_file(src2.join(format!("f{:02}", (n + 3) % 40)));
            }
            n += 1;
        }
    });
    let mut reports = Vec::new();
    for round in 0..2 {
        let archive = work.path().join(format!("r{round}.tar.zst"));
        let report = write_archive(
            &src,
            File::create(&archive).expect("create"),
            &WriteOptions::default(),
        )
        .expect("snapshot under load");
        let out = work.path().join(format!("out{round}"));
        gnu_extract(&archive, &out);
        extract(
            File::open(&archive).expect("open"),
            &work.path().join(format!("ours{round}")),
            &ExtractOptions::default(),
        )
        .expect("our extract");
        reports.push(report);
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer thread");
    eprintln!(
        "changed: {:?}, vanished: {:?}",
        reports
            .iter()
            .map(|r| r.changed_during_walk)
            .collect::<Vec<_>>(),
        reports.iter().map(|r| r.vanished).collect::<Vec<_>>()
    );
}
