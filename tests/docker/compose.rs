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
//! with no error line and everything is back); three `down` / `up -d` cycles, a dockerd
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

use super::databases::{fingerprint, psql, redis, KEYS, ROWS};
use crate::support::backups::{backup_dirs, manifest, state, text};
use crate::support::common;
use crate::support::install::{HostInstall, HOST_DRIVER, STATE_ROOT};

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{
    docker, docker_ok, dockerd_restart_allowed, ensure_db_images, ensure_root_shared,
    ensure_sleeper_image, forget_dead_legacy_drivers, path_str, repo_root, require_docker,
    restart_dockerd, sh_ok, unique_name, wait_until, Cleanup,
};

/// The volumes of the compose file, in file order.
const VOLUMES: [&str; 6] = [
    "postgres-data",
    "redis-data",
    "builder-data",
    "target-workspaces",
    "shared-ssh-keys",
    "log-data",
];

/// The shipped file's `device=` directory (postgres-data).
const PG_DEVICE: &str = "/var/lib/allspark/postgres";

/// Seconds docker-compose waits for one Docker API request.
const COMPOSE_HTTP_TIMEOUT: &str = "600";

/// One compose project of the shipped file with the image-only override.
struct Project {
    name: String,
    files: [PathBuf; 2],
}

impl Project {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker-compose");
        for f in &self.files {
            cmd.arg("-f").arg(f);
        }
        cmd.args(["-p", &self.name])
            .args(args)
            // A dockerd that once served legacy socket plugins which are gone asks each of them
            // (with retries) about unknown volume names: slow, not wrong.
            .env("COMPOSE_HTTP_TIMEOUT", COMPOSE_HTTP_TIMEOUT)
            .env("POSTGRES_PASSWORD", "allspark-test")
            .stdin(Stdio::null());
        cmd
    }

    fn compose(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .expect("run docker-compose (apt-get install docker-compose)")
    }

    fn compose_ok(&self, args: &[&str]) -> String {
        let started = Instant::now();
        let out = self.compose(args);
        assert!(
            out.status.success(),
            "docker-compose {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        eprintln!(
            "docker-compose {} took {:?}",
            args.join(" "),
            started.elapsed()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The container of a service (docker-compose v1 naming).
    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.name)
    }

    fn volume(&self, short: &str) -> String {
        format!("{}_{short}", self.name)
    }

    /// `sh -c SCRIPT` inside the running container of `service`; returns stdout.
    fn exec(&self, service: &str, script: &str) -> String {
        docker_ok(&["exec", &self.container(service), "sh", "-c", script])
    }

    /// Waits until PostgreSQL and Redis answer (after a start, PostgreSQL may still be
    /// initializing or in recovery).
    fn wait_for_databases(&self) {
        let ready = |service: &str, script: &str| {
            docker(&["exec", &self.container(service), "sh", "-c", script])
                .status
                .success()
        };
        // Over TCP: the entrypoint's first-run server (initdb, then a server on the Unix socket
        // only) answers on the socket and then stops; the real server listens on TCP too.
        wait_until("PostgreSQL answers", Duration::from_secs(180), || {
            ready(
                "db",
                "psql -h 127.0.0.1 -U postgres -Atc 'SELECT 1' >/dev/null 2>&1",
            )
        });
        wait_until("Redis answers", Duration::from_secs(60), || {
            ready("redis", "redis-cli ping 2>/dev/null | grep -q PONG")
        });
    }
}

/// The mount options of `target` as the container of `service` sees them.
fn mount_options(p: &Project, service: &str, target: &str) -> Vec<String> {
    let line = p.exec(service, &format!("grep ' {target} ' /proc/self/mountinfo"));
    line.split_whitespace()
        .nth(5)
        .unwrap_or_default()
        .split(',')
        .map(str::to_string)
        .collect()
}

/// `stat -c FORMAT PATH` in the container of `service`.
fn stat(p: &Project, service: &str, format: &str, path: &str) -> String {
    p.exec(service, &format!("stat -c '{format}' {path}"))
        .trim()
        .to_string()
}

/// The override may change image names only: it names no driver, and the configuration
/// docker-compose builds from the shipped file plus the override equals the shipped file's
/// once `image:` is set aside (lists compared as sets: docker-compose reorders merged lists).
/// Returns the services whose image it changes.
fn check_override_changes_images_only(shipped: &Path, override_file: &Path) -> Vec<String> {
    let text = fs::read_to_string(override_file).unwrap();
    assert!(
        !text.contains("driver"),
        "{} must never mention a driver (driver lines and driver_opts are tested as shipped)",
        override_file.display()
    );
    let config = |files: &[&Path]| {
        let mut cmd = Command::new("docker-compose");
        for f in files {
            cmd.arg("-f").arg(f);
        }
        let out = cmd
            .args(["--profile", "agent", "config"])
            .env("POSTGRES_PASSWORD", "allspark-test")
            .stdin(Stdio::null())
            .output()
            .expect("run docker-compose config");
        assert!(
            out.status.success(),
            "docker-compose config failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("shipped.yml"),
        dir.path().join("merged.yml"),
    );
    fs::write(&a, config(&[shipped])).unwrap();
    fs::write(&b, config(&[shipped, override_file])).unwrap();
    const COMPARE: &str = r#"
import sys, yaml
def norm(x):
    if isinstance(x, dict):
        return {k: norm(v) for k, v in x.items()}
    if isinstance(x, list):
        return sorted((norm(v) for v in x), key=repr)
    return x
shipped, merged = (yaml.safe_load(open(f)) for f in sys.argv[1:3])
changed = []
for name, svc in merged.get("services", {}).items():
    orig = shipped.get("services", {}).get(name, {})
    if svc.pop("image", None) != orig.pop("image", None):
        changed.append(name)
if norm(shipped) != norm(merged):
    print("the override changes more than image names:\nshipped: %r\nmerged:  %r" % (norm(shipped), norm(merged)))
    sys.exit(1)
print(" ".join(sorted(changed)))
"#;
    let out = Command::new("python3")
        .args(["-c", COMPARE])
        .arg(&a)
        .arg(&b)
        .output()
        .expect("run python3 (docker-compose's own interpreter, with PyYAML)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Everything written after the first `up` is there, with its owners, modes and flags;
/// `rows` is the database's [`fingerprint`] when it was written.
fn check_data(p: &Project, rows: &str, when: &str) {
    p.wait_for_databases();
    assert_eq!(
        fingerprint(&p.container("db")),
        rows,
        "{when}: the PostgreSQL rows (count and checksum of every row)"
    );
    let rd = p.container("redis");
    assert_eq!(
        redis(&rd, &["GET", "allspark:session"]),
        "s3cr3t-session",
        "{when}: the Redis key"
    );
    assert_eq!(
        redis(&rd, &["DBSIZE"]),
        (KEYS + 1).to_string(),
        "{when}: the Redis keys"
    );
    assert_eq!(
        redis(&rd, &["GET", "session:1234"]),
        "user-1234",
        "{when}: a Redis key"
    );
    assert_eq!(
        p.exec(
            "builder",
            "cat /app/storage/upload.bin /ssh-keys/id_ed25519 /app/log/builder.log"
        )
        .trim(),
        "upload\nkey\nbuilder log",
        "{when}: builder's files"
    );
    assert_eq!(
        p.exec(
            "builder",
            "ls /app/storage/exports | wc -l; cat /app/storage/exports/report-137.csv"
        )
        .trim(),
        "200\nrow 137",
        "{when}: builder's exports"
    );
    assert_eq!(
        p.exec(
            "target",
            "cat /workspace/project-abc123/app.rb /app/log/builder.log"
        )
        .trim(),
        "code\nbuilder log",
        "{when}: target's workspace and the shared logs"
    );
    let opts = mount_options(p, "db", "/var/lib/postgresql/data");
    for flag in ["noatime", "nodiratime"] {
        assert!(
            opts.iter().any(|o| o == flag),
            "{when}: postgres-data lacks {flag}: {opts:?}"
        );
    }
    for service in ["builder", "target"] {
        assert_eq!(
            stat(p, service, "%u %g %a", "/ssh-keys"),
            "1000 1000 700",
            "{when}: {service}: shared-ssh-keys owner and mode"
        );
        let opts = mount_options(p, service, "/ssh-keys");
        assert_eq!(
            opts.first().map(String::as_str),
            Some("ro"),
            "{when}: {service}: /ssh-keys must be read-only: {opts:?}"
        );
    }
    assert_eq!(
        stat(p, "builder", "%u %g", "/app/storage /workspaces"),
        "1000 1000\n1000 1000",
        "{when}: builder-data and target-workspaces owners"
    );
}

/// Every volume of the project is Docker's, on the driver named exactly `allspark`.
fn check_drivers(p: &Project, when: &str) {
    for v in VOLUMES {
        let name = p.volume(v);
        let info: serde_json::Value =
            serde_json::from_str(&docker_ok(&["volume", "inspect", &name])).unwrap();
        assert_eq!(
            info[0]["Driver"], HOST_DRIVER,
            "{when}: {name} must be on the driver `{HOST_DRIVER}`, as the compose file says: {info}"
        );
        assert!(
            info[0]["Status"].is_object(),
            "{when}: docker volume inspect {name} shows no Status: {info}"
        );
    }
}

/// The backup root of the installed agent and CLI (install.sh's default, mounted into the
/// agent container at the same path).
const BACKUP_ROOT: &str = "/backups/allspark";

/// `allspark ARGS…` (the installed CLI); panics with its output unless it exits 0 and
/// printed no error line. Returns stdout and stderr.
fn cli_ok(install: &HostInstall, args: &[&str]) -> String {
    let out = install.cli(args);
    let t = text(&out);
    assert!(out.status.success(), "allspark {args:?}: {t}");
    // Error lines: a failed part (`FAILED …`), an error log line, psql's `ERROR:`/`FATAL:`.
    let errors: Vec<&str> = t
        .lines()
        .filter(|l| {
            l.starts_with("FAILED")
                || l.contains(" ERROR ")
                || ["ERROR:", "FATAL:", "PANIC:"].iter().any(|e| l.contains(e))
        })
        .collect();
    assert!(
        errors.is_empty(),
        "allspark {args:?} reported errors {errors:?}: {t}"
    );
    t
}

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

#[test]
fn shipped_compose_file_survives_down_up_cycles_and_a_dockerd_restart_on_the_installed_driver() {
    let Some(_docker) = require_docker() else {
        return;
    };
    let started = Instant::now();
    ensure_root_shared();
    forget_dead_legacy_drivers();
    let (pg_image, redis_image) = ensure_db_images();
    let sleeper = ensure_sleeper_image();
    let shipped = repo_root().join("compose/docker-compose.yml");
    let override_file = repo_root().join("compose/test-override.yml");
    let changed = check_override_changes_images_only(&shipped, &override_file);
    assert_eq!(changed, ["builder", "db", "redis", "target"]);
    let override_text = fs::read_to_string(&override_file).unwrap();
    for image in [&pg_image, &redis_image, &sleeper] {
        assert!(
            override_text.contains(&format!("image: {image}\n")),
            "compose/test-override.yml must use {image}"
        );
    }

    // The shipped device= directory: never a user's database.
    let pg_device = Path::new(PG_DEVICE);
    let device_existed = pg_device.exists();
    assert!(
        !device_existed || fs::read_dir(pg_device).unwrap().next().is_none(),
        "{PG_DEVICE} (the shipped file's device= for postgres-data) holds data: this test will \
         not run over it (move it away, or run the test on another machine)"
    );

    // The one set-up command of the README, with this test run's binary and the agent.
    let mut install = HostInstall::install(&[]);
    let p = Project {
        name: unique_name("allspark-test-compose"),
        files: [shipped.clone(), override_file.clone()],
    };
    // Once the driver and the agent are gone: what the test's volumes left in the state root
    // (the agent's snapshots, locks, usage figures), and the device directory if the test
    // made it.
    install.after_uninstall(format!(
        "rm -rf {STATE_ROOT}/snapshots/{n}_* {STATE_ROOT}/locks/{n}_* {STATE_ROOT}/state/usage/{n}_* {STATE_ROOT}/state/usage-cache/{n}_* {STATE_ROOT}/state/refs/{n}_*",
        n = p.name
    ));
    if device_existed {
        // It was empty: empty again, with its owner and mode (the entrypoint changes them).
        let m = fs::metadata(pg_device).unwrap();
        install.after_uninstall(format!(
            "find {PG_DEVICE} -mindepth 1 -delete; chown {}:{} {PG_DEVICE}; chmod {:o} {PG_DEVICE}",
            m.uid(),
            m.gid(),
            m.mode() & 0o7777
        ));
    } else {
        install.after_uninstall(format!("rm -rf {PG_DEVICE}"));
    }
    let mut cleanup = Cleanup::new();
    cleanup.add(format!(
        "POSTGRES_PASSWORD=x COMPOSE_HTTP_TIMEOUT={COMPOSE_HTTP_TIMEOUT} docker-compose -f {} -f {} -p {} down -v --remove-orphans -t 5",
        path_str(&p.files[0]),
        path_str(&p.files[1]),
        p.name
    ));
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
    p.wait_for_databases();
    let (db, rd) = (p.container("db"), p.container("redis"));
    psql(&db, "postgres", "CREATE DATABASE app");
    psql(
        &db,
        "app",
        &format!(
            "CREATE TABLE projects (id integer PRIMARY KEY, name text NOT NULL, payload text); \
             INSERT INTO projects SELECT g, 'project-' || g, md5(g::text) FROM generate_series(1, {ROWS}) g"
        ),
    );
    let rows = fingerprint(&db);
    assert!(rows.starts_with(&format!("{ROWS}:")), "{rows}");
    assert_eq!(
        redis(&rd, &["SET", "allspark:session", "s3cr3t-session"]),
        "OK"
    );
    redis(
        &rd,
        &[
            "EVAL",
            &format!(
                "for i = 0, {} do redis.call('SET', 'session:' .. i, 'user-' .. i) end",
                KEYS - 1
            ),
            "0",
        ],
    );
    docker_ok(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:/k", p.volume("shared-ssh-keys")),
        common::BUSYBOX_IMAGE,
        "sh",
        "-c",
        "echo key > /k/id_ed25519",
    ]);
    p.exec(
        "builder",
        "echo upload > /app/storage/upload.bin && mkdir -p /app/storage/exports && \
         for i in $(seq 1 200); do echo \"row $i\" > /app/storage/exports/report-$i.csv; done && \
         mkdir -p /workspaces/project-abc123 && echo code > /workspaces/project-abc123/app.rb && \
         echo 'builder log' > /app/log/builder.log",
    );
    assert_eq!(
        fs::read_to_string(pg_device.join("PG_VERSION")).unwrap(),
        "15\n",
        "postgres-data is the device= directory {PG_DEVICE}"
    );
    check_data(&p, &rows, "after the first up");
    platform_day(&p, &mut install, &rows);

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
        fs::read_to_string(pg_device.join("PG_VERSION")).unwrap(),
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
