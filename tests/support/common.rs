//! Shared helpers for the integration tests that drive a real dockerd.
//!
//! Include with `mod common;` from a file in `tests/`. The API:
//!
//! - [`require_docker`]: call first in every test that needs Docker; when it
//!   returns `false`, return from the test. No daemon + `ALLSPARK_REQUIRE_DOCKER`
//!   unset = a loud `SKIPPED:` banner on stderr; set = the test fails.
//! - [`docker`] / [`docker_ok`]: run the docker CLI (the second panics with
//!   stderr on failure and returns stdout).
//! - [`ensure_busybox_image`]: the offline test image (static busybox);
//!   [`ensure_sleeper_image`] (busybox that waits, for compose services) and
//!   [`ensure_db_images`] (scripts/db-images.sh: postgres:15 and redis:7 stand-ins);
//!   [`compose_labels`]: a service's labels as `compose/docker-compose.yml` ships them;
//!   [`compose_volume_opts`]: its volumes' driver_opts as `docker-compose config` renders them.
//! - [`unique_name`]: names that never collide between tests or runs.
//! - [`Cleanup`]: shell commands run on drop, also when a test panics.
//! - [`allspark_bin`]: a plain function, because this module is compiled into
//!   each test crate, where `env!("CARGO_BIN_EXE_allspark")` is defined.
//! - [`repo_root`], [`sh`] / [`sh_ok`], [`wait_until`], [`path_str`],
//!   [`ensure_root_shared`] (host `/` shared, for `rslave` binds).
//! - [`TestPlugin`]: the managed plugin built from this test run's binary under
//!   a unique name, with its own state and bind roots ([`TestRoot`]), removed on
//!   drop. Prefer it to a legacy socket plugin in tests against dockerd: dockerd
//!   never forgets a legacy driver whose socket is gone (see
//!   [`forget_dead_legacy_drivers`]), a removed managed plugin leaves nothing.
//! - [`plugin_script`]: run plugin/build.sh, push.sh or agent-image.sh on the
//!   test binary; [`restart_dockerd`], only when [`dockerd_restart_allowed`].
//!
//! Not every test binary uses every helper, hence `allow(dead_code)`.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use super::dockerd::{dockerd_restart_allowed, forget_dead_legacy_drivers, restart_dockerd};
pub use super::images::{
    compose_labels, compose_volume_opts, ensure_busybox_image, ensure_db_images,
    ensure_sleeper_image, BUSYBOX_IMAGE, SLEEPER_IMAGE,
};
pub use super::test_plugin::{
    pid_of_unique_name, plugin_script, plugin_script_ok, reap_stale_test_plugins, TestPlugin,
    TestRoot,
};

/// The `allspark` binary cargo built for this test run.
pub fn allspark_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_allspark"))
}

/// The checkout's root (where Cargo.toml, plugin/, compose/, scripts/ are).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// True when `ALLSPARK_REQUIRE_DOCKER` is set (and not `0`/`false`):
/// tests that need Docker must then fail rather than skip.
pub fn docker_required() -> bool {
    matches!(std::env::var("ALLSPARK_REQUIRE_DOCKER"), Ok(v) if !v.is_empty() && v != "0" && v != "false")
}

/// Whether a Docker daemon answers `docker info` (within 30 s). Checked once per test binary.
pub fn docker_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let child = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = child else { return false };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    })
}

/// Call at the start of a test that needs Docker; `return` when it gives `false`.
///
/// Without a daemon it prints a loud `SKIPPED:` banner straight to stderr (not
/// captured by the test harness) and returns `false`, unless
/// `ALLSPARK_REQUIRE_DOCKER` is set, in which case it panics: CI never
/// mistakes a skipped end-to-end test for a passing one.
///
/// The returned [`DockerTurn`] serializes the tests of one binary that drive
/// dockerd (they share the daemon, its plugins and the legacy driver name):
/// hold it for the whole test.
pub fn require_docker() -> Option<DockerTurn> {
    if docker_available() {
        return Some(DockerTurn(
            DOCKERD_TURN.lock().unwrap_or_else(|p| p.into_inner()),
        ));
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string();
    if docker_required() {
        panic!(
            "ALLSPARK_REQUIRE_DOCKER is set but no Docker daemon answers `docker info`: \
             {test} cannot run. Start dockerd (or unset ALLSPARK_REQUIRE_DOCKER to skip)."
        );
    }
    let bar = "!".repeat(78);
    let _ = writeln!(
        std::io::stderr(),
        "\n{bar}\nSKIPPED: {test}: no Docker daemon answers `docker info`.\n\
         This end-to-end test did NOT run. Start dockerd, or set ALLSPARK_REQUIRE_DOCKER=1\n\
         to make a missing daemon a failure (CI does).\n{bar}\n"
    );
    None
}

/// One test at a time drives dockerd (see [`require_docker`]).
static DOCKERD_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Held while a test drives dockerd.
pub struct DockerTurn(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

/// Runs `docker ARGS…` and returns its output, whatever the exit status.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `docker {}`: {e}", args.join(" ")))
}

/// Runs `docker ARGS…`, panics with its stderr unless it succeeds, returns stdout.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "`docker {}` failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `bash -c SCRIPT` (with `set -euo pipefail`) and returns its output.
pub fn sh(script: &str) -> Output {
    Command::new("bash")
        .args(["-c", &format!("set -euo pipefail\n{script}")])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash: {e}"))
}

/// Like [`sh`], but panics with the script's stderr unless it succeeds; returns stdout.
pub fn sh_ok(script: &str) -> String {
    let out = sh(script);
    assert!(
        out.status.success(),
        "script failed ({}):\n{script}\n--- stderr:\n{}--- stdout:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A name no other test, test binary or earlier run uses: `PREFIX-<pid>-<n>-<time>`,
/// lower case, valid for Docker volumes, containers, plugins and compose projects.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
        % 1_000_000_000;
    format!(
        "{}-{}-{n}-{t}",
        prefix.to_ascii_lowercase(),
        std::process::id()
    )
}

/// Runs registered shell commands when dropped, last registered first, so a
/// test cleans up after itself even when it fails halfway. A failing command
/// is reported on stderr and does not stop the others.
///
/// ```ignore
/// let mut cleanup = Cleanup::new();
/// cleanup.add(format!("docker volume rm -f {vol}"));
/// ```
#[derive(Default)]
pub struct Cleanup {
    commands: Vec<String>,
}

impl Cleanup {
    pub fn new() -> Cleanup {
        Cleanup::default()
    }

    /// Registers a `bash -c` command to run on drop.
    pub fn add(&mut self, command: impl Into<String>) {
        self.commands.push(command.into());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for command in self.commands.drain(..).rev() {
            match Command::new("bash")
                .args(["-c", &command])
                .stdin(Stdio::null())
                .output()
            {
                Ok(out) if out.status.success() => {}
                Ok(out) => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "cleanup: `{command}` failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "cleanup: cannot run `{command}`: {e}");
                }
            }
        }
    }
}

/// A path as `&str` (test paths are always UTF-8).
pub fn path_str(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()))
}

/// Polls `check` every 100 ms until it returns true; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Detaches every mount below `dir`, deepest first (volume mounts before a pool mount holding
/// their data); failures are ignored.
pub fn unmount_below(dir: &Path) {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut ours: Vec<PathBuf> = allspark::plugin::mounts::parse_mountinfo(&text)
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    ours.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in ours {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Makes the host's `/` a shared mount if it is private (only `/` itself), as
/// systemd does at boot: Docker refuses `-v /:/host:rslave` otherwise, and the
/// managed plugin's rslave host mount would not see later mounts. Runs
/// `allspark_ensure_root_propagation` of plugin/lib.sh, the one place that rule lives.
pub fn ensure_root_shared() {
    let lib = repo_root().join("plugin/lib.sh");
    sh_ok(&format!(
        "source '{}'\nallspark_ensure_root_propagation test",
        lib.display()
    ));
}

/// The loop devices bound to `image` (`losetup -j`: same device and inode), e.g. `/dev/loop3`.
pub fn loops_backing(image: &Path) -> Vec<String> {
    let out = Command::new("losetup")
        .arg("-j")
        .arg(image)
        .output()
        .expect("losetup (util-linux)");
    assert!(
        out.status.success(),
        "losetup -j {}: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| Some(l.split(':').next()?.to_string()))
        .collect()
}

/// The CLI on the state root `root`, which must succeed; its stdout.
pub fn cli_on(root: &Path, args: &[&str]) -> String {
    let out = Command::new(allspark_bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "allspark {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
