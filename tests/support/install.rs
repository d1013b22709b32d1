//! `scripts/install.sh` run on this machine, as a user runs it, with the test build's binary:
//! the volume driver `allspark` as a host service on /run/docker/plugins/allspark.sock, state
//! root /var/lib/allspark, the CLI /usr/local/bin/allspark (and, unless `--no-agent`, the agent
//! container `allspark-agent`).
//!
//! [`HostInstall`] takes a machine-wide lock (one test process at a time installs), refuses to
//! run over the managed plugin `allspark:latest` (install.sh would refuse too, and removing a
//! user's plugin is not a test's business), and puts the machine back on drop: it runs
//! `scripts/uninstall.sh --force`, installs the host service again from a copy of the binary
//! that was installed before (with the agent if it ran), and removes the directories and log
//! that the install created, keeping any that hold volume records. A host service left behind
//! by a killed test run (its marker names a dead pid) is removed first, not restored.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::common::{allspark_bin, docker, path_str, repo_root, sh};

/// The state root of the host service (scripts/install.sh's, never changed by tests).
pub const STATE_ROOT: &str = "/var/lib/allspark";
/// The CLI installed on the host.
pub const HOST_CLI: &str = "/usr/local/bin/allspark";
/// The host service's log when PID 1 is not systemd.
pub const HOST_LOG: &str = "/var/log/allspark-plugin.log";
/// The driver name of the host service.
pub const HOST_DRIVER: &str = "allspark";

const BACKUP_ROOT: &str = "/backups/allspark";
const AGENT: &str = "allspark-agent";
const LOCK: &str = "/run/allspark-test-host-install.lock";
/// Holds the pid of the test process whose install is on the machine.
const MARKER: &str = "/run/allspark-test-host-install.pid";

/// True when plugin/lib.sh's `allspark_host_installed` says the host service is set up.
pub fn host_service_installed() -> bool {
    let lib = repo_root().join("plugin/lib.sh");
    sh(&format!(
        "source '{}'\nallspark_host_installed",
        lib.display()
    ))
    .status
    .success()
}

fn run(script: &str, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo_root().join("scripts").join(script))
        .args(args)
        .env("COMPOSE_HTTP_TIMEOUT", "600")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/{script}: {e}"))
}

fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// What the machine had before the test installed (see the module header).
struct Before {
    /// A copy of the host service's binary, when it was installed.
    binary: Option<tempfile::TempPath>,
    /// Whether the agent container existed.
    agent: bool,
    /// Paths the install may create that did not exist.
    missing: Vec<PathBuf>,
}

/// The host service installed by scripts/install.sh from this test run's binary; the machine
/// is put back on drop.
pub struct HostInstall {
    /// install.sh's standard output.
    pub stdout: String,
    before: Before,
    /// Shell commands run once the driver and the agent are gone (see [`HostInstall::after_uninstall`]).
    after: Vec<String>,
    /// install.sh's arguments (`--binary <test binary>` and the caller's).
    args: Vec<String>,
    _lock: allspark::fs::durable::FileLock,
}

impl HostInstall {
    /// Runs `scripts/install.sh --binary <test binary> ARGS…` (e.g. `--no-agent`); panics with
    /// its output unless it succeeds.
    pub fn install(args: &[&str]) -> HostInstall {
        let lock = allspark::fs::durable::FileLock::acquire(
            Path::new(LOCK),
            allspark::fs::durable::LockKind::Exclusive,
        )
        .expect("lock the host install of the tests");
        assert!(
            !docker(&["plugin", "inspect", "allspark:latest"])
                .status
                .success(),
            "this machine has the managed plugin allspark:latest (a user's install): this test \
             installs the host service `allspark` with scripts/install.sh, which refuses next to \
             it; run the test on another machine or remove the plugin (scripts/uninstall.sh)"
        );
        // A killed test run's install: remove it, there is nothing to restore.
        if let Ok(pid) = fs::read_to_string(MARKER) {
            let pid = pid.trim();
            if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
                note(&format!(
                    "note: removing the host install of a killed test run (pid {pid})"
                ));
                let out = run("uninstall.sh", &["--force"]);
                assert!(
                    out.status.success(),
                    "uninstall.sh of a stale test install failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let _ = fs::remove_file(MARKER);
        }
        let binary = host_service_installed().then(|| {
            let copy = tempfile::Builder::new()
                .prefix("allspark-previous-")
                .tempfile_in("/var/tmp")
                .unwrap()
                .into_temp_path();
            fs::copy(HOST_CLI, &copy).unwrap_or_else(|e| {
                panic!("the host service is installed but {HOST_CLI} cannot be copied: {e}")
            });
            note(&format!(
                "note: the host service `allspark` is installed; it is reinstalled from a copy of \
                 {HOST_CLI} after the test"
            ));
            copy
        });
        let before = Before {
            binary,
            agent: docker(&["container", "inspect", AGENT]).status.success(),
            // Deepest first: the backup root before its parent.
            missing: [STATE_ROOT, BACKUP_ROOT, "/backups", HOST_LOG]
                .iter()
                .map(PathBuf::from)
                .filter(|p| !p.exists())
                .collect(),
        };
        fs::write(MARKER, std::process::id().to_string()).unwrap();
        let bin = allspark_bin();
        let mut full = vec!["--binary", path_str(&bin)];
        full.extend_from_slice(args);
        let out = run("install.sh", &full);
        let installed = HostInstall {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            before,
            after: Vec::new(),
            args: full.iter().map(|a| a.to_string()).collect(),
            _lock: lock,
        };
        assert!(
            out.status.success(),
            "scripts/install.sh {full:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            installed.stdout
        );
        installed
    }

    /// Registers a `bash -c` command to run on drop right after scripts/uninstall.sh, when
    /// neither the driver nor the agent can write any more (e.g. removing what the test's
    /// volumes left in the state root: the agent snapshots a volume after its last container
    /// stops, asynchronously). Run in the order registered.
    pub fn after_uninstall(&mut self, command: impl Into<String>) {
        self.after.push(command.into());
    }

    /// The host is lost and set up anew, under the machine lock: `scripts/uninstall.sh
    /// --force`, then `wipe` (what the lost disk takes away), then `scripts/install.sh` with
    /// the same binary and arguments as the first install; panics unless both scripts succeed.
    pub fn reinstall(&mut self, wipe: impl FnOnce()) {
        let out = run("uninstall.sh", &["--force"]);
        assert!(
            out.status.success(),
            "scripts/uninstall.sh --force failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        wipe();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let out = run("install.sh", &args);
        assert!(
            out.status.success(),
            "scripts/install.sh {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        self.stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    }

    /// Runs the installed CLI (`/usr/local/bin/allspark ARGS…`).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(HOST_CLI)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {HOST_CLI}: {e}"))
    }
}

/// True when `dir` holds volume records (`state/volumes/*.json`).
fn holds_records(root: &Path) -> bool {
    fs::read_dir(root.join("state/volumes"))
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".json"))
        })
        .unwrap_or(false)
}

impl Drop for HostInstall {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let tail = sh(&format!("tail -n 40 {HOST_LOG} 2>&1 || true"));
            note(&format!(
                "--- last lines of {HOST_LOG}:\n{}",
                String::from_utf8_lossy(&tail.stdout)
            ));
            let logs = docker(&["logs", "--tail", "20", AGENT]);
            note(&format!(
                "--- last lines of the {AGENT} container:\n{}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            ));
        }
        let out = run("uninstall.sh", &["--force"]);
        if !out.status.success() {
            note(&format!(
                "cleanup: scripts/uninstall.sh --force failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let _ = fs::remove_file(MARKER);
        for command in &self.after {
            let out = sh(command);
            if !out.status.success() {
                note(&format!(
                    "cleanup: `{command}` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        if let Some(binary) = &self.before.binary {
            let path = binary.to_str().unwrap_or_default().to_string();
            let mut args = vec!["--binary", path.as_str()];
            if !self.before.agent {
                args.push("--no-agent");
            }
            let out = run("install.sh", &args);
            if !out.status.success() {
                note(&format!(
                    "cleanup: reinstalling the host service that was installed before the test \
                     failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            return;
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for path in &self.before.missing {
            let mounted = mountinfo.contains(&format!(" {} ", path.display()))
                || mountinfo.contains(&format!(" {}/", path.display()));
            let result = if path.as_os_str() == STATE_ROOT {
                if holds_records(path) || mounted {
                    note(&format!(
                        "cleanup: {STATE_ROOT} did not exist before the test, but it holds \
                         volume records or mounts now: kept"
                    ));
                    continue;
                }
                fs::remove_dir_all(path)
            } else if path.is_dir() {
                // The backup root and /backups: only while empty.
                fs::remove_dir(path)
            } else {
                fs::remove_file(path)
            };
            if let Err(e) = result {
                if e.kind() != std::io::ErrorKind::NotFound {
                    note(&format!("cleanup: cannot remove {}: {e}", path.display()));
                }
            }
        }
    }
}
