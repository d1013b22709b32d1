//! The managed plugin built from this test run's binary ([`TestPlugin`]) with its scratch root
//! ([`TestRoot`]), the plugin/ scripts run on it, and the reaping of what killed test runs left.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::common::{allspark_bin, docker, docker_ok, ensure_root_shared, repo_root, unique_name};

/// A scratch state root for a test plugin under `/var/lib/allspark-test/<name>`:
/// `root/` (the plugin's `state` mount: records, managed volumes, snapshots)
/// and `binds/` (its only allowed bind root, for `device=` paths). Removed on
/// drop unless something is still mounted below it.
pub struct TestRoot {
    pub base: PathBuf,
}

impl TestRoot {
    pub fn new(name: &str) -> TestRoot {
        let base = PathBuf::from("/var/lib/allspark-test").join(name);
        fs::create_dir_all(base.join("root")).unwrap();
        fs::create_dir_all(base.join("binds")).unwrap();
        TestRoot { base }
    }

    /// The state root (the plugin's `state.source`).
    pub fn root(&self) -> PathBuf {
        self.base.join("root")
    }

    /// The allowed bind root (`ALLSPARK_BIND_ROOTS`).
    pub fn binds(&self) -> PathBuf {
        self.base.join("binds")
    }

    /// `docker plugin set` / `docker plugin install` settings pointing a plugin here.
    pub fn settings(&self) -> Vec<String> {
        vec![
            format!("state.source={}", self.root().display()),
            format!("ALLSPARK_BIND_ROOTS={}", self.binds().display()),
            "ALLSPARK_LOG=debug".to_string(),
        ]
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = format!(" {}", self.base.display());
        if mountinfo.contains(&prefix) {
            let _ = writeln!(
                std::io::stderr(),
                "cleanup: mounts left under {}; not removing it",
                self.base.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.base);
        }
    }
}

/// Runs `bash plugin/SCRIPT --binary <test binary> --strip ARGS…` and returns its output.
pub fn plugin_script(script: &str, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo_root().join("plugin").join(script))
        .arg("--binary")
        .arg(allspark_bin())
        .arg("--strip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run plugin/{script}: {e}"))
}

/// Like [`plugin_script`], but panics with its stderr unless it succeeds; returns stdout.
pub fn plugin_script_ok(script: &str, args: &[&str]) -> String {
    let out = plugin_script(script, args);
    assert!(
        out.status.success(),
        "plugin/{script} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The managed plugin built from this test run's binary (plugin/build.sh),
/// named `<prefix>-<unique>:latest` (never `allspark:latest`), pointed at its
/// own [`TestRoot`] and enabled. Dropping it disables and removes the plugin,
/// then the scratch root. Declare it before the guard that removes the test's
/// volumes, so the volumes go first, while the plugin still answers.
pub struct TestPlugin {
    /// The driver name, `NAME:latest`.
    pub name: String,
    pub root: TestRoot,
}

impl TestPlugin {
    pub fn start(prefix: &str) -> TestPlugin {
        TestPlugin::start_with(prefix, &[], |_| Vec::new())
    }

    /// Like [`TestPlugin::start`], with more `build.sh` options and more settings (made from
    /// the scratch root) before it is enabled.
    pub fn start_with(
        prefix: &str,
        build_args: &[&str],
        settings: impl FnOnce(&TestRoot) -> Vec<String>,
    ) -> TestPlugin {
        ensure_root_shared();
        reap_stale_test_plugins();
        let base = unique_name(prefix);
        let plugin = TestPlugin {
            name: format!("{base}:latest"),
            root: TestRoot::new(&base),
        };
        let mut args = build_args.to_vec();
        args.push(&plugin.name);
        plugin_script_ok("build.sh", &args);
        let mut set = vec!["plugin".to_string(), "set".to_string(), plugin.name.clone()];
        set.extend(plugin.root.settings());
        set.extend(settings(&plugin.root));
        docker_ok(&set.iter().map(String::as_str).collect::<Vec<_>>());
        docker_ok(&["plugin", "enable", &plugin.name]);
        plugin
    }
}

impl Drop for TestPlugin {
    fn drop(&mut self) {
        let _ = docker(&["plugin", "disable", "-f", &self.name]);
        let out = docker(&["plugin", "rm", "-f", &self.name]);
        if !out.status.success() {
            let _ = writeln!(
                std::io::stderr(),
                "cleanup: docker plugin rm -f {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}

/// The pid in a [`unique_name`] (`PREFIX-<pid>-<n>-<time>`), if `name` is one.
pub fn pid_of_unique_name(name: &str) -> Option<u32> {
    let mut fields = name.rsplit('-');
    let (_time, _n, pid) = (fields.next()?, fields.next()?, fields.next()?);
    pid.parse().ok()
}

/// Removes what killed test runs left behind (their guards never ran): test
/// plugins named `…allspark-test-…-<pid>-<n>-<time>` whose test process is
/// gone, and their scratch roots under /var/lib/allspark-test. Such a plugin
/// is worse than clutter: after a dockerd restart it stays "enabled" without
/// a running process when its state directory is gone, and dockerd 20.10 then
/// panics (nil plugin client) on every lookup of an unknown volume name.
pub fn reap_stale_test_plugins() {
    let alive = |pid: u32| Path::new("/proc").join(pid.to_string()).exists();
    let list = docker(&["plugin", "ls", "--format", "{{.Name}}"]);
    for name in String::from_utf8_lossy(&list.stdout).lines() {
        let base = name
            .rsplit('/')
            .next()
            .unwrap_or(name)
            .trim_end_matches(":latest");
        if !base.starts_with("allspark-test-") {
            continue;
        }
        match pid_of_unique_name(base.trim_end_matches("-installed")) {
            Some(pid) if !alive(pid) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "note: removing the stale test plugin {name} (its test process {pid} is gone)"
                );
                let _ = docker(&["plugin", "disable", "-f", name]);
                let _ = docker(&["plugin", "rm", "-f", name]);
            }
            _ => {}
        }
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for entry in fs::read_dir("/var/lib/allspark-test")
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if matches!(pid_of_unique_name(&name), Some(pid) if !alive(pid))
            && !mountinfo.contains(&format!(" {}", path.display()))
        {
            let _ = fs::remove_dir_all(&path);
        }
    }
}
