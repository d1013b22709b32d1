//! Backups without dockerd: retention on real directories, the run's layout and manifest, GNU tar reading the archives, verify and restore refusing a damaged file, restore bringing data back.

use crate::support::harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::backups::text;
use chrono::{Duration, Local, NaiveDateTime};
use harness::Plugin;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_allspark");
/// A Docker endpoint that does not exist: dumps and stops are skipped, loudly.
const NO_DOCKER: &str = "unix:///nonexistent/docker.sock";

fn allspark(root: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--root")
        .arg(root)
        .args(["--docker", NO_DOCKER])
        .args(args)
        .env("ALLSPARK_LOG", "info")
        .env_remove("ALLSPARK_BACKUP_ROOT")
        .output()
        .unwrap()
}

fn stamp(t: NaiveDateTime) -> String {
    t.format("%Y%m%d_%H%M%S").to_string()
}

fn make_backup(root: &Path, kind: &str, t: NaiveDateTime, outcome: Option<&str>) -> PathBuf {
    let dir = root.join(kind).join(stamp(t));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("v.tar.gz"), b"x").unwrap();
    if let Some(o) = outcome {
        let m = json!({
            "timestamp": "2024-01-01T00:00:00Z", "type": kind, "volumes": [], "databases": [],
            "files": [], "outcome": o, "errors": []
        });
        fs::write(dir.join("manifest.json"), m.to_string()).unwrap();
    }
    dir
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn prune_keeps_exactly_the_calendar_window_on_real_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let broot = tmp.path().join("backups");
    let today = Local::now().date_naive();
    let at = |days_ago: i64, h: u32| {
        (today - Duration::days(days_ago))
            .and_hms_opt(h, 0, 3)
            .unwrap()
    };
    let mut want_daily = Vec::new();
    let mut want_weekly = Vec::new();
    let mut want_monthly = Vec::new();
    for d in 0..400 {
        // Days 3, 4 and 5 ago were missed (the host was down).
        if (3..=5).contains(&d) {
            continue;
        }
        make_backup(&broot, "daily", at(d, 2), Some("ok"));
        if d < 7 {
            want_daily.push(stamp(at(d, 2)));
        }
        if d % 7 == 0 {
            make_backup(&broot, "weekly", at(d, 3), Some("ok"));
            if d < 30 {
                want_weekly.push(stamp(at(d, 3)));
            }
        }
        if d % 30 == 0 {
            make_backup(&broot, "monthly", at(d, 4), Some("ok"));
            if d < 365 {
                want_monthly.push(stamp(at(d, 4)));
            }
        }
    }
    // An interrupted run from 10 days ago goes; one started 2 hours ago may still be running.
    make_backup(&broot, "daily", at(10, 1), None);
    let fresh = (Local::now() - Duration::hours(2)).naive_local();
    make_backup(&broot, "daily", fresh, None);
    want_daily.push(stamp(fresh));
    // Not backups: never touched.
    fs::create_dir_all(broot.join("daily/notes")).unwrap();
    fs::create_dir_all(broot.join("daily/.verify-abc")).unwrap();
    want_daily.push("notes".into());
    want_daily.push(".verify-abc".into());

    let out = allspark(
        &tmp.path().join("root"),
        &[
            "backup",
            "prune",
            "--backup-root",
            broot.to_str().unwrap(),
            "--dry-run",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        names(&broot.join("daily")).len(),
        400 - 3 + 2 + 2,
        "dry run removed nothing"
    );

    let out = allspark(
        &tmp.path().join("root"),
        &["backup", "prune", "--backup-root", broot.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    want_daily.sort();
    want_weekly.sort();
    want_monthly.sort();
    assert_eq!(names(&broot.join("daily")), want_daily);
    assert_eq!(names(&broot.join("weekly")), want_weekly);
    assert_eq!(names(&broot.join("monthly")), want_monthly);
    assert_eq!(want_monthly.len(), 13);

    // Keep flags: 2 days of dailies.
    let out = allspark(
        &tmp.path().join("root"),
        &[
            "backup",
            "prune",
            "--backup-root",
            broot.to_str().unwrap(),
            "--keep-daily-days",
            "2",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let left: Vec<String> = names(&broot.join("daily"))
        .into_iter()
        .filter(|n| n.starts_with('2'))
        .collect();
    assert_eq!(
        left.len(),
        3,
        "today, yesterday and the fresh incomplete one: {left:?}"
    );
}

#[test]
fn the_newest_ok_backup_is_never_pruned() {
    let tmp = tempfile::tempdir().unwrap();
    let broot = tmp.path().join("backups");
    let now = Local::now().naive_local();
    let old_ok = make_backup(&broot, "weekly", now - Duration::days(90), Some("ok"));
    let older = make_backup(&broot, "weekly", now - Duration::days(97), Some("ok"));
    let failed = make_backup(&broot, "weekly", now - Duration::days(40), Some("failed"));
    let out = allspark(
        &tmp.path().join("root"),
        &["backup", "prune", "--backup-root", broot.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(old_ok.exists());
    assert!(!older.exists());
    assert!(!failed.exists());
}

fn create(p: &Plugin, name: &str, opts: Value) {
    let (code, v) = p.call("VolumeDriver.Create", json!({"Name": name, "Opts": opts}));
    assert_eq!(code, 200, "{v}");
    assert!(v["Err"].as_str().unwrap_or("").is_empty(), "{v}");
}

fn data_dir(p: &Plugin, name: &str) -> PathBuf {
    p.root().join("volumes").join(name).join("data")
}

fn only_backup_dir(broot: &Path) -> PathBuf {
    let daily = broot.join("daily");
    let n = names(&daily);
    assert_eq!(n.len(), 1, "{n:?}");
    daily.join(&n[0])
}

#[test]
fn a_run_without_docker_archives_the_volumes_fails_loudly_and_verify_and_restore_work() {
    let p = Plugin::start(BIN);
    let root = p.root();
    create(
        &p,
        "db-data",
        json!({"backup": "highest", "class": "critical"}),
    );
    create(
        &p,
        "app-data",
        json!({"backup": "high", "uid": "1000", "mode": "0750"}),
    );
    create(&p, "logs", json!({"backup": "low", "class": "temporary"}));
    create(&p, "cache", json!({"backup": "none"}));
    let app = data_dir(&p, "app-data");
    fs::create_dir_all(app.join("sub/dir")).unwrap();
    fs::write(app.join("sub/dir/file.txt"), "precious\n").unwrap();
    fs::write(app.join("big.bin"), vec![7u8; 3 << 20]).unwrap();
    std::os::unix::fs::symlink("sub/dir/file.txt", app.join("link")).unwrap();
    fs::write(data_dir(&p, "db-data").join("PG_VERSION"), "16\n").unwrap();
    fs::write(data_dir(&p, "logs").join("app.log"), "log\n").unwrap();

    let broot = p.dir.path().join("backups");
    let out = allspark(
        &root,
        &[
            "backup",
            "run",
            "daily",
            "--backup-root",
            broot.to_str().unwrap(),
        ],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "no Docker = a failed run: {t}");
    assert!(t.contains("database dumps"), "{t}");
    assert!(t.contains("backup daily"), "summary line: {t}");
    let dir = only_backup_dir(&broot);
    let mut files = names(&dir);
    files.sort();
    assert_eq!(
        files,
        vec!["app-data.tar.zst", "db-data.tar.zst", "manifest.json"]
    );
    let m: Value = serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["type"], "daily");
    assert_eq!(m["outcome"], "failed");
    assert_eq!(
        m["volumes"],
        json!(["db-data", "app-data"]),
        "highest priority first"
    );
    assert_eq!(m["databases"], json!([]));
    assert!(m["errors"][0].as_str().unwrap().contains("Docker"), "{m}");
    assert!(m["timestamp"].as_str().unwrap().ends_with('Z'));
    for f in m["files"].as_array().unwrap() {
        let bytes = fs::read(dir.join(f["name"].as_str().unwrap())).unwrap();
        assert_eq!(f["size"].as_u64().unwrap(), bytes.len() as u64);
        assert_eq!(f["kind"], "volume");
        assert_eq!(f["sha256"].as_str().unwrap().len(), 64);
        assert_eq!(f["compression"], "zstd");
    }
    let last: Value =
        serde_json::from_slice(&fs::read(root.join("state/agent/last-backup-daily.json")).unwrap())
            .unwrap();
    assert_eq!(last["ok"], false);
    assert!(last["finished_at"].as_str().is_some());

    // GNU tar reads the archive.
    let x = p.dir.path().join("x");
    fs::create_dir_all(&x).unwrap();
    let st = Command::new("tar")
        .arg("--zstd")
        .arg("-xf")
        .arg(dir.join("app-data.tar.zst"))
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        fs::read_to_string(x.join("sub/dir/file.txt")).unwrap(),
        "precious\n"
    );
    assert_eq!(
        fs::read_link(x.join("link")).unwrap(),
        Path::new("sub/dir/file.txt")
    );

    // ls shows it, with its outcome.
    let out = allspark(
        &root,
        &[
            "backup",
            "ls",
            "--json",
            "--backup-root",
            broot.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let ls: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ls[0]["type"], "daily");
    assert_eq!(ls[0]["complete"], true);
    assert_eq!(ls[0]["outcome"], "failed");
    assert!(ls[0]["size"].as_u64().unwrap() > 0);

    let dir_s = dir.to_str().unwrap();
    let out = allspark(&root, &["backup", "verify", dir_s]);
    assert!(out.status.success(), "{}", text(&out));

    // Restore after deleting and changing files.
    fs::remove_dir_all(app.join("sub")).unwrap();
    fs::write(app.join("big.bin"), "changed").unwrap();
    fs::write(app.join("new.txt"), "not in the backup").unwrap();
    let out = allspark(&root, &["backup", "restore", dir_s, "--volume", "app-data"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("REPLACE"), "{}", text(&out));
    assert!(
        app.join("new.txt").exists(),
        "nothing changed without --yes"
    );
    let out = allspark(
        &root,
        &["backup", "restore", dir_s, "--volume", "app-data", "--yes"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        fs::read_to_string(app.join("sub/dir/file.txt")).unwrap(),
        "precious\n"
    );
    assert_eq!(fs::read(app.join("big.bin")).unwrap(), vec![7u8; 3 << 20]);
    assert!(!app.join("new.txt").exists());
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(&app).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (1000, 0o750));

    // A volume that is not in the backup is named.
    let out = allspark(
        &root,
        &["backup", "restore", dir_s, "--volume", "logs", "--yes"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("logs is not in"), "{}", text(&out));

    // A corrupted archive: verify and restore fail naming the file; nothing is changed.
    let archive = dir.join("app-data.tar.zst");
    let mut bytes = fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&archive, &bytes).unwrap();
    fs::write(app.join("new.txt"), "after").unwrap();
    let out = allspark(&root, &["backup", "verify", dir_s]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("app-data.tar.zst"), "{}", text(&out));
    let out = allspark(
        &root,
        &["backup", "restore", dir_s, "--volume", "app-data", "--yes"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("app-data.tar.zst"), "{}", text(&out));
    assert!(text(&out).contains("nothing was changed"), "{}", text(&out));
    assert_eq!(fs::read_to_string(app.join("new.txt")).unwrap(), "after");

    // Damage the zstd stream but fix up the manifest: the test extraction catches it.
    let m2: Value = serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let mut m2 = m2;
    let sum = Command::new("sha256sum").arg(&archive).output().unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    for f in m2["files"].as_array_mut().unwrap() {
        if f["name"] == "app-data.tar.zst" {
            f["sha256"] = json!(sum);
        }
    }
    fs::write(dir.join("manifest.json"), m2.to_string()).unwrap();
    let out = allspark(&root, &["backup", "verify", dir_s]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("app-data.tar.zst") && text(&out).contains("extraction"),
        "{}",
        text(&out)
    );
    assert!(
        names(&broot.join("daily"))
            .iter()
            .all(|n| !n.starts_with(".verify")),
        "scratch directories are removed"
    );
}

#[test]
fn include_temporary_and_an_incomplete_dir_is_not_a_backup() {
    let p = Plugin::start(BIN);
    create(&p, "logs", json!({"class": "temporary"}));
    fs::write(data_dir(&p, "logs").join("a"), "a").unwrap();
    let broot = p.dir.path().join("backups");
    let out = allspark(
        &p.root(),
        &[
            "backup",
            "run",
            "weekly",
            "--include-temporary",
            "--backup-root",
            broot.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let n = names(&broot.join("weekly"));
    assert!(names(&broot.join("weekly").join(&n[0])).contains(&"logs.tar.zst".to_string()));

    let incomplete = broot.join("daily/20240101_020000");
    fs::create_dir_all(&incomplete).unwrap();
    let out = allspark(
        &p.root(),
        &["backup", "verify", incomplete.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("incomplete"), "{}", text(&out));
    let out = allspark(
        &p.root(),
        &["backup", "restore", incomplete.to_str().unwrap(), "--yes"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("incomplete"), "{}", text(&out));
    let out = allspark(
        &p.root(),
        &["backup", "ls", "--backup-root", broot.to_str().unwrap()],
    );
    assert!(text(&out).contains("incomplete"), "{}", text(&out));
}

struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_agent_runs_a_missed_scheduled_backup_once_at_start() {
    let p = Plugin::start(BIN);
    create(&p, "app-data", json!({"backup": "high"}));
    fs::write(data_dir(&p, "app-data").join("f"), "data").unwrap();
    let root = p.root();
    let broot = p.dir.path().join("backups");
    let agent_dir = root.join("state/agent");
    fs::create_dir_all(&agent_dir).unwrap();
    let now = chrono::Utc::now().to_rfc3339();
    // The daily last ran long ago (the agent was down since); the others ran just now.
    fs::write(
        agent_dir.join("schedule.json"),
        json!({"last_run": {"daily": "2020-01-01T02:00:00Z", "weekly": now, "monthly": now, "verify": now}})
            .to_string(),
    )
    .unwrap();
    let log = fs::File::create(p.dir.path().join("agent.log")).unwrap();
    let _agent = Agent(
        Command::new(BIN)
            .arg("--root")
            .arg(&root)
            .args(["--docker", NO_DOCKER])
            .args(["agent", "--no-docker-events", "--backup-root"])
            .arg(&broot)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !agent_dir.join("last-backup-daily.json").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled backup ran; agent log:\n{}",
            fs::read_to_string(p.dir.path().join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    let daily = names(&broot.join("daily"));
    assert_eq!(daily.len(), 1, "ran once: {daily:?}");
    assert!(names(&broot.join("daily").join(&daily[0])).contains(&"app-data.tar.zst".to_string()));
    assert!(names(&broot.join("weekly")).is_empty());
    assert!(names(&broot.join("monthly")).is_empty());
    let state: Value =
        serde_json::from_slice(&fs::read(agent_dir.join("schedule.json")).unwrap()).unwrap();
    let last = state["last_run"]["daily"].as_str().unwrap();
    assert!(
        last.starts_with(&chrono::Utc::now().format("%Y-").to_string()),
        "{state}"
    );
}

#[test]
fn hourly_backups_hold_dumps_only_and_are_pruned_by_hours() {
    let p = Plugin::start(BIN);
    create(&p, "app-data", json!({"backup": "high"}));
    fs::write(data_dir(&p, "app-data").join("f"), "data").unwrap();
    let broot = p.dir.path().join("backups");
    let b = broot.to_str().unwrap();
    // Without Docker an hourly run has nothing to dump: it fails loudly and archives no volume.
    let out = allspark(&p.root(), &["backup", "run", "hourly", "--backup-root", b]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let hourly = names(&broot.join("hourly"));
    assert_eq!(hourly.len(), 1, "{hourly:?}");
    let m: Value = serde_json::from_slice(
        &fs::read(broot.join("hourly").join(&hourly[0]).join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["type"], "hourly");
    assert_eq!(
        m["volumes"],
        json!([]),
        "no volume archive in an hourly backup"
    );
    assert!(m["errors"].to_string().contains("dumps"), "{m}");
    assert!(!broot.join("daily").exists());

    // Retention: hourly backups go once 48 hours old (by elapsed time), the others by days.
    fs::remove_dir_all(&broot).unwrap();
    let now = Local::now().naive_local();
    let mut want = Vec::new();
    for h in [1, 20, 47, 49, 100] {
        let t = now - Duration::hours(h);
        make_backup(&broot, "hourly", t, Some("ok"));
        if h < 48 {
            want.push(stamp(t));
        }
    }
    let daily_60h = now - Duration::hours(60);
    make_backup(&broot, "daily", daily_60h, Some("ok"));
    let out = allspark(&p.root(), &["backup", "prune", "--backup-root", b]);
    assert!(out.status.success(), "{}", text(&out));
    want.sort();
    assert_eq!(names(&broot.join("hourly")), want);
    assert_eq!(names(&broot.join("daily")), vec![stamp(daily_60h)]);
    let out = allspark(
        &p.root(),
        &[
            "backup",
            "prune",
            "--backup-root",
            b,
            "--keep-hourly-hours",
            "2",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        names(&broot.join("hourly")).len(),
        1,
        "only the 1-hour-old one"
    );
}

#[test]
fn restore_help_lists_no_retention_flag_and_run_help_lists_hourly() {
    let tmp = tempfile::tempdir().unwrap();
    let help = |args: &[&str]| {
        let out = allspark(tmp.path(), args);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let restore = help(&["backup", "restore", "--help"]);
    assert!(!restore.contains("--keep"), "{restore}");
    assert!(restore.contains("--container-label"), "{restore}");
    let run = help(&["backup", "run", "--help"]);
    assert!(
        run.contains("hourly") && run.contains("--keep-hourly-hours"),
        "{run}"
    );
    let prune = help(&["backup", "prune", "--help"]);
    assert!(
        prune.contains("--keep-hourly-hours") && !prune.contains("--container-label"),
        "{prune}"
    );
    let agent = help(&["agent", "--help"]);
    assert!(agent.contains("--hourly-cron"), "{agent}");
}
