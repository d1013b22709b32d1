//! Shared helpers for the integration tests that drive a real dockerd.
//!
//! Include with `mod common;` from a file in `tests/`. The API:
//!
//! - [`require_docker`]: call first in every test that needs Docker; when it
//!   returns `false`, return from the test. No daemon + `ALLSPARK_REQUIRE_DOCKER`
//!   unset = a loud `SKIPPED:` banner on stderr; set = the test fails.
//! - [`docker`] / [`docker_ok`]: run the docker CLI (the second panics with
//!   stderr on failure and returns stdout).
//! - [`ensure_busybox_image`]: the offline test image (static busybox).
//! - [`unique_name`]: names that never collide between tests or runs.
//! - [`Cleanup`]: shell commands run on drop, also when a test panics.
//! - [`allspark_bin`]: a plain function, because this module is compiled into
//!   each test crate, where `env!("CARGO_BIN_EXE_allspark")` is defined.
//! - [`repo_root`], [`sh`] / [`sh_ok`], [`wait_until`], [`path_str`],
//!   [`ensure_root_shared`] (host `/` shared, for `rslave` binds).
//!
//! Not every test binary uses every helper, hence `allow(dead_code)`.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The image [`ensure_busybox_image`] builds.
pub const BUSYBOX_IMAGE: &str = "allspark-test/busybox:latest";
/// Bumped whenever the image's contents change, so an old one is rebuilt.
const BUSYBOX_IMAGE_VERSION: &str = "1";

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
pub fn require_docker() -> bool {
    if docker_available() {
        return true;
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
    false
}

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

/// Returns [`BUSYBOX_IMAGE`], building it first if needed: `docker import` of a
/// tar holding the host's static busybox (Debian's `busybox-static`) as
/// `/bin/busybox`, a `/bin/<applet>` symlink for every applet (sh, ls, cat,
/// stat, touch, sleep, mkdir, grep, echo, id, dd, sha256sum, …), `/usr/bin` →
/// `/bin`, `/tmp`, and an `/etc/passwd` with root, uid 1000 (`app`) and nobody.
/// No registry is needed. Safe to call from many tests and test binaries at
/// once: builds happen under a lock (in-process mutex + `flock` across
/// processes) and are skipped when the image with this version exists.
pub fn ensure_busybox_image() -> String {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if *built {
        return BUSYBOX_IMAGE.to_string();
    }
    let lock_path = std::env::temp_dir().join("allspark-test-busybox-image.lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", lock_path.display()));
    // SAFETY: flock on a descriptor we own; released when `lock` is closed.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        rc,
        0,
        "flock {}: {}",
        lock_path.display(),
        std::io::Error::last_os_error()
    );

    let label = docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"allspark.test.busybox\"}}",
        BUSYBOX_IMAGE,
    ]);
    if !(label.status.success()
        && String::from_utf8_lossy(&label.stdout).trim() == BUSYBOX_IMAGE_VERSION)
    {
        build_busybox_image();
    }
    *built = true;
    BUSYBOX_IMAGE.to_string()
}

fn find_static_busybox() -> PathBuf {
    let candidates = ["/bin/busybox", "/usr/bin/busybox", "/usr/local/bin/busybox"];
    let path = candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no busybox found ({}): apt-get install busybox-static",
                candidates.join(", ")
            )
        });
    let ldd = Command::new("ldd").arg(&path).output();
    if let Ok(out) = ldd {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("=>"),
            "{} is dynamically linked; the test image needs a static one: apt-get install busybox-static",
            path.display()
        );
    }
    path
}

fn build_busybox_image() {
    let busybox = find_static_busybox();
    let dir = RemoveOnDrop(std::env::temp_dir().join(unique_name("allspark-busybox-rootfs")));
    let root = dir.0.join("rootfs");
    for d in [
        "bin", "etc", "tmp", "root", "home/app", "proc", "sys", "dev",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::create_dir_all(root.join("usr")).unwrap();
    symlink("/bin", root.join("usr/bin")).unwrap();
    fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    fs::set_permissions(root.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
    let list = Command::new(&busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    assert!(list.status.success(), "busybox --list failed");
    for applet in String::from_utf8_lossy(&list.stdout).lines().map(str::trim) {
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    for needed in [
        "sh",
        "ls",
        "cat",
        "stat",
        "touch",
        "sleep",
        "mkdir",
        "grep",
        "echo",
        "id",
        "dd",
        "sha256sum",
    ] {
        assert!(
            root.join("bin").join(needed).exists(),
            "busybox has no `{needed}` applet"
        );
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n",
    )
    .unwrap();
    let tar = dir.0.join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--numeric-owner", "-cf"])
        .arg(&tar)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(status.success(), "tar of the busybox rootfs failed");
    docker_ok(&[
        "import",
        "--change",
        &format!("LABEL allspark.test.busybox={BUSYBOX_IMAGE_VERSION}"),
        "--change",
        "CMD [\"sh\"]",
        path_str(&tar),
        BUSYBOX_IMAGE,
    ]);
}

/// Removes a scratch directory when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
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
