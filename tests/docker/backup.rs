//! Backups with the real dockerd: a dump through `docker exec`, a container stopped for the archive and started again, a failing dump, restore (volumes and the dump hook), a damaged archive, and the agent restarting what a crashed backup stopped.
//!
//! Every container carries `allspark.test.scope=<unique>` and every command
//! runs with `--container-label allspark.test.scope=<unique>`, so parallel
//! tests never dump or stop each other's containers.

use crate::support::backups::{
    allspark, backup_dirs as dirs_of, gunzip, manifest, state, text, time, SLEEP,
};
use crate::support::common;
use crate::support::legacy;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    docker, docker_ok, ensure_busybox_image, require_docker, unique_name, wait_until, Cleanup,
};
use legacy::{run, LegacyPlugin};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_allspark");

fn backup_dirs(broot: &Path) -> Vec<PathBuf> {
    dirs_of(broot, "daily")
}

#[test]
fn backup_dump_stop_restore_and_damage_with_dockerd() {
    let Some(_docker) = require_docker() else {
        return;
    };
    let image = ensure_busybox_image();
    let mut p = LegacyPlugin::start();
    let scope_value = unique_name("scope");
    let scope = format!("allspark.test.scope={scope_value}");
    let data = unique_name("data");
    let tmpvol = unique_name("scratch");
    let dbvol = unique_name("dbvol");
    for (v, o) in [
        (&data, "backup=highest"),
        (&tmpvol, "class=temporary"),
        (&dbvol, "backup=high"),
    ] {
        let out = p.create(v, &[o]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let db = unique_name("db");
    let target = unique_name("target");
    let bad = unique_name("baddb");
    let mut cleanup = Cleanup::new();
    for c in [&db, &target, &bad] {
        cleanup.add(format!("docker rm -f {c}"));
    }
    run(
        &image,
        &format!("{data}:/data"),
        "mkdir -p /data/sub && echo precious > /data/sub/file && seq 1 20000 > /data/big",
    );
    run(&image, &format!("{tmpvol}:/t"), "echo scratch > /t/x");
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &db,
        "--label",
        &scope,
        "--label",
        "allspark.backup.dump=echo KNOWN-DUMP-TEXT; echo to-stderr >&2",
        "--label",
        // Not ready the first time, as a database still starting: the restore waits for it.
        "allspark.restore.wait=test -e /tmp/ready || { touch /tmp/ready; echo not ready >&2; exit 3; }",
        "--label",
        "allspark.restore.exec=cat > /dump/restored.sql",
        "-v",
        &format!("{dbvol}:/dump"),
        &image,
        "sh",
        "-c",
        SLEEP,
    ]);
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &target,
        "--label",
        &scope,
        "--label",
        "allspark.backup.stop=true",
        "-v",
        &format!("{data}:/data"),
        "-v",
        &format!("{tmpvol}:/t"),
        &image,
        "sh",
        "-c",
        SLEEP,
    ]);
    let started_before = time(&state(&target, "StartedAt"));

    let broot = p.dir.path().join("backups");
    let broot_s = broot.to_str().unwrap().to_string();
    let out = allspark(
        &p,
        &[
            "backup",
            "run",
            "daily",
            "--backup-root",
            &broot_s,
            "--container-label",
            &scope,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(": ok"), "summary line: {}", text(&out));
    let dirs = backup_dirs(&broot);
    assert_eq!(dirs.len(), 1);
    let good = dirs[0].clone();
    let m = manifest(&good);
    assert_eq!(m["outcome"], "ok", "{m}");
    // The dumped container's volume is not archived: its dump stands for it.
    assert_eq!(m["volumes"], serde_json::json!([data.clone()]));
    assert_eq!(m["databases"], serde_json::json!([db.clone()]));
    assert_eq!(
        m["covered_by_dump"],
        serde_json::json!({ dbvol.clone(): db.clone() })
    );
    for ext in ["tar.zst", "tar.gz"] {
        assert!(!good.join(format!("{dbvol}.{ext}")).exists());
    }
    let dump_entry = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "database")
        .unwrap();
    assert_eq!(dump_entry["covers"], serde_json::json!([dbvol.clone()]));
    assert_eq!(m["stopped_containers"], serde_json::json!([target.clone()]));
    assert!(
        !good.join(format!("{tmpvol}.tar.zst")).exists(),
        "temporary volume not backed up"
    );
    for f in m["files"].as_array().unwrap() {
        let path = good.join(f["name"].as_str().unwrap());
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            f["size"].as_u64().unwrap()
        );
    }
    let dump = gunzip(&good.join(format!("{db}.sql.gz")));
    assert_eq!(dump, "KNOWN-DUMP-TEXT\n", "stderr is not in the dump");

    // The target was stopped during the run and runs again.
    assert_eq!(state(&target, "Running"), "true");
    let started_after = time(&state(&target, "StartedAt"));
    let finished = time(&state(&target, "FinishedAt"));
    let (run_start, run_end) = (
        time(m["started_at"].as_str().unwrap()),
        time(m["finished_at"].as_str().unwrap()),
    );
    assert!(started_after > started_before);
    assert!(
        finished >= run_start && finished <= run_end && started_after <= run_end,
        "stopped at {finished}, started at {started_after}, run {run_start}..{run_end}"
    );
    assert!(!p
        .root()
        .join("state/agent/stopped-for-backup.json")
        .exists());

    // GNU tar extracts the archive.
    let x = p.dir.path().join("x");
    fs::create_dir_all(&x).unwrap();
    let st = Command::new("tar")
        .args(["--zstd", "-xf"])
        .arg(good.join(format!("{data}.tar.zst")))
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        fs::read_to_string(x.join("sub/file")).unwrap(),
        "precious\n"
    );

    // A failing dump command: exit 1, the error in the manifest, the target started again.
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &bad,
        "--label",
        &scope,
        "--label",
        "allspark.backup.dump=false",
        &image,
        "sh",
        "-c",
        SLEEP,
    ]);
    let before = time(&state(&target, "StartedAt"));
    let out = allspark(
        &p,
        &[
            "backup",
            "run",
            "daily",
            "--backup-root",
            &broot_s,
            "--container-label",
            &scope,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(&bad), "{}", text(&out));
    let dirs = backup_dirs(&broot);
    assert_eq!(dirs.len(), 2);
    let failed = dirs[1].clone();
    let m = manifest(&failed);
    assert_eq!(m["outcome"], "failed");
    let errors = m["errors"].to_string();
    assert!(
        errors.contains(&bad) && errors.contains("exited with status 1"),
        "{errors}"
    );
    assert!(!failed.join(format!("{bad}.sql.gz")).exists());
    assert!(failed.join(format!("{db}.sql.gz")).exists());
    assert_eq!(state(&target, "Running"), "true");
    assert!(time(&state(&target, "StartedAt")) > before);
    let last: Value = serde_json::from_slice(
        &fs::read(p.root().join("state/agent/last-backup-daily.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(last["ok"], false);
    docker_ok(&["rm", "-f", &bad]);

    // Restore the good backup after deleting and changing files.
    docker_ok(&[
        "exec",
        &target,
        "sh",
        "-c",
        "rm -rf /data/sub && echo changed > /data/big && echo new > /data/new",
    ]);
    let good_s = good.to_str().unwrap();
    let out = allspark(
        &p,
        &["backup", "restore", good_s, "--container-label", &scope],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&target) && t.contains(&db) && t.contains("REPLACE"),
        "{t}"
    );
    let before = time(&state(&target, "StartedAt"));
    let out = allspark(
        &p,
        &[
            "backup",
            "restore",
            good_s,
            "--yes",
            "--container-label",
            &scope,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(state(&target, "Running"), "true");
    assert_eq!(state(&db, "Running"), "true");
    assert!(time(&state(&target, "StartedAt")) > before);
    assert_eq!(
        docker_ok(&["exec", &target, "cat", "/data/sub/file"]),
        "precious\n"
    );
    assert_eq!(
        docker_ok(&[
            "exec",
            &target,
            "sh",
            "-c",
            "seq 1 20000 | cmp - /data/big && echo same"
        ]),
        "same\n"
    );
    assert!(!docker(&["exec", &target, "test", "-e", "/data/new"])
        .status
        .success());
    assert_eq!(
        docker_ok(&["exec", &db, "cat", "/dump/restored.sql"]),
        "KNOWN-DUMP-TEXT\n",
        "the restore hook got the dump on stdin"
    );
    let t = text(&out);
    assert!(
        t.contains(&format!("ok     database {db}")) && !t.contains("FAILED"),
        "{t}"
    );
    // The dumped volume is not in the archives: asking for it names the dump to restore.
    let out = allspark(
        &p,
        &["backup", "restore", good_s, "--volume", &dbvol, "--yes"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("--database {db}")),
        "{}",
        text(&out)
    );

    // A restore command that goes on after errors and exits 0 (psql without ON_ERROR_STOP):
    // FAILED, each error line named, with the statement it points at.
    // (The same container name: a dump is fed only to the container that wrote it.)
    docker_ok(&["rm", "-f", &db]);
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &db,
        "--label",
        &scope,
        "--label",
        "allspark.restore.exec=cat > /dev/null; echo 'psql:<stdin>:1: ERROR:  first failure' >&2; echo 'psql:<stdin>:1: ERROR:  second failure' >&2",
        &image,
        "sh",
        "-c",
        SLEEP,
    ]);
    let out = allspark(
        &p,
        &[
            "backup",
            "restore",
            good_s,
            "--database",
            &db,
            "--yes",
            "--container-label",
            &scope,
        ],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains(&format!("FAILED database {db}"))
            && !t.contains(&format!("ok     database {db}"))
            && t.contains("exited 0 but reported 2 error(s)")
            && t.contains("first failure")
            && t.contains("second failure")
            && t.contains(&format!("line 1 of {db}.sql.gz: KNOWN-DUMP-TEXT")),
        "{t}"
    );

    // A damaged archive: verify and restore fail naming it, nothing is stopped.
    let out = allspark(&p, &["backup", "verify", good_s]);
    assert!(out.status.success(), "{}", text(&out));
    let archive = good.join(format!("{data}.tar.zst"));
    let mut bytes = fs::read(&archive).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 10);
    fs::write(&archive, &bytes).unwrap();
    let out = allspark(&p, &["backup", "verify", good_s]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{data}.tar.zst")),
        "{}",
        text(&out)
    );
    let before = time(&state(&target, "StartedAt"));
    let out = allspark(
        &p,
        &[
            "backup",
            "restore",
            good_s,
            "--yes",
            "--container-label",
            &scope,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{data}.tar.zst")),
        "{}",
        text(&out)
    );
    assert_eq!(
        time(&state(&target, "StartedAt")),
        before,
        "nothing was stopped"
    );
}

/// Issue 13, item 5: a container labelled `allspark.backup.name=<victim>` neither takes the
/// victim's dump slot at backup nor gets its SQL fed to the victim's restore command.
#[test]
fn a_dump_is_bound_to_the_container_that_wrote_it() {
    let Some(_docker) = require_docker() else {
        return;
    };
    let image = ensure_busybox_image();
    let mut p = LegacyPlugin::start();
    let scope_value = unique_name("scope");
    let scope = format!("allspark.test.scope={scope_value}");
    let victim = unique_name("victim");
    let victim_vol = unique_name("victimvol");
    // Sorts before the victim, so it was dumped first and took the victim's slot.
    let attacker = format!("a0-{}", unique_name("attacker"));
    let mut cleanup = Cleanup::new();
    for c in [&victim, &attacker] {
        cleanup.add(format!("docker rm -f {c}"));
    }
    let out = p.create(&victim_vol, &["backup=high"]);
    assert!(out.status.success(), "{}", text(&out));
    let start = |name: &str, labels: &[String], volume: Option<&str>| {
        let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.into()];
        for l in std::iter::once(&scope).chain(labels) {
            args.push("--label".into());
            args.push(l.clone());
        }
        if let Some(v) = volume {
            args.push("-v".into());
            args.push(v.into());
        }
        args.extend([image.clone(), "sh".into(), "-c".into(), SLEEP.into()]);
        docker_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    };
    let victim_labels = [
        "allspark.backup.dump=echo VICTIM-SQL".to_string(),
        "allspark.restore.exec=cat > /db/restored.sql".to_string(),
    ];
    start(&victim, &victim_labels, Some(&format!("{victim_vol}:/db")));
    start(
        &attacker,
        &[
            "allspark.backup.dump=echo ATTACKER-SQL".to_string(),
            format!("allspark.backup.name={victim}"),
        ],
        None,
    );
    let broot = p.dir.path().join("backups");
    let broot_s = broot.to_str().unwrap().to_string();
    let backup = |kind: &str| {
        allspark(
            &p,
            &[
                "backup",
                "run",
                kind,
                "--backup-root",
                &broot_s,
                "--container-label",
                &scope,
            ],
        )
    };

    // 1. Both claim dump name <victim>: refused before any dump, naming both; no dump file.
    let out = backup("hourly");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains(&attacker) && t.contains(&victim) && t.contains("refused"),
        "{t}"
    );
    let dir = dirs_of(&broot, "hourly").pop().expect("a backup directory");
    let m = manifest(&dir);
    assert_eq!(m["databases"], serde_json::json!([]), "{m}");
    assert!(!dir.join(format!("{victim}.sql.gz")).exists());

    // 2. The attacker alone (the victim does not dump this time) writes <victim>.sql.gz;
    //    its manifest records the attacker as the producer.
    docker_ok(&["rm", "-f", &victim]);
    start(
        &victim,
        &["allspark.restore.exec=cat > /db/restored.sql".to_string()],
        Some(&format!("{victim_vol}:/db")),
    );
    std::thread::sleep(Duration::from_millis(1100));
    let out = backup("hourly");
    assert!(out.status.success(), "{}", text(&out));
    let dir = dirs_of(&broot, "hourly").pop().unwrap();
    let m = manifest(&dir);
    assert_eq!(m["databases"], serde_json::json!([victim.clone()]), "{m}");
    assert!(gunzip(&dir.join(format!("{victim}.sql.gz"))).contains("ATTACKER-SQL"));
    let entry = &m["files"].as_array().unwrap()[0];
    assert_eq!(entry["producer"]["container"], attacker.as_str(), "{m}");

    // 3. Restore: the victim's restore command is not fed the attacker's SQL; refused, naming both.
    let dir_s = dir.to_str().unwrap();
    let out = allspark(
        &p,
        &[
            "backup",
            "restore",
            dir_s,
            "--database",
            &victim,
            "--yes",
            "--container-label",
            &scope,
        ],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains(&format!("container {attacker}"))
            && t.contains(&format!("container {victim}"))
            && t.contains("refused"),
        "{t}"
    );
    let fed = docker(&["exec", &victim, "cat", "/db/restored.sql"]);
    assert!(
        !String::from_utf8_lossy(&fed.stdout).contains("ATTACKER-SQL"),
        "the victim was fed the attacker's dump"
    );
    assert!(!fed.status.success(), "nothing was fed to the victim");

    // 4. The victim's own dump still goes to it.
    docker_ok(&["rm", "-f", &attacker]);
    docker_ok(&["rm", "-f", &victim]);
    start(&victim, &victim_labels, Some(&format!("{victim_vol}:/db")));
    std::thread::sleep(Duration::from_millis(1100));
    let out = backup("hourly");
    assert!(out.status.success(), "{}", text(&out));
    let dir = dirs_of(&broot, "hourly").pop().unwrap();
    let out = allspark(
        &p,
        &[
            "backup",
            "restore",
            dir.to_str().unwrap(),
            "--database",
            &victim,
            "--yes",
            "--container-label",
            &scope,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let fed = docker_ok(&["exec", &victim, "cat", "/db/restored.sql"]);
    assert_eq!(fed.trim(), "VICTIM-SQL");
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_agent_starts_what_a_crashed_backup_stopped() {
    let Some(_docker) = require_docker() else {
        return;
    };
    let image = ensure_busybox_image();
    let p = LegacyPlugin::start();
    let c = unique_name("stopped");
    let mut cleanup = Cleanup::new();
    cleanup.add(format!("docker rm -f {c}"));
    let id = docker_ok(&["run", "-d", "--name", &c, &image, "sleep", "3600"])
        .trim()
        .to_string();
    docker_ok(&["stop", "-t", "1", &c]);
    // What a backup killed with -9 while the container was stopped leaves behind.
    let agent_dir = p.root().join("state/agent");
    fs::create_dir_all(&agent_dir).unwrap();
    let record = agent_dir.join("stopped-for-backup.json");
    fs::write(
        &record,
        serde_json::json!({
            "operation": "backup daily", "pid": 1, "started_at": "2024-01-01T02:00:00Z",
            "containers": [{"id": id, "name": c}]
        })
        .to_string(),
    )
    .unwrap();
    let log = fs::File::create(p.dir.path().join("agent.log")).unwrap();
    let _agent = Agent(
        Command::new(BIN)
            .arg("--root")
            .arg(p.root())
            .args(["agent", "--no-docker-events", "--no-schedule"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    wait_until(
        "the agent started the container again",
        Duration::from_secs(30),
        || state(&c, "Running") == "true" && !record.exists(),
    );
}
