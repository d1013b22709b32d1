//! Crash consistency: a seeded random sequence of operations against the real plugin and agent
//! (create, mount, unmount, remove, writes through the mounts, snapshot create and restore via the
//! CLI), with SIGKILLs of the plugin in the middle of calls, of the agent at random moments and of
//! the CLI mid-snapshot or mid-restore; after every restart the state is checked against a model.
//!
//! Scale it with `ALLSPARK_HARDENING_OPS` (default 1500) and pick the sequence with
//! `ALLSPARK_HARDENING_SEED` (default 1; `random` for a new one, printed). The counts are printed
//! at the end (and recorded in docs/hardening.md).

use crate::support::harness;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use harness::{try_call, Plugin};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_allspark");
const NAMES: usize = 10;
const IDS: &[&str] = &["c1", "c2", "c3"];
const FILES: &[&str] = &["a", "b", "c", "big", "e"];

type Files = BTreeMap<String, Vec<u8>>;

/// One volume as the test believes it is.
#[derive(Clone, Debug, Default, PartialEq)]
struct Vol {
    mounts: BTreeMap<String, u64>,
    files: Files,
}

impl Vol {
    fn refs(&self) -> u64 {
        self.mounts.values().sum()
    }
}

/// Options of volume `v<i>`: two with automatic snapshots (one pruned to the default keep=10).
fn opts_of(i: usize) -> Value {
    match i % 4 {
        0 => json!({"snapshot": "on-unmount"}),
        1 => json!({"snapshot": "on-unmount", "keep": "1000"}),
        2 => json!(null),
        _ => json!({"o": "noatime", "keep": "1000"}),
    }
}

/// An operation whose outcome a kill made unknown.
#[derive(Debug)]
enum Pending {
    Create(String),
    Remove(String),
    Mount(String, String),
    Unmount(String, String),
}

#[derive(Default, Debug)]
struct Counts {
    ops: u64,
    calls: u64,
    cli: u64,
    plugin_kills: u64,
    kills_mid_call: u64,
    agent_kills: u64,
    cli_kills: u64,
    restarts_checked: u64,
    checks: u64,
    files_compared: u64,
    snapshots_verified: u64,
    immediate_calls: u64,
    failures: u64,
}

/// The agent of a run, killed (SIGKILL) and restarted by the crash loop.
struct Agent(Option<harness::Agent>);

impl Agent {
    fn start(p: &Plugin) -> Agent {
        Agent(Some(harness::Agent::offline(p, &[])))
    }
    fn kill9(&mut self) {
        // Dropping it kills it with SIGKILL and reaps it.
        self.0 = None;
    }
}

/// One blocking HTTP/1.1 call on a fresh connection; `Err` if the plugin died before answering.
fn err_of(v: &Value) -> &str {
    v.get("Err").and_then(Value::as_str).unwrap_or("")
}

struct Run {
    p: Plugin,
    agent: Agent,
    rng: StdRng,
    vols: BTreeMap<String, Vol>,
    /// Manual snapshots the test took: volume -> id -> the files at that time.
    snaps: BTreeMap<String, BTreeMap<String, Files>>,
    /// Snapshot ids of each volume at its last verification.
    verified: BTreeMap<String, BTreeSet<String>>,
    /// Volumes whose last restore was killed: a staging directory may be left until the next one.
    killed_restore: BTreeSet<String>,
    counts: Counts,
    log_offset: u64,
    agent_down_for: u64,
    failures: Vec<String>,
    seed: u64,
    /// The last operations, for the failure report.
    history: std::collections::VecDeque<String>,
}

impl Run {
    fn root(&self) -> PathBuf {
        self.p.root()
    }
    fn data(&self, name: &str) -> PathBuf {
        self.root().join("volumes").join(name).join("data")
    }
    fn mountpoint(&self, name: &str) -> PathBuf {
        self.p.mount_dir().join(name)
    }
    fn fail(&mut self, what: String) {
        eprintln!("FAILURE (seed {}): {what}", self.seed);
        self.counts.failures += 1;
        self.failures.push(what);
    }

    fn note(&mut self, what: String) {
        if self.history.len() == 60 {
            self.history.pop_front();
        }
        self.history.push_back(what);
    }

    fn call(&mut self, method: &str, body: Value) -> (u16, Value) {
        self.note(format!("{method} {body}"));
        self.counts.calls += 1;
        try_call(&self.p.socket(), method, &body)
            .unwrap_or_else(|e| panic!("{method} {body}: {e}\n{}", tail(&self.p.log())))
    }

    fn cli(&mut self, args: &[&str]) -> Output {
        self.note(format!("cli {args:?}"));
        self.counts.cli += 1;
        Command::new(BIN)
            .arg("--root")
            .arg(self.root())
            .args(args)
            .env("ALLSPARK_DOCKER", "unix:///nonexistent.sock")
            .output()
            .unwrap()
    }

    /// Run the CLI and SIGKILL it after `after`; `None` if it was killed before finishing.
    fn cli_killed(&mut self, args: &[&str], after: Duration) -> Option<Output> {
        self.note(format!("cli {args:?} killed after {after:?}"));
        self.counts.cli += 1;
        let mut child = Command::new(BIN)
            .arg("--root")
            .arg(self.root())
            .args(args)
            .env("ALLSPARK_DOCKER", "unix:///nonexistent.sock")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(after);
        match child.try_wait().unwrap() {
            Some(_) => Some(child.wait_with_output().unwrap()),
            None => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                self.counts.cli_kills += 1;
                if out.status.code().is_some() {
                    Some(out)
                } else {
                    None
                }
            }
        }
    }

    fn pick_existing(&mut self) -> Option<String> {
        let names: Vec<String> = self.vols.keys().cloned().collect();
        if names.is_empty() {
            None
        } else {
            Some(names[self.rng.gen_range(0..names.len())].clone())
        }
    }

    fn snapshot_ids(&self, name: &str) -> BTreeSet<String> {
        fs::read_dir(self.root().join("snapshots").join(name))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| allspark::core::snapshot_id::validate(n).is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    // ----- operations --------------------------------------------------------------------

    fn op(&mut self, kill_at: Option<Duration>) {
        self.counts.ops += 1;
        let r = self.rng.gen_range(0..100);
        match r {
            0..=13 => self.op_create(kill_at),
            14..=20 => self.op_remove(kill_at),
            21..=36 => self.op_mount(kill_at),
            37..=51 => self.op_unmount(kill_at),
            52..=75 => self.op_write(),
            76..=85 => self.op_snapshot(),
            86..=95 => self.op_restore(),
            _ => {
                let (_, v) = self.call("VolumeDriver.List", json!({}));
                let listed = v["Volumes"].as_array().map(Vec::len).unwrap_or(0);
                if listed != self.vols.len() {
                    self.fail(format!(
                        "List shows {listed} volumes, the model {}",
                        self.vols.len()
                    ));
                }
            }
        }
    }

    /// A plugin call that a SIGKILL may interrupt: `None` if the plugin died first.
    fn killable(
        &mut self,
        method: &str,
        body: Value,
        kill_at: Option<Duration>,
    ) -> Option<(u16, Value)> {
        let Some(delay) = kill_at else {
            return Some(self.call(method, body));
        };
        self.note(format!("{method} {body} with a SIGKILL after {delay:?}"));
        self.counts.plugin_kills += 1;
        self.counts.calls += 1;
        let pid = nix::unistd::Pid::from_raw(self.p.child.as_ref().unwrap().id() as i32);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        });
        let r = try_call(&self.p.socket(), method, &body);
        killer.join().unwrap();
        match r {
            Ok(reply) => Some(reply),
            Err(_) => {
                self.counts.kills_mid_call += 1;
                None
            }
        }
    }

    fn op_create(&mut self, kill_at: Option<Duration>) {
        let mut pending = None;
        let i = self.rng.gen_range(0..NAMES);
        let name = format!("v{i}");
        let body = json!({"Name": name, "Opts": opts_of(i)});
        match self.killable("VolumeDriver.Create", body, kill_at) {
            Some((_, v)) if err_of(&v).is_empty() => {
                self.vols.entry(name).or_default();
            }
            Some((_, v)) => {
                let e = err_of(&v).to_string();
                self.fail(format!("Create {name}: {e}"));
            }
            None => pending = Some(Pending::Create(name)),
        }
        if kill_at.is_some() {
            self.restart(pending);
        }
    }

    fn op_remove(&mut self, kill_at: Option<Duration>) {
        let mut pending = None;
        let Some(name) = self.pick_existing() else {
            return;
        };
        let refs = self.vols[&name].refs();
        match self.killable("VolumeDriver.Remove", json!({"Name": name}), kill_at) {
            Some((_, v)) => {
                let e = err_of(&v).to_string();
                match (refs > 0, e.is_empty()) {
                    (false, true) => {
                        self.vols.remove(&name);
                        self.killed_restore.remove(&name);
                    }
                    (true, false) if e.contains("mounted by") => {}
                    _ => self.fail(format!("Remove {name} with {refs} references: {e:?}")),
                }
            }
            None => pending = Some(Pending::Remove(name)),
        }
        if kill_at.is_some() {
            self.restart(pending);
        }
    }

    fn op_mount(&mut self, kill_at: Option<Duration>) {
        let mut pending = None;
        let Some(name) = self.pick_existing() else {
            return;
        };
        let id = IDS[self.rng.gen_range(0..IDS.len())].to_string();
        let body = json!({"Name": name, "ID": id});
        match self.killable("VolumeDriver.Mount", body, kill_at) {
            Some((_, v)) if err_of(&v).is_empty() => {
                *self
                    .vols
                    .get_mut(&name)
                    .unwrap()
                    .mounts
                    .entry(id)
                    .or_default() += 1;
                let mp = v["Mountpoint"].as_str().unwrap_or("").to_string();
                if Path::new(&mp) != self.mountpoint(&name) {
                    self.fail(format!("Mount {name}: mountpoint {mp}"));
                }
            }
            Some((_, v)) => {
                let e = err_of(&v).to_string();
                self.fail(format!("Mount {name} {id}: {e}"));
            }
            None => pending = Some(Pending::Mount(name, id)),
        }
        if kill_at.is_some() {
            self.restart(pending);
        }
    }

    fn op_unmount(&mut self, kill_at: Option<Duration>) {
        let mut pending = None;
        let mounted: Vec<(String, String)> = self
            .vols
            .iter()
            .flat_map(|(n, v)| v.mounts.keys().map(move |id| (n.clone(), id.clone())))
            .collect();
        let (name, id) = if mounted.is_empty() || self.rng.gen_range(0..10) == 0 {
            // An unknown mount ID (Docker repeating an Unmount): harmless.
            let Some(name) = self.pick_existing() else {
                return;
            };
            (name, "unknown".to_string())
        } else {
            mounted[self.rng.gen_range(0..mounted.len())].clone()
        };
        let body = json!({"Name": name, "ID": id});
        match self.killable("VolumeDriver.Unmount", body, kill_at) {
            Some((_, v)) if err_of(&v).is_empty() => {
                let vol = self.vols.get_mut(&name).unwrap();
                if let Some(n) = vol.mounts.get_mut(&id) {
                    *n -= 1;
                    if *n == 0 {
                        vol.mounts.remove(&id);
                    }
                }
            }
            Some((_, v)) => {
                let e = err_of(&v).to_string();
                self.fail(format!("Unmount {name} {id}: {e}"));
            }
            None => pending = Some(Pending::Unmount(name, id)),
        }
        if kill_at.is_some() {
            self.restart(pending);
        }
    }

    /// Write, rewrite or delete a file through a live mount (as a container would), fsynced.
    fn op_write(&mut self) {
        let mounted: Vec<String> = self
            .vols
            .iter()
            .filter(|(_, v)| v.refs() > 0)
            .map(|(n, _)| n.clone())
            .collect();
        if mounted.is_empty() {
            return;
        }
        let name = mounted[self.rng.gen_range(0..mounted.len())].clone();
        let file = FILES[self.rng.gen_range(0..FILES.len())];
        let path = self.mountpoint(&name).join(file);
        self.note(format!("write {}", path.display()));
        if self.rng.gen_range(0..5) == 0 {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("rm {}: {e}", path.display()),
            }
            self.vols.get_mut(&name).unwrap().files.remove(file);
        } else {
            let len = if file == "big" {
                self.rng.gen_range(0..256 << 10)
            } else {
                self.rng.gen_range(0..200)
            };
            let mut content = vec![0u8; len];
            self.rng.fill(&mut content[..]);
            let mut f =
                fs::File::create(&path).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            f.write_all(&content).unwrap();
            f.sync_all().unwrap();
            self.vols
                .get_mut(&name)
                .unwrap()
                .files
                .insert(file.to_string(), content);
        }
    }

    fn op_snapshot(&mut self) {
        let Some(name) = self.pick_existing() else {
            return;
        };
        let files = self.vols[&name].files.clone();
        let before = self.snapshot_ids(&name);
        let kill = self.rng.gen_range(0..4) == 0;
        let out = if kill {
            let after = Duration::from_millis(self.rng.gen_range(0..80));
            self.cli_killed(&["snapshot", "create", &name], after)
        } else {
            Some(self.cli(&["snapshot", "create", &name]))
        };
        match out {
            Some(out) if out.status.success() => {
                let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
                self.snaps.entry(name).or_default().insert(id, files);
            }
            Some(out) => {
                let e = String::from_utf8_lossy(&out.stderr).into_owned();
                self.fail(format!("snapshot create {name}: {e}"));
            }
            None => {
                // Killed: a snapshot may or may not have become visible; if it did, it holds the files.
                let new: Vec<String> = self
                    .snapshot_ids(&name)
                    .difference(&before)
                    .cloned()
                    .collect();
                for id in new {
                    let m: Value = serde_json::from_slice(
                        &fs::read(
                            self.root()
                                .join("snapshots")
                                .join(&name)
                                .join(&id)
                                .join("manifest.json"),
                        )
                        .unwrap_or_default(),
                    )
                    .unwrap_or(Value::Null);
                    if m["trigger"] == "manual" {
                        self.snaps
                            .entry(name.clone())
                            .or_default()
                            .insert(id, files.clone());
                    }
                }
            }
        }
    }

    fn op_restore(&mut self) {
        let Some(name) = self.pick_existing() else {
            return;
        };
        let present = self.snapshot_ids(&name);
        let known: Vec<String> = self
            .snaps
            .get(&name)
            .map(|m| {
                m.keys()
                    .filter(|id| present.contains(*id))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if known.is_empty() {
            return;
        }
        let id = known[self.rng.gen_range(0..known.len())].clone();
        let target = self.snaps[&name][&id].clone();
        let mounted = self.vols[&name].refs() > 0;
        let kill = !mounted && self.rng.gen_range(0..4) == 0;
        let args = ["snapshot", "restore", &name, &id, "--yes"];
        let out = if kill {
            let after = Duration::from_millis(self.rng.gen_range(0..60));
            self.cli_killed(&args, after)
        } else {
            Some(self.cli(&args))
        };
        match out {
            Some(out) => {
                let e = String::from_utf8_lossy(&out.stderr).into_owned();
                match (mounted, out.status.success()) {
                    (false, true) => {
                        self.vols.get_mut(&name).unwrap().files = target;
                        self.killed_restore.remove(&name);
                    }
                    (true, false) if e.contains("mounted by") => {}
                    // The agent's retention removed it meanwhile (keep=10 volumes).
                    (_, false) if !self.snapshot_ids(&name).contains(&id) => {}
                    _ => self.fail(format!(
                        "snapshot restore {name} {id} (mounted: {mounted}): {}",
                        e.trim()
                    )),
                }
            }
            None => {
                self.killed_restore.insert(name.clone());
                // Killed mid-restore: the data is the old content or the snapshot, never a mix.
                let actual = self.read_files(&name);
                let old = self.vols[&name].files.clone();
                if actual == target {
                    self.vols.get_mut(&name).unwrap().files = target;
                } else if actual != old {
                    self.fail(format!(
                        "restore of {name} to {id} killed: the data is neither the old content nor the snapshot: {}",
                        describe_diff(&old, &actual)
                    ));
                    self.vols.get_mut(&name).unwrap().files = actual;
                }
            }
        }
    }

    // ----- restarts and checks -------------------------------------------------------------

    /// The plugin was killed (or is to be): restart it, probe it at once like dockerd would,
    /// wait for its recovery, settle what the kill left unknown, check everything.
    fn restart(&mut self, pending: Option<Pending>) {
        self.p.kill9();
        self.p.spawn();
        // Calls arrive while recovery runs (dockerd retries as soon as the socket answers).
        let busy = pending.as_ref().map(|p| match p {
            Pending::Create(n)
            | Pending::Remove(n)
            | Pending::Mount(n, _)
            | Pending::Unmount(n, _) => n.clone(),
        });
        for _ in 0..self.rng.gen_range(0..3) {
            let candidates: Vec<String> = self
                .vols
                .keys()
                .filter(|n| Some(*n) != busy.as_ref())
                .cloned()
                .collect();
            if candidates.is_empty() {
                break;
            }
            let name = candidates[self.rng.gen_range(0..candidates.len())].clone();
            self.counts.immediate_calls += 1;
            let vol = self.vols[&name].clone();
            if let Some(id) = vol.mounts.keys().next().cloned().filter(|_| self.rng.gen()) {
                let (_, v) = self.call("VolumeDriver.Unmount", json!({"Name": name, "ID": id}));
                if err_of(&v).is_empty() {
                    let m = &mut self.vols.get_mut(&name).unwrap().mounts;
                    *m.get_mut(&id).unwrap() -= 1;
                    m.retain(|_, n| *n > 0);
                } else {
                    let e = err_of(&v).to_string();
                    self.fail(format!("Unmount {name} {id} right after a restart: {e}"));
                }
            } else {
                let id = IDS[self.rng.gen_range(0..IDS.len())];
                let (_, v) = self.call("VolumeDriver.Mount", json!({"Name": name, "ID": id}));
                if err_of(&v).is_empty() {
                    *self
                        .vols
                        .get_mut(&name)
                        .unwrap()
                        .mounts
                        .entry(id.to_string())
                        .or_default() += 1;
                } else {
                    let e = err_of(&v).to_string();
                    self.fail(format!("Mount {name} {id} right after a restart: {e}"));
                }
            }
        }
        self.wait_for_recovery();
        if let Some(p) = pending {
            self.settle(p);
        }
        self.counts.restarts_checked += 1;
        self.check(true);
    }

    fn wait_for_recovery(&mut self) {
        let path = self.p.dir.path().join("plugin.log");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut f = fs::File::open(&path).unwrap();
            let mut text = Vec::new();
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(self.log_offset)).unwrap();
            f.read_to_end(&mut text).unwrap();
            let text = String::from_utf8_lossy(&text);
            if let Some(i) = text
                .find("recovery done")
                .or_else(|| text.find("recovery failed"))
            {
                if text[i..].starts_with("recovery failed") {
                    let line = text[i..].lines().next().unwrap_or("").to_string();
                    self.fail(format!("plugin recovery failed: {line}"));
                }
                self.log_offset += (i + 1) as u64;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the plugin did not finish its recovery within 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn record(&self, name: &str) -> Option<Value> {
        let p = self
            .root()
            .join("state/volumes")
            .join(format!("{name}.json"));
        fs::read(p)
            .ok()
            .map(|b| serde_json::from_slice(&b).expect("record is JSON"))
    }

    fn record_mounts(&self, name: &str) -> BTreeMap<String, u64> {
        harness::refs(&self.root(), name)
    }

    /// Decide what an interrupted call did, from the state on disk after recovery.
    fn settle(&mut self, pending: Pending) {
        match pending {
            Pending::Create(name) => {
                if self.record(&name).is_some() {
                    self.vols.entry(name).or_default();
                }
            }
            Pending::Remove(name) => {
                if self.record(&name).is_none() {
                    self.vols.remove(&name);
                    self.killed_restore.remove(&name);
                }
                // Still there: the checks below require its data to be intact.
            }
            Pending::Mount(name, id) | Pending::Unmount(name, id) => {
                let before = self.vols[&name].mounts.clone();
                let mut more = before.clone();
                *more.entry(id.clone()).or_default() += 1;
                let mut less = before.clone();
                if let Some(n) = less.get_mut(&id) {
                    *n -= 1;
                }
                less.retain(|_, n| *n > 0);
                let actual = self.record_mounts(&name);
                if actual == before || actual == more || actual == less {
                    self.vols.get_mut(&name).unwrap().mounts = actual;
                } else {
                    self.fail(format!(
                        "{name}: after an interrupted call on {id}, references {actual:?}; expected {before:?}, {more:?} or {less:?}"
                    ));
                    self.vols.get_mut(&name).unwrap().mounts = actual;
                }
            }
        }
    }

    fn read_files(&self, name: &str) -> Files {
        let mut out = Files::new();
        if let Ok(rd) = fs::read_dir(self.data(name)) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                out.insert(n, fs::read(e.path()).unwrap_or_default());
            }
        }
        out
    }

    /// Every invariant: volumes, references = live mounts, data = model, snapshots complete and
    /// verified, nothing leaked. `full` also verifies changed snapshot sets.
    fn check(&mut self, full: bool) {
        self.counts.checks += 1;
        let (_, list) = self.call("VolumeDriver.List", json!({}));
        let listed: BTreeSet<String> = list["Volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["Name"].as_str().unwrap().to_string())
            .collect();
        let model: BTreeSet<String> = self.vols.keys().cloned().collect();
        if listed != model {
            self.fail(format!(
                "volumes: listed {listed:?}, acknowledged {model:?}"
            ));
        }
        let live = self.p.live_mounts();
        let live_set: BTreeSet<PathBuf> = live.iter().cloned().collect();
        if live.len() != live_set.len() {
            self.fail(format!("stacked mounts: {live:?}"));
        }
        let mut expected = BTreeSet::new();
        for (name, vol) in self.vols.clone() {
            let rec = self.record_mounts(&name);
            if rec != vol.mounts {
                self.fail(format!(
                    "{name}: references {rec:?}, acknowledged {:?}",
                    vol.mounts
                ));
            }
            if vol.refs() > 0 {
                expected.insert(self.mountpoint(&name));
            }
            let actual = self.read_files(&name);
            self.counts.files_compared += vol.files.len().max(actual.len()) as u64;
            if actual != vol.files {
                self.fail(format!(
                    "{name}: data differs from the model: {}",
                    describe_diff(&vol.files, &actual)
                ));
                self.vols.get_mut(&name).unwrap().files = actual;
            }
            let vdir = self.root().join("volumes").join(&name);
            let leftovers: Vec<String> = fs::read_dir(&vdir)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n != "data")
                        .collect()
                })
                .unwrap_or_default();
            if !leftovers.is_empty() && !self.killed_restore.contains(&name) {
                self.fail(format!("{name}: leftovers next to the data: {leftovers:?}"));
            }
        }
        if live_set != expected {
            self.fail(format!(
                "live mounts {live_set:?} != volumes with references {expected:?}"
            ));
        }
        let trash = fs::read_dir(self.root().join("trash")).unwrap().count();
        if trash != 0 {
            self.fail(format!("{trash} entries left in the trash after recovery"));
        }
        if full {
            self.verify_snapshots();
        }
        if !self.failures.is_empty() {
            self.report();
            panic!(
                "{} invariant failure(s) with seed {}:\n{}\nlast operations:\n{}\nplugin log tail:\n{}",
                self.failures.len(),
                self.seed,
                self.failures.join("\n"),
                self.history.iter().cloned().collect::<Vec<_>>().join("\n"),
                tail(&self.p.log())
            );
        }
    }

    /// `snapshot ls` lists no partial snapshot and every snapshot set that changed verifies.
    fn verify_snapshots(&mut self) {
        let vols: Vec<String> = fs::read_dir(self.root().join("snapshots"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for name in vols {
            let ids = self.snapshot_ids(&name);
            if ids.is_empty() || self.verified.get(&name) == Some(&ids) {
                continue;
            }
            let out = self.cli(&["snapshot", "ls", &name, "--json"]);
            if !out.status.success() {
                let e = String::from_utf8_lossy(&out.stderr).into_owned();
                self.fail(format!("snapshot ls {name}: {e}"));
                continue;
            }
            let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
            for m in &listed {
                let id = m["id"].as_str().unwrap_or("");
                if id.starts_with('.') || allspark::core::snapshot_id::validate(id).is_err() {
                    self.fail(format!("snapshot ls {name} lists {id:?}"));
                }
            }
            let out = self.cli(&["snapshot", "verify", &name]);
            if out.status.success() {
                self.counts.snapshots_verified += listed.len() as u64;
                self.verified.insert(name, ids);
            } else {
                // The agent may have published or pruned one meanwhile: verify is strict, retry once.
                std::thread::sleep(Duration::from_millis(200));
                let again = self.cli(&["snapshot", "verify", &name]);
                if again.status.success() {
                    self.counts.snapshots_verified += listed.len() as u64;
                } else {
                    let e = String::from_utf8_lossy(&again.stderr).into_owned();
                    self.fail(format!("snapshot verify {name}: {}", e.trim()));
                }
            }
        }
    }

    fn report(&self) {
        let c = &self.counts;
        eprintln!(
            "\nhardening_crash: seed {} | operations {} | plugin calls {} | CLI runs {} | plugin kills {} ({} mid-call) | agent kills {} | CLI kills {} | restarts checked {} | invariant checks {} | calls during recovery {} | data files compared {} | snapshots verified {} | failures {}",
            self.seed,
            c.ops,
            c.calls,
            c.cli,
            c.plugin_kills,
            c.kills_mid_call,
            c.agent_kills,
            c.cli_kills,
            c.restarts_checked,
            c.checks,
            c.immediate_calls,
            c.files_compared,
            c.snapshots_verified,
            c.failures
        );
    }
}

fn describe_diff(expected: &Files, actual: &Files) -> String {
    let mut out = Vec::new();
    for (k, v) in expected {
        match actual.get(k) {
            None => out.push(format!("{k} missing")),
            Some(a) if a != v => {
                out.push(format!("{k} differs ({} vs {} bytes)", v.len(), a.len()))
            }
            _ => {}
        }
    }
    for k in actual.keys() {
        if !expected.contains_key(k) {
            out.push(format!("{k} unexpected"));
        }
    }
    out.join(", ")
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[test]
fn random_operations_with_kills_keep_every_acknowledged_state() {
    let ops: u64 = std::env::var("ALLSPARK_HARDENING_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let seed: u64 = match std::env::var("ALLSPARK_HARDENING_SEED").ok().as_deref() {
        Some("random") => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
        Some(s) => s
            .parse()
            .expect("ALLSPARK_HARDENING_SEED: a number or `random`"),
        None => 1,
    };
    eprintln!("hardening_crash: seed {seed}, {ops} operations (ALLSPARK_HARDENING_SEED / ALLSPARK_HARDENING_OPS)");
    let p = Plugin::start(BIN);
    let agent = Agent::start(&p);
    let mut run = Run {
        p,
        agent,
        rng: StdRng::seed_from_u64(seed),
        vols: BTreeMap::new(),
        snaps: BTreeMap::new(),
        verified: BTreeMap::new(),
        killed_restore: BTreeSet::new(),
        counts: Counts::default(),
        log_offset: 0,
        agent_down_for: 0,
        failures: Vec::new(),
        seed,
        history: Default::default(),
    };
    run.wait_for_recovery();
    let started = Instant::now();
    for i in 0..ops {
        // The agent: killed now and then, down for a while, restarted.
        if run.agent_down_for > 0 {
            run.agent_down_for -= 1;
            if run.agent_down_for == 0 {
                run.agent = Agent::start(&run.p);
            }
        } else if run.rng.gen_range(0..100) == 0 {
            run.agent.kill9();
            run.counts.agent_kills += 1;
            run.agent_down_for = run.rng.gen_range(1..60);
        }
        let kill_at = (run.rng.gen_range(0..100) < 4)
            .then(|| Duration::from_micros(run.rng.gen_range(0..4000)));
        run.op(kill_at);
        if i % 100 == 99 {
            run.check(false);
        }
    }
    // Every container stops: all references go.
    for (name, vol) in run.vols.clone() {
        for (id, n) in vol.mounts {
            for _ in 0..n {
                let (_, v) = run.call("VolumeDriver.Unmount", json!({"Name": name, "ID": id}));
                assert_eq!(err_of(&v), "", "final Unmount {name} {id}");
            }
        }
        run.vols.get_mut(&name).unwrap().mounts.clear();
    }
    // The next restore of a volume whose restore was killed removes what that one left.
    for name in run.killed_restore.clone() {
        let present = run.snapshot_ids(&name);
        let Some((id, files)) = run
            .snaps
            .get(&name)
            .and_then(|m| m.iter().find(|(id, _)| present.contains(*id)))
            .map(|(id, f)| (id.clone(), f.clone()))
        else {
            continue;
        };
        let out = run.cli(&["snapshot", "restore", &name, &id, "--yes"]);
        assert!(
            out.status.success(),
            "restore {name} {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        run.vols.get_mut(&name).unwrap().files = files;
        run.killed_restore.remove(&name);
    }
    // Let the agent catch up, then check everything once more.
    if run.agent.0.is_none() {
        run.agent = Agent::start(&run.p);
    }
    let spool = run.root().join("spool");
    let deadline = Instant::now() + Duration::from_secs(120);
    while fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .any(|e| !e.file_name().to_string_lossy().starts_with('.'))
    {
        assert!(
            Instant::now() < deadline,
            "the agent did not drain the spool"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    run.restart(None);
    run.report();
    eprintln!("hardening_crash: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(run.counts.failures, 0);
}

/// A restore killed at any point leaves the old content or the snapshot (never a mix), and the
/// next restore removes the staging directory it left (it used to stay forever, holding a whole
/// copy of the volume).
#[test]
fn a_restore_killed_midway_leaves_old_or_new_data_and_the_next_restore_cleans_up() {
    let p = Plugin::start(BIN);
    let (_, v) = try_call(
        &p.socket(),
        "VolumeDriver.Create",
        &json!({"Name": "big", "Opts": null}),
    )
    .unwrap();
    assert_eq!(err_of(&v), "");
    let data = p.root().join("volumes/big/data");
    let mut rng = StdRng::seed_from_u64(7);
    let mut old = Files::new();
    for i in 0..40 {
        let mut b = vec![0u8; 512 << 10];
        rng.fill(&mut b[..]);
        fs::write(data.join(format!("f{i:02}")), &b).unwrap();
        old.insert(format!("f{i:02}"), b);
    }
    let run_cli = |args: &[&str]| {
        Command::new(BIN)
            .arg("--root")
            .arg(p.root())
            .args(args)
            .output()
            .unwrap()
    };
    let out = run_cli(&["snapshot", "create", "big"]);
    assert!(out.status.success());
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // The volume changes after the snapshot: a restore gives back `snap`.
    let snap = old.clone();
    for i in 0..40 {
        fs::write(data.join(format!("f{i:02}")), format!("new {i}")).unwrap();
        old.insert(format!("f{i:02}"), format!("new {i}").into_bytes());
    }
    let read = || -> Files {
        fs::read_dir(&data)
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    };
    let staging = || -> Vec<String> {
        fs::read_dir(p.root().join("volumes/big"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "data")
            .collect()
    };
    let mut left_behind = 0;
    let mut delay_ms = 0;
    loop {
        let mut child = Command::new(BIN)
            .arg("--root")
            .arg(p.root())
            .args(["snapshot", "restore", "big", &id, "--yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        child.wait().unwrap();
        let now = read();
        assert!(
            now == old || now == snap,
            "killed after {delay_ms} ms: the data is a mix: {}",
            describe_diff(&old, &now)
        );
        if !staging().is_empty() {
            left_behind += 1;
        }
        if finished {
            break;
        }
        // Put the other content back for the next round, as a plain write would.
        if now == snap {
            for (k, v) in &old {
                fs::write(data.join(k), v).unwrap();
            }
        }
        delay_ms += 7;
    }
    eprintln!(
        "restores killed: {}, left a staging directory: {left_behind}",
        delay_ms / 7
    );
    assert!(
        left_behind > 0,
        "no kill landed mid-restore; the volume is too small"
    );
    let out = run_cli(&["snapshot", "restore", "big", &id, "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(), snap);
    assert_eq!(
        staging(),
        Vec::<String>::new(),
        "the next restore cleans up"
    );
}
