//! Fuzzing without the fuzz toolchain: every seed (`fuzz/seeds/<target>/`) and every input that once
//! crashed a target (`fuzz/regressions/<target>/`) replayed through the same harness code the
//! cargo-fuzz targets run (`fuzz/src/harness.rs`), as plain tests. `scripts/fuzz.sh` does the
//! fuzzing itself; `write_fuzz_seeds` (ignored) regenerates the seeds.

#[path = "../../fuzz/src/harness.rs"]
mod fuzz_harness;

use crate::support::harness::gzip;
use allspark::core::names::VolumeName;
use std::fs;
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Feed every file of the target's seed and regression directories to `run`.
fn replay(target: &str, run: fn(&[u8])) {
    let mut fed = 0;
    for kind in ["seeds", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let bytes = fs::read(&f).unwrap();
            eprintln!("{target}: {}", f.display());
            run(&bytes);
            fed += 1;
        }
    }
    assert!(fed > 0, "no seeds for fuzz target {target}");
    eprintln!("{target}: {fed} inputs replayed");
}

/// One test for the five targets, one after the other: they share the harness's per-process
/// scratch directory, removed at the end (it lives on tmpfs).
#[test]
fn fuzz_seeds_and_regressions_replay_cleanly() {
    replay("requests", fuzz_harness::requests);
    replay("driver_api", fuzz_harness::driver_api);
    replay("state_files", fuzz_harness::state_files);
    replay("extract", fuzz_harness::extract);
    replay("http", fuzz_harness::http);
    fuzz_harness::remove_scratch();
}

// ---------------------------------------------------------------------------------------------
// Seeds: `cargo test --test hardening -- --ignored fuzz::write_fuzz_seeds`
// ---------------------------------------------------------------------------------------------

fn put(target: &str, name: &str, selector: Option<u8>, body: &[u8]) {
    let dir = fuzz_dir().join("seeds").join(target);
    fs::create_dir_all(&dir).unwrap();
    let mut bytes = Vec::new();
    bytes.extend(selector);
    bytes.extend_from_slice(body);
    fs::write(dir.join(name), bytes).unwrap();
}

fn header(name: &[u8], ty: tar::EntryType, size: u64, link: &[u8]) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_mode(0o644);
    h.set_mtime(1_500_000_000);
    h.set_size(size);
    h.set_entry_type(ty);
    h.set_cksum();
    h
}

/// (name, type, data, link target) of one raw tar entry.
type RawEntry<'a> = (&'a [u8], tar::EntryType, &'a [u8], &'a [u8]);

fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, ty, data, link) in entries {
        out.extend_from_slice(header(name, *ty, data.len() as u64, link).as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend([0u8; 1024]);
    out
}

#[test]
#[ignore = "regenerates fuzz/seeds; run by hand"]
fn write_fuzz_seeds() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let _ = fs::remove_dir_all(fuzz_dir().join("seeds"));

    // requests: selector byte (see fuzz_harness::requests), then the input.
    for (i, (sel, body)) in [
        (0, r#"{"Name":"v","Opts":null}"#),
        (0, r#"{"Name":"pg","Opts":{"type":"none","o":"bind,noatime,nodiratime","device":"/srv/pg","uid":"999","gid":"999","mode":"0700"}}"#),
        (0, r#"{"Name":"ws","Opts":{"snapshot":"on-unmount","keep":"last=10,daily=7,weekly=4,monthly=12","backup":"high","class":"critical","size":"50G"}}"#),
        (0, r#"{"Name":"p1","Opts":{"template":"snapshot:base@20261125T200000.000000Z","parent":"target-workspaces","class":"temporary"}}"#),
        (1, r#"{"Name":"v"}"#),
        (2, r#"{"Name":"v","ID":"0123456789abcdef"}"#),
        (3, r#"{"o":"ro,nosuid,nodev,noexec","size":"1.5T","keep":"3"}"#),
        (4, "last=10,daily=7,weekly=4,monthly=12"),
        (5, "1.5GiB"),
        (6, "rbind,ro,relatime"),
        (7, "20261125T201814.253835Z"),
    ]
    .iter()
    .enumerate()
    {
        put("requests", &format!("seed-{i:02}"), Some(*sel), body.as_bytes());
    }

    // driver_api: the harness decodes bytes into calls; a few hand-made call sequences
    // (create a, mount a c1, unmount, remove; a device volume; a child volume) and noise.
    let sequences: [&[u8]; 4] = [
        // create "a" (opts: 1 pair snapshot=on-unmount), mount a/c1, unmount a/c1, remove a, list
        &[
            0, 3, 0, 1, 1, 6, 4, 3, 2, 3, 0, 1, 0, 5, 3, 0, 1, 0, 6, 3, 0, 9,
        ],
        // create "b" with device=<binds>/x, mount, get, path
        &[0, 3, 1, 1, 1, 2, 2, 2, 3, 3, 1, 1, 0, 7, 3, 1, 8, 3, 1],
        // create "p", create "a" with parent=p, remove p (refused), remove a, remove p
        &[0, 3, 4, 0, 1, 3, 0, 1, 12, 2, 4, 6, 3, 4, 6, 3, 0, 6, 3, 4],
        // raw bodies and unknown calls
        b"\x0a\x02\x05{bad}\x0a\x09\x00\x0b\x00\x0b\x01",
    ];
    for (i, s) in sequences.iter().enumerate() {
        put("driver_api", &format!("seed-{i:02}"), None, s);
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..4 {
        let noise: Vec<u8> = (0..200)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        put("driver_api", &format!("noise-{i:02}"), None, &noise);
    }

    // state_files: real files written by allspark itself.
    let tmp = tempfile::tempdir().unwrap();
    let layout = allspark::core::layout::Layout::new(tmp.path().join("root"));
    layout.ensure().unwrap();
    let sys = std::sync::Arc::new(allspark::plugin::mounts::RecordingSys::default());
    let driver = allspark::plugin::driver::Driver::new(
        layout.clone(),
        sys,
        allspark::plugin::driver::DriverSettings {
            mount_dir: layout.mounts_dir(),
            bind_roots: vec![layout.root.clone()],
            view: Default::default(),
            snapshot_wait: std::time::Duration::ZERO,
            protected: Vec::new(),
        },
    )
    .unwrap();
    let opts: std::collections::BTreeMap<String, String> = [
        ("snapshot", "on-unmount"),
        ("keep", "last=3,daily=2"),
        ("size", "2G"),
        ("class", "critical"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    driver
        .create(&VolumeName::fixed("vol"), Some(&opts))
        .unwrap();
    driver.mount(&VolumeName::fixed("vol"), "c1").unwrap();
    put(
        "state_files",
        "record",
        Some(2),
        &fs::read(layout.record(&VolumeName::fixed("vol"))).unwrap(),
    );
    driver.unmount(&VolumeName::fixed("vol"), "c1").unwrap();
    let data = layout.managed_data(&VolumeName::fixed("vol"));
    fs::create_dir_all(data.join("dir/sub")).unwrap();
    fs::write(data.join("dir/sub/file.txt"), b"hello").unwrap();
    fs::write(data.join("setuid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(data.join("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    symlink("dir/sub", data.join("link")).unwrap();
    fs::hard_link(data.join("dir/sub/file.txt"), data.join("hard")).unwrap();
    fs::write(data.join("l".repeat(120)), b"long name").unwrap();
    let _ = xattr::set(data.join("dir"), "user.seed", b"a\nb");
    nix::unistd::mkfifo(
        &data.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let sparse = fs::File::create(data.join("sparse")).unwrap();
    sparse.set_len(1 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&sparse, b"x", 40960).unwrap();
    drop(sparse);
    let ctx = allspark::context::Ctx {
        layout: layout.clone(),
        view: Default::default(),
        docker_url: "unix:///nonexistent.sock".into(),
        compression: allspark::core::options::Compression::Zstd,
    };
    let first = allspark::ops::snapshot::take(
        &ctx,
        &VolumeName::fixed("vol"),
        allspark::snapshot::Trigger::Manual,
        None,
        false,
        None,
    )
    .unwrap();
    fs::remove_file(data.join("hard")).unwrap();
    fs::write(data.join("new"), b"new").unwrap();
    let second = allspark::ops::snapshot::take(
        &ctx,
        &VolumeName::fixed("vol"),
        allspark::snapshot::Trigger::Unmount,
        Some("00000000000000000001-0000000001-00000001.json".into()),
        false,
        None,
    )
    .unwrap();
    for (name, outcome) in [("full", first), ("incremental", second)] {
        let allspark::snapshot::CreateOutcome::Created(m) = outcome else {
            panic!("no snapshot")
        };
        let dir = layout
            .volume_snapshots(&VolumeName::fixed("vol"))
            .join(&m.id);
        put(
            "state_files",
            &format!("manifest-{name}"),
            Some(0),
            &fs::read(dir.join("manifest.json")).unwrap(),
        );
        put(
            "state_files",
            &format!("index-{name}"),
            Some(3),
            &fs::read(dir.join("index")).unwrap(),
        );
        put(
            "extract",
            &format!("snapshot-{name}.{}", m.compression.archive_suffix()),
            Some(0),
            &fs::read(dir.join(&m.archive)).unwrap(),
        );
    }
    let ev = allspark::core::spool::Event {
        kind: allspark::core::spool::EventKind::Unmount,
        volume: VolumeName::fixed("vol"),
        at: chrono::Utc::now(),
        container: Some("abc".into()),
    };
    put(
        "state_files",
        "spool-event",
        Some(1),
        &serde_json::to_vec(&ev).unwrap(),
    );
    put(
        "state_files",
        "usage",
        Some(4),
        br#"{"bytes":12345,"files":3,"measured_at":"2026-11-25T20:18:14Z"}"#,
    );

    // extract: the uncompressed tar of the same tree (gzip-wrapped by the harness, bit 0),
    // over a populated destination (bit 3), and hostile archives.
    let mut tar_bytes = Vec::new();
    allspark::archive::write_tree(
        &data,
        &mut tar_bytes,
        &allspark::archive::WriteOptions::default(),
    )
    .unwrap();
    put("extract", "tree.tar", Some(1), &tar_bytes);
    put("extract", "tree-over-existing.tar", Some(1 | 8), &tar_bytes);
    put("extract", "tree-verify.tar", Some(1 | 2), &tar_bytes);
    use tar::EntryType as T;
    let hostile: [(&str, Vec<u8>); 6] = [
        (
            "dotdot",
            raw_tar(&[
                (b"./ok", T::Regular, b"ok", b""),
                (b"../../escaped", T::Regular, b"x", b""),
            ]),
        ),
        (
            "absolute",
            raw_tar(&[(b"/nonexistent-allspark-fuzz/x", T::Regular, b"x", b"")]),
        ),
        (
            "symlink-write-through",
            raw_tar(&[
                (b"./l", T::Symlink, b"", b"../outside"),
                (b"./l/precious", T::Regular, b"pwned", b""),
            ]),
        ),
        (
            "hardlink-out",
            raw_tar(&[(b"./h", T::Link, b"", b"../outside/precious")]),
        ),
        ("device", raw_tar(&[(b"./null", T::Char, b"", b"")])),
        (
            "existing-link",
            raw_tar(&[(b"./link/precious", T::Regular, b"pwned", b"")]),
        ),
    ];
    for (name, t) in hostile {
        put("extract", &format!("hostile-{name}.tar"), Some(1 | 8), &t);
        put(
            "extract",
            &format!("hostile-{name}.tar.gz"),
            Some(4 | 8),
            &gzip(&t),
        );
    }
    http_seeds();
    eprintln!("seeds written under {}", fuzz_dir().join("seeds").display());
}

/// http: mode byte (even: raw bytes; odd: the body of a well-formed call, bit 1 chunked), then
/// the input.
fn http_seeds() {
    let raw: [&[u8]; 6] = [
        b"POST /Plugin.Activate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /VolumeDriver.Create HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"Na\r\n9\r\nme\":\"v\"}\r\n0\r\n\r\n",
        b"POST /VolumeDriver.List HTTP/1.1\r\nContent-Length: 0\r\n\r\nPOST /VolumeDriver.List HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
        b"POST /VolumeDriver.Get HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 12\r\n\r\n{\"Name\":\"v\"}",
        b"GET /Plugin.Activate HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ];
    for (i, r) in raw.iter().enumerate() {
        put("http", &format!("raw-{i:02}"), Some(0), r);
    }
    put(
        "http",
        "call-length",
        Some(1),
        br#"{"Name":"ws","Opts":{"size":"1G"}}"#,
    );
    put(
        "http",
        "call-chunked",
        Some(3),
        br#"{"Name":"ws","ID":"abc"}"#,
    );
}
