//! End-to-end: the shipped compose/docker-compose.yml, tested as shipped (issue 14.1).
//!
//! What a user does, on this machine: `scripts/install.sh` (with the test build's binary: the
//! driver `allspark` as a host service, the CLI and the agent container, state root
//! /var/lib/allspark), then docker-compose v1 on `compose/docker-compose.yml` straight from
//! the checkout. The only other file is compose/test-override.yml, which changes image names
//! (real PostgreSQL 15 and Redis 7 built offline by scripts/db-images.sh, a busybox sleeper for
//! builder and target); the test checks that it names no driver and that the merged
//! configuration differs from the shipped one in `image:` only. Then: `up -d`, data written in
//! every volume (50 000 rows, 2 001 Redis keys, builder files, a workspace project); issue
//! 14's platform day with the installed CLI (stop `target` and `builder`: a snapshot of
//! target-workspaces appears; `backup run daily` and `hourly` into /backups/allspark; drop
//! the table, delete the files, FLUSHALL; `backup restore --yes` of the daily backup exits 0
//! with no error line and everything is back); a workspace with a filesystem of its own
//! (`fs=btrfs`) created while the agent container runs is snapshotted and archived by it on
//! stop; three `down` / `up -d` cycles, a dockerd
//! restart (only with `ALLSPARK_TEST_DOCKERD_RESTART=1`, as .ci/run sets), `up -d` again, the
//! restored data still there, and `down -v` keeps the `device=` data.
//!
//! The compose project has a unique name, so its volumes are the test's own. The
//! `device=/var/lib/allspark/postgres` directory of the shipped file is used as is: the test
//! refuses to start when it holds data (a user's database), and at the end removes it when it
//! created it, or empties it again. Cleanup guards take the project down with its volumes,
//! remove what the agent and the driver kept of them (snapshots, locks, usage, references) and
//! the backups the test wrote, uninstall and put back what the machine had
//! (tests/support/install.rs), also when the test fails. Needs root, docker-compose and
//! debootstrap (for the images).

use super::databases::{psql, redis};
use super::platform::{
    check_data, check_drivers, cli_ok, fill, PgDevice, Project, BACKUP_ROOT, PG_DEVICE, VOLUMES,
};
use crate::support::backups::{backup_dirs, manifest, state, text};
use crate::support::common;
use crate::support::install::{HostInstall, HOST_DRIVER, STATE_ROOT};

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    docker, docker_ok, dockerd_restart_allowed, ensure_root_shared, forget_dead_legacy_drivers,
    path_str, require_docker, restart_dockerd, sh_ok, wait_until, Cleanup,
};

/// Issue 14's platform day, on the data of the first `up`: stop `target` (and `builder`, the
/// other user of target-workspaces: the agent snapshots a volume when its *last* container
/// stops) and a snapshot appears; `backup run daily` and `hourly` with the installed CLI into
/// the backup root of the install; destroy (drop the table, delete files, FLUSHALL);
/// `backup restore --yes` of the daily backup; every row, key and file is back.
fn platform_day(p: &Project, install: &mut HostInstall, rows: &str) {
    let started = Instant::now();
    let label = format!("com.docker.compose.project={}", p.name);
    // The backups this test writes go with the install; what was there stays.
    let broot = Path::new(BACKUP_ROOT);
    for kind in ["daily", "hourly"] {
        let dir = broot.join(kind);
        if dir.exists() {
            install.after_uninstall(format!(
                "cd {} && for d in * .[!.]*; do [ -e \"$d\" ] || continue; case ' {} ' in *\" $d \"*) ;; *) rm -rf \"$d\" ;; esac; done",
                dir.display(),
                backup_dirs(broot, kind)
                    .iter()
                    .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        } else {
            install.after_uninstall(format!("rm -rf {}", dir.display()));
        }
    }

    // target-workspaces is snapshotted when its last container stops.
    let ws = p.volume("target-workspaces");
    let snapshots = || {
        let out = install.cli(&["snapshot", "ls", &ws, "--json"]);
        assert!(out.status.success(), "allspark snapshot ls: {}", text(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .map_or(0, Vec::len)
    };
    assert_eq!(
        snapshots(),
        0,
        "no snapshot of {ws} before its containers stop"
    );
    p.compose_ok(&["stop", "target", "builder"]);
    wait_until(
        "the agent snapshots target-workspaces once target and builder stopped",
        Duration::from_secs(120),
        || snapshots() > 0,
    );
    p.compose_ok(&["start", "builder", "target"]);

    // Daily: the dump stands for postgres-data; redis and target are stopped, archived and
    // started again. Hourly: the dump only.
    let daily_before = backup_dirs(broot, "daily");
    let t = cli_ok(
        install,
        &["backup", "run", "daily", "--container-label", &label],
    );
    eprintln!("backup run daily:\n{t}");
    let daily = backup_dirs(broot, "daily")
        .into_iter()
        .find(|d| !daily_before.contains(d))
        .unwrap_or_else(|| panic!("backup run daily made no directory in {BACKUP_ROOT}: {t}"));
    let m = manifest(&daily);
    let (db, rd) = (p.container("db"), p.container("redis"));
    assert_eq!(m["outcome"], "ok", "{m}");
    assert_eq!(m["databases"], serde_json::json!([db.clone()]), "{m}");
    assert_eq!(
        m["covered_by_dump"][p.volume("postgres-data")],
        db.as_str(),
        "{m}"
    );
    let volumes = m["volumes"].as_array().unwrap();
    for v in [
        "redis-data",
        "builder-data",
        "target-workspaces",
        "shared-ssh-keys",
    ] {
        assert!(
            volumes.iter().any(|x| x == p.volume(v).as_str()),
            "the daily backup holds {v}: {m}"
        );
    }
    for v in ["postgres-data", "log-data"] {
        assert!(
            !volumes.iter().any(|x| x == p.volume(v).as_str()),
            "the daily backup must not archive {v}: {m}"
        );
    }
    let hourly_before = backup_dirs(broot, "hourly");
    let t = cli_ok(
        install,
        &["backup", "run", "hourly", "--container-label", &label],
    );
    let hourly = backup_dirs(broot, "hourly")
        .into_iter()
        .find(|d| !hourly_before.contains(d))
        .unwrap_or_else(|| panic!("backup run hourly made no directory in {BACKUP_ROOT}: {t}"));
    let m = manifest(&hourly);
    assert_eq!(m["outcome"], "ok", "{m}");
    assert_eq!(m["databases"], serde_json::json!([db.clone()]), "{m}");
    assert_eq!(m["volumes"], serde_json::json!([]), "{m}");
    for s in ["db", "redis", "builder", "target"] {
        assert_eq!(
            state(&p.container(s), "Running"),
            "true",
            "{s} runs after the backups"
        );
    }
    check_data(p, rows, "after the backups");

    // Destroy.
    psql(&db, "app", "DROP TABLE projects");
    assert_eq!(redis(&rd, &["FLUSHALL"]), "OK");
    assert_eq!(redis(&rd, &["DBSIZE"]), "0");
    p.exec(
        "builder",
        "rm -rf /app/storage/upload.bin /app/storage/exports /workspaces/project-abc123",
    );

    // Restore this project's volumes and dump from the daily backup.
    let dir = path_str(&daily).to_string();
    let mut args = vec![
        "backup",
        "restore",
        dir.as_str(),
        "--yes",
        "--container-label",
        &label,
    ];
    let names: Vec<String> = [
        "redis-data",
        "builder-data",
        "target-workspaces",
        "shared-ssh-keys",
    ]
    .iter()
    .map(|v| p.volume(v))
    .collect();
    for v in &names {
        args.extend(["--volume", v.as_str()]);
    }
    args.extend(["--database", db.as_str()]);
    let t = cli_ok(install, &args);
    eprintln!("backup restore:\n{t}");
    assert!(t.contains(&format!("ok     database {db}")), "{t}");
    for v in &names {
        assert!(t.contains(&format!("ok     volume {v}")), "{t}");
    }
    for s in ["db", "redis", "builder", "target"] {
        wait_until(
            &format!("{s} runs after the restore"),
            Duration::from_secs(120),
            || state(&p.container(s), "Running") == "true",
        );
    }
    check_data(p, rows, "after the restore");
    eprintln!(
        "platform day (snapshot, backups, destroy, restore): {:?}",
        started.elapsed()
    );
}

/// A project workspace with a filesystem of its own (`fs=btrfs`), created while the agent
/// container of install.sh runs: its pool is mounted by the host service after the agent
/// started, and the agent (state root bound `rslave`) still takes the snapshot on stop and
/// archives it; the volume and its image go with `docker volume rm`.
fn own_fs_workspace(install: &HostInstall) {
    let image = common::ensure_busybox_image();
    let ws = common::unique_name("allspark-test-own-ws");
    let mut cleanup = Cleanup::new();
    cleanup.add(format!("docker volume rm -f {ws} >/dev/null"));
    docker_ok(&[
        "volume",
        "create",
        "-d",
        HOST_DRIVER,
        "-o",
        "fs=btrfs",
        "-o",
        "size=300M",
        "-o",
        "snapshot=on-unmount",
        &ws,
    ]);
    docker_ok(&[
        "run",
        "--rm",
        "-v",
        &format!("{ws}:/w"),
        &image,
        "sh",
        "-c",
        "echo work > /w/f",
    ]);
    let kinds = || -> Vec<String> {
        let out = install.cli(&["snapshot", "ls", &ws, "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s["kind"].as_str().map(str::to_string))
            .collect()
    };
    wait_until(
        "the agent container snapshots and archives the fs=btrfs workspace on stop",
        Duration::from_secs(120),
        || kinds() == ["cow+archive"],
    );
    let image_file = Path::new(STATE_ROOT)
        .join("pools")
        .join(format!("{ws}.fs.img"));
    assert!(image_file.exists());
    docker_ok(&["volume", "rm", &ws]);
    assert!(!image_file.exists(), "the image goes with the volume");
}

#[test]
fn shipped_compose_file_survives_down_up_cycles_and_a_dockerd_restart_on_the_installed_driver() {
    let Some(_docker) = require_docker() else {
        return;
    };
    let started = Instant::now();
    ensure_root_shared();
    forget_dead_legacy_drivers();
    let p = Project::shipped("allspark-test-compose");
    // The shipped device= directory: never a user's database.
    let pg_device = PgDevice::check();

    // The one set-up command of the README, with this test run's binary and the agent.
    let mut install = HostInstall::install(&[]);
    p.forget_after_uninstall(&mut install);
    pg_device.restore_after(&mut install);
    let mut cleanup = Cleanup::new();
    cleanup.add(p.down_command());
    assert_eq!(
        docker_ok(&[
            "container",
            "inspect",
            "-f",
            "{{.State.Running}}",
            "allspark-agent"
        ])
        .trim(),
        "true",
        "install.sh runs the agent container"
    );
    let installed_at = started.elapsed();

    // Cycle 1: up, then data in every volume.
    p.compose_ok(&["up", "-d"]);
    check_drivers(&p, "after the first up");
    let rows = fill(&p);
    assert_eq!(
        fs::read_to_string(Path::new(PG_DEVICE).join("PG_VERSION")).unwrap(),
        "15\n",
        "postgres-data is the device= directory {PG_DEVICE}"
    );
    check_data(&p, &rows, "after the first up");
    platform_day(&p, &mut install, &rows);
    own_fs_workspace(&install);

    // Cycles 2 and 3: down, up -d. Docker reports the driver as the file names it, so
    // docker-compose v1 accepts its own volumes again.
    for cycle in 2..=3 {
        p.compose_ok(&["down"]);
        if cycle == 2 {
            // The agent snapshots target-workspaces when its last container stops (README).
            let vol = p.volume("target-workspaces");
            wait_until(
                "the agent snapshots target-workspaces after down",
                Duration::from_secs(120),
                || {
                    let out = install.cli(&["snapshot", "ls", &vol, "--json"]);
                    out.status.success()
                        && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                            .map(|v| v.as_array().is_some_and(|a| !a.is_empty()))
                            .unwrap_or(false)
                },
            );
        }
        p.compose_ok(&["up", "-d"]);
        check_drivers(&p, &format!("cycle {cycle}"));
        check_data(&p, &rows, &format!("after up number {cycle}"));
    }

    // dockerd restarts under the running project: the driver runs outside it, the
    // containers' restart policy (unless-stopped) brings them back on their volumes.
    if dockerd_restart_allowed("compose: the dockerd restart step (the rest of the test ran)") {
        let before = Instant::now();
        restart_dockerd();
        eprintln!("dockerd restarted in {:?}", before.elapsed());
        wait_until(
            "the project's containers run again after the dockerd restart",
            Duration::from_secs(180),
            || {
                ["db", "redis", "builder", "target"].iter().all(|s| {
                    let out = docker(&[
                        "container",
                        "inspect",
                        "-f",
                        "{{.State.Running}}",
                        &p.container(s),
                    ]);
                    String::from_utf8_lossy(&out.stdout).trim() == "true"
                })
            },
        );
        check_data(&p, &rows, "after the dockerd restart");
    }
    p.compose_ok(&["up", "-d"]);
    check_drivers(&p, "after the last up");
    check_data(&p, &rows, "after the last up");

    // down -v removes the volumes and their managed data, never the device= data.
    p.compose_ok(&["down", "-v"]);
    let left = docker_ok(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("name={}_", p.name),
    ]);
    assert!(
        left.trim().is_empty(),
        "docker-compose down -v left volumes: {left}"
    );
    for v in VOLUMES {
        assert!(
            !Path::new(STATE_ROOT)
                .join("volumes")
                .join(p.volume(v))
                .exists(),
            "down -v left the managed data of {v}"
        );
    }
    assert_eq!(
        fs::read_to_string(Path::new(PG_DEVICE).join("PG_VERSION")).unwrap(),
        "15\n",
        "down -v must never delete the data of a device= volume"
    );
    let files = sh_ok(&format!("find {PG_DEVICE}/base -type f | wc -l"));
    assert!(
        files.trim().parse::<u32>().unwrap_or(0) > 100,
        "the database files are still in {PG_DEVICE}: {files}"
    );
    assert!(
        install
            .stdout
            .contains("compose files must say driver: allspark\n"),
        "install.sh names the driver of compose files: {}",
        install.stdout
    );
    eprintln!(
        "compose as shipped: install {installed_at:?}, whole test {:?}",
        started.elapsed()
    );
}
