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

use std::collections::BTreeMap;
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

/// The image [`ensure_sleeper_image`] builds.
pub const SLEEPER_IMAGE: &str = "allspark-test/sleeper:latest";
/// Bumped whenever [`ensure_sleeper_image`]'s image changes, so an old one is rebuilt.
const SLEEPER_IMAGE_VERSION: &str = "1";

/// Returns [`SLEEPER_IMAGE`], building it first if needed: [`BUSYBOX_IMAGE`] whose default
/// command waits forever and exits 0 at once on SIGTERM, a stand-in for a long-running service
/// that needs no `command:` in a compose override (only its image name changes). Built offline
/// (`docker build` with the classic builder from the local busybox image).
pub fn ensure_sleeper_image() -> String {
    ensure_busybox_image();
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if *built {
        return SLEEPER_IMAGE.to_string();
    }
    let label = docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"allspark.test.sleeper\"}}",
        SLEEPER_IMAGE,
    ]);
    if !(label.status.success()
        && String::from_utf8_lossy(&label.stdout).trim() == SLEEPER_IMAGE_VERSION)
    {
        let dir = RemoveOnDrop(std::env::temp_dir().join(unique_name("allspark-sleeper")));
        fs::create_dir_all(&dir.0).unwrap();
        fs::write(
            dir.0.join("Dockerfile"),
            format!(
                "FROM {BUSYBOX_IMAGE}\n\
                 LABEL allspark.test.sleeper={SLEEPER_IMAGE_VERSION}\n\
                 CMD [\"sh\", \"-c\", \"trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done\"]\n"
            ),
        )
        .unwrap();
        let out = Command::new("docker")
            .args(["build", "-q", "-t", SLEEPER_IMAGE])
            .arg(&dir.0)
            .env("DOCKER_BUILDKIT", "0")
            .stdin(Stdio::null())
            .output()
            .expect("run docker build");
        assert!(
            out.status.success(),
            "docker build of {SLEEPER_IMAGE} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    *built = true;
    SLEEPER_IMAGE.to_string()
}

/// The offline stand-ins for `postgres:15` and `redis:7` (`allspark-test/postgres:15`,
/// `allspark-test/redis:7`): runs `bash scripts/db-images.sh`, which builds them when missing
/// or stale (about two minutes the first time, needs debootstrap and the Debian mirror) and
/// does nothing otherwise. Returns the two image names it prints.
pub fn ensure_db_images() -> (String, String) {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/db-images.sh"))
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/db-images.sh");
    assert!(
        out.status.success(),
        "scripts/db-images.sh failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let postgres = names.iter().find(|n| n.contains("postgres"));
    let redis = names.iter().find(|n| n.contains("redis"));
    match (postgres, redis) {
        (Some(p), Some(r)) => (p.to_string(), r.to_string()),
        _ => panic!("scripts/db-images.sh printed no postgres and redis image names: {stdout}"),
    }
}

/// The labels of `service` in the shipped `compose/docker-compose.yml`, in file order
/// (one-line `key: value` entries of its `labels:` block, quotes removed), so tests run
/// the very commands users get.
pub fn compose_labels(service: &str) -> Vec<(String, String)> {
    let path = repo_root().join("compose/docker-compose.yml");
    let text = fs::read_to_string(&path).unwrap();
    let mut in_services = false;
    let mut in_service = false;
    let mut in_labels = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if indent == 0 {
            in_services = t == "services:";
            in_service = false;
            in_labels = false;
        } else if in_services && indent == 2 {
            in_service = t == format!("{service}:");
            in_labels = false;
        } else if in_service && indent == 4 {
            in_labels = t == "labels:";
        } else if in_labels && indent == 6 {
            let (k, v) = t
                .split_once(": ")
                .unwrap_or_else(|| panic!("unexpected label line in {}: {line}", path.display()));
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            out.push((k.to_string(), v.to_string()));
        }
    }
    assert!(
        !out.is_empty(),
        "service {service} has no labels in {}",
        path.display()
    );
    out
}

/// The volumes of the shipped `compose/docker-compose.yml` as `docker-compose config` renders
/// them with `env` set (variables substituted, nothing else changed): name and driver_opts,
/// in file order.
pub fn compose_volume_opts(env: &[(&str, &str)]) -> Vec<(String, BTreeMap<String, String>)> {
    let path = repo_root().join("compose/docker-compose.yml");
    let mut cmd = Command::new("docker-compose");
    cmd.arg("-f")
        .arg(&path)
        .arg("config")
        .env("POSTGRES_PASSWORD", "unused")
        .env_remove("ALLSPARK_WORKSPACE_POOL")
        .env_remove("ALLSPARK_FAST_POOL")
        .envs(env.iter().copied());
    let out = cmd
        .output()
        .expect("docker-compose (v1) is needed to render the shipped compose file");
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut vols: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let (mut in_volumes, mut in_opts) = (false, false);
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        if indent == 0 {
            in_volumes = t == "volumes:";
        } else if in_volumes && indent == 2 {
            vols.push((t.trim_end_matches(':').to_string(), BTreeMap::new()));
            in_opts = false;
        } else if in_volumes && indent == 4 {
            in_opts = t == "driver_opts:";
        } else if in_volumes && in_opts && indent == 6 {
            let (k, v) = t
                .split_once(": ")
                .unwrap_or_else(|| panic!("unexpected line: {line}"));
            let v = v.trim_matches(|c| c == '\'' || c == '"');
            vols.last_mut()
                .unwrap()
                .1
                .insert(k.to_string(), v.to_string());
        }
    }
    assert!(!vols.is_empty(), "no volumes rendered: {text}");
    vols
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
        ensure_root_shared();
        reap_stale_test_plugins();
        let base = unique_name(prefix);
        let plugin = TestPlugin {
            name: format!("{base}:latest"),
            root: TestRoot::new(&base),
        };
        plugin_script_ok("build.sh", &[&plugin.name]);
        let mut set = vec!["plugin".to_string(), "set".to_string(), plugin.name.clone()];
        set.extend(plugin.root.settings());
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

/// Whether a test may restart the machine's dockerd: only with
/// `ALLSPARK_TEST_DOCKERD_RESTART=1` (`.ci/run` sets it; test binaries run one after
/// another there). A restart stops every container of the machine and disturbs every other
/// test using Docker, so without it this prints a loud `SKIPPED:` banner naming `what` (the
/// test or the step that needs the restart) and returns false.
pub fn dockerd_restart_allowed(what: &str) -> bool {
    if matches!(
        std::env::var("ALLSPARK_TEST_DOCKERD_RESTART").as_deref(),
        Ok("1")
    ) {
        return true;
    }
    let bar = "!".repeat(78);
    let _ = writeln!(
        std::io::stderr(),
        "\n{bar}\nSKIPPED: {what}: it restarts the machine's dockerd (every other container and\n\
         test using Docker is disturbed). Set ALLSPARK_TEST_DOCKERD_RESTART=1 (.ci/run does)\n\
         to run it.\n{bar}\n"
    );
    false
}

/// Restarts dockerd the way this machine runs it: systemd, the Debian init
/// script (start-stop-daemon pid file), or a dockerd started by hand or by an
/// init without either, which is stopped and started again with the same
/// command line, environment and log file. Waits until it answers.
pub fn restart_dockerd() {
    // The test runs under `flock /tmp/allspark-docker.lock`, whose descriptor every child
    // inherits: a dockerd started from here would hold the lock for the whole machine until
    // it stops. Nothing this process inherited goes to its children.
    close_inherited_on_exec();
    let quiet = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if quiet("systemctl", &["is-active", "--quiet", "docker"]) {
        sh_ok("systemctl restart docker");
    } else if Path::new("/var/run/docker-ssd.pid").exists()
        && Path::new("/etc/init.d/docker").exists()
    {
        sh_ok("/etc/init.d/docker restart");
    } else {
        let pid = fs::read_to_string("/var/run/docker.pid")
            .expect("read /var/run/docker.pid (is dockerd running?)")
            .trim()
            .to_string();
        let proc_dir = PathBuf::from("/proc").join(&pid);
        let split = |b: Vec<u8>| -> Vec<String> {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        };
        let argv = split(fs::read(proc_dir.join("cmdline")).expect("dockerd cmdline"));
        let env = split(fs::read(proc_dir.join("environ")).expect("dockerd environ"));
        let log = fs::read_link(proc_dir.join("fd/2"))
            .ok()
            .filter(|p| p.is_absolute() && p.is_file())
            .unwrap_or_else(|| PathBuf::from("/var/log/dockerd.log"));
        // Its working directory may be gone (a deleted checkout that started it): then `/`.
        let cwd = fs::read_link(proc_dir.join("cwd"))
            .ok()
            .filter(|d| d.is_dir())
            .unwrap_or_else(|| PathBuf::from("/"));
        sh_ok(&format!("kill -TERM {pid}"));
        wait_until("the old dockerd exited", Duration::from_secs(90), || {
            !proc_dir.exists()
        });
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the dockerd log");
        // `setsid --fork` returns at once and leaves dockerd a child of init,
        // in its own session, outliving the test as before.
        let mut cmd = Command::new("setsid");
        cmd.arg("--fork")
            .args(&argv)
            .env_clear()
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for kv in &env {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        if !env.iter().any(|kv| kv.starts_with("PATH=")) {
            cmd.env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        }
        match cmd.status() {
            Ok(status) if status.success() => {}
            other => {
                // Never leave the machine without a daemon: start a plain one.
                let _ = writeln!(
                    std::io::stderr(),
                    "note: starting dockerd as before failed ({other:?}); starting `dockerd` from / instead"
                );
                sh_ok(&format!(
                    "cd / && setsid --fork dockerd >>'{}' 2>&1 </dev/null",
                    log.display()
                ));
            }
        }
    }
    wait_until("dockerd answers again", Duration::from_secs(120), || {
        docker(&["info"]).status.success()
    });
}

/// Mark every descriptor above stderr close-on-exec (the ones Rust opens already are; the ones
/// inherited, like `flock`'s lock, are not).
fn close_inherited_on_exec() {
    let Ok(entries) = fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
}

/// dockerd remembers every legacy (socket) volume driver it ever used, until
/// it restarts; once such a socket is gone, each lookup of a volume name it
/// does not know (`docker volume inspect`, which docker-compose does for every
/// volume) asks every dead driver with retries: about 15 s each, minutes in
/// all. This probes one such lookup and, when it takes longer than 10 s,
/// restarts dockerd, the only way to make it forget them.
pub fn forget_dead_legacy_drivers() {
    let probe = unique_name("allspark-probe-no-such-volume");
    let mut child = Command::new("docker")
        .args(["volume", "inspect", &probe])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run docker volume inspect");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = writeln!(
        std::io::stderr(),
        "note: dockerd takes over 10 s to look up an unknown volume (dead legacy volume drivers \
         from earlier tests); restarting dockerd so it forgets them"
    );
    restart_dockerd();
}
