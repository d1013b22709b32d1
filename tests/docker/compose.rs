//! End-to-end: compose/docker-compose.yml (the platform's volume plan on
//! `driver: allspark`) with compose/test-override.yml, through docker-compose v1
//! and the managed plugin, against the real dockerd.
//!
//! How the test gets `driver: allspark` without touching a user's install: it
//! builds the managed plugin from this test run's binary under a unique name
//! (never `allspark:latest`), with its own state root and bind root under
//! /var/lib/allspark-test/<name>, and runs a copy of the compose file in which
//! only host paths and the driver name are replaced (each replacement is
//! checked, so the copy cannot drift from the real file). Cleanup guards take
//! the project down with its volumes, remove the plugin and the scratch
//! directory, also when the test fails. Needs root and docker-compose.

use crate::support::common;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::{
    docker, docker_ok, ensure_busybox_image, forget_dead_legacy_drivers, path_str,
    plugin_script_ok, reap_stale_test_plugins, repo_root, require_docker, Cleanup, TestPlugin,
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

/// Seconds docker-compose waits for one Docker API request.
const COMPOSE_HTTP_TIMEOUT: &str = "600";

/// The test's image for the agent service (named in compose/test-override.yml).
const AGENT_TEST_IMAGE: &str = "allspark-test/agent:latest";

/// One compose project of the platform on a test plugin.
struct Project {
    name: String,
    files: [PathBuf; 2],
}

impl Project {
    fn compose(&self, args: &[&str]) -> Output {
        Command::new("docker-compose")
            .arg("-f")
            .arg(&self.files[0])
            .arg("-f")
            .arg(&self.files[1])
            .args(["-p", &self.name, "--profile", "agent"])
            .args(args)
            // A dockerd that once served legacy socket plugins which are gone
            // asks each of them (with retries) about unknown volume names: slow,
            // not wrong. docker-compose's default 60 s per request is too short.
            .env("COMPOSE_HTTP_TIMEOUT", COMPOSE_HTTP_TIMEOUT)
            .env("POSTGRES_PASSWORD", "allspark-test")
            .stdin(Stdio::null())
            .output()
            .expect("run docker-compose (apt-get install docker-compose)")
    }

    fn compose_ok(&self, args: &[&str]) -> String {
        let out = self.compose(args);
        assert!(
            out.status.success(),
            "docker-compose {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
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
}

/// Replaces `from` by `to` in `text`, insisting that it occurs `times` times.
fn replace_checked(text: &str, from: &str, to: &str, times: usize) -> String {
    assert_eq!(
        text.matches(from).count(),
        times,
        "compose/docker-compose.yml should contain `{from}` {times} times; the test's copy would drift"
    );
    text.replace(from, to)
}

/// The mount options of `target` as a container sees them in /proc/self/mountinfo.
fn mount_options(p: &Project, service: &str, target: &str) -> Vec<String> {
    let line = p.exec(service, &format!("grep ' {target} ' /proc/self/mountinfo"));
    line.split_whitespace()
        .nth(5)
        .unwrap_or_default()
        .split(',')
        .map(str::to_string)
        .collect()
}

/// `stat` of `path` in the container of `service` with `format` (e.g. `%u %g %a`).
fn stat(p: &Project, service: &str, format: &str, path: &str) -> String {
    p.exec(service, &format!("stat -c '{format}' {path}"))
        .trim()
        .to_string()
}

#[test]
fn compose_platform_volumes_have_their_owner_mode_flags_and_keep_data() {
    let Some(_docker) = require_docker() else {
        return;
    };
    ensure_busybox_image();
    reap_stale_test_plugins();
    forget_dead_legacy_drivers();
    // The plugin (driver) and the agent image, from this test run's binary.
    let test_plugin = TestPlugin::start("allspark-test-compose");
    let plugin = test_plugin.name.clone();
    let (dir, root, binds) = (
        test_plugin.root.base.clone(),
        test_plugin.root.root(),
        test_plugin.root.binds(),
    );
    plugin_script_ok("agent-image.sh", &[AGENT_TEST_IMAGE]);
    let mut cleanup = Cleanup::new();

    // The compose file as shipped, with host paths moved into the scratch dir
    // and `driver: allspark` pointing at the test plugin.
    let original = fs::read_to_string(repo_root().join("compose/docker-compose.yml")).unwrap();
    let mut text = replace_checked(
        &original,
        "driver: allspark\n",
        &format!("driver: {plugin}\n"),
        VOLUMES.len(),
    );
    text = replace_checked(
        &text,
        "device: /var/lib/allspark/",
        &format!("device: {}/", binds.display()),
        1,
    );
    text = replace_checked(
        &text,
        "- /var/lib/allspark:",
        &format!("- {}:", root.display()),
        1,
    );
    text = replace_checked(
        &text,
        "- /backups/allspark:",
        &format!("- {}/backups:", dir.display()),
        1,
    );
    let compose_file = dir.join("docker-compose.yml");
    fs::write(&compose_file, text).unwrap();
    let p = Project {
        name: plugin.trim_end_matches(":latest").to_string(),
        files: [compose_file, repo_root().join("compose/test-override.yml")],
    };
    let volumes: Vec<String> = VOLUMES.iter().map(|v| p.volume(v)).collect();
    cleanup.add(format!(
        "docker plugin enable {plugin} >/dev/null 2>&1; docker volume rm -f {} >/dev/null",
        volumes.join(" ")
    ));
    cleanup.add(format!(
        "POSTGRES_PASSWORD=x COMPOSE_HTTP_TIMEOUT={COMPOSE_HTTP_TIMEOUT} docker-compose -f {} -f {} -p {} --profile agent down -v --remove-orphans -t 1",
        path_str(&p.files[0]),
        path_str(&p.files[1]),
        p.name
    ));

    p.compose_ok(&["up", "-d"]);

    // Every volume is on the plugin, with its class and backup priority in Status.
    for v in &volumes {
        let info: serde_json::Value =
            serde_json::from_str(&docker_ok(&["volume", "inspect", v])).unwrap();
        assert_eq!(info[0]["Driver"], plugin.as_str(), "{v}: {info}");
        assert!(
            info[0]["Status"].is_object(),
            "{v}: docker volume inspect shows no Status: {info}"
        );
    }

    // The agent service runs the real binary with the mounts of the real file.
    let agent = p.container("allspark-agent");
    assert_eq!(
        docker_ok(&["wait", &agent]).trim(),
        "0",
        "the agent container exits 0 on --version"
    );
    let logs = docker(&["logs", &agent]);
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("allspark"),
        "agent --version printed: {logs:?}"
    );

    // db: postgres-data on the device path, noatime + nodiratime.
    let opts = mount_options(&p, "db", "/var/lib/postgresql/data");
    for flag in ["noatime", "nodiratime"] {
        assert!(
            opts.iter().any(|o| o == flag),
            "postgres-data lacks {flag}: {opts:?}"
        );
    }
    p.exec("db", "echo pg > /var/lib/postgresql/data/PG_VERSION");
    assert_eq!(
        fs::read_to_string(binds.join("postgres/PG_VERSION")).unwrap(),
        "pg\n",
        "postgres-data is device="
    );

    // redis: plain managed volume.
    p.exec("redis", "echo redis > /data/appendonly.aof");

    // builder and target: owners, modes, read-only keys, shared workspaces and logs.
    assert_eq!(
        stat(&p, "builder", "%u %g", "/app/storage"),
        "1000 1000",
        "builder-data owner"
    );
    assert_eq!(
        stat(&p, "builder", "%u %g", "/workspaces"),
        "1000 1000",
        "target-workspaces owner"
    );
    assert_eq!(
        stat(&p, "target", "%u %g", "/workspace"),
        "1000 1000",
        "target-workspaces owner"
    );
    for service in ["builder", "target"] {
        assert_eq!(
            stat(&p, service, "%u %g %a", "/ssh-keys"),
            "1000 1000 700",
            "{service}: shared-ssh-keys"
        );
        let opts = mount_options(&p, service, "/ssh-keys");
        assert_eq!(
            opts.first().map(String::as_str),
            Some("ro"),
            "{service}: /ssh-keys must be read-only: {opts:?}"
        );
        let touch = p.exec(
            service,
            "touch /ssh-keys/x 2>/dev/null && echo WROTE || echo REFUSED",
        );
        assert_eq!(
            touch.trim(),
            "REFUSED",
            "{service} could write into the read-only ssh keys"
        );
    }
    let keys = p.volume("shared-ssh-keys");
    docker_ok(&[
        "run",
        "--rm",
        "-v",
        &format!("{keys}:/k"),
        common::BUSYBOX_IMAGE,
        "sh",
        "-c",
        "echo key > /k/id_ed25519",
    ]);
    p.exec("builder", "echo upload > /app/storage/upload.bin && mkdir -p /workspaces/project-abc123 && echo code > /workspaces/project-abc123/app.rb && echo b >> /app/log/builder.log");
    assert_eq!(
        p.exec(
            "target",
            "cat /workspace/project-abc123/app.rb /ssh-keys/id_ed25519"
        )
        .trim(),
        "code\nkey"
    );
    p.exec("target", "echo t >> /app/log/target.log");
    assert_eq!(
        p.exec("builder", "cat /app/log/target.log").trim(),
        "t",
        "log-data is shared"
    );

    // down + up keeps every volume's data.
    p.compose_ok(&["down", "-t", "1"]);
    p.compose_ok(&["up", "-d"]);
    assert_eq!(
        p.exec("db", "cat /var/lib/postgresql/data/PG_VERSION")
            .trim(),
        "pg"
    );
    assert_eq!(p.exec("redis", "cat /data/appendonly.aof").trim(), "redis");
    assert_eq!(
        p.exec(
            "builder",
            "cat /app/storage/upload.bin /ssh-keys/id_ed25519 /app/log/builder.log"
        )
        .trim(),
        "upload\nkey\nb"
    );
    assert_eq!(
        p.exec("target", "cat /workspace/project-abc123/app.rb")
            .trim(),
        "code"
    );
    assert_eq!(
        stat(&p, "target", "%u %g %a", "/ssh-keys"),
        "1000 1000 700",
        "owner and mode survive down + up"
    );

    // down -v removes the volumes and managed data, never data under a device path.
    p.compose_ok(&["down", "-v", "-t", "1"]);
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
    for v in &volumes {
        assert!(
            !root.join("volumes").join(v).exists(),
            "down -v left the managed data of {v}"
        );
    }
    assert_eq!(
        fs::read_to_string(binds.join("postgres/PG_VERSION")).unwrap(),
        "pg\n",
        "down -v must never delete the data of a device volume"
    );
}
