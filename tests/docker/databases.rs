//! Real PostgreSQL 15 and Redis 7 (the offline images of `scripts/db-images.sh`) with the shipped compose labels: daily and hourly backups, destruction, a clean `backup restore`, a broken dump that fails loudly, and the scheduled maintenance command.
//!
//! The containers carry the labels of `compose/docker-compose.yml`'s `db` and
//! `redis` services as shipped (only the maintenance schedule is made
//! every-minute, so the test does not wait for 03:30), plus a unique
//! `allspark.test.scope` label that every command filters on.

use crate::support::backups::{allspark, backup_dirs, manifest, state, text};
use crate::support::common::{
    compose_labels, docker, docker_ok, ensure_db_images, require_docker, unique_name, wait_until,
    Cleanup,
};
use crate::support::harness::{noise, Agent};
use crate::support::legacy::LegacyPlugin;

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

pub(super) const ROWS: u64 = 50_000;
pub(super) const KEYS: u64 = 2_000;

/// `psql` in the db container; its stdout, trimmed.
pub(super) fn psql(db: &str, database: &str, sql: &str) -> String {
    docker_ok(&[
        "exec",
        db,
        "psql",
        "-U",
        "postgres",
        "-d",
        database,
        "-tAq",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    ])
    .trim()
    .to_string()
}

/// `redis-cli ARGS…` in the redis container; its stdout, trimmed.
pub(super) fn redis(c: &str, args: &[&str]) -> String {
    let mut a = vec!["exec", c, "redis-cli"];
    a.extend_from_slice(args);
    docker_ok(&a).trim().to_string()
}

/// `docker run -d` with the compose service's labels (and `extra` ones), `env`, volume mount and command.
pub(super) fn run_service(
    name: &str,
    image: &str,
    labels: &[(String, String)],
    env: &[&str],
    volume: &str,
    cmd: &[&str],
) {
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.into()];
    for (k, v) in labels {
        args.push("--label".into());
        args.push(format!("{k}={v}"));
    }
    for e in env {
        args.push("-e".into());
        args.push(e.to_string());
    }
    args.push("-v".into());
    args.push(volume.into());
    args.push(image.into());
    args.extend(cmd.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    docker_ok(&a);
}

/// Wait (at most 120 s) until PostgreSQL in container `db` accepts connections.
pub(super) fn wait_for_postgres(db: &str) {
    wait_until(
        "PostgreSQL accepts connections",
        Duration::from_secs(120),
        || {
            docker(&[
                "exec",
                db,
                "pg_isready",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .status
            .success()
        },
    );
}

/// The database's content that must come back: row count and a checksum of every row.
pub(super) fn fingerprint(db: &str) -> String {
    psql(
        db,
        "app",
        "SELECT count(*) || ':' || md5(string_agg(id || '/' || name || '/' || payload, ',' ORDER BY id)) FROM projects",
    )
}

/// Rewrite a dump file of a backup directory and fix its size and sha256 in the manifest.
fn rewrite_dump(dir: &Path, file: &str, edit: impl Fn(&str) -> String) {
    let path = dir.join(file);
    let mut sql = String::new();
    flate2::read::MultiGzDecoder::new(fs::File::open(&path).unwrap())
        .read_to_string(&mut sql)
        .unwrap();
    let edited = edit(&sql);
    assert_ne!(edited, sql, "the edit changed nothing");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(edited.as_bytes()).unwrap();
    let bytes = gz.finish().unwrap();
    fs::write(&path, &bytes).unwrap();
    let mut m = manifest(dir);
    for f in m["files"].as_array_mut().unwrap() {
        if f["name"] == file {
            f["size"] = bytes.len().into();
            f["sha256"] = {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(&bytes)).into()
            };
        }
    }
    fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
}

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn postgres_and_redis_back_up_and_restore_cleanly_and_a_broken_dump_fails_loudly() {
    let Some(_docker) = require_docker() else {
        return;
    };
    let (pg_image, redis_image) = ensure_db_images();
    let mut p = LegacyPlugin::start();
    let scope_value = unique_name("scope");
    let scope = ("allspark.test.scope".to_string(), scope_value.clone());
    let scope_filter = format!("allspark.test.scope={scope_value}");
    let pgvol = unique_name("postgres-data");
    let redisvol = unique_name("redis-data");
    let pgdir = p.dir.path().join("binds/postgres");
    let out = p.create(
        &pgvol,
        &[
            "type=none",
            "o=bind,noatime,nodiratime",
            &format!("device={}", pgdir.display()),
            "class=critical",
            "backup=highest",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = p.create(&redisvol, &["class=important", "backup=medium"]);
    assert!(out.status.success(), "{}", text(&out));

    let db = unique_name("db");
    let rd = unique_name("redis");
    let mut cleanup = Cleanup::new();
    cleanup.add(format!("docker rm -f {db} {rd}"));
    let mut db_labels = compose_labels("db");
    for (k, v) in db_labels.iter_mut() {
        if k == "allspark.maintenance.schedule" {
            *v = "* * * * *".into();
        }
    }
    assert!(
        db_labels.iter().any(|(k, v)| k == "allspark.backup.dump"
            && v.contains("--clean")
            && v.contains("--if-exists")),
        "{db_labels:?}"
    );
    db_labels.push(scope.clone());
    let mut redis_labels = compose_labels("redis");
    redis_labels.push(scope.clone());
    run_service(
        &db,
        &pg_image,
        &db_labels,
        &["POSTGRES_PASSWORD=test-only"],
        &format!("{pgvol}:/var/lib/postgresql/data"),
        &[],
    );
    run_service(
        &rd,
        &redis_image,
        &redis_labels,
        &[],
        &format!("{redisvol}:/data"),
        &["redis-server", "--appendonly", "yes"],
    );
    wait_for_postgres(&db);
    wait_until("Redis answers", Duration::from_secs(60), || {
        docker(&["exec", &rd, "redis-cli", "ping"]).status.success()
    });

    psql(&db, "postgres", "CREATE DATABASE app");
    psql(
        &db,
        "app",
        &format!(
            "CREATE TABLE projects (id integer PRIMARY KEY, name text NOT NULL, payload text);
             INSERT INTO projects SELECT g, 'project-' || g, md5(g::text) FROM generate_series(1, {ROWS}) g;
             CREATE ROLE app_reader LOGIN PASSWORD 'r';
             GRANT SELECT ON projects TO app_reader;"
        ),
    );
    let before = fingerprint(&db);
    assert!(before.starts_with(&format!("{ROWS}:")), "{before}");
    // Redis keys (one pipe), and a binary value.
    let mut cli = Command::new("docker")
        .args(["exec", "-i", &rd, "redis-cli", "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    {
        let stdin = cli.stdin.as_mut().unwrap();
        for i in 0..KEYS {
            let (k, v) = (format!("session:{i}"), format!("user-{i}"));
            write!(
                stdin,
                "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n{v}\r\n",
                k.len(),
                v.len()
            )
            .unwrap();
        }
        let blob = noise(0x5eed, 4096);
        write!(
            stdin,
            "*3\r\n$3\r\nSET\r\n$4\r\nblob\r\n${}\r\n",
            blob.len()
        )
        .unwrap();
        stdin.write_all(&blob).unwrap();
        stdin.write_all(b"\r\n").unwrap();
    }
    assert!(cli.wait().unwrap().success());
    assert_eq!(redis(&rd, &["dbsize"]), (KEYS + 1).to_string());
    let blob_sum = docker_ok(&[
        "exec",
        &rd,
        "sh",
        "-c",
        "redis-cli --no-raw get blob | md5sum",
    ]);

    // Daily: the dump stands for the database volume; redis is stopped, archived, started.
    let broot = p.dir.path().join("backups");
    let broot_s = broot.to_str().unwrap().to_string();
    let redis_started = state(&rd, "StartedAt");
    let db_started = state(&db, "StartedAt");
    let out = allspark(
        &p,
        &[
            "backup",
            "run",
            "daily",
            "--backup-root",
            &broot_s,
            "--container-label",
            &scope_filter,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let daily = backup_dirs(&broot, "daily").pop().unwrap();
    let m = manifest(&daily);
    assert_eq!(m["outcome"], "ok", "{m}");
    assert_eq!(m["volumes"], serde_json::json!([redisvol.clone()]), "{m}");
    assert_eq!(m["databases"], serde_json::json!([db.clone()]));
    assert_eq!(
        m["covered_by_dump"],
        serde_json::json!({ pgvol.clone(): db.clone() })
    );
    assert_eq!(m["stopped_containers"], serde_json::json!([rd.clone()]));
    for ext in ["tar.zst", "tar.gz"] {
        assert!(!daily.join(format!("{pgvol}.{ext}")).exists());
    }
    assert!(daily.join(format!("{redisvol}.tar.zst")).exists());
    assert_eq!(state(&rd, "Running"), "true");
    assert_ne!(state(&rd, "StartedAt"), redis_started, "redis was stopped");
    assert_eq!(
        state(&db, "StartedAt"),
        db_started,
        "the database kept running"
    );
    wait_until("Redis answers again", Duration::from_secs(60), || {
        docker(&["exec", &rd, "redis-cli", "ping"]).status.success()
    });
    assert_eq!(redis(&rd, &["dbsize"]), (KEYS + 1).to_string());

    // Hourly: the dump only; nothing stopped.
    let redis_started = state(&rd, "StartedAt");
    let out = allspark(
        &p,
        &[
            "backup",
            "run",
            "hourly",
            "--backup-root",
            &broot_s,
            "--container-label",
            &scope_filter,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let hourly = backup_dirs(&broot, "hourly").pop().unwrap();
    let m = manifest(&hourly);
    assert_eq!(m["type"], "hourly");
    assert_eq!(m["outcome"], "ok", "{m}");
    assert_eq!(m["volumes"], serde_json::json!([]));
    assert_eq!(m["databases"], serde_json::json!([db.clone()]));
    assert_eq!(m["stopped_containers"], serde_json::json!([]));
    assert_eq!(
        state(&rd, "StartedAt"),
        redis_started,
        "hourly stops nothing"
    );

    // Destroy, then restore the daily backup: every row and key back, no error, exit 0.
    psql(&db, "app", "DROP TABLE projects; DROP ROLE app_reader;");
    redis(&rd, &["flushall"]);
    assert_eq!(redis(&rd, &["dbsize"]), "0");
    let out = allspark(
        &p,
        &[
            "backup",
            "restore",
            daily.to_str().unwrap(),
            "--yes",
            "--container-label",
            &scope_filter,
        ],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(!t.contains("FAILED") && !t.contains("ERROR:"), "{t}");
    assert!(t.contains(&format!("ok     database {db}")), "{t}");
    assert!(t.contains(&format!("ok     volume {redisvol}")), "{t}");
    assert_eq!(fingerprint(&db), before);
    assert_eq!(
        psql(
            &db,
            "app",
            "SELECT has_table_privilege('app_reader', 'projects', 'SELECT')"
        ),
        "t",
        "roles and grants are back too"
    );
    wait_until(
        "Redis answers after the restore",
        Duration::from_secs(60),
        || docker(&["exec", &rd, "redis-cli", "ping"]).status.success(),
    );
    assert_eq!(redis(&rd, &["dbsize"]), (KEYS + 1).to_string());
    assert_eq!(redis(&rd, &["get", "session:1234"]), "user-1234");
    assert_eq!(
        docker_ok(&[
            "exec",
            &rd,
            "sh",
            "-c",
            "redis-cli --no-raw get blob | md5sum"
        ]),
        blob_sum
    );

    // Destroy the rows again and restore the hourly dump (into the live server, twice:
    // the dump's --clean makes a replay over existing data reach the same state).
    psql(&db, "app", "DELETE FROM projects WHERE id % 2 = 0");
    for _ in 0..2 {
        let out = allspark(
            &p,
            &[
                "backup",
                "restore",
                hourly.to_str().unwrap(),
                "--yes",
                "--container-label",
                &scope_filter,
            ],
        );
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        assert!(t.contains(&format!("ok     database {db}")), "{t}");
        assert_eq!(fingerprint(&db), before);
    }

    // A deliberately broken dump: exit 1, the failing statement named, never `ok` for it.
    let broken = broot.join("hourly").join("20000101_000000");
    fs::create_dir_all(&broken).unwrap();
    for e in fs::read_dir(&hourly).unwrap().flatten() {
        fs::copy(e.path(), broken.join(e.file_name())).unwrap();
    }
    // As a dump from a server with a type this one lacks.
    rewrite_dump(&broken, &format!("{db}.sql.gz"), |sql| {
        sql.replacen(
            "CREATE TABLE public.projects (\n",
            "CREATE TABLE public.projects (\n    legacy_flag nosuchtype,\n",
            1,
        )
    });
    let out = allspark(
        &p,
        &[
            "backup",
            "restore",
            broken.to_str().unwrap(),
            "--yes",
            "--container-label",
            &scope_filter,
        ],
    );
    let t = text(&out);
    eprintln!("the broken dump's restore said:\n{t}");
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains(&format!("FAILED database {db}")), "{t}");
    assert!(!t.contains(&format!("ok     database {db}")), "{t}");
    assert!(
        t.contains("exited with status 3"),
        "psql's ON_ERROR_STOP status: {t}"
    );
    assert!(
        t.contains("ERROR:  type \"nosuchtype\" does not exist"),
        "{t}"
    );
    assert!(
        t.contains("failing statement")
            && t.contains(
                "CREATE TABLE public.projects ( legacy_flag nosuchtype, id integer NOT NULL, name text NOT NULL, payload text );]"
            ),
        "the failing statement is named: {t}"
    );
    // The good dump still restores after that.
    let out = allspark(
        &p,
        &[
            "backup",
            "restore",
            hourly.to_str().unwrap(),
            "--yes",
            "--container-label",
            &scope_filter,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fingerprint(&db), before);

    // Maintenance: the agent runs the label's vacuumdb in the db container, logs and counts it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = p.dir.path().join("agent.log");
    let agent_root = p.dir.path().join("agent-backups");
    let _agent = Agent::start(
        &p.root(),
        &log,
        &[
            "--no-docker-events",
            "--backup-root",
            agent_root.to_str().unwrap(),
            "--container-label",
            &scope_filter,
            "--metrics",
            &format!("127.0.0.1:{port}"),
        ],
    );
    let stats = p.root().join("state/agent/maintenance.json");
    wait_until(
        "the maintenance command ran (every minute)",
        Duration::from_secs(150),
        || {
            fs::read(&stats)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|v| v[&db]["ok"].as_u64().unwrap_or(0) >= 1)
        },
    );
    let v: serde_json::Value = serde_json::from_slice(&fs::read(&stats).unwrap()).unwrap();
    assert_eq!(v[&db]["failed"], 0, "{v}");
    assert_eq!(v[&db]["command"], "vacuumdb -U postgres -a -z");
    assert_eq!(
        psql(
            &db,
            "app",
            "SELECT last_vacuum IS NOT NULL AND last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'projects'"
        ),
        "t",
        "vacuumdb -a -z ran in the container"
    );
    let metrics = scrape(port);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("allspark_maintenance_runs_total{")
                && l.contains(&format!("container=\"{db}\""))
                && l.contains("outcome=\"ok\"")
                && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l.starts_with(&format!(
            "allspark_last_maintenance_success{{container=\"{db}\"}} 1"
        ))),
        "{metrics}"
    );
    let agent_log = fs::read_to_string(&log).unwrap();
    assert!(
        agent_log.contains("maintenance command done"),
        "{agent_log}"
    );
}
