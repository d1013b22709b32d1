//! `backup restore --database NAME=CONTAINER` with the real PostgreSQL image: a dump goes only to
//! the container that wrote it, unless the operator names another (validated: it exists, runs and
//! has a restore command); and a restore killed at every dump step is finished, or refused
//! clearly, by the next one.

use crate::databases::{fingerprint, psql, run_service, wait_for_postgres, ROWS};
use crate::support::backups::{allspark, backup_dirs, manifest, text};
use crate::support::common::{
    compose_labels, docker_ok, ensure_busybox_image, ensure_db_images, require_docker, unique_name,
    Cleanup,
};
use crate::support::legacy::LegacyPlugin;

use std::path::Path;
use std::process::Output;

use allspark::core::crashpoint;

/// Start a PostgreSQL container named `name` on a new allspark volume, labelled like the
/// shipped `db` service (plus the test scope), and wait until it accepts connections.
fn start_db(p: &mut LegacyPlugin, name: &str, scope: &(String, String)) {
    let vol = format!("{name}-data");
    let out = p.create(&vol, &["class=critical"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut labels = compose_labels("db");
    labels.push(scope.clone());
    run_service(
        name,
        &ensure_db_images().0,
        &labels,
        &["POSTGRES_PASSWORD=test-only"],
        &format!("{vol}:/var/lib/postgresql/data"),
        &[],
    );
    wait_for_postgres(name);
}

fn restore(p: &LegacyPlugin, dir: &Path, extra: &[&str], crash_at: Option<&str>) -> Output {
    let mut args = vec!["backup", "restore", dir.to_str().unwrap(), "--yes"];
    args.extend_from_slice(extra);
    match crash_at {
        None => allspark(p, &args),
        Some(step) => std::process::Command::new(env!("CARGO_BIN_EXE_allspark"))
            .arg("--root")
            .arg(p.root())
            .args(&args)
            .env("ALLSPARK_CRASH_AT", step)
            .output()
            .unwrap(),
    }
}

fn refused(out: &Output, wants: &[&str]) {
    let t = text(out);
    assert!(!out.status.success(), "must be refused: {t}");
    for w in wants {
        assert!(t.contains(w), "the refusal names {w:?}: {t}");
    }
}

#[test]
fn a_dump_is_restored_into_a_container_the_operator_names_and_crashes_at_every_dump_step_are_recovered(
) {
    let Some(_docker) = require_docker() else {
        return;
    };
    let busybox = ensure_busybox_image();
    let mut p = LegacyPlugin::start();
    let scope = ("allspark.test.scope".to_string(), unique_name("scope"));
    let scope_filter = format!("{}={}", scope.0, scope.1);
    let old = unique_name("db-old");
    let new = unique_name("db-new");
    let plain = unique_name("plain");
    let mut cleanup = Cleanup::new();
    cleanup.add(format!("docker rm -f {old} {new} {plain}"));
    start_db(&mut p, &old, &scope);
    psql(&old, "postgres", "CREATE DATABASE app");
    psql(
        &old,
        "app",
        &format!(
            "CREATE TABLE projects (id integer PRIMARY KEY, name text NOT NULL, payload text);
             INSERT INTO projects SELECT g, 'project-' || g, md5(g::text) FROM generate_series(1, {ROWS}) g;"
        ),
    );
    let before = fingerprint(&old);
    let broot = p.dir.path().join("backups");
    let out = allspark(
        &p,
        &[
            "backup",
            "run",
            "hourly",
            "--backup-root",
            broot.to_str().unwrap(),
            "--container-label",
            &scope_filter,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let dir = backup_dirs(&broot, "hourly").pop().unwrap();
    assert_eq!(
        manifest(&dir)["databases"],
        serde_json::json!([old.clone()])
    );

    // The old server is gone; a new one runs under another name, with the same labels.
    docker_ok(&["rm", "-f", &old]);
    start_db(&mut p, &new, &scope);
    docker_ok(&["run", "-d", "--name", &plain, &busybox, "sleep", "3600"]);
    let db_arg = |target: &str| format!("{old}={target}");

    // Without an override the dump has no taker: refused, nothing fed.
    refused(
        &restore(&p, &dir, &["--database", &old], None),
        &[&old, "nothing was changed"],
    );
    // Overrides that cannot be right.
    refused(
        &restore(
            &p,
            &dir,
            &["--database", &db_arg("no-such-container")],
            None,
        ),
        &["no-such-container", "no container"],
    );
    refused(
        &restore(&p, &dir, &["--database", &db_arg(&plain)], None),
        &[&plain, "allspark.restore.exec"],
    );
    refused(
        &restore(
            &p,
            &dir,
            &["--database", &db_arg(&new), "--database", &old],
            None,
        ),
        &["twice"],
    );
    refused(
        &restore(
            &p,
            &dir,
            &["--database", &format!("nosuchdump={new}")],
            None,
        ),
        &["nosuchdump", "is not in"],
    );
    docker_ok(&["stop", "-t", "1", &plain]);
    refused(
        &restore(&p, &dir, &["--database", &db_arg(&plain)], None),
        &[&plain, "not running"],
    );
    assert_eq!(
        psql(
            &new,
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'app'"
        ),
        "0",
        "no refused restore fed anything"
    );

    // The operator names the new server: every row comes back.
    let out = restore(&p, &dir, &["--database", &db_arg(&new)], None);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains(&format!("ok     database {old}")) && t.contains(&new),
        "{t}"
    );
    assert_eq!(fingerprint(&new), before, "every row, restored into {new}");

    // Killed at each dump step, then restored again: refused clearly while the feed may have
    // been partial, and done right once the operator has checked.
    for step in crashpoint::BACKUP_RESTORE
        .iter()
        .filter(|s| s.starts_with("restore.dump-"))
    {
        psql(&new, "app", "DELETE FROM projects WHERE id % 3 = 0");
        let out = restore(&p, &dir, &["--database", &db_arg(&new)], Some(step));
        assert!(
            out.status.code().is_none() && text(&out).contains("aborting on purpose"),
            "the crash hook must fire at {step}: {}",
            text(&out)
        );
        let out = restore(&p, &dir, &["--database", &db_arg(&new)], None);
        if *step == "restore.dump-journaled" {
            refused(&out, &["killed while it fed dump", &old, "delete"]);
            let note = p.root().join(format!("state/agent/feeding-{old}.json"));
            assert!(note.is_file(), "{}", note.display());
            std::fs::remove_file(&note).unwrap();
            let out = restore(&p, &dir, &["--database", &db_arg(&new)], None);
            assert!(out.status.success(), "after {step}: {}", text(&out));
        } else {
            assert!(out.status.success(), "after {step}: {}", text(&out));
        }
        assert_eq!(
            fingerprint(&new),
            before,
            "every row after a crash at {step}"
        );
    }
}
