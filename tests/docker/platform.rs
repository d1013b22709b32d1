//! The shipped compose/docker-compose.yml as the end-to-end tests run it: one compose project
//! (the shipped file plus compose/test-override.yml, checked to change image names only), the
//! data every test writes into its volumes and the checks that it is all there, the guard of
//! the shipped `device=` directory, and the installed CLI run with its error lines checked.

use super::databases::{fingerprint, psql, redis, KEYS, ROWS};
use crate::support::backups::text;
use crate::support::common::{
    self, docker, docker_ok, ensure_db_images, ensure_sleeper_image, path_str, repo_root,
    wait_until,
};
use crate::support::install::{HostInstall, HOST_DRIVER, STATE_ROOT};

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The volumes of the compose file, in file order.
pub(super) const VOLUMES: [&str; 6] = [
    "postgres-data",
    "redis-data",
    "builder-data",
    "target-workspaces",
    "shared-ssh-keys",
    "log-data",
];

/// The shipped file's `device=` directory (postgres-data).
pub(super) const PG_DEVICE: &str = "/var/lib/allspark/postgres";

/// Seconds docker-compose waits for one Docker API request.
pub(super) const COMPOSE_HTTP_TIMEOUT: &str = "600";

/// One compose project of the shipped file with the image-only override.
pub(super) struct Project {
    pub(super) name: String,
    pub(super) files: [PathBuf; 2],
}

impl Project {
    pub(super) fn command(&self, args: &[&str]) -> Command {
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

    pub(super) fn compose(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .expect("run docker-compose (apt-get install docker-compose)")
    }

    pub(super) fn compose_ok(&self, args: &[&str]) -> String {
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
    pub(super) fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.name)
    }

    pub(super) fn volume(&self, short: &str) -> String {
        format!("{}_{short}", self.name)
    }

    /// `sh -c SCRIPT` inside the running container of `service`; returns stdout.
    pub(super) fn exec(&self, service: &str, script: &str) -> String {
        docker_ok(&["exec", &self.container(service), "sh", "-c", script])
    }

    /// Waits until PostgreSQL and Redis answer (after a start, PostgreSQL may still be
    /// initializing or in recovery).
    pub(super) fn wait_for_databases(&self) {
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

impl Project {
    /// A project of the shipped file with the image-only override, under a unique name
    /// starting with `prefix`; the images are built and the override checked first.
    pub(super) fn shipped(prefix: &str) -> Project {
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
        Project {
            name: common::unique_name(prefix),
            files: [shipped, override_file],
        }
    }

    /// The shell command that takes the project down with its volumes (for a [`common::Cleanup`]).
    pub(super) fn down_command(&self) -> String {
        format!(
            "POSTGRES_PASSWORD=x COMPOSE_HTTP_TIMEOUT={COMPOSE_HTTP_TIMEOUT} docker-compose -f {} -f {} -p {} down -v --remove-orphans -t 5",
            path_str(&self.files[0]),
            path_str(&self.files[1]),
            self.name
        )
    }

    /// Once the driver and the agent are gone: remove what the project's volumes left in the
    /// state root (the agent's snapshots, locks, usage figures, references).
    pub(super) fn forget_after_uninstall(&self, install: &mut HostInstall) {
        install.after_uninstall(format!(
            "rm -rf {STATE_ROOT}/snapshots/{n}_* {STATE_ROOT}/locks/{n}_* {STATE_ROOT}/state/usage/{n}_* {STATE_ROOT}/state/usage-cache/{n}_* {STATE_ROOT}/state/refs/{n}_*",
            n = self.name
        ));
    }
}

/// The shipped file's `device=` directory, never a user's database: [`PgDevice::check`]
/// refuses to go on when it holds data, and [`PgDevice::restore_after`] puts it back as it was
/// (removed when the test made it, emptied with its owner and mode otherwise).
pub(super) struct PgDevice {
    existed: Option<fs::Metadata>,
}

impl PgDevice {
    pub(super) fn check() -> PgDevice {
        let dir = Path::new(PG_DEVICE);
        let existed = fs::metadata(dir).ok();
        assert!(
            existed.is_none() || fs::read_dir(dir).unwrap().next().is_none(),
            "{PG_DEVICE} (the shipped file's device= for postgres-data) holds data: this test will \
             not run over it (move it away, or run the test on another machine)"
        );
        PgDevice { existed }
    }

    pub(super) fn restore_after(&self, install: &mut HostInstall) {
        match &self.existed {
            // It was empty: empty again, with its owner and mode (the entrypoint changes them).
            Some(m) => install.after_uninstall(format!(
                "find {PG_DEVICE} -mindepth 1 -delete; chown {}:{} {PG_DEVICE}; chmod {:o} {PG_DEVICE}",
                m.uid(),
                m.gid(),
                m.mode() & 0o7777
            )),
            None => install.after_uninstall(format!("rm -rf {PG_DEVICE}")),
        }
    }
}

/// Data in every volume of a project that is up: 50 000 rows in PostgreSQL (database `app`),
/// 2 001 Redis keys, an SSH key, builder's uploads and exports, a workspace project and a log
/// line. Returns the database's [`fingerprint`].
pub(super) fn fill(p: &Project) -> String {
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
    rows
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

/// Everything [`fill`] wrote is there, with its owners, modes and flags; `rows` is the
/// database's [`fingerprint`] when it was written.
pub(super) fn check_data(p: &Project, rows: &str, when: &str) {
    check_backed_up_data(p, rows, when);
    assert_eq!(
        p.exec("builder", "cat /app/log/builder.log").trim(),
        "builder log",
        "{when}: the shared logs (log-data) in builder"
    );
    assert_eq!(
        p.exec("target", "cat /app/log/builder.log").trim(),
        "builder log",
        "{when}: the shared logs (log-data) in target"
    );
}

/// [`check_data`] without log-data, the `class: temporary` volume that no backup holds.
pub(super) fn check_backed_up_data(p: &Project, rows: &str, when: &str) {
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
            "cat /app/storage/upload.bin /ssh-keys/id_ed25519"
        )
        .trim(),
        "upload\nkey",
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
        p.exec("target", "cat /workspace/project-abc123/app.rb")
            .trim(),
        "code",
        "{when}: target's workspace"
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
pub(super) fn check_drivers(p: &Project, when: &str) {
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
pub(super) const BACKUP_ROOT: &str = "/backups/allspark";

/// `allspark ARGS…` (the installed CLI); panics with its output unless it exits 0 and
/// printed no error line. Returns stdout and stderr.
pub(super) fn cli_ok(install: &HostInstall, args: &[&str]) -> String {
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
