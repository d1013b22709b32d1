//! Usage measurement against `du`, the listing cache under modification, `measure_all` + `allspark usage --json` on a real root, and alert crossings (once per crossing, persisted).

use allspark::core::names::VolumeName;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allspark::agent::alerts::{self, AlertConfig, AlertState, Subject, Transition};
use allspark::core::layout::{HostView, Layout};
use allspark::core::status;
use allspark::core::store::{Store, VolumeRecord};
use allspark::usage::{self, ReportOptions};
use chrono::Utc;

/// `du -s -x <flags> dir` as a number.
fn du(dir: &Path, flags: &[&str]) -> u64 {
    let out = Command::new("du")
        .args(["-s", "-x"])
        .args(flags)
        .arg(dir)
        .output()
        .expect("run du");
    assert!(out.status.success(), "du failed: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

fn du_bytes(dir: &Path) -> u64 {
    du(dir, &["--block-size=1"])
}

fn write_len(p: &Path, len: usize) {
    let mut f = File::create(p).unwrap();
    let chunk: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    f.write_all(&chunk).unwrap();
    f.sync_all().unwrap();
}

/// A tree of known content. Returns (expected files, expected dirs, expected apparent bytes).
fn build_tree(root: &Path) -> (u64, u64, u64) {
    fs::create_dir_all(root.join("nested/deeper")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    let sizes: [(&str, usize); 5] = [
        ("a.txt", 0),
        ("b", 1),
        ("c", 4096),
        ("nested/d", 10_000),
        ("nested/deeper/e", 123_456),
    ];
    let mut apparent: u64 = 0;
    for (name, len) in sizes {
        write_len(&root.join(name), len);
        apparent += len as u64;
    }
    // A hard link: same inode, counted once.
    fs::hard_link(root.join("nested/d"), root.join("nested/deeper/d-link")).unwrap();
    // A sparse file: 10 MiB apparent, one 4 KiB extent at 5 MiB.
    let mut sparse = File::create(root.join("sparse")).unwrap();
    sparse.set_len(10 << 20).unwrap();
    sparse.seek(SeekFrom::Start(5 << 20)).unwrap();
    sparse.write_all(&[7u8; 4096]).unwrap();
    sparse.sync_all().unwrap();
    apparent += 10 << 20;
    // A symlink (its own inode counts; never followed).
    std::os::unix::fs::symlink("a.txt", root.join("sym")).unwrap();
    apparent += "a.txt".len() as u64;
    std::os::unix::fs::symlink("/usr", root.join("sym-to-usr")).unwrap();
    apparent += "/usr".len() as u64;
    for d in ["", "nested", "nested/deeper", "empty"] {
        apparent += fs::symlink_metadata(root.join(d)).unwrap().len();
    }
    // a, b, c, d (+ link), e, sparse, sym, sym-to-usr
    (8, 4, apparent)
}

#[test]
fn measure_matches_du_exactly() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("vol");
    let (files, dirs, apparent) = build_tree(&root);
    let u = usage::measure(&root).unwrap();
    assert_eq!(u.files, files, "{u:?}");
    assert_eq!(u.dirs, dirs, "{u:?}");
    assert_eq!(u.apparent_bytes, apparent, "{u:?}");
    assert_eq!(
        u.bytes,
        du_bytes(&root),
        "bytes on disk vs du -s -x --block-size=1"
    );
    assert_eq!(
        u.apparent_bytes,
        du(&root, &["-b"]),
        "apparent vs du -s -x -b"
    );
    assert_eq!(u.files + u.dirs, du(&root, &["--inodes"]), "inodes vs du");
    // The sparse file really is sparse, and the hard link was not counted twice.
    let sparse = fs::metadata(root.join("sparse")).unwrap();
    assert!(
        sparse.blocks() * 512 < 1 << 20,
        "sparse file is not sparse here"
    );
    assert!(u.bytes < u.apparent_bytes);
    let d = fs::metadata(root.join("nested/d")).unwrap();
    assert_eq!(d.nlink(), 2);
}

#[test]
fn measure_refuses_a_missing_or_non_directory_root() {
    let t = tempfile::tempdir().unwrap();
    assert!(usage::measure(&t.path().join("missing")).is_err());
    fs::write(t.path().join("f"), b"x").unwrap();
    assert!(usage::measure(&t.path().join("f")).is_err());
}

#[test]
fn cache_reuses_listings_but_never_reports_stale_sizes() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("vol");
    build_tree(&root);
    for i in 0..20 {
        fs::create_dir_all(root.join(format!("many/{i}"))).unwrap();
        write_len(&root.join(format!("many/{i}/f")), i * 1000);
    }
    let cache = t.path().join("cache/vol.bin");
    // Listings are only cached once the directories are older than the racy window.
    std::thread::sleep(usage::RACY_WINDOW + Duration::from_millis(300));

    let first = usage::measure_cached(&root, &cache).unwrap();
    let dirs = first.usage.dirs;
    assert_eq!(first.dirs_listed, dirs);
    assert_eq!(first.dirs_reused, 0);
    assert_eq!(first.usage.bytes, du_bytes(&root));
    assert!(cache.exists(), "cache file written");

    let second = usage::measure_cached(&root, &cache).unwrap();
    assert_eq!(
        (second.dirs_listed, second.dirs_reused),
        (0, dirs),
        "unchanged tree: every listing from the cache"
    );
    assert_eq!(second.usage, first.usage);

    // Change a file's content and size: its directory's mtime does not change.
    let e = root.join("nested/deeper/e");
    let dir_before = fs::metadata(root.join("nested/deeper"))
        .unwrap()
        .mtime_nsec();
    let mut f = OpenOptions::new().append(true).open(&e).unwrap();
    f.write_all(&vec![1u8; 300_000]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(
        fs::metadata(root.join("nested/deeper"))
            .unwrap()
            .mtime_nsec(),
        dir_before
    );
    let third = usage::measure_cached(&root, &cache).unwrap();
    assert_eq!(third.dirs_reused, dirs, "listings still valid");
    assert_eq!(third.usage.bytes, du_bytes(&root), "new size on disk");
    assert_eq!(
        third.usage.apparent_bytes,
        first.usage.apparent_bytes + 300_000
    );
    assert_eq!(third.usage, usage::measure(&root).unwrap());

    // Truncate another file in place.
    OpenOptions::new()
        .write(true)
        .open(root.join("many/7/f"))
        .unwrap()
        .set_len(1)
        .unwrap();
    let fourth = usage::measure_cached(&root, &cache).unwrap();
    assert_eq!(fourth.usage.bytes, du_bytes(&root));
    assert_eq!(fourth.usage, usage::measure(&root).unwrap());

    // Add a file and a directory, remove another file: those directories are listed again.
    write_len(&root.join("nested/new"), 50_000);
    fs::create_dir(root.join("many/3/sub")).unwrap();
    write_len(&root.join("many/3/sub/g"), 9_000);
    fs::remove_file(root.join("many/5/f")).unwrap();
    let fifth = usage::measure_cached(&root, &cache).unwrap();
    assert_eq!(fifth.usage.bytes, du_bytes(&root));
    assert_eq!(fifth.usage, usage::measure(&root).unwrap());
    assert_eq!(fifth.usage.files, fourth.usage.files + 1);
    assert_eq!(fifth.usage.dirs, dirs + 1);
    assert_eq!(
        fifth.dirs_listed, 4,
        "nested, many/3, many/3/sub, many/5 re-listed"
    );

    // A corrupt cache is ignored, not trusted.
    let mut bytes = fs::read(&cache).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&cache, &bytes).unwrap();
    let sixth = usage::measure_cached(&root, &cache).unwrap();
    assert_eq!(sixth.dirs_reused, 0);
    assert_eq!(sixth.usage, usage::measure(&root).unwrap());
}

#[test]
fn walk_does_not_leave_the_tree_through_symlinks() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("vol");
    fs::create_dir(&root).unwrap();
    write_len(&t.path().join("outside"), 1 << 20);
    std::os::unix::fs::symlink(t.path(), root.join("up")).unwrap();
    let u = usage::measure(&root).unwrap();
    assert_eq!(u.files, 1);
    assert_eq!(u.bytes, du_bytes(&root));
    assert!(u.bytes < 1 << 20);
    // The root itself may be a symlink (to the volume's directory).
    let link = t.path().join("link-to-vol");
    std::os::unix::fs::symlink(&root, &link).unwrap();
    assert_eq!(usage::measure(&link).unwrap(), u);
}

fn record(name: &str, opts: &[(&str, &str)], mounts: &[(&str, u32)]) -> VolumeRecord {
    let mut r = VolumeRecord::managed(&VolumeName::fixed(name), opts).unwrap();
    r.mounts = mounts.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    r
}

/// A root with `alpha` (size 100K, ~94 % full, one snapshot, mounted twice) and `beta` (no size).
fn sample_root() -> (tempfile::TempDir, Layout) {
    let t = tempfile::tempdir().unwrap();
    let layout = Layout::new(t.path().join("root"));
    layout.ensure().unwrap();
    let store = Store::new(layout.clone());
    store
        .save(&record(
            "alpha",
            &[
                ("size", "100K"),
                ("class", "critical"),
                ("backup", "highest"),
            ],
            &[("m1", 2)],
        ))
        .unwrap();
    store
        .save(&record("beta", &[("class", "temporary")], &[]))
        .unwrap();
    let a = layout.managed_data(&VolumeName::fixed("alpha"));
    fs::create_dir_all(&a).unwrap();
    write_len(&a.join("big"), 90 * 1024);
    let b = layout.managed_data(&VolumeName::fixed("beta"));
    fs::create_dir_all(b.join("x/y")).unwrap();
    write_len(&b.join("x/y/z"), 5000);
    write_len(&b.join("w"), 1);
    let snap = layout
        .volume_snapshots(&VolumeName::fixed("alpha"))
        .join("20261125T200000.000000Z");
    fs::create_dir_all(&snap).unwrap();
    write_len(&snap.join("manifest.json"), 10);
    write_len(&snap.join("data.tar.gz"), 1000);
    let older = layout
        .volume_snapshots(&VolumeName::fixed("alpha"))
        .join("20261124T200000.000000Z");
    fs::create_dir_all(&older).unwrap();
    write_len(&older.join("data.tar.gz"), 500);
    // An incomplete snapshot is not counted.
    let tmp = layout
        .volume_snapshots(&VolumeName::fixed("alpha"))
        .join(".tmp-20261126");
    fs::create_dir_all(&tmp).unwrap();
    write_len(&tmp.join("data.tar.gz"), 7777);
    (t, layout)
}

#[test]
fn measure_all_writes_usage_cache_and_cli_json_agrees() {
    let (_t, layout) = sample_root();
    let view = HostView::default();
    let vols = usage::measure_all(&layout, &view);
    assert_eq!(vols.len(), 2);
    let alpha = vols.iter().find(|v| v.name == "alpha").unwrap();
    let beta = vols.iter().find(|v| v.name == "beta").unwrap();
    let alpha_du = du_bytes(&layout.managed_data(&VolumeName::fixed("alpha")));
    assert_eq!(alpha.bytes, alpha_du);
    assert_eq!(alpha.files, 1);
    assert_eq!(alpha.capacity, Some(100 * 1024));
    let pct = status::percent(alpha_du, Some(100 * 1024)).unwrap();
    assert!(pct > 90.0 && pct < 100.0, "{pct}");
    assert_eq!(alpha.percent, Some(pct));
    assert!(alpha.alert);
    assert_eq!(alpha.snapshots, 2);
    assert_eq!(alpha.snapshot_bytes, 1510);
    assert_eq!(
        alpha.last_snapshot.as_deref(),
        Some("20261125T200000.000000Z")
    );
    assert_eq!(
        alpha.last_snapshot_at.unwrap().to_rfc3339(),
        "2026-11-25T20:00:00+00:00"
    );
    assert_eq!(alpha.mounted, 2);
    assert_eq!(
        beta.bytes,
        du_bytes(&layout.managed_data(&VolumeName::fixed("beta")))
    );
    assert_eq!((beta.files, beta.dirs), (2, 3));
    assert_eq!(
        (beta.capacity, beta.percent, beta.alert),
        (None, None, false)
    );
    assert_eq!(beta.snapshots, 0);
    // The figures docker volume inspect shows.
    let cached = status::cached_usage(&layout, &VolumeName::fixed("alpha")).unwrap();
    assert_eq!((cached.bytes, cached.files), (alpha.bytes, 1));
    let rec = Store::new(layout.clone())
        .load(&VolumeName::fixed("alpha"))
        .unwrap()
        .unwrap();
    let st = allspark::plugin::status::status(&layout, &rec);
    assert_eq!(st["used_bytes"], serde_json::json!(alpha_du));
    assert_eq!(st["used_percent"], serde_json::json!(pct));

    // The real binary.
    write_len(
        &layout.managed_data(&VolumeName::fixed("beta")).join("more"),
        20_000,
    );
    let out = Command::new(env!("CARGO_BIN_EXE_allspark"))
        .arg("--root")
        .arg(&layout.root)
        .args(["usage", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vols = v["volumes"].as_array().unwrap();
    let get = |n: &str| vols.iter().find(|x| x["name"] == n).unwrap().clone();
    let (a, b) = (get("alpha"), get("beta"));
    assert_eq!(a["bytes"], alpha_du);
    assert_eq!(a["files"], 1);
    assert_eq!(a["capacity"], 102400);
    assert_eq!(a["percent"], pct);
    assert_eq!(a["alert"], true);
    assert_eq!(a["class"], "critical");
    assert_eq!(a["backup"], "highest");
    assert_eq!(a["snapshots"], 2);
    assert_eq!(a["snapshot_bytes"], 1510);
    assert_eq!(a["last_snapshot"], "20261125T200000.000000Z");
    assert_eq!(a["mounted"], 2);
    assert_eq!(a["error"], serde_json::Value::Null);
    assert_eq!(
        b["bytes"],
        du_bytes(&layout.managed_data(&VolumeName::fixed("beta")))
    );
    assert_eq!(b["files"], 3);
    assert_eq!(b["capacity"], serde_json::Value::Null);
    assert_eq!(b["alert"], false);
    assert_eq!(b["class"], "temporary");
    assert_eq!(v["threshold_percent"], 80.0);
    let fss = v["filesystems"].as_array().unwrap();
    assert_eq!(fss.len(), 1, "{fss:?}");
    assert_eq!(fss[0]["volumes"], serde_json::json!(["alpha", "beta"]));
    assert!(fss[0]["total_bytes"].as_u64().unwrap() > 0);
    // The CLI refreshed the inspect figures too.
    assert_eq!(
        status::cached_usage(&layout, &VolumeName::fixed("beta"))
            .unwrap()
            .bytes,
        du_bytes(&layout.managed_data(&VolumeName::fixed("beta")))
    );

    // The table marks the volume over its threshold, and --threshold moves it.
    let table = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_allspark"))
            .arg("--root")
            .arg(&layout.root)
            .arg("usage")
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let t = table(&[]);
    let line = |t: &str, n: &str| {
        t.lines()
            .find(|l| l.get(2..).is_some_and(|r| r.starts_with(&format!("{n} "))))
            .unwrap()
            .to_string()
    };
    assert!(line(&t, "alpha").starts_with("! "), "{t}");
    assert!(line(&t, "beta").starts_with("  "), "{t}");
    assert!(line(&t, "alpha").contains("100.0K"), "{t}");
    let t = table(&["--threshold", "99"]);
    assert!(line(&t, "alpha").starts_with("  "), "{t}");
    // A bad threshold is a usage error (exit 2).
    let out = Command::new(env!("CARGO_BIN_EXE_allspark"))
        .arg("--root")
        .arg(&layout.root)
        .args(["usage", "--threshold", "abc"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_volume_whose_data_is_missing_is_reported_not_fatal() {
    let (_t, layout) = sample_root();
    fs::remove_dir_all(layout.managed_data(&VolumeName::fixed("beta"))).unwrap();
    let vols = usage::measure_all(&layout, &HostView::default());
    let beta = vols.iter().find(|v| v.name == "beta").unwrap();
    assert!(beta.error.is_some());
    let alpha = vols.iter().find(|v| v.name == "alpha").unwrap();
    assert!(alpha.error.is_none() && alpha.bytes > 0);
}

/// Log lines captured from a `tracing` subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
    fn count(&self, level: &str) -> usize {
        self.text()
            .lines()
            .filter(|l| l.contains(level) && l.contains("alert"))
            .count()
    }
    fn subscriber(&self) -> impl tracing::Subscriber {
        let w = self.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || w.clone())
            .finish()
    }
}

#[test]
fn an_alert_crossing_is_logged_once_and_recovery_once() {
    let log = Captured::default();
    let v = Subject::Volume("pg".into());
    let mut state = AlertState::new(AlertConfig::default());
    let mut all = Vec::new();
    tracing::subscriber::with_default(log.subscriber(), || {
        for p in [50.0, 85.0, 90.0, 70.0, 85.0] {
            let events = state.observe(&[(v.clone(), Some(p))], Utc::now());
            for e in &events {
                alerts::log_event(e);
            }
            all.push(events.iter().map(|e| e.transition).collect::<Vec<_>>());
        }
    });
    assert_eq!(
        all,
        vec![
            vec![],
            vec![Transition::Crossed],
            vec![],
            vec![Transition::Recovered],
            vec![Transition::Crossed],
        ]
    );
    assert_eq!(log.count("WARN"), 2, "{}", log.text());
    assert_eq!(log.count("INFO"), 1, "{}", log.text());
    assert!(
        log.text().contains("volume pg is 85.0% full"),
        "{}",
        log.text()
    );
}

#[test]
fn alert_state_survives_a_restart_without_re_warning() {
    let t = tempfile::tempdir().unwrap();
    let layout = Layout::new(t.path());
    layout.ensure().unwrap();
    let fs_subject = Subject::Filesystem("/srv".into());
    let cfg = AlertConfig {
        threshold: 90.0,
        hysteresis: 0.0,
    };
    let mut s = AlertState::load(&layout, cfg);
    let e = s.observe(&[(fs_subject.clone(), Some(91.0))], Utc::now());
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].transition, Transition::Crossed);
    s.save().unwrap();
    assert!(alerts::state_path(&layout).exists());

    // "Restart": a fresh state from disk does not warn again for the ongoing crossing.
    let mut s = AlertState::load(&layout, cfg);
    assert!(s.is_active(&fs_subject));
    assert!(s
        .observe(&[(fs_subject.clone(), Some(95.0))], Utc::now())
        .is_empty());
    // An unknown reading changes nothing.
    assert!(s
        .observe(&[(fs_subject.clone(), None)], Utc::now())
        .is_empty());
    let e = s.observe(&[(fs_subject.clone(), Some(89.9))], Utc::now());
    assert_eq!(e[0].transition, Transition::Recovered);
    s.save().unwrap();
    let mut s = AlertState::load(&layout, cfg);
    assert!(!s.is_active(&fs_subject));
    assert_eq!(
        s.observe(&[(fs_subject, Some(90.0))], Utc::now())[0].transition,
        Transition::Crossed
    );

    // A corrupt state file is not fatal.
    fs::write(alerts::state_path(&layout), b"{nope").unwrap();
    let s = AlertState::load(&layout, cfg);
    assert_eq!(s.active().count(), 0);
}

#[test]
fn measure_and_alert_warns_once_across_agent_restarts() {
    let (_t, layout) = sample_root();
    let view = HostView::default();
    let log = Captured::default();
    tracing::subscriber::with_default(log.subscriber(), || {
        let mut a = AlertState::load(&layout, AlertConfig::default());
        let r = alerts::measure_and_alert(&layout, &view, &mut a, &ReportOptions::default());
        assert!(r.volumes.iter().any(|v| v.name == "alpha" && v.alert));
        assert!(a.is_active(&Subject::Volume("alpha".into())));
        alerts::measure_and_alert(&layout, &view, &mut a, &ReportOptions::default());
        // Restarted agent.
        let mut a = AlertState::load(&layout, AlertConfig::default());
        alerts::measure_and_alert(&layout, &view, &mut a, &ReportOptions::default());
    });
    let warns: Vec<_> = log
        .text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("volume alpha"))
        .map(str::to_string)
        .collect();
    assert_eq!(warns.len(), 1, "{}", log.text());

    // Shrink the data below the threshold: one recovery.
    fs::write(
        layout.managed_data(&VolumeName::fixed("alpha")).join("big"),
        b"small",
    )
    .unwrap();
    let log = Captured::default();
    tracing::subscriber::with_default(log.subscriber(), || {
        let mut a = AlertState::load(&layout, AlertConfig::default());
        alerts::measure_and_alert(&layout, &view, &mut a, &ReportOptions::default());
        assert!(!a.is_active(&Subject::Volume("alpha".into())));
    });
    assert_eq!(
        log.text()
            .lines()
            .filter(|l| l.contains("INFO") && l.contains("volume alpha is back below"))
            .count(),
        1,
        "{}",
        log.text()
    );
}
