//! `fs=btrfs` on the real plugin, agent and CLI: a volume with a filesystem of its own stops at its `size=` with ENOSPC (and `statvfs` shows its own size) while another volume is unaffected, snapshots and restores like any btrfs-pool volume, and its pool and image go with it; a Create killed after its pool was made leaves nothing after the next start.

use crate::support::common::loops_backing;
use crate::support::harness;

use std::path::{Path, PathBuf};

use harness::{cli_ok, err_of, Plugin};
use serde_json::{json, Value};

use super::pool::{call_dying, fill, mount, recovered, unmount, BIN};

fn create(p: &Plugin, name: &str, opts: Value) -> Value {
    p.call("VolumeDriver.Create", json!({"Name": name, "Opts": opts}))
        .1
}

fn image_of(p: &Plugin, volume: &str) -> PathBuf {
    p.root().join("pools").join(format!("{volume}.fs.img"))
}

fn pools_json(p: &Plugin) -> String {
    std::fs::read_to_string(p.root().join("state/pools.json")).unwrap_or_default()
}

fn total_bytes(dir: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(dir).unwrap();
    st.blocks() * st.fragment_size()
}

#[test]
fn a_volume_with_its_own_filesystem_stops_at_its_size_and_goes_with_it() {
    let p = Plugin::start(BIN);
    let opts = json!({"fs": "btrfs", "size": "300M"});
    assert_eq!(err_of(&create(&p, "own", opts.clone())), "");
    assert_eq!(err_of(&create(&p, "own", opts)), "", "a repeated Create");
    let v = create(&p, "own", json!({"fs": "btrfs", "size": "400M"}));
    assert!(err_of(&v).contains("other options"), "{v}");
    assert_eq!(err_of(&create(&p, "other", json!({}))), "");
    assert!(image_of(&p, "own").exists());
    assert_eq!(loops_backing(&image_of(&p, "own")).len(), 1);

    // Its own filesystem: 300 MB as statvfs sees it, ENOSPC past it, the other volume unharmed.
    let m = mount(&p, "own", "c1");
    let total = total_bytes(&m);
    assert!(
        (250 << 20..=300 << 20).contains(&total),
        "statvfs shows {total} bytes"
    );
    let (written, err) = fill(&m.join("f"), 400 << 20);
    let err = err.expect("a write past size= fails");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(
        (100 << 20..=300 << 20).contains(&written),
        "stopped at {written} bytes"
    );
    let other = mount(&p, "other", "c2");
    let (done, err) = fill(&other.join("f"), 50 << 20);
    assert!(err.is_none() && done == 50 << 20, "{err:?}");
    unmount(&p, "other", "c2");
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "own"}));
    let status = &v["Volume"]["Status"];
    assert_eq!(status["size_enforced"], true, "{v}");
    assert!(
        status["size_enforcement"]
            .as_str()
            .unwrap()
            .contains("ENOSPC"),
        "{v}"
    );
    std::fs::remove_file(m.join("f")).unwrap();
    std::fs::write(m.join("keep"), b"kept").unwrap();
    unmount(&p, "own", "c1");

    // Snapshots and restores as on any btrfs pool.
    let id = cli_ok(&p, &["snapshot", "create", "own"])
        .trim()
        .to_string();
    let m = mount(&p, "own", "c3");
    std::fs::write(m.join("keep"), b"changed").unwrap();
    unmount(&p, "own", "c3");
    cli_ok(&p, &["snapshot", "restore", "own", &id, "--yes"]);
    let m = mount(&p, "own", "c4");
    assert_eq!(std::fs::read(m.join("keep")).unwrap(), b"kept");
    unmount(&p, "own", "c4");
    let out = harness::cli(&p, &["volume", "migrate", "own", "--pool", "default"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("a filesystem of its own"),
        "{out:?}"
    );

    // Removed: the pool, its image and its loop device go with the volume.
    let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": "own"}));
    assert_eq!(err_of(&v), "", "{v}");
    assert!(!pools_json(&p).contains("own.fs"), "{}", pools_json(&p));
    assert!(!image_of(&p, "own").exists());
    assert!(loops_backing(&image_of(&p, "own")).is_empty());
    assert!(!p.root().join("pools/own.fs").exists());
}

#[test]
fn fs_is_refused_without_a_size_or_beside_another_place() {
    let p = Plugin::start(BIN);
    for (opts, says) in [
        (json!({"fs": "btrfs"}), "needs size="),
        (json!({"fs": "btrfs", "size": "100M"}), "at least 256M"),
        (
            json!({"fs": "btrfs", "size": "1G", "pool": "p"}),
            "cannot be combined",
        ),
        (json!({"fs": "ext2", "size": "1G"}), "accepted: btrfs"),
    ] {
        let v = create(&p, "x", opts.clone());
        assert!(err_of(&v).contains(says), "{opts}: {v}");
    }
    assert!(!p.root().join("pools").join("x.fs.img").exists());
}

/// Every crash point of `crashpoint::OWN_FS`, and the Create killed after the volume's data
/// was made in its new pool: after a restart no pool, image or loop device is left, and the
/// name is free again.
#[test]
fn kills_mid_create_and_mid_remove_leave_nothing_after_a_restart() {
    let mut p = Plugin::start(BIN);
    let steps = allspark::core::crashpoint::OWN_FS
        .iter()
        .chain(&["pool-clone-made"]);
    for step in steps {
        let remove = *step == "own-pool-unrecorded";
        if remove {
            let v = create(&p, "half", json!({"fs": "btrfs", "size": "300M"}));
            assert_eq!(err_of(&v), "", "{v}");
        }
        recovered(&p);
        p.terminate();
        p.env = vec![("ALLSPARK_CRASH_AT".into(), step.to_string())];
        p.spawn();
        let (method, body) = if remove {
            ("VolumeDriver.Remove", json!({"Name": "half"}))
        } else {
            (
                "VolumeDriver.Create",
                json!({"Name": "half", "Opts": {"fs": "btrfs", "size": "300M"}}),
            )
        };
        call_dying(&p, method, body);
        p.kill9();
        // Killed half-way: the pool's entry (Create) or its image (Remove) is still there.
        let left = pools_json(&p).contains("half.fs") || image_of(&p, "half").exists();
        assert!(left, "{step}: nothing was left to clean up");
        p.env.clear();
        p.spawn();
        recovered(&p);
        assert!(
            !pools_json(&p).contains("half.fs"),
            "{step}: {}",
            pools_json(&p)
        );
        assert!(!image_of(&p, "half").exists(), "{step}: {}", p.log());
        assert!(loops_backing(&image_of(&p, "half")).is_empty(), "{step}");
        let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "half"}));
        assert!(err_of(&v).contains("no such volume"), "{step}: {v}");
    }
    // The name is free again.
    let v = create(&p, "half", json!({"fs": "btrfs", "size": "300M"}));
    assert_eq!(err_of(&v), "", "{v}");
    let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": "half"}));
    assert_eq!(err_of(&v), "", "{v}");
}

#[test]
fn a_snapshot_of_a_volume_with_its_own_filesystem_restores_into_a_new_one() {
    let p = Plugin::start(BIN);
    let v = create(&p, "src", json!({"fs": "btrfs", "size": "300M"}));
    assert_eq!(err_of(&v), "", "{v}");
    let m = mount(&p, "src", "c1");
    std::fs::write(m.join("f"), b"data").unwrap();
    unmount(&p, "src", "c1");
    let id = cli_ok(&p, &["snapshot", "create", "src"])
        .trim()
        .to_string();
    cli_ok(&p, &["snapshot", "restore", "src", &id, "--into", "copy"]);
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "copy"}));
    assert_eq!(v["Volume"]["Status"]["size_enforced"], true, "{v}");
    let m = mount(&p, "copy", "c2");
    assert_eq!(std::fs::read(m.join("f")).unwrap(), b"data");
    unmount(&p, "copy", "c2");
    assert!(
        image_of(&p, "copy").exists(),
        "the copy has its own filesystem too"
    );
    for v in ["copy", "src"] {
        let (_, r) = p.call("VolumeDriver.Remove", json!({"Name": v}));
        assert_eq!(err_of(&r), "", "{r}");
    }
}
