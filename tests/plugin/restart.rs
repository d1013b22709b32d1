//! Crash and restart: kill -9 in the middle of work, restart, and check state against what was acknowledged.

use crate::support::harness;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use harness::{err_of, Plugin};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_allspark");

#[test]
fn kill9_during_creates_and_mounts_loses_nothing_acknowledged() {
    let mut p = Plugin::start(BIN);
    for round in 0..3 {
        let acked: Mutex<BTreeMap<String, bool>> = Mutex::new(BTreeMap::new());
        let stop = AtomicBool::new(false);
        let sock = p.socket();
        let pid = nix::unistd::Pid::from_raw(p.child.as_ref().unwrap().id() as i32);
        std::thread::scope(|s| {
            let worker = s.spawn(|| {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let name = format!("r{round}-v{i}");
                    i += 1;
                    let create = std::panic::catch_unwind(|| {
                        harness::call_raw(
                            &sock,
                            "VolumeDriver.Create",
                            json!({"Name": name, "Opts": null}).to_string().into_bytes(),
                        )
                    });
                    let Ok((200, _)) = create else { break };
                    acked.lock().unwrap().insert(name.clone(), false);
                    let mount = std::panic::catch_unwind(|| {
                        harness::call_raw(
                            &sock,
                            "VolumeDriver.Mount",
                            json!({"Name": name, "ID": "c"}).to_string().into_bytes(),
                        )
                    });
                    let Ok((200, v)) = mount else { break };
                    let mp = v["Mountpoint"].as_str().unwrap().to_string();
                    std::fs::write(Path::new(&mp).join("data.txt"), name.as_bytes()).unwrap();
                    acked.lock().unwrap().insert(name.clone(), true);
                }
            });
            std::thread::sleep(Duration::from_millis(150 + 100 * round));
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
            stop.store(true, Ordering::SeqCst);
            worker.join().unwrap();
        });
        p.kill9();
        p.spawn();
        let acked = acked.into_inner().unwrap();
        assert!(
            !acked.is_empty(),
            "the worker made no progress before the kill"
        );
        for (name, was_mounted) in &acked {
            let m = p
                .mount_count(name)
                .unwrap_or_else(|| panic!("acknowledged volume {name} is gone after kill -9"));
            if *was_mounted {
                assert_eq!(m, 1, "{name}: acknowledged mount lost");
                let data = p.root().join("volumes").join(name).join("data/data.txt");
                assert_eq!(std::fs::read(&data).unwrap(), name.as_bytes());
            }
        }
        // Every reference has a live mount and every live mount a reference.
        let (_, list) = p.call("VolumeDriver.List", json!({}));
        let live = p.live_mounts();
        for v in list["Volumes"].as_array().unwrap() {
            let name = v["Name"].as_str().unwrap();
            let m = p.mount_count(name).unwrap();
            let is_live = live.contains(&p.mount_dir().join(name));
            assert_eq!(
                m > 0,
                is_live,
                "{name}: references {m} but live mount {is_live}"
            );
        }
        for name in acked.keys() {
            p.call("VolumeDriver.Unmount", json!({"Name": name, "ID": "c"}));
        }
        assert!(p.live_mounts().is_empty(), "{:?}", p.live_mounts());
    }
}

#[test]
fn restart_clears_references_whose_mount_is_gone_and_removes_stale_mounts() {
    let mut p = Plugin::start(BIN);
    for name in ["gone", "stale"] {
        let (_, v) = p.call("VolumeDriver.Create", json!({"Name": name, "Opts": null}));
        assert_eq!(err_of(&v), "");
        let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": name, "ID": "c"}));
        assert_eq!(err_of(&v), "");
    }
    p.kill9();
    // The mount of "gone" disappeared while the plugin was down (e.g. a host reboot).
    nix::mount::umount2(
        &p.mount_dir().join("gone"),
        nix::mount::MntFlags::MNT_DETACH,
    )
    .unwrap();
    // "stale" lost its reference record (e.g. an Unmount that crashed after unmounting in Docker's view).
    harness::set_refs(&p.root(), "stale", json!({}));
    p.spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !p.live_mounts().is_empty() || p.mount_count("gone") != Some(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "not reconciled: {:?} {}",
            p.live_mounts(),
            p.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(p.mount_count("stale"), Some(0));
    // Both mount again normally.
    for name in ["gone", "stale"] {
        let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": name, "ID": "d"}));
        assert_eq!(err_of(&v), "");
        p.call("VolumeDriver.Unmount", json!({"Name": name, "ID": "d"}));
    }
}

#[test]
fn a_corrupt_record_is_reported_not_forgotten() {
    let mut p = Plugin::start(BIN);
    p.call("VolumeDriver.Create", json!({"Name": "fine", "Opts": null}));
    p.kill9();
    std::fs::write(
        p.root().join("state/volumes/broken.json"),
        b"{\"name\": \"broken\", trunc",
    )
    .unwrap();
    p.spawn();
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "broken"}));
    let err = err_of(&v);
    assert!(
        err.contains("corrupt") && err.contains("broken.json") && err.contains("move it aside"),
        "{err}"
    );
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "fine"}));
    assert_eq!(err_of(&v), "", "other volumes keep working");
}

#[test]
fn references_are_runtime_state_kept_across_kill9_and_void_after_a_new_boot() {
    let mut p = Plugin::start(BIN);
    let (_, v) = p.call("VolumeDriver.Create", json!({"Name": "rt", "Opts": null}));
    assert_eq!(err_of(&v), "");
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "rt", "ID": "c1"}));
    assert_eq!(err_of(&v), "");
    assert_eq!(harness::refs(&p.root(), "rt").get("c1"), Some(&1));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.root().join("state/volumes/rt.json")).unwrap())
            .unwrap();
    assert!(
        record.get("mounts").is_none(),
        "references stay out of the durable record: {record}"
    );
    // A crash keeps them (and the live mount they describe).
    p.kill9();
    p.spawn();
    assert_eq!(p.mount_count("rt"), Some(1));
    assert_eq!(p.live_mounts(), vec![p.mount_dir().join("rt")]);
    // A new boot voids them: the plugin reconciles the mount it no longer references.
    p.kill9();
    p.env
        .push(("ALLSPARK_BOOT_ID".into(), "another-boot".into()));
    p.spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !p.live_mounts().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "a mount from the old boot was kept: {}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(p.mount_count("rt"), Some(0));
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "rt", "ID": "c2"}));
    assert_eq!(err_of(&v), "");
    let (_, v) = p.call("VolumeDriver.Unmount", json!({"Name": "rt", "ID": "c2"}));
    assert_eq!(err_of(&v), "");
}
