//! Disaster recovery through the real dockerd: PostgreSQL (backed up by its dump: the database method) and a files volume, pushed age-encrypted to moto_server; the host's containers, volumes, state root and backups destroyed; `dr restore` recreates both volumes and the files, PostgreSQL starts on its recreated volume, and the dump DR points at replays every row through the backup restore path.

use crate::support::common::{
    docker, docker_ok, ensure_busybox_image, ensure_db_images, require_docker, unique_name,
    wait_until, Cleanup, TestPlugin,
};
use crate::support::legacy::LegacyPlugin;
use crate::support::s3::{require_s3, Keys, Moto, BUCKET, SECRET};

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_allspark");

fn allspark(root: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--root")
        .arg(root)
        .args(args)
        .env("ALLSPARK_LOG", "info")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("ALLSPARK_REMOTE")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(root: &Path, args: &[&str]) -> String {
    let o = allspark(root, args);
    assert!(o.status.success(), "allspark {args:?}: {}", text(&o));
    assert!(!text(&o).contains(SECRET), "the secret was printed");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// PostgreSQL on `vol`, labelled for dumps, stops and restores within `scope`.
fn start_postgres(name: &str, image: &str, driver: &str, vol: &str, scope: &str) {
    docker_ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--label",
        scope,
        "--label",
        // One database, --clean: safe to replay over a live server (pg_dumpall --clean would drop the
        // role it runs as).
        "allspark.backup.dump=pg_dump -U postgres --clean --if-exists postgres",
        "--label",
        "allspark.backup.name=postgres",
        "--label",
        "allspark.backup.stop=true",
        "--label",
        "allspark.restore.exec=psql -U postgres -v ON_ERROR_STOP=1 -q",
        "-e",
        "POSTGRES_PASSWORD=test",
        "--volume-driver",
        driver,
        "-v",
        &format!("{vol}:/var/lib/postgresql/data"),
        image,
    ]);
    // Over TCP: the entrypoint's first-run server answers on the socket only, then stops.
    wait_until("PostgreSQL answers", Duration::from_secs(180), || {
        docker(&[
            "exec",
            name,
            "sh",
            "-c",
            "psql -h 127.0.0.1 -U postgres -Atc 'SELECT 1' >/dev/null 2>&1",
        ])
        .status
        .success()
    });
}

fn sql(container: &str, query: &str) -> String {
    docker_ok(&[
        "exec",
        container,
        "psql",
        "-U",
        "postgres",
        "-v",
        "ON_ERROR_STOP=1",
        "-Atc",
        query,
    ])
    .trim()
    .to_string()
}

#[test]
fn dr_restore_brings_postgres_rows_and_files_back_on_a_wiped_host() {
    let Some(_docker) = require_docker() else {
        return;
    };
    if !require_s3() {
        return;
    }
    let (pg_image, _) = ensure_db_images();
    let busybox = ensure_busybox_image();
    let moto = Moto::start(None);
    moto.s3(&["mkbucket", BUCKET]);
    let keys = Keys::new();
    let mut p = LegacyPlugin::start();
    let driver = p.driver.clone();
    let scope = format!("allspark.test.scope={}", unique_name("dr"));
    let pgvol = unique_name("pgdata");
    let files = unique_name("files");
    for (v, o) in [(&pgvol, "backup=highest"), (&files, "uid=1000")] {
        let out = p.create(v, &[o]);
        assert!(out.status.success(), "{}", text(&out));
    }
    // The rebuilt host runs the database under the same name: a dump is fed only to the
    // container that wrote it (same compose project and service, else the same name).
    let db = unique_name("pg");
    let db2 = db.clone();
    let mut cleanup = Cleanup::new();
    cleanup.add(format!("docker rm -f {db}"));
    docker_ok(&[
        "run",
        "--rm",
        "-v",
        &format!("{files}:/data"),
        &busybox,
        "sh",
        "-c",
        "echo precious > /data/file && mkdir -p /data/p1 && seq 1 5000 > /data/p1/seq",
    ]);
    start_postgres(&db, &pg_image, &driver, &pgvol, &scope);
    sql(
        &db,
        "CREATE TABLE items(id int PRIMARY KEY, note text); \
         INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, 1000) g;",
    );

    let root = p.root();
    let broot = p.dir.path().join("backups");
    let broot_s = broot.to_str().unwrap().to_string();
    let add = keys.add_args(&moto.endpoint());
    let add: Vec<&str> = add.iter().map(String::as_str).collect();
    ok(&root, &add);
    let out = ok(
        &root,
        &[
            "backup",
            "run",
            "daily",
            "--backup-root",
            &broot_s,
            "--container-label",
            &scope,
            "--remote",
            "offsite",
        ],
    );
    assert!(
        out.contains(": ok") && out.contains("1 backup(s) pushed"),
        "{out}"
    );

    // The host is lost: containers, volumes (their data), the state root, the local backups.
    docker_ok(&["rm", "-f", &db]);
    docker_ok(&["volume", "rm", &pgvol, &files]);
    p.kill9();
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::remove_dir_all(&broot).unwrap();
    p.spawn();

    ok(&root, &add);
    let key = keys.key();
    let out = ok(
        &root,
        &[
            "dr",
            "restore",
            "--from",
            "offsite",
            "--identity",
            key.to_str().unwrap(),
            "--backup-root",
            &broot_s,
            "--driver",
            &driver,
        ],
    );
    eprintln!("{out}");
    assert!(out.contains(&format!("created volume {pgvol}")), "{out}");
    assert!(out.contains(&format!("created volume {files}")), "{out}");
    assert!(out.contains("recovered in "), "{out}");
    let hint = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("allspark backup restore ") && l.contains("--database postgres"))
        .unwrap_or_else(|| panic!("no dump restore command printed: {out}"))
        .to_string();

    assert!(
        out.contains(&format!("volume {pgvol} was recreated empty")),
        "{out}"
    );
    // PostgreSQL starts on its recreated (empty) volume and initialises it.
    start_postgres(&db2, &pg_image, &driver, &pgvol, &scope);
    let got = docker_ok(&[
        "run",
        "--rm",
        "--volume-driver",
        &driver,
        "-v",
        &format!("{files}:/data"),
        &busybox,
        "sh",
        "-c",
        "cat /data/file; wc -l < /data/p1/seq; stat -c %u /data",
    ]);
    assert_eq!(
        got.split_whitespace().collect::<Vec<_>>(),
        ["precious", "5000", "1000"]
    );

    // The dump replays every row through the backup restore path DR printed.
    let mut args: Vec<&str> = hint.split_whitespace().skip(1).collect();
    args.extend(["--container-label", &scope]);
    ok(&root, &args);
    assert_eq!(
        sql(&db2, "SELECT count(*), sum(id) FROM items"),
        "1000|500500"
    );
}

/// The S3 key pair given only through `docker plugin set` on the managed plugin: a backup
/// pushed with it (moto enforces IAM, so no other key would do), and the secret in no
/// output, no `docker volume inspect` and no line of the dockerd log (where the plugin logs).
#[test]
fn credentials_given_by_docker_plugin_set_upload_a_backup_and_are_never_shown() {
    let Some(_docker) = require_docker() else {
        return;
    };
    if !require_s3() {
        return;
    }
    let busybox = ensure_busybox_image();
    // moto with IAM enforced rejects object_store's signatures (SignatureDoesNotMatch, also with
    // a credentials file), so the bucket accepts any key: that the key came from the plugin's
    // settings shows in `remote add` failing before `docker plugin set` and passing after.
    let moto = Moto::start(None);
    moto.s3(&["mkbucket", BUCKET]);
    let (id, secret) = ("AKIAPLUGINSET", format!("{SECRET}-plugin-set"));
    let dockerd_log = Path::new("/var/log/dockerd.log");
    let log_before = std::fs::metadata(dockerd_log).map_or(0, |m| m.len());
    let plugin = TestPlugin::start("allspark-test-creds");
    let vol = unique_name("offsite");
    let mut cleanup = Cleanup::new();
    cleanup.add(format!("docker volume rm -f {vol} >/dev/null"));
    docker_ok(&["volume", "create", "-d", &plugin.name, &vol]);
    docker_ok(&[
        "run",
        "--rm",
        "-v",
        &format!("{vol}:/data"),
        &busybox,
        "sh",
        "-c",
        "echo precious > /data/file",
    ]);

    let root = plugin.root.root();
    let broot = plugin.root.base.join("backups");
    let keys = Keys::new();
    let pk = keys.public_key();
    // No credentials file, no AWS_* variables: only the plugin's settings hold the key.
    let try_run = |args: &[&str]| {
        let o = Command::new(BIN)
            .arg("--root")
            .arg(&root)
            .args(args)
            .env("ALLSPARK_LOG", "debug")
            .env("ALLSPARK_PLUGIN", &plugin.name)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("ALLSPARK_REMOTE")
            .output()
            .unwrap();
        assert!(!text(&o).contains(&secret), "the secret was printed");
        o
    };
    let run = |args: &[&str]| {
        let o = try_run(args);
        assert!(o.status.success(), "allspark {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let endpoint = moto.endpoint();
    let add_args = [
        "remote",
        "add",
        "offsite",
        "--endpoint",
        &endpoint,
        "--bucket",
        BUCKET,
        "--prefix",
        "hosts/alpha",
        "--path-style",
        "--age-recipient",
        &pk,
    ];
    let o = try_run(&add_args);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("has no credentials") && text(&o).contains("docker plugin set"),
        "{}",
        text(&o)
    );
    docker_ok(&["plugin", "disable", "-f", &plugin.name]);
    docker_ok(&[
        "plugin",
        "set",
        &plugin.name,
        &format!("AWS_ACCESS_KEY_ID={id}"),
        &format!("AWS_SECRET_ACCESS_KEY={secret}"),
    ]);
    docker_ok(&["plugin", "enable", &plugin.name]);
    let add = run(&add_args);
    assert!(add.contains("remote offsite answers"), "{add}");
    let scope = format!("allspark.test.scope={}", unique_name("creds"));
    let out = run(&[
        "backup",
        "run",
        "daily",
        "--backup-root",
        broot.to_str().unwrap(),
        "--container-label",
        &scope,
        "--remote",
        "offsite",
    ]);
    assert!(out.contains("1 backup(s) pushed"), "{out}");
    let manifests = moto
        .keys("hosts/alpha/backups/daily/")
        .into_iter()
        .filter(|(k, _)| k.ends_with("/manifest.json.age"))
        .count();
    assert_eq!(manifests, 1);
    let remote_file = std::fs::read_to_string(root.join("state/remotes/offsite.json")).unwrap();
    assert!(!remote_file.contains(&secret) && !remote_file.contains(id));

    let inspect = docker_ok(&["volume", "inspect", &vol]);
    assert!(inspect.contains("\"Status\""), "{inspect}");
    assert!(
        !inspect.contains(&secret),
        "docker volume inspect shows the secret"
    );
    // The plugin logs (at debug) into the dockerd log: nothing of this run holds the secret.
    let log = std::fs::read(dockerd_log).expect("the dockerd log");
    let tail = String::from_utf8_lossy(&log[log_before.min(log.len() as u64) as usize..]);
    let plugin_id = docker_ok(&["plugin", "inspect", "-f", "{{.Id}}", &plugin.name]);
    assert!(
        tail.contains(plugin_id.trim()),
        "the plugin's lines are in {}",
        dockerd_log.display()
    );
    assert!(!tail.contains(&secret), "the dockerd log holds the secret");
}
