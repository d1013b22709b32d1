//! Codecs through snapshot create and restore: chains that switch codec or mix them, and a damaged member or frame in a parallel restore.

use crate::util;
use allspark::core::names::VolumeName;

use std::fs;
use std::path::Path;
use std::process::Command;

use allspark::archive::Compression;
use allspark::core::layout::Layout;
use allspark::snapshot::restore::SwapTarget;
use allspark::snapshot::{catalog, create, restore_chain_into, CreateOutcome, CreateRequest};
use allspark::snapshot::{Manifest, RestoreReport, SnapshotError, Trigger};
use util::*;

/// A layout in `root` with volume `v`'s data directory holding a small tree.
fn volume(root: &Path) -> (Layout, std::path::PathBuf) {
    let layout = Layout::new(root.join("state-root"));
    layout.ensure().expect("create the state root");
    let data = layout.managed_data(&VolumeName::fixed("v"));
    fs::create_dir_all(data.join("src/deep")).expect("mkdir");
    for i in 0..40 {
        fs::write(data.join(format!("src/f{i:02}.txt")), text(20_000, i)).expect("write");
    }
    fs::write(data.join("src/deep/media.bin"), noise(1, 300_000)).expect("write");
    fs::write(data.join("gone-later"), b"bye").expect("write");
    (layout, data)
}

fn snap(layout: &Layout, data: &Path, codec: Compression, full: bool, every: usize) -> Manifest {
    let req = CreateRequest {
        volume: &VolumeName::fixed("v"),
        source: data,
        trigger: Trigger::Manual,
        event: None,
        driver: None,
        full_every: every,
        skip_if_mounted: false,
        force_full: full,
        compression: codec,
        progress: None,
    };
    match create(layout, &req).expect("snapshot create") {
        CreateOutcome::Created(m) => m,
        other => panic!("no snapshot: {other:?}"),
    }
}

fn archive_of(layout: &Layout, m: &Manifest) -> std::path::PathBuf {
    catalog::snapshot_dir(layout, &m.volume, &m.id).join(&m.archive)
}

/// Restore `chain` over the directory `target` (created by the restore if missing).
fn restore_to(
    layout: &Layout,
    chain: &[Manifest],
    target: &Path,
) -> Result<RestoreReport, SnapshotError> {
    restore_chain_into(layout, chain, &SwapTarget::by_path(target)?, None)
}

/// Restore `m`'s chain into a fresh directory (swapped in by the restore) and return its tree.
fn restored(layout: &Layout, m: &Manifest, into: &Path) -> Tree {
    let all = catalog::list(layout, &VolumeName::fixed("v")).expect("list");
    let chain = catalog::chain(&all, &m.id).expect("chain");
    restore_to(layout, &chain, into).expect("restore");
    snapshot(into)
}

#[test]
fn a_chain_switches_codec_at_its_next_full_and_every_snapshot_restores() {
    let work = tempdir();
    let (layout, data) = volume(work.path());
    let mut expected = Vec::new();
    // Chains of 2: gzip full, gzip incremental (asked for zstd: the chain keeps gzip),
    // then the next full is zstd, and its incremental too.
    let a = snap(&layout, &data, Compression::Gzip, false, 2);
    expected.push((a.clone(), snapshot(&data)));
    fs::write(data.join("src/f01.txt"), b"changed").expect("write");
    fs::remove_file(data.join("gone-later")).expect("rm");
    let b = snap(&layout, &data, Compression::Zstd, false, 2);
    expected.push((b.clone(), snapshot(&data)));
    fs::write(data.join("src/new.txt"), b"new").expect("write");
    let c = snap(&layout, &data, Compression::Zstd, false, 2);
    expected.push((c.clone(), snapshot(&data)));
    fs::write(data.join("src/f02.txt"), b"changed too").expect("write");
    let d = snap(&layout, &data, Compression::Gzip, false, 2);
    expected.push((d.clone(), snapshot(&data)));

    assert_eq!(
        (a.compression, a.archive.as_str()),
        (Compression::Gzip, "snapshot.tar.gz")
    );
    assert_eq!(b.parent.as_deref(), Some(a.id.as_str()));
    assert_eq!(
        b.compression,
        Compression::Gzip,
        "an incremental keeps its chain's codec"
    );
    assert!(c.parent.is_none(), "the chain of 2 is full: a new full");
    assert_eq!(
        (c.compression, c.archive.as_str()),
        (Compression::Zstd, "snapshot.tar.zst")
    );
    assert_eq!(d.parent.as_deref(), Some(c.id.as_str()));
    assert_eq!(d.compression, Compression::Zstd);
    for (m, _) in &expected {
        assert_eq!(codec_of(&archive_of(&layout, m)), m.compression, "{}", m.id);
    }
    for (i, (m, want)) in expected.iter().enumerate() {
        let into = work.path().join(format!("restored-{i}"));
        assert_same_tree(want, &restored(&layout, m, &into), &format!("snapshot {i}"));
    }
}

/// A chain whose full is gzip and whose incremental was re-encoded with plain
/// `zstd` (as someone converting archives by hand would): restore reads each
/// archive with its own codec.
#[test]
fn a_chain_mixing_codecs_restores() {
    let work = tempdir();
    let (layout, data) = volume(work.path());
    snap(&layout, &data, Compression::Gzip, true, 10);
    fs::write(data.join("src/f03.txt"), b"changed").expect("write");
    fs::remove_file(data.join("gone-later")).expect("rm");
    let incr = snap(&layout, &data, Compression::Gzip, false, 10);
    let want = snapshot(&data);
    assert!(incr.parent.is_some());
    let dir = catalog::snapshot_dir(&layout, &VolumeName::fixed("v"), &incr.id);
    let zst = dir.join("snapshot.tar.zst");
    let sh = format!(
        "gzip -dc {} | zstd -q -3 -o {}",
        dir.join(&incr.archive).display(),
        zst.display()
    );
    run(Command::new("sh").arg("-c").arg(&sh));
    fs::remove_file(dir.join(&incr.archive)).expect("rm gzip archive");
    let mut m: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).expect("read")).expect("json");
    m["archive"] = "snapshot.tar.zst".into();
    m["compression"] = "zstd".into();
    m["sha256"] = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        fs::read(&zst).expect("read"),
    ))
    .into();
    fs::write(dir.join("manifest.json"), m.to_string()).expect("write manifest");
    let incr = catalog::get(&layout, &VolumeName::fixed("v"), &incr.id).expect("manifest");
    assert_eq!(incr.compression, Compression::Zstd);
    let into = work.path().join("restored");
    assert_same_tree(&want, &restored(&layout, &incr, &into), "mixed chain");
}

#[test]
fn a_damaged_member_or_frame_fails_the_parallel_restore_naming_it_and_nothing_is_swapped_in() {
    for (codec, what) in [
        (Compression::Zstd, "zstd frame"),
        (Compression::Gzip, "gzip member"),
    ] {
        let work = tempdir();
        let (layout, data) = volume(work.path());
        // Enough data for several members or frames.
        for i in 0..4 {
            fs::write(data.join(format!("big-{i}.txt")), text(4 << 20, 100 + i)).expect("write");
        }
        let m = snap(&layout, &data, codec, true, 10);
        let all = catalog::list(&layout, &VolumeName::fixed("v")).expect("list");
        let chain = catalog::chain(&all, &m.id).expect("chain");

        // Undamaged, it restores with the pieces decoded on the worker threads.
        let target = work.path().join("target");
        restore_to(&layout, &chain, &target).expect("restore");
        let archive = archive_of(&layout, &m);
        let r = allspark::archive::extract(
            fs::File::open(&archive).expect("open"),
            &work.path().join("check"),
            &Default::default(),
        )
        .expect("extract");
        assert!(r.parallel_pieces >= 4 && !r.streamed, "{codec}: {r:?}");

        // The target now holds something else, which a failed restore must leave alone.
        fs::write(target.join("marker"), b"current").expect("write");
        let before = snapshot(&target);
        let mut bytes = fs::read(&archive).expect("read");
        let at = bytes.len() * 3 / 5;
        bytes[at] ^= 0x20;
        fs::write(&archive, &bytes).expect("write");
        let err = restore_to(&layout, &chain, &target)
            .expect_err("a damaged archive must not restore")
            .to_string();
        assert!(
            err.contains(what) && err.contains("damaged") && err.contains("at byte"),
            "{codec}: the error names the piece: {err}"
        );
        assert!(err.contains(archive.to_str().expect("utf-8")), "{err}");
        assert_same_tree(&before, &snapshot(&target), "target after a failed restore");
        let leftovers: Vec<_> = fs::read_dir(work.path())
            .expect("read_dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("staging"))
            .collect();
        assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
    }
}

/// The archive is read once: a copy that decodes fine but is not the one the
/// manifest names (its checksum differs) is refused before the swap.
#[test]
fn a_checksum_mismatch_is_caught_while_extracting_before_the_swap() {
    let work = tempdir();
    let (layout, data) = volume(work.path());
    let m = snap(&layout, &data, Compression::Zstd, true, 10);
    fs::write(data.join("extra"), b"extra").expect("write");
    let other = snap(&layout, &data, Compression::Zstd, true, 10);
    fs::copy(archive_of(&layout, &other), archive_of(&layout, &m)).expect("swap archives");
    let target = work.path().join("target");
    fs::create_dir(&target).expect("mkdir");
    fs::write(target.join("marker"), b"current").expect("write");
    let all = catalog::list(&layout, &VolumeName::fixed("v")).expect("list");
    let chain = catalog::chain(&all, &m.id).expect("chain");
    let err = restore_to(&layout, &chain, &target)
        .expect_err("mismatch")
        .to_string();
    assert!(err.contains("does not match its manifest"), "{err}");
    assert_eq!(fs::read(target.join("marker")).expect("marker"), b"current");
    assert!(!target.join("extra").exists());
}
