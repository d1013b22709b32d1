//! Remotes against a real S3 endpoint on 127.0.0.1 (moto_server, started and stopped by each test): encrypted push with no plaintext in the bucket, the age CLI and GNU tar reading an object, disaster recovery on a wiped host, an endpoint stopped mid-upload, wrong credentials, a corrupted object.
//!
//! Needs `moto_server` (PyPI `moto[server]`, with boto3 for the bucket-side
//! helpers) and `age`/`age-keygen` (Debian `age`): without them the tests
//! skip loudly, or fail when `ALLSPARK_REQUIRE_DOCKER` is set (CI installs
//! both in `.ci/run`).

use crate::support::harness::{self, Plugin};
use crate::support::s3::{free_port, require_s3, Keys, Moto, Proxy, BUCKET, SECRET};

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_allspark");
pub(crate) const NO_DOCKER: &str = "unix:///nonexistent/docker.sock";
pub(crate) const MARKER: &str = "ALLSPARK-PLAINTEXT-MARKER-7f3a9c";

/// A host: a socket-level plugin on a scratch root, a backup root, an age key and a credentials file.
pub(crate) struct Host {
    pub(crate) p: Plugin,
    pub(crate) keys: Keys,
}

impl Host {
    pub(crate) fn new() -> Host {
        Host {
            p: Plugin::start(BIN),
            keys: Keys::new(),
        }
    }
    pub(crate) fn root(&self) -> PathBuf {
        self.p.root()
    }
    pub(crate) fn broot(&self) -> PathBuf {
        self.p.dir.path().join("backups")
    }
    pub(crate) fn key(&self) -> PathBuf {
        self.keys.key()
    }
    pub(crate) fn creds(&self) -> PathBuf {
        self.keys.creds()
    }
    pub(crate) fn public_key(&self) -> String {
        self.keys.public_key()
    }
    pub(crate) fn data(&self, vol: &str) -> PathBuf {
        self.root().join("volumes").join(vol).join("data")
    }
    pub(crate) fn create(&self, name: &str, opts: Value) {
        let (code, v) = self
            .p
            .call("VolumeDriver.Create", json!({"Name": name, "Opts": opts}));
        assert_eq!(code, 200, "{v}");
        assert!(v["Err"].as_str().unwrap_or("").is_empty(), "{v}");
    }
    /// The CLI on this host's root (Docker pointed nowhere; retries short, so a dead endpoint fails fast).
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--root")
            .arg(self.root())
            .args(["--docker", NO_DOCKER])
            .args(args)
            .env("ALLSPARK_LOG", "info")
            .env("ALLSPARK_BACKUP_ROOT", self.broot())
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("ALLSPARK_REMOTE")
            .env("ALLSPARK_REMOTE_RETRIES", "2")
            .env("ALLSPARK_REMOTE_RETRY_SECS", "4")
            .output()
            .unwrap()
    }
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "allspark {args:?}: {}", text(&o));
        assert_secret_hidden(&o);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    pub(crate) fn add_remote(&self, endpoint: &str) {
        let args = self.keys.add_args(endpoint);
        self.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    /// A backup of every volume (it "fails" only because Docker is unreachable: no dumps) pushed to the remote.
    pub(crate) fn backup_and_push(&self) -> String {
        let o = self.run(&["backup", "run", "daily", "--remote", "offsite"]);
        let t = text(&o);
        assert!(t.contains("1 backup(s) pushed"), "{t}");
        assert!(
            t.contains("dumps and `allspark.backup.stop` containers were skipped"),
            "{t}"
        );
        assert_secret_hidden(&o);
        newest_backup(&self.broot())
    }
    /// The host is lost: plugin stopped, state root and backup root gone; a new plugin on an empty root.
    pub(crate) fn wipe(&mut self) {
        self.p.terminate();
        fs::remove_dir_all(self.root()).unwrap();
        fs::remove_dir_all(self.broot()).unwrap();
        self.p.spawn();
    }
    pub(crate) fn dr(&self, extra: &[&str]) -> String {
        let key = self.key();
        let mut args = vec!["dr", "restore", "--from", "offsite", "--identity", s(&key)];
        args.extend_from_slice(extra);
        self.ok(&args)
    }
}

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub(crate) use crate::support::backups::text;

pub(crate) fn assert_secret_hidden(o: &Output) {
    assert!(
        !text(o).contains(SECRET),
        "the secret key was printed: {}",
        text(o)
    );
}

pub(crate) fn newest_backup(broot: &Path) -> String {
    let mut v: Vec<String> = fs::read_dir(broot.join("daily"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 15)
        .collect();
    v.sort();
    v.pop().expect("a backup directory")
}

fn prefix(name: &str) -> String {
    format!("hosts/alpha/backups/daily/{name}/")
}

pub(crate) fn sha(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(fs::read(path).unwrap()))
}

pub(crate) fn recovered_seconds(out: &str) -> f64 {
    out.lines()
        .find_map(|l| l.strip_prefix("recovered in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'recovered in N s' line: {out}"))
}

#[test]
fn encrypted_push_holds_no_plaintext_the_age_cli_reads_it_and_dr_rebuilds_a_wiped_host() {
    if !require_s3() {
        return;
    }
    let moto = Moto::start(None);
    moto.s3(&["mkbucket", BUCKET]);
    let mut h = Host::new();
    h.create(
        "app-data",
        json!({"backup": "high", "uid": "1000", "gid": "1000", "mode": "0750"}),
    );
    h.create(
        "target-workspaces",
        json!({"backup": "medium", "class": "important", "compression": "gzip"}),
    );
    h.create("project-1", json!({"parent": "target-workspaces"}));
    h.create("cache", json!({"backup": "none", "size": "1G"}));
    fs::write(h.data("app-data").join("hello.txt"), format!("{MARKER}\n")).unwrap();
    fs::write(
        h.data("app-data").join("big.bin"),
        harness::noise(7, 6 << 20),
    )
    .unwrap();
    // A parent= child lives inside its parent's data.
    let project = h.data("target-workspaces").join("project-1");
    fs::create_dir_all(project.join("src")).unwrap();
    fs::write(
        project.join("src/main.rs"),
        format!("// {MARKER}\nfn main() {{}}\n"),
    )
    .unwrap();
    let big_sha = sha(&h.data("app-data").join("big.bin"));

    h.add_remote(&moto.endpoint());
    let name = h.backup_and_push();
    let keys = moto.keys(&prefix(&name));
    let objects: Vec<&str> = keys
        .iter()
        .map(|(k, _)| k.rsplit('/').next().unwrap())
        .collect();
    for want in [
        "app-data.tar.zst.age",
        "target-workspaces.tar.gz.age",
        "index.json",
        "manifest.json.age",
    ] {
        assert!(objects.contains(&want), "{want} not in {objects:?}");
    }
    // No object holds the marker: every byte that left the host was encrypted.
    let grep = moto.s3(&["grep", BUCKET, "hosts/alpha/", MARKER]);
    assert!(
        grep.trim_end().ends_with("hits="),
        "plaintext found in the bucket: {grep}"
    );

    // The operator's recipe without allspark: age -d -i key.txt FILE | tar --zstd -xf -
    let scratch = tempfile::tempdir().unwrap();
    let obj = scratch.path().join("app-data.tar.zst.age");
    moto.s3(&[
        "get",
        BUCKET,
        &format!("{}app-data.tar.zst.age", prefix(&name)),
        s(&obj),
    ]);
    fs::create_dir(scratch.path().join("x")).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "age -d -i '{}' '{}' | tar --zstd -xf - -C '{}'",
            s(&h.key()),
            s(&obj),
            s(&scratch.path().join("x"))
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        fs::read_to_string(scratch.path().join("x/hello.txt")).unwrap(),
        format!("{MARKER}\n")
    );
    assert_eq!(sha(&scratch.path().join("x/big.bin")), big_sha);

    let v = h.ok(&["remote", "verify", "offsite"]);
    assert!(
        v.contains("1 remote backup(s) and ") && v.contains(" of offsite verified"),
        "{v}"
    );
    let v = h.ok(&[
        "remote",
        "verify",
        "offsite",
        "--full",
        "--identity",
        s(&h.key()),
    ]);
    assert!(
        v.contains("downloaded, decrypted and test-extracted"),
        "{v}"
    );

    // Disaster: nothing left but an empty state root. Add the remote again, recover.
    h.wipe();
    assert!(!h.data("app-data").exists());
    h.add_remote(&moto.endpoint());
    let out = h.dr(&[]);
    let secs = recovered_seconds(&out);
    eprintln!("DR: recovered {} in {secs:.2} s\n{out}", name);
    assert!(
        out.contains(&format!("using daily/{name} from remote offsite")),
        "{out}"
    );
    for v in ["app-data", "target-workspaces", "project-1", "cache"] {
        assert!(out.contains(&format!("created volume {v}")), "{v}: {out}");
    }
    assert_eq!(
        fs::read_to_string(h.data("app-data").join("hello.txt")).unwrap(),
        format!("{MARKER}\n")
    );
    assert_eq!(sha(&h.data("app-data").join("big.bin")), big_sha);
    let md = fs::metadata(h.data("app-data")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (1000, 1000, 0o750)
    );
    // The workspace project is back inside its parent, and its record with parent= too.
    let (_, got) = h.p.call("VolumeDriver.Get", json!({"Name": "project-1"}));
    assert!(
        got["Err"].as_str().unwrap_or("").is_empty(),
        "the plugin knows the recreated volume: {got}"
    );
    assert!(
        fs::read_to_string(h.data("target-workspaces").join("project-1/src/main.rs"))
            .unwrap()
            .contains(MARKER)
    );
    let rec: Value =
        serde_json::from_slice(&fs::read(h.root().join("state/volumes/project-1.json")).unwrap())
            .unwrap();
    assert_eq!(rec["options"]["parent"], "target-workspaces");
    let rec: Value =
        serde_json::from_slice(&fs::read(h.root().join("state/volumes/cache.json")).unwrap())
            .unwrap();
    assert_eq!(rec["options"], json!({"backup": "none", "size": "1G"}));
    // The fetched backup is a normal local backup now (dumps would be restored from it).
    let v = h.ok(&["backup", "verify", s(&h.broot().join("daily").join(&name))]);
    assert!(v.contains("verified"), "{v}");
}

#[test]
fn an_endpoint_stopped_mid_upload_leaves_no_manifest_and_the_next_push_resumes() {
    if !require_s3() {
        return;
    }
    let moto = Moto::start(None);
    moto.s3(&["mkbucket", BUCKET]);
    let h = Host::new();
    h.create("a-big", json!({"backup": "high"}));
    h.create("b-small", json!({"backup": "medium"}));
    h.create("c-big", json!({"backup": "medium"}));
    fs::write(h.data("a-big").join("noise"), harness::noise(11, 12 << 20)).unwrap();
    fs::write(h.data("b-small").join("note"), "small").unwrap();
    fs::write(h.data("c-big").join("noise"), harness::noise(13, 12 << 20)).unwrap();
    let out = h.run(&["backup", "run", "daily"]);
    assert!(text(&out).contains("3 volume(s)"), "{}", text(&out));
    let name = newest_backup(&h.broot());

    // The endpoint dies after ~16 MB went up: a-big (12 MB, multipart) and b-small are
    // complete, c-big is cut in the middle of its upload.
    let port = free_port();
    let proxy = Proxy::start(port, moto.port, Some(16 << 20));
    h.add_remote(&proxy.endpoint());
    let t0 = Instant::now();
    let o = h.run(&["remote", "push", "offsite"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(proxy.was_cut(), "the proxy never cut the upload: {t}");
    assert!(t.contains("was not pushed") && t.contains("resume"), "{t}");
    assert!(
        t0.elapsed() < Duration::from_secs(120),
        "retries took too long: {t}"
    );
    drop(proxy);

    let objects: Vec<String> = moto
        .keys(&prefix(&name))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(
        objects.iter().any(|k| k.ends_with("a-big.tar.zst.age")),
        "{objects:?}"
    );
    assert!(
        !objects.iter().any(|k| k.ends_with("manifest.json.age")),
        "a partial backup has a manifest: {objects:?}"
    );
    assert!(
        !objects.iter().any(|k| k.ends_with("c-big.tar.zst.age")),
        "{objects:?}"
    );
    // The local backup is intact.
    h.ok(&["backup", "verify", s(&h.broot().join("daily").join(&name))]);

    // Endpoint back (same address): the partial backup is listed as incomplete, never used.
    let proxy = Proxy::start(port, moto.port, None);
    let ls = h.ok(&["remote", "ls", "offsite"]);
    assert!(ls.contains("no (interrupted upload)"), "{ls}");
    let o = h.run(&["remote", "verify", "offsite"]);
    assert!(text(&o).contains("incomplete"), "{}", text(&o));
    let out = h.ok(&["remote", "push", "offsite"]);
    assert!(
        out.contains("1 backup(s) pushed (1 object(s) uploaded, 2 re-used"),
        "{out}"
    );
    let objects: Vec<String> = moto
        .keys(&prefix(&name))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(
        objects.iter().any(|k| k.ends_with("manifest.json.age")),
        "{objects:?}"
    );
    let v = h.ok(&[
        "remote",
        "verify",
        "offsite",
        "--full",
        "--identity",
        s(&h.key()),
    ]);
    assert!(v.contains("ok     daily/"), "{v}");
    // Nothing left to do.
    let again = h.ok(&["remote", "push", "offsite"]);
    assert!(
        again.contains("0 backup(s) pushed") && again.contains("1 already there"),
        "{again}"
    );
    drop(proxy);
}

#[test]
fn wrong_credentials_are_a_clear_error_and_the_local_backup_stays() {
    if !require_s3() {
        return;
    }
    // IAM enforced: only the key created by setup-auth may use the bucket.
    let moto = Moto::start(Some(4));
    let real_key = moto.s3(&["setup-auth", BUCKET]);
    let h = Host::new();
    h.create("app-data", json!({}));
    fs::write(h.data("app-data").join("f"), "data").unwrap();
    assert!(!real_key.contains("AKIATESTKEY"));
    // `remote add` checks the bucket, refuses, and stores nothing.
    let (creds, pk) = (h.creds(), h.public_key());
    let add = [
        "remote",
        "add",
        "offsite",
        "--endpoint",
        &moto.endpoint(),
        "--bucket",
        BUCKET,
        "--path-style",
        "--credentials-file",
        s(&creds),
        "--age-recipient",
        &pk,
    ];
    let o = h.run(&add);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("refused the credentials") && t.contains("InvalidAccessKeyId"),
        "{t}"
    );
    assert!(
        t.contains(&format!("file {}", s(&creds))),
        "the error names where the key came from: {t}"
    );
    assert_secret_hidden(&o);
    assert!(!h.root().join("state/remotes/offsite.json").exists());
    let mut no_check = add.to_vec();
    no_check.push("--no-check");
    h.ok(&no_check);
    let mode = fs::metadata(h.root().join("state/remotes/offsite.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let o = h.run(&["backup", "run", "daily", "--remote", "offsite"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("off-site copy failed") || t.contains("nothing was pushed"),
        "{t}"
    );
    assert!(t.contains("refused the credentials"), "{t}");
    assert!(t.contains("the local backups are intact"), "{t}");
    assert_secret_hidden(&o);
    let name = newest_backup(&h.broot());
    h.ok(&["backup", "verify", s(&h.broot().join("daily").join(&name))]);

    // A credentials file others can read is refused before any request.
    fs::set_permissions(&creds, fs::Permissions::from_mode(0o644)).unwrap();
    let o = h.run(&["remote", "push", "offsite"]);
    assert!(text(&o).contains("chmod 600"), "{}", text(&o));
}

#[test]
fn a_corrupted_remote_object_is_named_by_verify_and_dr_falls_back_to_the_previous_backup() {
    if !require_s3() {
        return;
    }
    let moto = Moto::start(None);
    moto.s3(&["mkbucket", BUCKET]);
    let mut h = Host::new();
    h.create("app-data", json!({"backup": "high"}));
    h.add_remote(&moto.endpoint());
    let file = h.data("app-data").join("state.txt");
    fs::write(&file, "version 1\n").unwrap();
    fs::write(h.data("app-data").join("bulk"), harness::noise(5, 1 << 20)).unwrap();
    let first = h.backup_and_push();
    fs::write(&file, "version 2\n").unwrap();
    let second = h.backup_and_push();
    assert_ne!(first, second);

    // Someone (bit rot, a bad tool) changes an object of the newest backup in place, same size.
    let scratch = tempfile::tempdir().unwrap();
    let obj = scratch.path().join("obj");
    let key = format!("{}app-data.tar.zst.age", prefix(&second));
    moto.s3(&["get", BUCKET, &key, s(&obj)]);
    let mut bytes = fs::read(&obj).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&obj, &bytes).unwrap();
    moto.s3(&["put", BUCKET, &key, s(&obj)]);

    let o = h.run(&["remote", "verify", "offsite"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains(&format!("FAILED daily/{second}")) && t.contains(&key),
        "verify names the object: {t}"
    );
    assert!(t.contains(&format!("ok     daily/{first}")), "{t}");

    h.wipe();
    h.add_remote(&moto.endpoint());
    let out = h.dr(&[]);
    assert!(
        out.contains(&format!("refused daily/{second}")) && out.contains("damaged"),
        "{out}"
    );
    assert!(
        out.contains(&format!("using daily/{first} from remote offsite")),
        "{out}"
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), "version 1\n");
    // No half-fetched copy of the refused backup is left behind.
    let daily: Vec<String> = fs::read_dir(h.broot().join("daily"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(daily, vec![first.clone()], "{daily:?}");

    // --at picks the backup at or before a time (the first one here, by its own name).
    h.wipe();
    h.add_remote(&moto.endpoint());
    let out = h.dr(&["--at", &first]);
    assert!(
        out.contains(&format!("using daily/{first}")) && !out.contains("refused"),
        "{out}"
    );
}

#[test]
fn the_agent_catches_up_at_start_and_pushes_after_its_scheduled_backup() {
    if !require_s3() {
        return;
    }
    let moto = Moto::start(None);
    moto.s3(&["mkbucket", BUCKET]);
    let h = Host::new();
    h.create("app-data", json!({"backup": "high"}));
    fs::write(h.data("app-data").join("f"), "data").unwrap();
    // A backup made while the remote was not configured (or unreachable).
    h.run(&["backup", "run", "daily"]);
    let made_offline = newest_backup(&h.broot());
    h.add_remote(&moto.endpoint());
    // The daily last ran long ago: the agent runs it once at start.
    let agent_dir = h.root().join("state/agent");
    let now = chrono::Utc::now().to_rfc3339();
    fs::write(
        agent_dir.join("schedule.json"),
        json!({"last_run": {"daily": "2020-01-01T02:00:00Z", "weekly": now, "monthly": now, "verify": now}})
            .to_string(),
    )
    .unwrap();
    let log = h.p.dir.path().join("agent.log");
    let broot = h.broot();
    let _agent = harness::Agent::start(
        &h.root(),
        &log,
        &[
            "--no-docker-events",
            "--docker",
            NO_DOCKER,
            "--backup-root",
            s(&broot),
            "--remote",
            "offsite",
        ],
    );
    let complete = || {
        moto.keys("hosts/alpha/backups/daily/")
            .iter()
            .filter(|(k, _)| k.ends_with("/manifest.json.age"))
            .count()
    };
    harness::wait_for(
        "two complete backups on the remote",
        Duration::from_secs(90),
        || complete() == 2,
    );
    let keys = moto.keys(&prefix(&made_offline));
    assert!(
        keys.iter().any(|(k, _)| k.ends_with("manifest.json.age")),
        "{keys:?}"
    );
    let agent_log = fs::read_to_string(&log).unwrap_or_default();
    assert!(agent_log.contains("off-site push done"), "{agent_log}");
    assert!(!agent_log.contains(SECRET), "the agent logged the secret");
}

/// A small complete backup directory `<broot>/<kind>/<name>` (one file, a valid manifest).
fn fake_backup(broot: &Path, kind: &str, t: chrono::NaiveDateTime) -> String {
    use sha2::Digest;
    let name = t.format("%Y%m%d_%H%M%S").to_string();
    let dir = broot.join(kind).join(&name);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("v.tar.gz"), &name).unwrap();
    let m = json!({
        "timestamp": "2024-01-01T00:00:00Z", "type": kind, "volumes": ["v"], "databases": [],
        "files": [{"name": "v.tar.gz", "kind": "volume", "size": name.len(),
                   "sha256": hex::encode(sha2::Sha256::digest(name.as_bytes())), "source": "v"}],
        "outcome": "ok", "errors": []
    });
    fs::write(dir.join("manifest.json"), m.to_string()).unwrap();
    name
}

#[test]
fn remote_retention_follows_the_local_calendar_rules_and_keeps_the_newest_backup() {
    if !require_s3() {
        return;
    }
    let moto = Moto::start(None);
    moto.s3(&["mkbucket", BUCKET]);
    let h = Host::new();
    h.add_remote(&moto.endpoint());
    let today = chrono::Local::now().date_naive();
    let at = |days: i64| {
        (today - chrono::Duration::days(days))
            .and_hms_opt(2, 0, 3)
            .unwrap()
    };
    let daily: Vec<String> = [40, 10, 6, 1, 0]
        .iter()
        .map(|d| fake_backup(&h.broot(), "daily", at(*d)))
        .collect();
    // Weekly backups all older than 30 days: the newest one stays anyway.
    let weekly: Vec<String> = [100, 93]
        .iter()
        .map(|d| fake_backup(&h.broot(), "weekly", at(*d)))
        .collect();
    let out = h.ok(&[
        "remote",
        "push",
        "offsite",
        "--no-prune",
        "--keep-daily-days",
        "1000",
        "--keep-weekly-days",
        "1000",
    ]);
    assert!(out.contains("7 backup(s) pushed"), "{out}");
    // With the default rules, a push of the same backups skips what the remote would delete at once.
    let dry = h.ok(&["remote", "prune", "offsite", "--dry-run"]);
    assert!(dry.contains("3 remote backup(s) to remove"), "{dry}");
    let out = h.ok(&["remote", "prune", "offsite"]);
    assert!(out.contains("3 remote backup(s) removed, 4 kept"), "{out}");
    let left = |kind: &str| -> Vec<String> {
        let mut v: Vec<String> = moto
            .keys(&format!("hosts/alpha/backups/{kind}/"))
            .iter()
            .filter_map(|(k, _)| k.strip_suffix("/manifest.json.age"))
            .map(|k| k.rsplit('/').next().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(left("daily"), daily[2..].to_vec());
    assert_eq!(left("weekly"), vec![weekly[1].clone()]);
    // No object of a removed backup is left behind.
    assert!(moto.keys(&prefix(&daily[0])).is_empty());
    // The local backups are not touched by remote retention.
    assert_eq!(fs::read_dir(h.broot().join("daily")).unwrap().count(), 5);
    // A push with the default rules does not upload again what the remote just deleted.
    let out = h.ok(&["remote", "push", "offsite", "--no-prune"]);
    assert!(out.contains("0 backup(s) pushed"), "{out}");
}
