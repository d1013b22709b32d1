//! End-to-end: the managed Docker plugin built by plugin/build.sh, against the real dockerd.
//!
//! Each test packages the `allspark` binary of this test run (debug, stripped)
//! as a managed plugin under its own unique name (never `allspark:latest`),
//! with its own state root and bind root under /var/lib/allspark-test/<name>
//! (set through `docker plugin set`), so it never touches a user's plugin or
//! volumes. Cleanup guards disable and remove the plugin, the volumes, the
//! registry and the scratch directories, also when a test fails.
//!
//! The tests of this file run one at a time (one restarts dockerd). Needs root.

use crate::support::common;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::{
    docker, docker_ok, ensure_busybox_image, ensure_root_shared, forget_dead_legacy_drivers,
    path_str, plugin_script, plugin_script_ok, reap_stale_test_plugins, require_docker,
    restart_dockerd, unique_name, wait_until, Cleanup, TestRoot,
};

/// Serializes the tests of this binary: one restarts dockerd under the others.
static DOCKERD: Mutex<()> = Mutex::new(());

/// `sh -c SCRIPT` in a throwaway busybox container with `-v VOLUME_SPEC`s; returns stdout.
fn run_with(image: &str, volumes: &[String], script: &str) -> String {
    let mut args = vec!["run".to_string(), "--rm".to_string()];
    for v in volumes {
        args.push("-v".to_string());
        args.push(v.clone());
    }
    args.extend([
        image.to_string(),
        "sh".to_string(),
        "-c".to_string(),
        script.to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker_ok(&args)
}

/// The mount options (6th field) of the mount at `target` in a container's mountinfo line.
fn mount_options(mountinfo_line: &str) -> Vec<String> {
    mountinfo_line
        .split_whitespace()
        .nth(5)
        .unwrap_or_default()
        .split(',')
        .map(str::to_string)
        .collect()
}

fn plugin_enabled(name: &str) -> bool {
    let out = docker(&["plugin", "inspect", "--format", "{{.Enabled}}", name]);
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "true"
}

fn volume_names(driver: &str) -> Vec<String> {
    docker_ok(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("driver={driver}"),
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

fn inspect_volume(name: &str) -> serde_json::Value {
    let text = docker_ok(&["volume", "inspect", name]);
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad inspect JSON {e}: {text}"));
    v[0].clone()
}

/// Checks what the two test volumes must always show: data, owner, mode, flags, status.
fn check_volumes(image: &str, plugin: &str, managed: &str, bound: &str, when: &str) {
    let out = run_with(
        image,
        &[format!("{managed}:/m"), format!("{bound}:/b")],
        "cat /m/data /b/data; stat -c '%u %g %a' /m /b; grep -E ' /(m|b) ' /proc/self/mountinfo",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.len() >= 6,
        "{when}: unexpected output from the container:\n{out}"
    );
    assert_eq!(
        lines[0], "managed data",
        "{when}: data of the managed volume"
    );
    assert_eq!(lines[1], "device data", "{when}: data of the device volume");
    assert_eq!(
        lines[2], "1000 1000 750",
        "{when}: owner and mode of the managed volume"
    );
    assert_eq!(
        lines[3], "999 999 700",
        "{when}: owner and mode of the device volume"
    );
    let m_line = lines
        .iter()
        .find(|l| l.contains(" /m "))
        .expect("mountinfo line for /m");
    let b_line = lines
        .iter()
        .find(|l| l.contains(" /b "))
        .expect("mountinfo line for /b");
    let (m_opts, b_opts) = (mount_options(m_line), mount_options(b_line));
    for flag in ["noatime", "nodiratime"] {
        assert!(
            m_opts.iter().any(|o| o == flag),
            "{when}: {flag} missing on the managed volume: {m_line}"
        );
    }
    assert!(
        b_opts.iter().any(|o| o == "noatime"),
        "{when}: noatime missing on the device volume: {b_line}"
    );

    let names = volume_names(plugin);
    for v in [managed, bound] {
        assert!(
            names.iter().any(|n| n == v),
            "{when}: {v} missing from docker volume ls: {names:?}"
        );
        let info = inspect_volume(v);
        assert_eq!(info["Driver"], plugin, "{when}: driver of {v}: {info}");
        assert!(
            info["Status"].is_object(),
            "{when}: docker volume inspect {v} shows no Status: {info}"
        );
    }
}

#[test]
fn managed_plugin_keeps_volumes_across_disable_upgrade_and_daemon_restart() {
    let _serial = DOCKERD.lock().unwrap_or_else(|e| e.into_inner());
    let Some(_docker) = require_docker() else {
        return;
    };
    ensure_root_shared();
    reap_stale_test_plugins();
    forget_dead_legacy_drivers();
    let image = ensure_busybox_image();
    let base = unique_name("allspark-test-managed");
    let plugin = format!("{base}:latest");
    let dirs = TestRoot::new(&base);
    let mut cleanup = Cleanup::new();
    cleanup.add(format!(
        "docker plugin disable -f {plugin} >/dev/null 2>&1; docker plugin rm -f {plugin}"
    ));

    // Package and create; the config is what plugin/config.json says.
    assert_eq!(plugin_script_ok("build.sh", &[&plugin]).trim(), plugin);
    let config: serde_json::Value = serde_json::from_str(&docker_ok(&[
        "plugin",
        "inspect",
        "--format",
        "{{json .Config}}",
        &plugin,
    ]))
    .unwrap();
    assert_eq!(config["Interface"]["Socket"], "allspark.sock");
    assert_eq!(config["Interface"]["Types"][0], "docker.volumedriver/1.0");
    assert_eq!(config["PropagatedMount"], "/mnt/volumes");
    assert_eq!(
        config["Linux"]["Capabilities"],
        serde_json::json!(["CAP_SYS_ADMIN"])
    );
    // No device beyond Docker's defaults unless built with --loop-devices.
    assert_eq!(config["Linux"]["AllowAllDevices"], false);
    assert!(
        !plugin_enabled(&plugin),
        "build.sh without --enable leaves a new plugin disabled"
    );
    let mut set = vec!["plugin", "set", &plugin];
    let settings = dirs.settings();
    set.extend(settings.iter().map(String::as_str));
    docker_ok(&set);
    docker_ok(&["plugin", "enable", &plugin]);

    let managed = unique_name("managed");
    let bound = unique_name("bound");
    let device = dirs.binds().join("pg");
    cleanup.add(format!(
        "docker plugin enable {plugin} >/dev/null 2>&1; docker volume rm -f {managed} {bound} >/dev/null"
    ));
    docker_ok(&[
        "volume",
        "create",
        "-d",
        &plugin,
        "-o",
        "uid=1000",
        "-o",
        "gid=1000",
        "-o",
        "mode=0750",
        "-o",
        "o=noatime,nodiratime",
        "-o",
        "class=important",
        &managed,
    ]);
    docker_ok(&[
        "volume",
        "create",
        "-d",
        &plugin,
        "-o",
        "type=none",
        "-o",
        "o=bind,noatime",
        "-o",
        &format!("device={}", device.display()),
        "-o",
        "uid=999",
        "-o",
        "gid=999",
        "-o",
        "mode=0700",
        &bound,
    ]);
    run_with(
        &image,
        &[format!("{managed}:/m"), format!("{bound}:/b")],
        "echo 'managed data' > /m/data && echo 'device data' > /b/data",
    );
    // The device volume's data is in the host directory named by device=.
    assert_eq!(
        fs::read_to_string(device.join("data")).unwrap(),
        "device data\n"
    );
    assert_eq!(
        fs::read_to_string(dirs.root().join("volumes").join(&managed).join("data/data")).unwrap(),
        "managed data\n",
        "a managed volume lives under <state root>/volumes/<name>/data"
    );
    check_volumes(&image, &plugin, &managed, &bound, "after create");

    // Disable and enable: nothing lost.
    docker_ok(&["plugin", "disable", "-f", &plugin]);
    docker_ok(&["plugin", "enable", &plugin]);
    check_volumes(&image, &plugin, &managed, &bound, "after disable + enable");

    // build.sh refuses to replace the plugin under a running container.
    let holder = unique_name("holder");
    cleanup.add(format!("docker rm -f {holder} >/dev/null 2>&1 || true"));
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &holder,
        "-v",
        &format!("{managed}:/m"),
        &image,
        "sleep",
        "600",
    ]);
    let refused = plugin_script("build.sh", &[&plugin]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "build.sh replaced a plugin whose volume is in use: {stderr}"
    );
    assert!(
        stderr.contains(&holder),
        "the refusal names the container: {stderr}"
    );
    assert!(
        plugin_enabled(&plugin),
        "a refused build.sh leaves the plugin enabled"
    );
    docker_ok(&["rm", "-f", &holder]);

    // Upgrade: rebuild and replace; settings carried over, enabled again, volumes kept.
    plugin_script_ok("build.sh", &[&plugin]);
    assert!(
        plugin_enabled(&plugin),
        "a replaced enabled plugin is enabled again"
    );
    let state_source = docker_ok(&[
        "plugin",
        "inspect",
        "--format",
        "{{range .Settings.Mounts}}{{if eq .Name \"state\"}}{{.Source}}{{end}}{{end}}",
        &plugin,
    ]);
    assert_eq!(
        state_source.trim(),
        path_str(&dirs.root()),
        "the state mount's source survives an upgrade"
    );
    let env = docker_ok(&[
        "plugin",
        "inspect",
        "--format",
        "{{range .Settings.Env}}{{println .}}{{end}}",
        &plugin,
    ]);
    for kv in settings.iter().filter(|s| s.starts_with("ALLSPARK_")) {
        assert!(
            env.lines().any(|l| l == kv),
            "setting {kv} lost in the upgrade: {env}"
        );
    }
    check_volumes(&image, &plugin, &managed, &bound, "after upgrade");

    // Daemon restart: dockerd asks the plugin for every volume it remembers.
    restart_dockerd();
    wait_until(
        "the plugin is enabled after the daemon restart",
        Duration::from_secs(60),
        || plugin_enabled(&plugin),
    );
    check_volumes(&image, &plugin, &managed, &bound, "after a dockerd restart");

    // Removing volumes: managed data goes, device data stays.
    docker_ok(&["volume", "rm", &managed, &bound]);
    assert!(
        !dirs.root().join("volumes").join(&managed).exists(),
        "docker volume rm deletes a managed volume's data"
    );
    assert_eq!(
        fs::read_to_string(device.join("data")).unwrap(),
        "device data\n",
        "docker volume rm never deletes the data of a device volume"
    );
}

/// A local registry (Debian's docker-registry) on a free loopback port, stopped on drop.
struct Registry {
    child: std::process::Child,
    port: u16,
    _dir: RemoveDir,
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl Registry {
    fn start() -> Registry {
        let exe = ["/usr/bin/docker-registry", "/usr/local/bin/docker-registry"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .expect("docker-registry is not installed (apt-get install docker-registry)");
        let dir = RemoveDir(std::env::temp_dir().join(unique_name("allspark-registry")));
        fs::create_dir_all(dir.0.join("data")).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.0.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.0.join("data").display()
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.0.join("registry.log")).unwrap();
        let child = Command::new(exe)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let mut registry = Registry {
            child,
            port,
            _dir: dir,
        };
        wait_until("the registry answers /v2/", Duration::from_secs(30), || {
            registry.answers()
        });
        assert!(
            registry.child.try_wait().unwrap().is_none(),
            "docker-registry exited"
        );
        registry
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn managed_plugin_pushed_to_a_registry_installs_and_serves_a_volume() {
    let _serial = DOCKERD.lock().unwrap_or_else(|e| e.into_inner());
    let Some(_docker) = require_docker() else {
        return;
    };
    ensure_root_shared();
    reap_stale_test_plugins();
    forget_dead_legacy_drivers();
    let image = ensure_busybox_image();
    let base = unique_name("allspark-test-pushed");
    let dirs = TestRoot::new(&base);
    let mut cleanup = Cleanup::new();
    let registry = Registry::start();
    let remote = format!("127.0.0.1:{}/{base}:latest", registry.port);
    let alias = format!("{base}-installed:latest");
    cleanup.add(format!("docker plugin disable -f {remote} >/dev/null 2>&1; docker plugin rm -f {remote} 2>/dev/null || true"));
    cleanup.add(format!(
        "docker plugin disable -f {alias} >/dev/null 2>&1; docker plugin rm -f {alias}"
    ));

    plugin_script_ok("push.sh", &[&remote]);
    docker_ok(&["plugin", "rm", &remote]);

    // What a user on another machine does: install from the registry, with settings.
    let mut install = vec![
        "plugin",
        "install",
        "--grant-all-permissions",
        "--alias",
        &alias,
        &remote,
    ];
    let settings = dirs.settings();
    install.extend(settings.iter().map(String::as_str));
    docker_ok(&install);
    assert!(
        plugin_enabled(&alias),
        "docker plugin install enables the plugin"
    );

    let vol = unique_name("pushed");
    cleanup.add(format!("docker volume rm -f {vol} >/dev/null"));
    docker_ok(&[
        "volume",
        "create",
        "-d",
        &alias,
        "-o",
        "uid=1000",
        "-o",
        "mode=0700",
        &vol,
    ]);
    run_with(&image, &[format!("{vol}:/d")], "echo pushed > /d/f");
    let out = run_with(
        &image,
        &[format!("{vol}:/d")],
        "cat /d/f; stat -c '%u %a' /d",
    );
    assert_eq!(out, "pushed\n1000 700\n");
    assert_eq!(inspect_volume(&vol)["Driver"], alias.as_str());
    assert!(
        dirs.root()
            .join("volumes")
            .join(&vol)
            .join("data/f")
            .is_file(),
        "the installed plugin keeps its state where `state.source` points"
    );
    docker_ok(&["volume", "rm", &vol]);
}
