//! Disaster recovery onto a fresh host, as a user lives it (issue 16 item 4): the shipped
//! compose/docker-compose.yml on the driver scripts/install.sh installs, filled with data
//! (50 000 PostgreSQL rows, Redis keys, builder files, a workspace project inside
//! target-workspaces and two `parent=` workspace-project volumes), a daily backup pushed
//! age-encrypted to moto_server (no plaintext in the bucket); then the host is lost: the
//! project goes down with its volumes, allspark is uninstalled, the state root (with the
//! `device=` directory of postgres-data) and the backup root are deleted, allspark is installed
//! again. `allspark remote add` and `allspark dr restore --from offsite` recreate every volume
//! through Docker with its options, `docker-compose up -d` of the shipped file takes them as its
//! own, the dump replays into the new db container, and every row, key, file and workspace
//! project is back. The recovery time (`dr restore` wall clock, and to the first successful
//! query) is printed.
//!
//! The test refuses to run over a state root or backup root that holds a user's volumes,
//! remotes, snapshots or backups (it deletes both), and over a `device=` directory with data.

use super::databases::{fingerprint, ROWS};
use super::platform::{
    check_backed_up_data, check_drivers, cli_ok, fill, PgDevice, Project, BACKUP_ROOT, VOLUMES,
};
use crate::support::backups::{backup_dirs, manifest};
use crate::support::common::{
    docker_ok, ensure_root_shared, forget_dead_legacy_drivers, require_docker, Cleanup,
    BUSYBOX_IMAGE,
};
use crate::support::install::{HostInstall, HOST_DRIVER, STATE_ROOT};
use crate::support::s3::{require_s3, Keys, Moto, BUCKET};

use std::fs;
use std::path::Path;
use std::time::Instant;

/// A string no object in the bucket may contain in clear.
const MARKER: &str = "ALLSPARK-DR-PLAINTEXT-5c81e0";

/// The workspace projects: `parent=` volumes of target-workspaces, with their files.
const PROJECTS: [(&str, &str); 2] = [("ws-alpha", "alpha"), ("ws-beta", "beta")];

/// Panics unless the state root and the backup root hold nothing of a user's: no volume
/// record, remote, snapshot or backup (this test deletes both roots as a lost disk would).
fn refuse_a_users_roots() {
    let entries = |dir: &Path| -> Vec<String> {
        fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path().display().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let root = Path::new(STATE_ROOT);
    let mut found: Vec<String> = ["state/volumes", "state/remotes", "snapshots"]
        .iter()
        .flat_map(|d| entries(&root.join(d)))
        .collect();
    found.extend(
        entries(Path::new(BACKUP_ROOT))
            .iter()
            .flat_map(|kind| entries(Path::new(kind))),
    );
    assert!(
        found.is_empty(),
        "this test deletes {STATE_ROOT} and {BACKUP_ROOT} (a lost host), but they hold a user's \
         data: {found:?}; run it on another machine"
    );
}

/// Panics when anything is mounted at or below `dir` (never `rm -rf` through a mount).
fn assert_nothing_mounted_below(dir: &str) {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounted: Vec<&str> = mountinfo
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(4)
                .is_some_and(|m| m == dir || m.starts_with(&format!("{dir}/")))
        })
        .collect();
    assert!(mounted.is_empty(), "{dir} still has mounts: {mounted:#?}");
}

/// `docker volume inspect NAME`'s first element.
fn inspect(name: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&docker_ok(&["volume", "inspect", name])).unwrap();
    v[0].clone()
}

/// The workspace projects: `parent=` volumes of target-workspaces, each with a source file
/// (holding the marker), 3 000 lines of data, owned by uid 1000.
fn create_workspace_projects(p: &Project) {
    let workspaces = p.volume("target-workspaces");
    for (v, word) in PROJECTS {
        docker_ok(&[
            "volume",
            "create",
            "-d",
            HOST_DRIVER,
            "-o",
            &format!("parent={workspaces}"),
            &p.volume(v),
        ]);
        docker_ok(&[
            "run",
            "--rm",
            "-v",
            &format!("{}:/w", p.volume(v)),
            BUSYBOX_IMAGE,
            "sh",
            "-c",
            &format!(
                "mkdir -p /w/src && echo '{word} {MARKER}' > /w/src/main.rs && seq 1 3000 > /w/data.txt && chown -R 1000:1000 /w"
            ),
        ]);
    }
    // The projects are directories of target-workspaces, as target sees it.
    assert_eq!(
        p.exec(
            "target",
            &format!("cat /workspace/{}/src/main.rs", p.volume("ws-beta"))
        )
        .trim(),
        format!("beta {MARKER}")
    );
}

/// `backup run daily --remote offsite` of the project: one backup, the database kept as its
/// dump, and no object of the bucket holding the marker in clear.
fn back_up_and_push(p: &Project, install: &HostInstall, moto: &Moto) {
    let label = format!("com.docker.compose.project={}", p.name);
    let out = cli_ok(
        install,
        &[
            "backup",
            "run",
            "daily",
            "--container-label",
            &label,
            "--remote",
            "offsite",
        ],
    );
    assert!(out.contains("1 backup(s) pushed"), "{out}");
    let daily = backup_dirs(Path::new(BACKUP_ROOT), "daily");
    assert_eq!(daily.len(), 1, "{daily:?}");
    let m = manifest(&daily[0]);
    assert_eq!(
        m["covered_by_dump"][p.volume("postgres-data")],
        p.container("db").as_str(),
        "{m}"
    );
    let grep = moto.s3(&["grep", BUCKET, "hosts/alpha/", MARKER]);
    assert!(
        grep.trim_end().ends_with("hits=") && !grep.contains("objects=0"),
        "objects of the bucket hold the marker in clear: {grep}"
    );
}

/// The host is lost: its containers and volumes (Docker forgets them), allspark, the state
/// root (with the `device=` directory of postgres-data) and the backups; then allspark is
/// installed again on the empty host.
fn lose_the_host(p: &Project, install: &mut HostInstall, all: &[String]) {
    let projects = PROJECTS.map(|(v, _)| p.volume(v));
    let mut rm = vec!["volume", "rm"];
    rm.extend(projects.iter().map(String::as_str));
    docker_ok(&rm);
    p.compose_ok(&["down", "-v"]);
    install.reinstall(|| {
        assert_nothing_mounted_below(STATE_ROOT);
        for dir in [STATE_ROOT, BACKUP_ROOT] {
            if Path::new(dir).exists() {
                fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("wipe {dir}: {e}"));
            }
        }
    });
    let left = docker_ok(&["volume", "ls", "-q"]);
    for v in all {
        assert!(
            !left.lines().any(|l| l == v),
            "{v} survived the loss of the host"
        );
    }
}

/// What `dr restore` printed and did: every volume created through Docker with the shipped
/// options (so docker-compose takes them as its own), postgres-data left to its dump. Returns
/// the dump's restore command it printed, without the leading `allspark`.
fn check_recreated(p: &Project, all: &[String], out: &str) -> Vec<String> {
    for v in all {
        assert!(
            out.lines().any(|l| l == format!("created volume {v}")),
            "dr restore creates {v} through Docker: {out}"
        );
    }
    assert!(
        out.contains(&format!(
            "volume {} was recreated empty",
            p.volume("postgres-data")
        )),
        "{out}"
    );
    let pg = inspect(&p.volume("postgres-data"));
    assert_eq!(pg["Driver"], HOST_DRIVER, "{pg}");
    assert_eq!(
        pg["Options"]["device"], "/var/lib/allspark/postgres",
        "{pg}"
    );
    assert_eq!(pg["Options"]["o"], "bind,noatime,nodiratime", "{pg}");
    let alpha = inspect(&p.volume("ws-alpha"));
    assert_eq!(
        alpha["Options"]["parent"],
        p.volume("target-workspaces").as_str(),
        "{alpha}"
    );
    out.lines()
        .map(str::trim)
        .find(|l| {
            l.starts_with("allspark backup restore ")
                && l.contains(&format!("--database {}", p.container("db")))
        })
        .unwrap_or_else(|| panic!("dr restore prints the dump's restore command: {out}"))
        .split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// The workspace projects are back, inside target-workspaces as target sees it (owner kept)
/// and each mounted on its own; log-data (class temporary, in no backup) is back empty.
fn check_workspace_projects_and_logs(p: &Project) {
    for (v, word) in PROJECTS {
        let vol = p.volume(v);
        assert_eq!(
            p.exec(
                "target",
                &format!("cat /workspace/{vol}/src/main.rs; wc -l < /workspace/{vol}/data.txt; stat -c '%u %g' /workspace/{vol}/src/main.rs")
            )
            .split_whitespace()
            .collect::<Vec<_>>(),
            [word, MARKER, "3000", "1000", "1000"],
            "workspace project {vol} inside target-workspaces"
        );
        let own = docker_ok(&[
            "run",
            "--rm",
            "-v",
            &format!("{vol}:/w"),
            BUSYBOX_IMAGE,
            "cat",
            "/w/src/main.rs",
        ]);
        assert_eq!(
            own.trim(),
            format!("{word} {MARKER}"),
            "{vol} mounted on its own"
        );
    }
    assert_eq!(p.exec("builder", "ls -A /app/log").trim(), "");
}

#[test]
fn a_fresh_host_recovers_the_compose_platform_from_the_remote_and_compose_up_runs_on_it() {
    let Some(_docker) = require_docker() else {
        return;
    };
    if !require_s3() {
        return;
    }
    let started = Instant::now();
    ensure_root_shared();
    forget_dead_legacy_drivers();
    let p = Project::shipped("allspark-test-dr");
    let pg_device = PgDevice::check();
    refuse_a_users_roots();
    let moto = Moto::start(None);
    moto.s3(&["mkbucket", BUCKET]);
    let keys = Keys::new();
    let key = keys.key().display().to_string();
    let add_remote = keys.add_args(&moto.endpoint());
    let add_remote: Vec<&str> = add_remote.iter().map(String::as_str).collect();
    let all: Vec<String> = VOLUMES
        .iter()
        .chain(PROJECTS.iter().map(|(v, _)| v))
        .map(|v| p.volume(v))
        .collect();

    // The agent is not needed: the CLI takes the backup and runs the recovery.
    let mut install = HostInstall::install(&["--no-agent"]);
    p.forget_after_uninstall(&mut install);
    pg_device.restore_after(&mut install);
    // Every backup directory in the backup root is this test's (refuse_a_users_roots).
    install.after_uninstall(format!(
        "rm -rf {BACKUP_ROOT}/daily {BACKUP_ROOT}/weekly {BACKUP_ROOT}/monthly {BACKUP_ROOT}/hourly {STATE_ROOT}/state/remotes"
    ));
    let mut cleanup = Cleanup::new();
    cleanup.add(p.down_command());
    // Run first (Cleanup runs in reverse): the children before their parent goes.
    cleanup.add(format!(
        "docker volume rm -f {}",
        PROJECTS.map(|(v, _)| p.volume(v)).join(" ")
    ));

    // The old host: the platform up, data in every volume, backed up off-site.
    p.compose_ok(&["up", "-d"]);
    check_drivers(&p, "after the first up");
    let rows = fill(&p);
    create_workspace_projects(&p);
    cli_ok(&install, &add_remote);
    back_up_and_push(&p, &install, &moto);

    let lost_at = Instant::now();
    lose_the_host(&p, &mut install, &all);
    let reinstalled = lost_at.elapsed();

    // The new host: the remote's settings again, the recovery, the shipped file up on it,
    // the dump replayed into the new db container.
    cli_ok(&install, &add_remote);
    let t0 = Instant::now();
    let out = cli_ok(
        &install,
        &["dr", "restore", "--from", "offsite", "--identity", &key],
    );
    let dr_wall = t0.elapsed();
    eprintln!("dr restore:\n{out}");
    let replay = check_recreated(&p, &all, &out);
    p.compose_ok(&["up", "-d"]);
    check_drivers(&p, "on the recovered host");
    p.wait_for_databases();
    let label = format!("com.docker.compose.project={}", p.name);
    let mut args: Vec<&str> = replay.iter().map(String::as_str).collect();
    args.extend(["--container-label", &label]);
    let restored = cli_ok(&install, &args);
    assert!(
        restored.contains(&format!("ok     database {}", p.container("db"))),
        "{restored}"
    );
    assert_eq!(
        fingerprint(&p.container("db")),
        rows,
        "every PostgreSQL row, from the dump"
    );
    let to_query = t0.elapsed();
    check_backed_up_data(&p, &rows, "on the recovered host");
    check_workspace_projects_and_logs(&p);

    let fetched = out
        .lines()
        .find(|l| l.starts_with("using "))
        .unwrap_or_default();
    eprintln!(
        "fresh-host DR figures: {ROWS} PostgreSQL rows (dump), 2 001 Redis keys, 200 builder exports, \
         {} workspace projects; {fetched}\n  host lost and reinstalled in {reinstalled:.1?}; \
         dr restore wall clock {dr_wall:.1?}; from dr restore to the first successful query \
         (compose up, database start, dump replay) {to_query:.1?}; whole test {:.1?}",
        PROJECTS.len(),
        started.elapsed()
    );
}
