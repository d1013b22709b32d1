//! Restarting the machine's dockerd (only when allowed), and making it forget dead legacy drivers.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::common::{docker, sh_ok, unique_name, wait_until};

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
