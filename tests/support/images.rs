//! The offline test images (static busybox, the sleeper, the database stand-ins) and the shipped
//! compose file read as the tests need it (a service's labels, the volumes' driver_opts).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::common::{docker, docker_ok, path_str, repo_root, unique_name};

/// The image [`ensure_busybox_image`] builds.
pub const BUSYBOX_IMAGE: &str = "allspark-test/busybox:latest";
/// Bumped whenever the image's contents change, so an old one is rebuilt.
const BUSYBOX_IMAGE_VERSION: &str = "1";

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
