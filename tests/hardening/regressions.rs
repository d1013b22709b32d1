//! Regression tests of the bugs the hardening work found (fuzzing, crash injection, hostile
//! input), each reduced to a deterministic case. docs/hardening.md lists them.

use crate::support::harness;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use std::time::{Duration, Instant};

use harness::{cli, err_of, Plugin};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_allspark");

/// Found by tests/hardening/input.rs: Path did not check the name, so `../decoy` read
/// `state/decoy.json` and answered that a "volume record" there was corrupt, telling the
/// operator to move it aside.
#[test]
fn path_refuses_a_name_that_is_not_a_volume_name() {
    let p = Plugin::start(BIN);
    fs::write(p.root().join("state/decoy.json"), b"{}").unwrap();
    for name in ["../decoy", "../../../../etc/passwd", "a\0b", ""] {
        let (status, v) = p.call("VolumeDriver.Path", json!({"Name": name}));
        let err = err_of(&v);
        assert_eq!(status, 400, "{name:?}: {err}");
        assert!(
            err.contains("names must match") && !err.contains("corrupt"),
            "{name:?}: {err}"
        );
    }
    assert!(p.root().join("state/decoy.json").exists());
}

/// Found by tests/hardening/crash.rs: a Remove killed after moving the data to the trash but
/// before deleting the record left the volume in place with its data gone (the restart emptied
/// the trash) although the removal was never acknowledged.
#[test]
fn a_remove_interrupted_before_the_record_is_deleted_gets_its_data_back() {
    let mut p = Plugin::start(BIN);
    for name in ["kept", "child-parent"] {
        let (_, v) = p.call("VolumeDriver.Create", json!({"Name": name, "Opts": null}));
        assert_eq!(err_of(&v), "");
    }
    let (_, v) = p.call(
        "VolumeDriver.Create",
        json!({"Name": "child", "Opts": {"parent": "child-parent"}}),
    );
    assert_eq!(err_of(&v), "");
    let root = p.root();
    fs::write(root.join("volumes/kept/data/precious"), b"kept's data").unwrap();
    fs::write(
        root.join("volumes/child-parent/data/child/f"),
        b"child's data",
    )
    .unwrap();
    p.kill9();
    // The state a kill leaves between the rename into the trash and the record deletion.
    fs::rename(
        root.join("volumes/kept"),
        root.join("trash/kept.1795640172369659104"),
    )
    .unwrap();
    fs::rename(
        root.join("volumes/child-parent/data/child"),
        root.join("trash/child.1795640172369659105"),
    )
    .unwrap();
    // And a finished removal whose trash was not emptied yet.
    fs::create_dir_all(root.join("trash/gone.1795640172369659106/data")).unwrap();
    p.spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_dir(root.join("trash")).unwrap().count() != 0 {
        assert!(Instant::now() < deadline, "trash not handled: {}", p.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        fs::read(root.join("volumes/kept/data/precious")).unwrap(),
        b"kept's data"
    );
    assert_eq!(
        fs::read(root.join("volumes/child-parent/data/child/f")).unwrap(),
        b"child's data"
    );
    assert!(p.log().contains("data is put back"), "{}", p.log());
    // Docker retries the removal: now it completes.
    for name in ["kept", "child"] {
        let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": name}));
        assert_eq!(err_of(&v), "");
    }
    assert!(!root.join("volumes/kept").exists());
    assert!(!root.join("volumes/child-parent/data/child").exists());
    assert_eq!(fs::read_dir(root.join("trash")).unwrap().count(), 0);
}

fn send(p: &Plugin, head: &str) -> UnixStream {
    let mut s = UnixStream::connect(p.socket()).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s
}

fn reply_of(mut s: UnixStream, wait: Duration) -> (String, Duration) {
    let started = Instant::now();
    s.set_read_timeout(Some(wait)).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

/// Found by tests/hardening/input.rs: a request announcing a 10 GiB body was not refused until
/// the bytes came, and a body that trickles in held its connection forever (the header timeout
/// stops at the end of the headers).
#[test]
fn an_oversized_announced_body_is_refused_at_once_and_a_slow_body_times_out() {
    let p = Plugin::start(BIN);
    let s = send(
        &p,
        "POST /VolumeDriver.Create HTTP/1.1\r\nHost: x\r\nContent-Length: 10737418240\r\n\r\n",
    );
    let (reply, took) = reply_of(s, Duration::from_secs(30));
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("larger than"), "{reply}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    let mut s = send(
        &p,
        "POST /VolumeDriver.List HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
    );
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < allspark::plugin::server::BODY_TIMEOUT + Duration::from_secs(10) {
        std::thread::sleep(Duration::from_secs(1));
        if s.write_all(b" ").is_err() {
            closed = true;
            break;
        }
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        let mut b = [0u8; 256];
        if let Ok(n) = s.read(&mut b) {
            let text = String::from_utf8_lossy(&b[..n]);
            assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
            closed = true;
            break;
        }
    }
    let took = started.elapsed();
    assert!(closed, "a body sent one byte per second was never cut off");
    assert!(
        took <= allspark::plugin::server::BODY_TIMEOUT + Duration::from_secs(3),
        "{took:?}"
    );
    let (_, v) = p.call("VolumeDriver.List", json!({}));
    assert_eq!(err_of(&v), "");
}

/// Found by tests/hardening/input.rs: a snapshot of a volume holding a device node (a rootfs
/// build, say) was taken, but verify and restore refused it whole ("not made by allspark or
/// tampered with"), so nothing of that volume could be restored. Restore never creates device
/// nodes; now it skips them, naming each, and restores the rest.
#[test]
fn a_volume_holding_a_device_node_is_snapshotted_verified_and_restored() {
    let p = Plugin::start(BIN);
    let (_, v) = p.call(
        "VolumeDriver.Create",
        json!({"Name": "rootfs", "Opts": null}),
    );
    assert_eq!(err_of(&v), "");
    let data = p.root().join("volumes/rootfs/data");
    fs::create_dir(data.join("dev")).unwrap();
    nix::sys::stat::mknod(
        &data.join("dev/null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    fs::write(data.join("hostname"), b"rootfs\n").unwrap();
    let out = cli(&p, &["snapshot", "create", "rootfs"]);
    assert!(out.status.success());
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = cli(&p, &["snapshot", "verify", "rootfs"]);
    assert!(
        out.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(data.join("hostname"), b"changed\n").unwrap();
    let out = cli(&p, &["snapshot", "restore", "rootfs", &id, "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "restore: {err}");
    assert!(err.contains("dev/null"), "the skipped node is named: {err}");
    assert_eq!(fs::read(data.join("hostname")).unwrap(), b"rootfs\n");
    assert!(fs::symlink_metadata(data.join("dev/null")).is_err());
    assert!(data.join("dev").is_dir());
}

/// Bind-mount a directory read-only onto itself, until dropped.
struct ReadOnly(std::path::PathBuf);

impl ReadOnly {
    fn make(dir: &std::path::Path) -> ReadOnly {
        use nix::mount::{mount, MsFlags};
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, dir, None::<&str>, ro, None::<&str>).unwrap();
        ReadOnly(dir.to_path_buf())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Found by tests/hardening/faults.rs: a Remove whose record could not be deleted (read-only or
/// failing state directory) had already moved the data into the trash and left it there: the
/// volume stayed, empty, until the plugin restarted.
#[test]
fn a_remove_that_cannot_delete_the_record_keeps_the_data_in_place() {
    let p = Plugin::start(BIN);
    let (_, v) = p.call(
        "VolumeDriver.Create",
        json!({"Name": "stays", "Opts": null}),
    );
    assert_eq!(err_of(&v), "");
    let data = p.root().join("volumes/stays/data");
    fs::write(data.join("precious"), b"still here").unwrap();
    let ro = ReadOnly::make(&p.root().join("state"));
    let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": "stays"}));
    assert!(err_of(&v).contains("Read-only file system"), "{v}");
    assert_eq!(fs::read(data.join("precious")).unwrap(), b"still here");
    assert_eq!(fs::read_dir(p.root().join("trash")).unwrap().count(), 0);
    drop(ro);
    let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": "stays"}));
    assert_eq!(err_of(&v), "");
    assert!(!p.root().join("volumes/stays").exists());
}

/// Found by tests/hardening/faults.rs: an Unmount that removed the bind mount but could not record
/// it (full disk) left a reference without a mount. Docker does not repeat the Unmount, so the
/// reference blocked the volume's removal ("mounted by 1 container") and, worse, kept the next
/// container's bind mount alive after that container's Unmount. Under the volume's lock such a
/// reference is stale: Mount clears it, Remove ignores it.
#[test]
fn a_reference_left_without_its_mount_neither_keeps_the_next_mount_nor_blocks_removal() {
    let p = Plugin::start(BIN);
    for name in ["a", "b"] {
        let (_, v) = p.call("VolumeDriver.Create", json!({"Name": name, "Opts": null}));
        assert_eq!(err_of(&v), "");
        let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": name, "ID": "c1"}));
        assert_eq!(err_of(&v), "");
        // The state such an Unmount leaves: the mount gone, the reference recorded.
        nix::mount::umount2(&p.mount_dir().join(name), nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "a", "ID": "c2"}));
    assert_eq!(err_of(&v), "");
    let (_, v) = p.call("VolumeDriver.Unmount", json!({"Name": "a", "ID": "c2"}));
    assert_eq!(err_of(&v), "");
    assert!(p.live_mounts().is_empty(), "{:?}", p.live_mounts());
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "a"}));
    assert_eq!(v["Volume"]["Status"]["mounted"], 0);
    for name in ["a", "b"] {
        let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": name}));
        assert_eq!(err_of(&v), "", "{name}");
    }
}

/// Found by tests/hardening/faults.rs: extracting onto a full filesystem failed with "failed to
/// unpack `…/blob`" and nothing more (tar-rs keeps the cause two errors deep); the operator could
/// not tell a full disk from a damaged archive.
#[test]
fn an_extraction_that_runs_out_of_space_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let blob: Vec<u8> = (0..256u32 << 10).map(|i| (i * 7919 % 251) as u8).collect();
    fs::write(src.join("blob"), &blob).unwrap();
    let mut tar = Vec::new();
    allspark::archive::write_tree(&src, &mut tar, &Default::default()).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let gz = gz.finish().unwrap();
    let small = dir.path().join("small");
    fs::create_dir(&small).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &small,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64k"),
    )
    .unwrap();
    let err = allspark::archive::extract(&gz[..], &small.join("dest"), &Default::default())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    let _ = nix::mount::umount2(&small, nix::mount::MntFlags::MNT_DETACH);
    assert!(err.contains("No space left on device"), "{err}");
}

/// Found by tests/hardening/input.rs: `snapshot prune` and `volume cleanup` built paths from the
/// volume name unchecked: `snapshot prune ../decoy` applied retention to (and deleted) snapshot
/// directories outside the snapshot store, `volume cleanup ../../x` created `x.lock` outside the
/// locks directory.
#[test]
fn prune_and_cleanup_refuse_names_that_are_not_volume_names() {
    let p = Plugin::start(BIN);
    let (_, v) = p.call("VolumeDriver.Create", json!({"Name": "v", "Opts": null}));
    assert_eq!(err_of(&v), "");
    fs::write(p.root().join("volumes/v/data/f"), b"1").unwrap();
    let out = cli(&p, &["snapshot", "create", "v"]);
    assert!(out.status.success());
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // Twelve valid-looking snapshots outside the store: more than the default keep of 10.
    let src = p.root().join("snapshots/v").join(&id);
    let decoy = p.root().join("decoy");
    for i in 0..12 {
        let dir = decoy.join(format!("2020010{}T0000{i:02}.000000Z", i % 9 + 1));
        fs::create_dir_all(&dir).unwrap();
        for f in ["manifest.json", "snapshot.tar.zst", "index"] {
            fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        let m = fs::read_to_string(dir.join("manifest.json")).unwrap();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        fs::write(dir.join("manifest.json"), m.replace(&id, &name)).unwrap();
    }
    // Refused as the argument is parsed (a VolumeName), before anything runs: clap's usage
    // error, exit status 2.
    let out = cli(&p, &["snapshot", "prune", "../decoy"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("names must match"), "{err}");
    assert_eq!(fs::read_dir(&decoy).unwrap().count(), 12, "decoys deleted");

    let out = cli(&p, &["volume", "cleanup", "../../lockprobe"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("names must match"), "{err}");
    assert!(!p.dir.path().join("lockprobe.lock").exists());
}

/// Found by tests/hardening/crash.rs (seeds 300, 306, 307): the plugin listens first and recovers
/// after, and recovery worked from the mount table read when it started. A Mount served meanwhile
/// (dockerd retries as soon as the socket answers) had its fresh reference cleared ("references
/// without a live mount") and its bind mount left without a reference; a stale mount met by a
/// Mount got a second bind stacked on it.
#[test]
fn calls_served_during_recovery_keep_their_references_and_mounts() {
    let mut p = Plugin::start(BIN);
    for i in 0..50 {
        let (_, v) = p.call(
            "VolumeDriver.Create",
            json!({"Name": format!("v{i:02}"), "Opts": null}),
        );
        assert_eq!(err_of(&v), "");
    }
    // A stale mount without a reference (a crash between the bind and the record).
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "v48", "ID": "old"}));
    assert_eq!(err_of(&v), "");
    p.kill9();
    harness::set_refs(&p.root(), "v48", json!({}));
    // Hold recovery at the first volume, after it has read the mount table.
    let first = allspark::fs::durable::FileLock::acquire(
        &p.root().join("locks/v00.lock"),
        allspark::fs::durable::LockKind::Exclusive,
    )
    .unwrap();
    p.spawn();
    std::thread::sleep(Duration::from_millis(300));
    for name in ["v49", "v48"] {
        let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": name, "ID": "new"}));
        assert_eq!(err_of(&v), "", "{name}");
    }
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.log().matches("recovery done").count() < 2 {
        assert!(Instant::now() < deadline, "no recovery: {}", p.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    for name in ["v49", "v48"] {
        let (_, v) = p.call("VolumeDriver.Get", json!({"Name": name}));
        assert_eq!(
            v["Volume"]["Status"]["mounted"], 1,
            "{name}: reference lost"
        );
    }
    let mut live = p.live_mounts();
    live.sort();
    assert_eq!(
        live,
        vec![p.mount_dir().join("v48"), p.mount_dir().join("v49")],
        "one mount per mounted volume\n{}",
        p.log()
    );
    for name in ["v49", "v48"] {
        let (_, v) = p.call("VolumeDriver.Unmount", json!({"Name": name, "ID": "new"}));
        assert_eq!(err_of(&v), "");
    }
    assert!(p.live_mounts().is_empty(), "{:?}", p.live_mounts());
}
