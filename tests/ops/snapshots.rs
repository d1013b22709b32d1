//! Snapshots end to end without Docker: the real plugin and agent on a scratch root, hooks through the spool, the CLI.

use crate::support::harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{cli, cli_ok, err_of, noise, wait_for, Agent, Plugin};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_allspark");

fn start_agent(p: &Plugin) -> Agent {
    Agent::start(
        &p.root(),
        &p.dir.path().join("agent.log"),
        &["--no-docker-events"],
    )
}

fn mount_cycle(p: &Plugin, name: &str, id: &str, work: impl FnOnce(&Path)) {
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": name, "ID": id}));
    assert_eq!(err_of(&v), "", "{v}");
    work(Path::new(v["Mountpoint"].as_str().unwrap()));
    let (_, v) = p.call("VolumeDriver.Unmount", json!({"Name": name, "ID": id}));
    assert_eq!(err_of(&v), "", "{v}");
}

fn write_tree(dir: &Path, files: usize) {
    for i in 0..files {
        let sub = dir.join(format!("d{}", i % 10));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(
            sub.join(format!("f{i}.txt")),
            format!("file {i}\n").repeat(50),
        )
        .unwrap();
    }
}

/// The tree as (relative path, kind+content) pairs, for comparisons.
fn tree(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(base: &Path, d: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(d).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                out.push((rel, "dir".into()));
                walk(base, &p, out);
            } else if md.file_type().is_symlink() {
                out.push((
                    rel,
                    format!("-> {}", std::fs::read_link(&p).unwrap().display()),
                ));
            } else {
                out.push((
                    rel,
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned(),
                ));
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

#[test]
fn unmount_hook_snapshots_incrementally_and_restore_gives_the_first_state_back() {
    let p = Plugin::start(BIN);
    let _agent = start_agent(&p);
    let (_, v) = p.call(
        "VolumeDriver.Create",
        json!({"Name": "ws", "Opts": {"snapshot": "on-unmount", "keep": "10"}}),
    );
    assert_eq!(err_of(&v), "");
    mount_cycle(&p, "ws", "c1", |mp| write_tree(mp, 200));
    wait_for("the first snapshot", Duration::from_secs(30), || {
        p.snapshots("ws").len() == 1
    });
    let first_state = tree(&p.managed_data("ws"));

    mount_cycle(&p, "ws", "c2", |mp| {
        std::fs::write(mp.join("d1/f1.txt"), b"changed").unwrap();
        std::fs::write(mp.join("d2/new.txt"), b"new").unwrap();
        std::fs::remove_file(mp.join("d3/f3.txt")).unwrap();
    });
    wait_for("the second snapshot", Duration::from_secs(30), || {
        p.snapshots("ws").len() == 2
    });
    let snaps = p.snapshots("ws");
    assert_eq!(snaps[0]["trigger"], "unmount");
    assert_eq!(snaps[0]["parent"], Value::Null, "the first is full");
    assert_eq!(
        snaps[1]["parent"], snaps[0]["id"],
        "the second is incremental to the first"
    );
    assert_eq!(snaps[1]["deleted"], json!(["d3/f3.txt"]));
    let full = snaps[0]["bytes_in"].as_u64().unwrap();
    let incr = snaps[1]["bytes_in"].as_u64().unwrap();
    assert!(
        incr * 20 < full,
        "incremental read {incr} bytes, full {full}"
    );
    assert!(
        snaps[0]["id"].as_str() < snaps[1]["id"].as_str(),
        "oldest first"
    );

    let first = snaps[0]["id"].as_str().unwrap().to_string();
    cli_ok(&p, &["snapshot", "restore", "ws", &first, "--yes"]);
    assert_eq!(tree(&p.managed_data("ws")), first_state);
    cli_ok(&p, &["snapshot", "verify", "ws"]);
}

#[test]
fn on_mount_snapshot_is_taken_before_the_mount_returns() {
    let p = Plugin::start(BIN);
    let _agent = start_agent(&p);
    p.call(
        "VolumeDriver.Create",
        json!({"Name": "pre", "Opts": {"snapshot": "on-mount"}}),
    );
    std::fs::write(
        p.managed_data("pre").join("before.txt"),
        b"state before mount",
    )
    .unwrap();
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "pre", "ID": "c"}));
    assert_eq!(err_of(&v), "");
    let snaps = p.snapshots("pre");
    assert_eq!(snaps.len(), 1, "the snapshot exists when Mount answers");
    assert_eq!(snaps[0]["trigger"], "mount");
    p.call("VolumeDriver.Unmount", json!({"Name": "pre", "ID": "c"}));
}

#[test]
fn mount_waits_for_a_snapshot_in_progress_then_fails_clearly() {
    let p = Plugin::start_with(BIN, &["--snapshot-wait", "1"]);
    p.call(
        "VolumeDriver.Create",
        json!({"Name": "locked", "Opts": null}),
    );
    let lock = allspark::fs::durable::FileLock::acquire(
        &p.root().join("locks/locked.snap"),
        allspark::fs::durable::LockKind::Exclusive,
    )
    .unwrap();
    let started = Instant::now();
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "locked", "ID": "c"}));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the mount must wait for the snapshot"
    );
    assert!(err_of(&v).contains("a snapshot is in progress"), "{v}");
    drop(lock);
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "locked", "ID": "c"}));
    assert_eq!(err_of(&v), "");
    p.call("VolumeDriver.Unmount", json!({"Name": "locked", "ID": "c"}));
}

#[test]
fn events_wait_while_the_agent_is_down_and_are_done_once() {
    let p = Plugin::start(BIN);
    p.call(
        "VolumeDriver.Create",
        json!({"Name": "late", "Opts": {"snapshot": "on-unmount"}}),
    );
    for i in 0..3 {
        mount_cycle(&p, "late", &format!("c{i}"), |mp| {
            std::fs::write(mp.join(format!("f{i}")), b"x").unwrap()
        });
    }
    let spooled = std::fs::read_dir(p.root().join("spool")).unwrap().count();
    assert_eq!(spooled, 3, "three unmount events wait in the spool");
    assert!(p.snapshots("late").is_empty());
    let agent = start_agent(&p);
    wait_for("the spool to drain", Duration::from_secs(30), || {
        std::fs::read_dir(p.root().join("spool")).unwrap().count() == 0
    });
    drop(agent);
    let snaps = p.snapshots("late");
    assert_eq!(snaps.len(), 3, "one snapshot per event: {snaps:?}");
    let events: std::collections::BTreeSet<_> = snaps
        .iter()
        .map(|s| s["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events.len(), 3);

    // A crash after the snapshot but before the event was deleted: the event is seen again, nothing is redone.
    let replay = p
        .root()
        .join("spool")
        .join(snaps[2]["event"].as_str().unwrap());
    std::fs::write(
        &replay,
        serde_json::to_vec(&json!({"kind": "unmount", "volume": "late", "at": chrono::Utc::now()}))
            .unwrap(),
    )
    .unwrap();
    let _agent = start_agent(&p);
    wait_for("the replayed event", Duration::from_secs(30), || {
        !replay.exists()
    });
    assert_eq!(
        p.snapshots("late").len(),
        3,
        "a replayed event must not make a second snapshot"
    );
}

#[test]
fn kill9_of_the_agent_mid_snapshot_leaves_no_partial_snapshot() {
    let p = Plugin::start(BIN);
    p.call(
        "VolumeDriver.Create",
        json!({"Name": "big", "Opts": {"snapshot": "on-unmount"}}),
    );
    mount_cycle(&p, "big", "c", |mp| {
        for i in 0..16u64 {
            std::fs::write(mp.join(format!("blob{i}")), noise(0x1234_5678 + i, 8 << 20)).unwrap();
        }
    });
    let snapdir = p.root().join("snapshots/big");
    let mut agent = start_agent(&p);
    wait_for("the snapshot to start", Duration::from_secs(30), || {
        std::fs::read_dir(&snapdir)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            })
            .unwrap_or(false)
    });
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    assert!(
        p.snapshots("big").is_empty(),
        "a partial snapshot must never be listed"
    );
    assert_eq!(
        std::fs::read_dir(p.root().join("spool")).unwrap().count(),
        1,
        "the event is kept for a retry"
    );
    let _agent = start_agent(&p);
    wait_for("the retried snapshot", Duration::from_secs(60), || {
        p.snapshots("big").len() == 1
    });
    let leftovers: Vec<_> = std::fs::read_dir(&snapdir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "leftovers: {leftovers:?}");
    cli_ok(&p, &["snapshot", "verify", "big"]);
}

#[test]
fn a_full_disk_fails_the_snapshot_cleanly_and_keeps_older_ones() {
    let p = Plugin::start(BIN);
    p.call("VolumeDriver.Create", json!({"Name": "full", "Opts": null}));
    std::fs::write(p.managed_data("full").join("small"), b"small").unwrap();
    let snapdir = p.root().join("snapshots/full");
    std::fs::create_dir_all(&snapdir).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &snapdir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _guard = Unmount(snapdir.clone());
    let first = cli_ok(&p, &["snapshot", "create", "full"])
        .trim()
        .to_string();
    let noise = noise(0x9e37_79b9_7f4a_7c15, 4 << 20);
    std::fs::write(p.managed_data("full").join("noise"), noise).unwrap();
    let out = cli(&p, &["snapshot", "create", "full", "--full"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("No space left") || err.contains("space"),
        "{err}"
    );
    let snaps = p.snapshots("full");
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["id"], first.as_str());
    let names: Vec<String> = std::fs::read_dir(&snapdir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec![first.clone()],
        "no partial snapshot left behind"
    );
    cli_ok(&p, &["snapshot", "verify", "full", &first]);
}

#[test]
fn cli_rm_refuses_a_needed_parent_and_restore_is_refused_while_mounted() {
    let p = Plugin::start(BIN);
    p.call("VolumeDriver.Create", json!({"Name": "cl", "Opts": null}));
    std::fs::write(p.managed_data("cl").join("a"), b"1").unwrap();
    let a = cli_ok(&p, &["snapshot", "create", "cl"]).trim().to_string();
    std::fs::write(p.managed_data("cl").join("a"), b"2").unwrap();
    let b = cli_ok(&p, &["snapshot", "create", "cl"]).trim().to_string();
    let out = cli(&p, &["snapshot", "rm", "cl", &a]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("parent of {b}")));

    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "cl", "ID": "c"}));
    assert_eq!(err_of(&v), "");
    let out = cli(&p, &["snapshot", "restore", "cl", &a, "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mounted by 1 container"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.call("VolumeDriver.Unmount", json!({"Name": "cl", "ID": "c"}));
    let out = cli(&p, &["snapshot", "restore", "cl", &a]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "without --yes nothing is restored"
    );
    assert_eq!(std::fs::read(p.managed_data("cl").join("a")).unwrap(), b"2");
    cli_ok(&p, &["snapshot", "restore", "cl", &a, "--into", "cl-copy"]);
    assert_eq!(
        std::fs::read(p.managed_data("cl-copy").join("a")).unwrap(),
        b"1"
    );
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "cl-copy"}));
    assert_eq!(err_of(&v), "", "the new volume is known to the driver");
    cli_ok(&p, &["snapshot", "rm", "cl", &b]);
    cli_ok(&p, &["snapshot", "rm", "cl", &a]);
    assert!(p.snapshots("cl").is_empty());
}

#[test]
fn verify_names_a_corrupted_archive_and_restore_refuses_it() {
    let p = Plugin::start(BIN);
    p.call("VolumeDriver.Create", json!({"Name": "cor", "Opts": null}));
    std::fs::write(p.managed_data("cor").join("keep"), b"current").unwrap();
    let id = cli_ok(&p, &["snapshot", "create", "cor"])
        .trim()
        .to_string();
    let archive = p
        .root()
        .join("snapshots/cor")
        .join(&id)
        .join("snapshot.tar.zst");
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&archive, bytes).unwrap();
    let out = cli(&p, &["snapshot", "verify", "cor"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(archive.to_str().unwrap()),
        "verify must name the file: {err}"
    );
    let out = cli(&p, &["snapshot", "restore", "cor", &id, "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        std::fs::read(p.managed_data("cor").join("keep")).unwrap(),
        b"current",
        "a refused restore changes nothing"
    );
}

#[test]
fn a_malicious_snapshot_archive_is_refused_and_nothing_escapes() {
    let p = Plugin::start(BIN);
    p.call("VolumeDriver.Create", json!({"Name": "mal", "Opts": null}));
    std::fs::write(p.managed_data("mal").join("keep"), b"current").unwrap();
    let id = cli_ok(&p, &["snapshot", "create", "mal"])
        .trim()
        .to_string();
    let dir = p.root().join("snapshots/mal").join(&id);
    // A tar whose second entry climbs out of the volume, with a manifest checksum that matches it.
    let mut raw = Vec::new();
    for (name, body) in [
        ("./ok.txt", &b"ok"[..]),
        ("../../../../escaped.txt", &b"evil"[..]),
    ] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", body.len()).as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| *b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        raw.extend_from_slice(&h);
        raw.extend_from_slice(body);
        raw.resize(raw.len().div_ceil(512) * 512, 0);
    }
    raw.resize(raw.len() + 1024, 0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    let gz = gz.finish().unwrap();
    // As an older allspark wrote it: a gzip archive, a manifest without a codec.
    std::fs::write(dir.join("snapshot.tar.gz"), &gz).unwrap();
    let mut m: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    use sha2::Digest;
    m["sha256"] = json!(hex::encode(sha2::Sha256::digest(&gz)));
    m["archive"] = json!("snapshot.tar.gz");
    m.as_object_mut().unwrap().remove("compression");
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();

    let out = cli(&p, &["snapshot", "restore", "mal", &id, "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("escaped.txt"),
        "the refused entry is reported: {err}"
    );
    for up in 0..6 {
        let mut pth = p.managed_data("mal");
        for _ in 0..up {
            pth.pop();
        }
        assert!(
            !pth.join("escaped.txt").exists(),
            "escaped into {}",
            pth.display()
        );
    }
    assert_eq!(
        std::fs::read(p.managed_data("mal").join("keep")).unwrap(),
        b"current"
    );
}

#[test]
fn a_chain_restores_with_plain_gnu_tar_as_the_readme_says() {
    let p = Plugin::start(BIN);
    p.call("VolumeDriver.Create", json!({"Name": "gnu", "Opts": null}));
    let d = p.managed_data("gnu");
    write_tree(&d, 30);
    std::os::unix::fs::symlink("d1/f1.txt", d.join("link")).unwrap();
    cli_ok(&p, &["snapshot", "create", "gnu"]);
    std::fs::write(d.join("d1/f1.txt"), b"v2").unwrap();
    std::fs::remove_dir_all(d.join("d2")).unwrap();
    cli_ok(&p, &["snapshot", "create", "gnu"]);
    std::fs::write(d.join("d3/new"), b"v3").unwrap();
    cli_ok(&p, &["snapshot", "create", "gnu"]);
    let want = tree(&d);
    let out = tempfile::tempdir().unwrap();
    for s in p.snapshots("gnu") {
        for del in s["deleted"].as_array().unwrap() {
            let path = out.path().join(del.as_str().unwrap());
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
        let archive = p
            .root()
            .join("snapshots/gnu")
            .join(s["id"].as_str().unwrap())
            .join(s["archive"].as_str().unwrap());
        assert_eq!(s["compression"], "zstd");
        let st = Command::new("tar")
            .args([
                "--zstd",
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
                "-xpf",
            ])
            .arg(&archive)
            .arg("-C")
            .arg(out.path())
            .status()
            .unwrap();
        assert!(st.success());
    }
    assert_eq!(tree(out.path()), want);
}
