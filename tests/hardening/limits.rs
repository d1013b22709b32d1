//! Bounds a hostile or unlucky caller cannot push (found in review): one deadline for a whole
//! Mount, one pending on-mount event per volume, call statistics that junk requests cannot grow.

use crate::support::harness;

use std::fs;
use std::time::{Duration, Instant};

use allspark::core::layout::Layout;
use allspark::core::names::VolumeName;
use allspark::fs::durable::{FileLock, LockKind};
use harness::{call_raw, err_of, Plugin};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_allspark");

#[test]
fn a_mount_waiting_for_a_stuck_snapshot_gives_up_within_one_snapshot_wait() {
    let wait = 3;
    let p = Plugin::start_with(BIN, &["--snapshot-wait", &wait.to_string()]);
    let (_, v) = p.call(
        "VolumeDriver.Create",
        json!({"Name": "stuck", "Opts": {"snapshot": "on-mount"}}),
    );
    assert_eq!(err_of(&v), "");
    // No agent consumes the on-mount event, and a snapshot holds the volume's lock.
    let layout = Layout::new(p.root());
    let _snapshot = FileLock::acquire(
        &layout.snapshot_lock(&VolumeName::fixed("stuck")),
        LockKind::Exclusive,
    )
    .unwrap();
    for attempt in 1..=2 {
        let started = Instant::now();
        let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "stuck", "ID": "c1"}));
        let took = started.elapsed();
        let err = err_of(&v);
        assert!(
            err.contains("snapshot is in progress"),
            "attempt {attempt}: {err}"
        );
        // Before: the spool wait and the lock wait each took the whole snapshot wait.
        assert!(
            took < Duration::from_secs(wait) + Duration::from_millis(1500),
            "attempt {attempt}: Mount took {took:?}, more than one snapshot wait ({wait} s)"
        );
        let events = fs::read_dir(layout.spool_dir())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| !e.file_name().to_string_lossy().starts_with('.'))
            })
            .count();
        assert_eq!(
            events, 1,
            "attempt {attempt}: one pending on-mount event, not {events}"
        );
    }
    assert!(p.live_mounts().is_empty(), "a refused Mount left a mount");
}

fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[test]
fn junk_calls_leave_the_call_statistics_and_the_plugin_bounded() {
    let p = Plugin::start(BIN);
    let pid = p.child.as_ref().unwrap().id();
    let warm = || {
        for _ in 0..200 {
            let _ = p.call("VolumeDriver.List", json!({}));
        }
    };
    warm();
    let before = rss_kib(pid);
    let long = "x".repeat(400);
    for i in 0..10_000 {
        let (status, _) = call_raw(&p.socket(), &format!("Junk.{i}.{long}"), b"{}".to_vec());
        assert_eq!(status, 404);
    }
    warm();
    let after = rss_kib(pid);
    let stats = p.root().join("state/plugin-stats.json");
    let deadline = Instant::now() + Duration::from_secs(15);
    let totals = loop {
        let t: serde_json::Value =
            serde_json::from_slice(&fs::read(&stats).unwrap_or_default()).unwrap_or_default();
        if t["unknown"]["errors"].as_u64() == Some(10_000) {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "the stats file never counted the junk calls: {t}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let keys: Vec<&String> = totals.as_object().unwrap().keys().collect();
    assert!(
        keys.len() <= 10,
        "one key per known call plus `unknown`: {keys:?}"
    );
    let size = fs::metadata(&stats).unwrap().len();
    assert!(size < 4096, "the stats file is {size} bytes");
    eprintln!(
        "plugin RSS {before} KiB -> {after} KiB after 10 000 junk calls; stats file {size} bytes"
    );
    // Before: 3 000 junk calls added 179 MB.
    assert!(
        after < before + 16 * 1024,
        "the plugin grew from {before} KiB to {after} KiB"
    );
    let log = p.log();
    assert!(
        log.lines().all(|l| l.len() < 2048),
        "a log line carries the whole junk path"
    );
}
