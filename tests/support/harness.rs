//! Test harness: runs the real `allspark plugin` on a real Unix socket in a scratch root, and talks to it with hyperlocal.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use allspark::core::names::VolumeName;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt, UnixConnector, Uri};
use serde_json::Value;

/// A plugin process with its own root, socket and mount directory.
pub struct Plugin {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
    pub extra_args: Vec<String>,
    /// Extra environment of the plugin process (e.g. `ALLSPARK_BOOT_ID` to simulate a reboot).
    pub env: Vec<(String, String)>,
}

impl Plugin {
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("allspark.sock")
    }
    pub fn mount_dir(&self) -> PathBuf {
        self.root().join("mounts")
    }
    /// A host directory allowed as a bind root (outside the state root).
    pub fn bind_root(&self) -> PathBuf {
        self.dir.path().join("binds")
    }

    /// Start a plugin in a fresh scratch directory.
    pub fn start(bin: &str) -> Plugin {
        Plugin::start_with(bin, &[])
    }

    pub fn start_with(bin: &str, extra: &[&str]) -> Plugin {
        let dir = tempfile::Builder::new()
            .prefix("allspark-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        std::fs::create_dir_all(dir.path().join("binds")).unwrap();
        let mut p = Plugin {
            child: None,
            dir,
            bin: PathBuf::from(bin),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        };
        p.spawn();
        p
    }

    /// Start a plugin with one `btrfs-image` pool `name` of `size` (sparse, in the scratch
    /// directory: `<dir>/<name>.img`, mounted at `<root>/pools/<name>`).
    pub fn start_with_pool(bin: &str, name: &str, size: &str, extra: &[&str]) -> Plugin {
        let dir = tempfile::Builder::new()
            .prefix("allspark-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        std::fs::create_dir_all(dir.path().join("binds")).unwrap();
        let image = dir.path().join(format!("{name}.img"));
        let mut extra_args = vec![
            "--pool".to_string(),
            format!("{name}=btrfs-image:{}:{size}", image.display()),
        ];
        extra_args.extend(extra.iter().map(|s| s.to_string()));
        let mut p = Plugin {
            child: None,
            dir,
            bin: PathBuf::from(bin),
            extra_args,
            env: Vec::new(),
        };
        p.spawn();
        p
    }

    /// The image file of a pool made by [`Plugin::start_with_pool`].
    pub fn pool_image(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.img"))
    }

    /// Start the process (again) and wait until the socket answers.
    pub fn spawn(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root")
            .arg(self.root())
            .arg("plugin")
            .arg("--socket")
            .arg(self.socket())
            .arg("--bind-root")
            .arg(self.bind_root())
            .arg("--bind-root")
            .arg(self.root())
            .args(&self.extra_args)
            .env("ALLSPARK_LOG", "debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join("plugin.log"))
                    .unwrap(),
            ));
        self.child = Some(cmd.spawn().expect("start allspark plugin"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(
                Instant::now() < deadline,
                "plugin did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("plugin.log")).unwrap_or_default()
    }

    /// kill -9, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("plugin running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        c.wait().unwrap()
    }

    /// One call: (HTTP status, JSON reply).
    /// Where a default-pool volume's data lives (from the layout, not a hard-coded path).
    pub fn managed_data(&self, name: &str) -> PathBuf {
        allspark::core::layout::Layout::new(self.root())
            .managed_data(&allspark::core::names::VolumeName::fixed(name))
    }

    /// `allspark snapshot ls VOLUME --json`, parsed.
    pub fn snapshots(&self, volume: &str) -> Vec<Value> {
        let out = cli_ok(self, &["snapshot", "ls", volume, "--json"]);
        match serde_json::from_str::<Value>(&out) {
            Ok(Value::Array(a)) => a,
            other => panic!("snapshot ls {volume} --json printed {out:?} ({other:?})"),
        }
    }

    /// The mount count `VolumeDriver.Get` shows for `name` (`None`: no such volume).
    pub fn mount_count(&self, name: &str) -> Option<u64> {
        let (_, v) = self.call("VolumeDriver.Get", serde_json::json!({"Name": name}));
        v["Volume"]["Status"]["mounted"].as_u64()
    }

    pub fn call(&self, method: &str, body: Value) -> (u16, Value) {
        call_raw(&self.socket(), method, body.to_string().into_bytes())
    }

    /// Create a volume; the `Err` text of the reply ("" when created).
    pub fn create(&self, name: &str, opts: Value) -> String {
        err_of(
            &self
                .call(
                    "VolumeDriver.Create",
                    serde_json::json!({"Name": name, "Opts": opts}),
                )
                .1,
        )
    }

    /// Mount a volume for container `id` (must succeed); its mount point.
    pub fn mount(&self, name: &str, id: &str) -> PathBuf {
        let (_, v) = self.call(
            "VolumeDriver.Mount",
            serde_json::json!({"Name": name, "ID": id}),
        );
        assert_eq!(err_of(&v), "", "mount {name}");
        PathBuf::from(v["Mountpoint"].as_str().unwrap())
    }

    /// Unmount a volume for container `id` (must succeed).
    pub fn unmount(&self, name: &str, id: &str) {
        let (_, v) = self.call(
            "VolumeDriver.Unmount",
            serde_json::json!({"Name": name, "ID": id}),
        );
        assert_eq!(err_of(&v), "", "unmount {name}");
    }

    /// kill -9 and start again with this environment (its reconciliation runs at start).
    pub fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.kill9();
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.spawn();
    }

    /// Live mount points under this plugin's mount directory.
    pub fn live_mounts(&self) -> Vec<PathBuf> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        allspark::plugin::mounts::parse_mountinfo(&text)
            .into_iter()
            .filter(|p| p.starts_with(self.mount_dir()))
            .collect()
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.kill9();
        // Every mount under the scratch directory: volumes, and the plugin's private staging mount.
        super::common::unmount_below(self.dir.path());
    }
}

/// POST a body to the socket with a hyperlocal client.
pub fn call_raw(socket: &Path, method: &str, body: Vec<u8>) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client: Client<UnixConnector, Full<Bytes>> = Client::unix();
        let uri: hyper::Uri = Uri::new(socket, &format!("/{method}")).into();
        let req = hyper::Request::post(uri)
            .header("Accept", "application/vnd.docker.plugins.v1.2+json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = client.request(req).await.expect("request");
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("reply is not JSON: {}", String::from_utf8_lossy(&bytes)));
        (status, v)
    })
}

/// The `Err` text of a reply ("" when none).
pub fn err_of(v: &Value) -> String {
    v.get("Err")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// Mount options of a mount point, from our own mountinfo.
pub fn mount_opts(point: &Path) -> String {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    allspark::plugin::mounts::mount_options(&text, point).unwrap_or_default()
}

/// An `allspark agent` process on a root, killed when dropped.
pub struct Agent(pub Child);

impl Agent {
    /// Start the agent on `root`, logging to `log`, with extra arguments (e.g. `--no-docker-events`).
    /// Its scheduled backups go to `<root>-backups` unless `extra` names a `--backup-root` or
    /// `--no-schedule`: never to the host's `/backups/allspark` (an agent started after 02:00
    /// catches up the day's missed backup).
    pub fn start(root: &Path, log: &Path, extra: &[&str]) -> Agent {
        let own_backups = format!("{}-backups", root.display());
        let backup_root: &[&str] = if extra
            .iter()
            .any(|a| *a == "--backup-root" || *a == "--no-schedule")
        {
            &[]
        } else {
            &["--backup-root", &own_backups]
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Agent(
            Command::new(env!("CARGO_BIN_EXE_allspark"))
                .arg("--root")
                .arg(root)
                .args(["agent", "--spool-poll-ms", "50"])
                .args(backup_root)
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .expect("start allspark agent"),
        )
    }
}

impl Agent {
    /// An agent on `p`'s root as the hardening tests run it: no Docker (a dead endpoint, no
    /// events), no schedules, logging to the plugin's directory (`agent.log`); `extra` appended.
    pub fn offline(p: &Plugin, extra: &[&str]) -> Agent {
        let mut args = vec![
            "--no-docker-events",
            "--no-schedule",
            "--docker",
            "unix:///nonexistent.sock",
        ];
        args.extend_from_slice(extra);
        Agent::start(&p.root(), &p.dir.path().join("agent.log"), &args)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Poll `f` every 50 ms until it holds, or fail after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The mount references the plugin keeps for `name` this boot (its runtime file), by mount ID.
pub fn refs(root: &Path, name: &str) -> std::collections::BTreeMap<String, u64> {
    let layout = allspark::core::layout::Layout::new(root);
    std::fs::read(layout.refs(&VolumeName::fixed(name)))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| serde_json::from_value(v["mounts"].clone()).ok())
        .unwrap_or_default()
}

/// Overwrite the mount references of `name` (as a crash between an unmount and its record
/// would leave them).
pub fn set_refs(root: &Path, name: &str, mounts: Value) {
    let layout = allspark::core::layout::Layout::new(root);
    let path = layout.refs(&VolumeName::fixed(name));
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["mounts"] = mounts;
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

/// Run the CLI against the plugin's root (Docker pointed nowhere, so no test reaches the real daemon).
pub fn cli(p: &Plugin, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_allspark"))
        .arg("--root")
        .arg(p.root())
        .args(args)
        .env("ALLSPARK_DOCKER", "unix:///nonexistent.sock")
        .output()
        .unwrap()
}

/// The CLI against the plugin's root with its bind root allowed and extra environment
/// (Docker pointed nowhere).
pub fn cli_env(p: &Plugin, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_allspark"))
        .arg("--root")
        .arg(p.root())
        .arg("--bind-root")
        .arg(p.bind_root())
        .args(args)
        .env("ALLSPARK_DOCKER", "unix:///nonexistent.sock")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// One call over a plain socket that may fail (the plugin killed or aborting mid-call):
/// `Err` says how it failed.
pub fn try_call(sock: &Path, method: &str, body: &Value) -> Result<(u16, Value), String> {
    let mut s =
        std::os::unix::net::UnixStream::connect(sock).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let b = body.to_string();
    write!(
        s,
        "POST /{method} HTTP/1.1\r\nHost: plugin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
        b.len()
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .map_err(|e| format!("receive: {e}"))?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("truncated reply {text:?}"))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {head:?}"))?;
    let v = serde_json::from_str(body).map_err(|e| format!("reply body {body:?}: {e}"))?;
    Ok((status, v))
}

/// `cli` that must succeed; its stdout.
pub fn cli_ok(p: &Plugin, args: &[&str]) -> String {
    let out = cli(p, args);
    assert!(
        out.status.success(),
        "allspark {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `len` bytes of deterministic incompressible data (xorshift64 from `seed`, which must not be 0).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `data` as one gzip member (fast level), for hand-made archives.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip finish")
}
