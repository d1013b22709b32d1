//! The release `allspark plugin` as a child process: start, wait until it answers, memory from /proc, stop, clean up mounts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::Conn;

/// A running (or stopped) plugin with its root and socket.
pub struct Plugin {
    pub bin: PathBuf,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub bind_roots: Vec<PathBuf>,
    pub log: PathBuf,
    pub child: Option<Child>,
    /// Extra arguments of `allspark plugin` (e.g. `--pool`).
    pub extra: Vec<String>,
}

impl Plugin {
    /// Describe a plugin; nothing runs until [`spawn`](Self::spawn).
    pub fn new(
        bin: &Path,
        root: &Path,
        socket: &Path,
        bind_roots: &[PathBuf],
        log: &Path,
    ) -> Plugin {
        Plugin {
            bin: bin.to_path_buf(),
            root: root.to_path_buf(),
            socket: socket.to_path_buf(),
            bind_roots: bind_roots.to_vec(),
            log: log.to_path_buf(),
            child: None,
            extra: Vec::new(),
        }
    }

    /// Start the process (default log level, as in production); returns at once.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "plugin already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root").arg(&self.root);
        for b in &self.bind_roots {
            cmd.arg("--bind-root").arg(b);
        }
        cmd.arg("plugin")
            .arg("--socket")
            .arg(&self.socket)
            .args(&self.extra)
            .env_remove("ALLSPARK_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        self.child = Some(cmd.spawn().expect("start allspark plugin"));
    }

    /// Wait until a connection is accepted (at most 20 s).
    pub fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Conn::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "the plugin did not listen on {}: {}",
                self.socket.display(),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Start and wait until it listens.
    pub fn start(&mut self) {
        self.spawn();
        self.wait_listening();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("plugin running").id()
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let text =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Wait (at most `timeout`) until the log shows that start-up recovery finished.
    pub fn wait_recovered(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            // The log is appended to across restarts: count completions.
            let done =
                log.matches("recovery done").count() + log.matches("recovery failed").count();
            let started = log.matches("allspark plugin listening").count();
            if started > 0 && done >= started {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait (kill -9 after 15 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        unmount_under(&self.root);
    }
}

/// Detach every mount point under `dir` (bind mounts a killed plugin left).
pub fn unmount_under(dir: &Path) {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = allspark::plugin::mounts::parse_mountinfo(&text)
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    points.sort();
    for m in points.iter().rev() {
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Run a command; panic with its output unless it succeeds; stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What [`timed`] measured.
pub struct Timed {
    pub secs: f64,
    /// Peak resident memory of the command (max RSS), KiB.
    pub maxrss_kib: u64,
    /// CPU time (user + system) of the command and the children it waited for, seconds.
    pub cpu_secs: f64,
    pub stdout: String,
}

/// Run a command to completion, timing it from spawn to exit, with its peak
/// memory. Panics with the output unless it succeeds.
///
/// The peak and the CPU time come from `/usr/bin/time -f '%M %U %S'` (wait4's rusage of its child):
/// read directly by this process, ru_maxrss would be at least this process's
/// own size, which the child inherits at fork and keeps through exec.
pub fn timed(cmd: &mut Command) -> Timed {
    let gnu_time = Path::new("/usr/bin/time");
    let rss_file = std::env::temp_dir().join(format!("allspark-bench-rss-{}", std::process::id()));
    let mut wrapped;
    let run: &mut Command = if gnu_time.exists() {
        wrapped = Command::new(gnu_time);
        wrapped
            .arg("-f")
            .arg("%M %U %S")
            .arg("-o")
            .arg(&rss_file)
            .arg("--")
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            wrapped.current_dir(d);
        }
        &mut wrapped
    } else {
        cmd
    };
    run.stdin(Stdio::null());
    let start = Instant::now();
    let out = run
        .output()
        .unwrap_or_else(|e| panic!("cannot run {run:?}: {e}"));
    let secs = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{run:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let measured = std::fs::read_to_string(&rss_file).unwrap_or_default();
    let fields: Vec<f64> = measured
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let (maxrss_kib, cpu_secs) = match fields[..] {
        [rss, user, sys] => (rss as u64, user + sys),
        _ => (0, 0.0),
    };
    let _ = std::fs::remove_file(&rss_file);
    Timed {
        secs,
        maxrss_kib,
        cpu_secs,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}
