//! A plugin on a legacy socket (`/run/docker/plugins/<driver>.sock`) for end-to-end tests against the real dockerd.
//!
//! Every test uses the same driver name, one at a time: dockerd remembers each socket driver it
//! has talked to until it restarts, and looking up an unknown volume waits on every dead one, so
//! a fresh name per test would make dockerd slower with every run.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::common::{docker, unmount_below};

/// The one legacy driver name of the tests.
pub const DRIVER: &str = "allspark-legacy-test";

/// Serializes the tests of a binary that use the legacy driver.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Serializes them across processes too (test binaries run by different people at once).
fn machine_wide_turn() -> allspark::fs::durable::FileLock {
    std::fs::create_dir_all("/run/docker/plugins").unwrap();
    allspark::fs::durable::FileLock::acquire(
        std::path::Path::new(&format!("/run/docker/plugins/{DRIVER}.lock")),
        allspark::fs::durable::LockKind::Exclusive,
    )
    .expect("lock the legacy test driver")
}

const BIN: &str = env!("CARGO_BIN_EXE_allspark");

/// A plugin serving `/run/docker/plugins/<driver>.sock`, so dockerd finds it as driver `<driver>`.
pub struct LegacyPlugin {
    pub driver: String,
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub volumes: Vec<String>,
    /// Extra arguments of `allspark plugin` (e.g. `--pool`).
    pub extra_args: Vec<String>,
    _turn: std::sync::MutexGuard<'static, ()>,
    _machine_turn: allspark::fs::durable::FileLock,
}

impl LegacyPlugin {
    /// An agent on this plugin's root (log in the plugin's scratch directory).
    pub fn start_agent(&self) -> crate::support::harness::Agent {
        crate::support::harness::Agent::start(&self.root(), &self.dir.path().join("agent.log"), &[])
    }

    /// The CLI on this plugin's root, which must succeed; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        crate::support::common::cli_on(&self.root(), args)
    }

    /// `snapshot ls VOLUME --json`.
    pub fn snapshots(&self, volume: &str) -> Vec<serde_json::Value> {
        serde_json::from_str::<serde_json::Value>(
            &self.cli_ok(&["snapshot", "ls", volume, "--json"]),
        )
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
    }

    pub fn start() -> LegacyPlugin {
        LegacyPlugin::start_with(|_| Vec::new())
    }

    /// Start with extra `allspark plugin` arguments, made from the scratch directory (for a
    /// pool image inside it).
    pub fn start_with(extra: impl FnOnce(&std::path::Path) -> Vec<String>) -> LegacyPlugin {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let machine_turn = machine_wide_turn();
        let driver = DRIVER.to_string();
        let dir = tempfile::Builder::new()
            .prefix("allspark-e2e-")
            .tempdir_in("/var/lib")
            .unwrap();
        let mut p = LegacyPlugin {
            driver,
            dir,
            child: None,
            volumes: Vec::new(),
            extra_args: Vec::new(),
            _turn: turn,
            _machine_turn: machine_turn,
        };
        p.extra_args = extra(p.dir.path());
        let _ = std::fs::remove_file(p.socket());
        p.spawn();
        p
    }
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    pub fn socket(&self) -> PathBuf {
        PathBuf::from(format!("/run/docker/plugins/{}.sock", self.driver))
    }
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("plugin.log"))
            .unwrap();
        self.child = Some(
            Command::new(BIN)
                .arg("--root")
                .arg(self.root())
                .args(["plugin", "--socket"])
                .arg(self.socket())
                .arg("--bind-root")
                .arg(self.dir.path().join("binds"))
                .args(&self.extra_args)
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(Instant::now() < deadline, "plugin did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    pub fn create(&mut self, name: &str, opts: &[&str]) -> std::process::Output {
        let mut args = vec!["volume", "create", "-d", &self.driver];
        for o in opts {
            args.push("-o");
            args.push(o);
        }
        args.push(name);
        self.volumes.push(name.to_string());
        docker(&args)
    }
}

impl Drop for LegacyPlugin {
    fn drop(&mut self) {
        for v in &self.volumes {
            let _ = docker(&["volume", "rm", "-f", v]);
        }
        self.kill9();
        let _ = std::fs::remove_file(self.socket());
        unmount_below(self.dir.path());
    }
}

/// Run a command in a throwaway container with a volume; its stdout.
pub fn run(image: &str, vol: &str, script: &str) -> String {
    crate::support::common::docker_ok(&["run", "--rm", "-v", vol, image, "sh", "-c", script])
}
