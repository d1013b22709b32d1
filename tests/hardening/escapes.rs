//! Host-root escapes found in review: symlinked `parent=` children, a `device=` directory
//! swapped for a symlink in a loop, and `o=rbind` with flags unmounting the host's submounts.
//! Each attack runs against the real plugin on its socket (real mounts, root) and must leave the
//! outside directory exactly as it was: owner, mode and content.

use crate::support::harness;
use crate::support::outside::{files_holding_secret, Outside};

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{cli, err_of, Plugin};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_allspark");

fn create(p: &Plugin, name: &str, opts: serde_json::Value) -> String {
    let (_, v) = p.call("VolumeDriver.Create", json!({"Name": name, "Opts": opts}));
    err_of(&v)
}

fn mount(p: &Plugin, name: &str, id: &str) -> (String, Option<PathBuf>) {
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": name, "ID": id}));
    let err = err_of(&v);
    let point = v["Mountpoint"].as_str().map(PathBuf::from);
    (err, point)
}

fn unmount(p: &Plugin, name: &str, id: &str) {
    let (_, v) = p.call("VolumeDriver.Unmount", json!({"Name": name, "ID": id}));
    assert_eq!(err_of(&v), "", "unmount {name}");
}

#[test]
fn a_child_symlinked_before_create_is_refused_and_the_target_untouched() {
    let p = Plugin::start(BIN);
    let out = Outside::new();
    let before = out.seen();
    assert_eq!(create(&p, "par", json!(null)), "");
    let parent_data = p.root().join("volumes/par/data");
    // The parent's container plants links where children will be created.
    symlink(out.path(), parent_data.join("kid")).unwrap();
    symlink(out.path(), parent_data.join("kid2")).unwrap();
    let err = create(
        &p,
        "kid",
        json!({"parent": "par", "uid": "4242", "gid": "4242", "mode": "0777"}),
    );
    assert!(err.contains("symbolic link"), "Create must refuse: {err}");
    assert_eq!(create(&p, "tpl", json!(null)), "");
    fs::write(p.root().join("volumes/tpl/data/cron"), b"* * * * * root sh").unwrap();
    let err = create(&p, "kid2", json!({"parent": "par", "template": "tpl"}));
    assert!(err.contains("symbolic link"), "Create must refuse: {err}");
    assert_eq!(out.seen(), before, "the outside directory changed");
}

#[test]
fn a_child_swapped_for_a_symlink_after_create_is_never_followed() {
    let p = Plugin::start(BIN);
    let out = Outside::new();
    let before = out.seen();
    assert_eq!(create(&p, "par", json!(null)), "");
    assert_eq!(
        create(
            &p,
            "kid",
            json!({"parent": "par", "uid": "4242", "gid": "4242", "mode": "0777"})
        ),
        ""
    );
    // Through the parent's mount: the child's directory becomes a link to the host.
    let kid_dir = p.root().join("volumes/par/data/kid");
    fs::remove_dir_all(&kid_dir).unwrap();
    symlink(out.path(), &kid_dir).unwrap();

    let (err, _) = mount(&p, "kid", "c1");
    assert!(err.contains("symbolic link"), "Mount must refuse: {err}");
    assert!(
        p.live_mounts().is_empty(),
        "nothing may be mounted: {:?}",
        p.live_mounts()
    );

    let err = create(&p, "copy", json!({"template": "kid"}));
    assert!(
        err.contains("symbolic link"),
        "template=kid must refuse: {err}"
    );
    assert!(files_holding_secret(&p.root().join("volumes")).is_empty());

    let snap = cli(&p, &["snapshot", "create", "kid"]);
    assert!(!snap.status.success(), "snapshot create must fail");
    assert!(
        String::from_utf8_lossy(&snap.stderr).contains("symbolic link"),
        "{}",
        String::from_utf8_lossy(&snap.stderr)
    );
    assert!(
        !p.root().join("snapshots/kid").exists()
            || fs::read_dir(p.root().join("snapshots/kid"))
                .unwrap()
                .next()
                .is_none(),
        "no snapshot of the outside directory"
    );

    let usage = cli(&p, &["usage", "--json"]);
    let text = String::from_utf8_lossy(&usage.stdout);
    let report: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let kid = report["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == "kid"))
        .cloned()
        .unwrap_or_default();
    assert!(
        kid["error"]
            .as_str()
            .is_some_and(|e| e.contains("symbolic link")),
        "usage must report the link, not measure through it: {kid}"
    );

    // The child lives inside its parent's tree, so a backup archives it with the parent: the
    // link must be archived as a link, never followed.
    let broot = p.dir.path().join("backups");
    let _ = cli(
        &p,
        &[
            "backup",
            "run",
            "daily",
            "--backup-root",
            broot.to_str().unwrap(),
        ],
    );
    assert!(
        !glob_archives(&broot).is_empty(),
        "the backup archived nothing"
    );
    let extracted = p.dir.path().join("extracted");
    fs::create_dir_all(&extracted).unwrap();
    for archive in glob_archives(&broot) {
        let st = std::process::Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&extracted)
            .status()
            .unwrap();
        assert!(st.success(), "tar -xf {}", archive.display());
    }
    assert!(
        files_holding_secret(&extracted).is_empty(),
        "a backup archived the outside directory"
    );
    assert_eq!(out.seen(), before, "the outside directory changed");
}

fn glob_archives(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains(".tar") {
                out.push(p);
            }
        }
    }
    out
}

/// RENAME_EXCHANGE of two names in one directory.
fn exchange(a: &Path, b: &Path) {
    let a = CString::new(a.as_os_str().as_encoded_bytes()).unwrap();
    let b = CString::new(b.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: two NUL-terminated paths; the call only reads them.
    unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        );
    }
}

#[test]
fn a_racer_swapping_a_device_directory_for_a_symlink_never_gets_an_outside_bind() {
    let p = Plugin::start(BIN);
    let out = Outside::new();
    let before = out.seen();
    let outside_id = {
        let m = fs::metadata(out.path()).unwrap();
        (m.dev(), m.ino())
    };
    let dev = p.bind_root().join("dev");
    fs::create_dir_all(&dev).unwrap();
    assert_eq!(
        create(
            &p,
            "racy",
            json!({"device": dev.to_str().unwrap(), "uid": "4242", "gid": "4242", "mode": "0777"})
        ),
        ""
    );
    let link = p.bind_root().join("link");
    symlink(out.path(), &link).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (stop, dev, link) = (stop.clone(), dev.clone(), link.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                exchange(&dev, &link);
                swaps += 1;
            }
            // Leave the directory at its name.
            if fs::symlink_metadata(&dev).unwrap().file_type().is_symlink() {
                exchange(&dev, &link);
            }
            swaps
        })
    };
    let (mut ok, mut refused, mut outside_binds) = (0u32, 0u32, 0u32);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let (err, point) = mount(&p, "racy", "c");
        if !err.is_empty() {
            refused += 1;
            continue;
        }
        ok += 1;
        let m = fs::metadata(point.unwrap()).unwrap();
        if (m.dev(), m.ino()) == outside_id {
            outside_binds += 1;
        }
        unmount(&p, "racy", "c");
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    eprintln!("racer: {swaps} swaps; mounts: {ok} done, {refused} refused, {outside_binds} bound the outside directory");
    assert!(
        ok > 0,
        "no Mount succeeded in 20 s: the race was not exercised"
    );
    assert_eq!(outside_binds, 0, "Mount bound the outside directory");
    assert_eq!(out.seen(), before, "the outside directory changed");
}

#[test]
fn rbind_with_flags_keeps_the_hosts_submounts_and_shows_them_read_only() {
    let p = Plugin::start(BIN);
    let dev = p.bind_root().join("withsub");
    let sub = dev.join("sub");
    fs::create_dir_all(&sub).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&sub)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _cleanup = Unmount(sub.clone());
    fs::write(sub.join("on-tmpfs"), b"submount data").unwrap();
    let on_host = |s: &Path| harness_mount_points().iter().any(|m| m == s);
    for flags in [
        "rbind,ro",
        "rbind,noatime,nodiratime",
        "rbind,ro,noexec,nosuid,nodev,strictatime",
    ] {
        let name = format!("sub-{}", flags.len());
        assert_eq!(
            create(
                &p,
                &name,
                json!({"device": dev.to_str().unwrap(), "o": flags})
            ),
            "",
            "{flags}"
        );
        let (err, point) = mount(&p, &name, "c");
        assert_eq!(err, "", "{flags}");
        let point = point.unwrap();
        assert_eq!(
            fs::read(point.join("sub/on-tmpfs")).unwrap(),
            b"submount data",
            "{flags}: the container must see the submount"
        );
        if flags.contains("ro") {
            let w = fs::write(point.join("sub/new"), b"x");
            assert!(w.is_err(), "{flags}: the submount must be read-only too");
        }
        unmount(&p, &name, "c");
        assert!(on_host(&sub), "{flags}: the host's tmpfs was unmounted");
        assert_eq!(fs::read(sub.join("on-tmpfs")).unwrap(), b"submount data");
    }
}

fn harness_mount_points() -> Vec<PathBuf> {
    allspark::plugin::mounts::parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap())
}

#[test]
fn a_device_inside_or_around_the_backup_root_is_refused() {
    let dir = tempfile::Builder::new()
        .prefix("allspark-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let backups = dir.path().join("binds/backups");
    fs::create_dir_all(backups.join("daily")).unwrap();
    let mut p = Plugin::start(BIN);
    p.kill9();
    p.env.push((
        "ALLSPARK_BACKUP_ROOT".into(),
        backups.to_string_lossy().into_owned(),
    ));
    p.extra_args = vec![
        "--bind-root".into(),
        dir.path().join("binds").to_string_lossy().into_owned(),
    ];
    p.spawn();
    for device in [backups.join("daily"), dir.path().join("binds")] {
        let err = create(&p, "grab", json!({"device": device.to_str().unwrap()}));
        assert!(
            err.contains("overlaps allspark's own directory"),
            "device={}: {err}",
            device.display()
        );
    }
}
