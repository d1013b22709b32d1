//! Faults: a full filesystem under the state root, under the snapshots and under a volume's data;
//! a read-only state directory; corrupted state files of every kind; the agent down while 500
//! events pile up; dockerd restarted under running containers (opt-in, see below).
//!
//! Every fault must give a clear error (naming the file, saying what to do), leave no half-made
//! record, snapshot or mount, and heal once the fault is gone. Each test prints what it injected.
//! (Also: tests/ops/snapshots.rs a_full_disk_fails_the_snapshot_cleanly_and_keeps_older_ones,
//! tests/plugin/restart.rs a_corrupt_record_is_reported_not_forgotten.)

use crate::support::common;
use crate::support::harness;
use crate::support::legacy;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::common::wait_until;
use harness::{cli, cli_ok, err_of, noise, Plugin};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_allspark");

fn create(p: &Plugin, name: &str, opts: Value) -> String {
    let (_, v) = p.call("VolumeDriver.Create", json!({"Name": name, "Opts": opts}));
    err_of(&v).to_string()
}

/// A small tmpfs mounted at a path, unmounted (lazily) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0700").as_str()),
        )
        .unwrap();
        Tmpfs(at.to_path_buf())
    }
    /// Fill it up: a file that takes every free block. Returns the filler's path.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let mut f = fs::File::create(&filler).unwrap();
        let chunk = vec![0x5au8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&chunk[..512]).is_ok() {}
        while f.write_all(&chunk[..1]).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A plugin whose whole state root is a tmpfs of `size` (mounted before the plugin starts).
struct SmallRoot {
    p: Plugin,
    fs: Option<Tmpfs>,
}

impl SmallRoot {
    fn start(size: &str) -> SmallRoot {
        let dir = tempfile::Builder::new()
            .prefix("allspark-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        fs::create_dir_all(dir.path().join("binds")).unwrap();
        let fs = Tmpfs::mount(&dir.path().join("root"), size);
        let mut p = Plugin {
            child: None,
            dir,
            bin: PathBuf::from(BIN),
            extra_args: Vec::new(),
            env: Vec::new(),
        };
        p.spawn();
        SmallRoot { p, fs: Some(fs) }
    }
}

impl Drop for SmallRoot {
    fn drop(&mut self) {
        self.p.kill9();
        for m in self.p.live_mounts() {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        self.fs.take();
    }
}

/// Files whose name says they are temporary (`.x.json.tmp.*`, `.tmp-*`, staging directories).
fn temp_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.contains(".tmp") || n.contains("staging") {
                out.push(e.path().display().to_string());
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(e.path());
            }
        }
    }
    out
}

#[test]
fn a_full_state_root_fails_create_and_mount_clearly_and_leaves_nothing_half_made() {
    let root = SmallRoot::start("4m");
    let p = &root.p;
    assert_eq!(create(p, "old", json!(null)), "");
    assert_eq!(create(p, "busy", json!(null)), "");
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "busy", "ID": "c1"}));
    assert_eq!(err_of(&v), "");
    // A references file written before runtime files existed is missing: writing it needs space.
    fs::remove_file(p.root().join("state/refs/old.json")).unwrap();
    let filler = root.fs.as_ref().unwrap().fill();
    let mut injected = 0;

    // Create: refused, naming the record it could not write and the reason; nothing left.
    let err = create(p, "new", json!({"class": "critical"}));
    injected += 1;
    assert!(
        err.contains("No space left on device") && err.contains("new.json"),
        "{err}"
    );
    assert!(!p.root().join("state/volumes/new.json").exists());
    assert!(
        !p.root().join("volumes/new").exists(),
        "a refused create left its data directory"
    );
    assert_eq!(temp_files(&p.root()), Vec::<String>::new());
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "new"}));
    assert!(err_of(&v).contains("no such volume"), "{v}");

    // Mount: refused, no bind mount left behind, no reference recorded.
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "old", "ID": "c1"}));
    injected += 1;
    let err = err_of(&v);
    assert!(
        err.contains("No space left on device") && err.contains("old.json"),
        "{err}"
    );
    assert_eq!(p.mount_count("old"), Some(0));
    assert_eq!(p.live_mounts(), vec![p.mount_dir().join("busy")]);
    assert_eq!(temp_files(&p.root()), Vec::<String>::new());

    // Unmount: references are rewritten in place, in the space they already hold, so the
    // last Unmount of a volume still works on a full state root.
    let (_, v) = p.call("VolumeDriver.Unmount", json!({"Name": "busy", "ID": "c1"}));
    assert_eq!(err_of(&v), "");
    assert!(p.live_mounts().is_empty(), "{:?}", p.live_mounts());
    assert_eq!(p.mount_count("busy"), Some(0));

    // Space comes back: everything works again, and nothing of the failures remains.
    fs::remove_file(filler).unwrap();
    assert_eq!(create(p, "new", json!({"class": "critical"})), "");
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "old", "ID": "c1"}));
    assert_eq!(err_of(&v), "");
    let (_, v) = p.call("VolumeDriver.Unmount", json!({"Name": "old", "ID": "c1"}));
    assert_eq!(err_of(&v), "");
    // Docker does not repeat a failed Unmount: the stale reference of "busy" must neither keep
    // the next container's mount alive nor block the removal.
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "busy", "ID": "c2"}));
    assert_eq!(err_of(&v), "");
    let (_, v) = p.call("VolumeDriver.Unmount", json!({"Name": "busy", "ID": "c2"}));
    assert_eq!(err_of(&v), "");
    assert_eq!(p.mount_count("busy"), Some(0));
    assert!(p.live_mounts().is_empty(), "{:?}", p.live_mounts());
    for name in ["old", "busy", "new"] {
        let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": name}));
        assert_eq!(err_of(&v), "", "{name}");
    }
    assert_eq!(temp_files(&p.root()), Vec::<String>::new());
    eprintln!(
        "full state root: {injected} calls on a full filesystem, each refused cleanly, all healed"
    );
}

#[test]
fn a_full_snapshot_store_keeps_the_event_and_the_agent_retries_once_space_is_back() {
    let p = Plugin::start(BIN);
    assert_eq!(create(&p, "ws", json!({"snapshot": "on-unmount"})), "");
    let data = p.root().join("volumes/ws/data");
    let noise = noise(0x9e37_79b9_7f4a_7c15, 3 << 20);
    fs::write(data.join("noise"), noise).unwrap();
    let snaps = Tmpfs::mount(&p.root().join("snapshots/ws"), "1m");
    let _agent = harness::Agent::offline(&p, &[]);
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "ws", "ID": "c"}));
    assert_eq!(err_of(&v), "");
    let (_, v) = p.call("VolumeDriver.Unmount", json!({"Name": "ws", "ID": "c"}));
    assert_eq!(err_of(&v), "");
    let log = p.dir.path().join("agent.log");
    wait_until(
        "the agent to fail on the full disk",
        Duration::from_secs(30),
        || {
            fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("spool event failed")
        },
    );
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("No space left on device") && text.contains("retried"),
        "{text}"
    );
    assert_eq!(
        fs::read_dir(p.root().join("spool")).unwrap().count(),
        1,
        "the event stays in the spool"
    );
    let listed = cli_ok(&p, &["snapshot", "ls", "ws", "--json"]);
    assert_eq!(listed.trim(), "[]", "no partial snapshot is listed");
    assert_eq!(
        temp_files(&p.root().join("snapshots")),
        Vec::<String>::new()
    );
    // Space comes back: the retry (5 s backoff) takes the snapshot.
    drop(snaps);
    wait_until("the retried snapshot", Duration::from_secs(30), || {
        fs::read_dir(p.root().join("spool")).unwrap().count() == 0
    });
    let listed: Vec<Value> =
        serde_json::from_str(&cli_ok(&p, &["snapshot", "ls", "ws", "--json"])).unwrap();
    assert_eq!(listed.len(), 1);
    cli_ok(&p, &["snapshot", "verify", "ws"]);
    eprintln!("full snapshot store: 1 agent snapshot failed with ENOSPC, kept in the spool, retried, verified");
}

#[test]
fn a_restore_onto_a_full_filesystem_fails_and_leaves_the_data_as_it_was() {
    let p = Plugin::start(BIN);
    let binds = Tmpfs::mount(&p.bind_root(), "2m");
    let dev = p.bind_root().join("small");
    assert_eq!(create(&p, "small", json!({"device": dev})), "");
    let blob = noise(0x1234_5678_9abc_def1, 600 << 10);
    fs::write(dev.join("blob"), &blob).unwrap();
    let id = cli_ok(&p, &["snapshot", "create", "small"])
        .trim()
        .to_string();
    fs::write(dev.join("blob"), b"now small").unwrap();
    let filler = binds.fill();
    // Leave a little room: the restore starts, then runs out.
    fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(fs::metadata(&filler).unwrap().len() - (300 << 10))
        .unwrap();
    let out = cli(&p, &["snapshot", "restore", "small", &id, "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(fs::read(dev.join("blob")).unwrap(), b"now small");
    assert_eq!(
        temp_files(&p.bind_root()),
        Vec::<String>::new(),
        "staging left behind"
    );
    fs::remove_file(filler).unwrap();
    cli_ok(&p, &["snapshot", "restore", "small", &id, "--yes"]);
    assert_eq!(fs::read(dev.join("blob")).unwrap(), blob);
    assert_eq!(create(&p, "small", json!({"device": dev})), "");
    p.call("VolumeDriver.Remove", json!({"Name": "small"}));
    eprintln!("restore onto a full filesystem: refused with ENOSPC, data unchanged, no staging left, then restored");
}

/// Bind-mount a directory read-only onto itself; remounted read-write (and unmounted) on drop.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn make(dir: &Path) -> ReadOnly {
        use nix::mount::{mount, MsFlags};
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .unwrap();
        ReadOnly(dir.to_path_buf())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_read_only_state_directory_fails_writes_clearly_and_reads_keep_working() {
    let p = Plugin::start(BIN);
    assert_eq!(create(&p, "before", json!({"class": "critical"})), "");
    let ro = ReadOnly::make(&p.root().join("state"));
    let err = create(&p, "during", json!(null));
    assert!(
        err.contains("Read-only file system") && err.contains("during.json"),
        "{err}"
    );
    assert!(
        !p.root().join("volumes/during").exists(),
        "a refused create left its data directory"
    );
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "before", "ID": "c"}));
    let err = err_of(&v).to_string();
    assert!(
        err.contains("Read-only file system") && err.contains("before.json"),
        "{err}"
    );
    assert!(p.live_mounts().is_empty(), "{:?}", p.live_mounts());
    // Reads are unaffected.
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "before"}));
    assert_eq!(err_of(&v), "");
    assert_eq!(v["Volume"]["Status"]["class"], "critical");
    let (_, v) = p.call("VolumeDriver.List", json!({}));
    assert_eq!(v["Volumes"].as_array().unwrap().len(), 1);
    let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": "before"}));
    assert!(err_of(&v).contains("Read-only file system"), "{v}");
    assert!(
        p.root().join("volumes/before/data").is_dir(),
        "a refused remove must keep the data"
    );
    drop(ro);
    assert_eq!(create(&p, "during", json!(null)), "");
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "before", "ID": "c"}));
    assert_eq!(err_of(&v), "");
    p.call("VolumeDriver.Unmount", json!({"Name": "before", "ID": "c"}));
    eprintln!("read-only state directory: Create, Mount, Remove refused naming the record; Get/List served; all healed");
}

#[test]
fn corrupted_state_files_are_named_with_the_way_out_and_harm_nothing_else() {
    let mut p = Plugin::start(BIN);
    for name in ["fine", "empty", "trunc", "alien", "garbage"] {
        assert_eq!(create(&p, name, json!({"snapshot": "on-unmount"})), "");
    }
    fs::write(p.root().join("volumes/fine/data/f"), b"1").unwrap();
    cli_ok(&p, &["snapshot", "create", "fine"]);
    p.kill9();
    let state = p.root().join("state/volumes");
    let rec = |n: &str| state.join(format!("{n}.json"));
    let good = fs::read(rec("trunc")).unwrap();
    let mut injected = Vec::new();
    // A record emptied (a crash on a filesystem without our fsyncs), truncated, naming
    // another volume, binary garbage.
    fs::write(rec("empty"), b"").unwrap();
    fs::write(rec("trunc"), &good[..good.len() / 3]).unwrap();
    fs::write(
        rec("alien"),
        String::from_utf8(good.clone())
            .unwrap()
            .replace("\"trunc\"", "\"fine\""),
    )
    .unwrap();
    fs::write(rec("garbage"), [0xffu8, 0xfe, 0, 1, 2]).unwrap();
    injected.extend([
        "empty record",
        "truncated record",
        "record naming another volume",
        "binary record",
    ]);
    // Files the plugin and agent only read for display.
    fs::write(p.root().join("state/usage/fine.json"), b"{\"bytes\": oops").unwrap();
    fs::write(p.root().join("state/plugin-stats.json"), b"\0\0\0").unwrap();
    injected.extend(["usage cache", "plugin stats"]);
    p.spawn();

    for name in ["empty", "trunc", "alien", "garbage"] {
        let path = rec(name);
        let before = fs::read(&path).unwrap();
        for (call, body) in [
            ("VolumeDriver.Get", json!({"Name": name})),
            ("VolumeDriver.Path", json!({"Name": name})),
            ("VolumeDriver.Mount", json!({"Name": name, "ID": "c"})),
            ("VolumeDriver.Unmount", json!({"Name": name, "ID": "c"})),
            ("VolumeDriver.Remove", json!({"Name": name})),
            ("VolumeDriver.Create", json!({"Name": name, "Opts": null})),
        ] {
            let (status, v) = p.call(call, body);
            let err = err_of(&v);
            assert_eq!(status, 500, "{call} {name}: {err}");
            assert!(
                err.contains("corrupt")
                    && err.contains(&*path.to_string_lossy())
                    && err.contains("move it aside"),
                "{call} {name}: {err}"
            );
        }
        assert_eq!(
            fs::read(&path).unwrap(),
            before,
            "{name}: the record was rewritten"
        );
        assert!(p.root().join(format!("volumes/{name}/data")).is_dir());
    }
    assert!(p.live_mounts().is_empty());
    // The others work: Get (with the bad usage cache), Mount, Unmount, snapshots.
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "fine"}));
    assert_eq!(err_of(&v), "", "{v}");
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "fine", "ID": "c"}));
    assert_eq!(err_of(&v), "");
    p.call("VolumeDriver.Unmount", json!({"Name": "fine", "ID": "c"}));
    let (_, v) = p.call("VolumeDriver.List", json!({}));
    let listed: Vec<&str> = v["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["Name"].as_str().unwrap())
        .collect();
    // List comes from the directory of records: a corrupt record is still a volume Docker
    // must not forget (its Get names the corruption, above).
    assert_eq!(listed, ["alien", "empty", "fine", "garbage", "trunc"]);

    // A corrupt spool event is moved aside (named), and the events after it are still done.
    let spool = p.root().join("spool");
    fs::write(
        spool.join("00000000000000000001-0000000001-00000000.json"),
        b"{\"kind\": 7",
    )
    .unwrap();
    injected.push("spool event");
    // A corrupt index of the last snapshot: the next one is full instead of incremental.
    let snaps: Vec<Value> =
        serde_json::from_str(&cli_ok(&p, &["snapshot", "ls", "fine", "--json"])).unwrap();
    let last = snaps.last().unwrap()["id"].as_str().unwrap().to_string();
    fs::write(
        p.root().join("snapshots/fine").join(&last).join("index"),
        b"allspark-index 1\nnot an entry\n",
    )
    .unwrap();
    injected.push("snapshot index");
    let agent = harness::Agent::offline(&p, &[]);
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "fine", "ID": "c"}));
    assert_eq!(err_of(&v), "");
    p.call("VolumeDriver.Unmount", json!({"Name": "fine", "ID": "c"}));
    wait_until(
        "the agent to handle the spool",
        Duration::from_secs(30),
        || {
            fs::read_dir(&spool)
                .unwrap()
                .flatten()
                .all(|e| e.file_name().to_string_lossy().starts_with('.'))
        },
    );
    drop(agent);
    let aside: Vec<String> = fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        aside,
        [".corrupt-00000000000000000001-0000000001-00000000.json"]
    );
    let log = fs::read_to_string(p.dir.path().join("agent.log")).unwrap();
    assert!(log.contains("corrupt spool event moved aside"), "{log}");
    let snaps: Vec<Value> =
        serde_json::from_str(&cli_ok(&p, &["snapshot", "ls", "fine", "--json"])).unwrap();
    // One or two unmount snapshots (the first event is skipped if the second Mount came first).
    assert!(
        (2..=3).contains(&snaps.len()),
        "the unmounts after the corrupt event were snapshotted: {snaps:?}"
    );
    assert_eq!(
        snaps[1]["parent"],
        Value::Null,
        "the first one after the damage is full, since the index was unreadable"
    );
    assert!(log.contains("index is unreadable"), "{log}");
    cli_ok(&p, &["snapshot", "verify", "fine"]);

    // The way out the message gives: move the file aside; the volume is gone, its name free again.
    fs::rename(rec("trunc"), p.root().join("trunc.json.corrupt")).unwrap();
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "trunc"}));
    assert!(err_of(&v).contains("no such volume"));
    fs::rename(
        p.root().join("volumes/trunc"),
        p.root().join("trunc-data-aside"),
    )
    .unwrap();
    assert_eq!(create(&p, "trunc", json!(null)), "");
    eprintln!(
        "corrupted state files: {} kinds injected ({}), every one named with its way out",
        injected.len(),
        injected.join(", ")
    );
}

#[test]
fn five_hundred_events_wait_while_the_agent_is_down_and_none_is_lost() {
    const VOLUMES: usize = 25;
    const CYCLES: usize = 20;
    let p = Plugin::start(BIN);
    for v in 0..VOLUMES {
        assert_eq!(
            create(
                &p,
                &format!("pile{v}"),
                json!({"snapshot": "on-unmount", "keep": "1000"})
            ),
            ""
        );
    }
    let started = Instant::now();
    for c in 0..CYCLES {
        for v in 0..VOLUMES {
            let name = format!("pile{v}");
            let id = format!("c{c}");
            let (_, r) = p.call("VolumeDriver.Mount", json!({"Name": name, "ID": id}));
            assert_eq!(err_of(&r), "");
            fs::write(
                p.mount_dir().join(&name).join(format!("f{c}")),
                format!("{name} {c}"),
            )
            .unwrap();
            let (_, r) = p.call("VolumeDriver.Unmount", json!({"Name": name, "ID": id}));
            assert_eq!(err_of(&r), "");
        }
    }
    let spooled: std::collections::BTreeSet<String> = fs::read_dir(p.root().join("spool"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        spooled.len(),
        VOLUMES * CYCLES,
        "one event per last unmount"
    );
    eprintln!(
        "{} events spooled in {:?} with the agent down",
        spooled.len(),
        started.elapsed()
    );
    let started = Instant::now();
    let _agent = harness::Agent::offline(&p, &[]);
    wait_until("the agent to catch up", Duration::from_secs(300), || {
        fs::read_dir(p.root().join("spool")).unwrap().count() == 0
    });
    let caught_up = started.elapsed();
    let mut done = std::collections::BTreeSet::new();
    for v in 0..VOLUMES {
        let name = format!("pile{v}");
        let snaps: Vec<Value> =
            serde_json::from_str(&cli_ok(&p, &["snapshot", "ls", &name, "--json"])).unwrap();
        assert_eq!(snaps.len(), CYCLES, "{name}: one snapshot per event");
        for s in &snaps {
            let event = s["event"].as_str().unwrap().to_string();
            assert!(done.insert(event), "an event was done twice");
        }
        cli_ok(&p, &["snapshot", "verify", &name]);
        // The first snapshot (taken after all the writes) holds every file written through the mounts.
        assert!(snaps[0]["files"].as_u64().unwrap() > CYCLES as u64);
    }
    assert_eq!(
        done, spooled,
        "every spooled event has its snapshot, and only those"
    );
    eprintln!(
        "agent down, then caught up: {} events, {} snapshots in {caught_up:?}, none lost, none twice",
        spooled.len(),
        done.len()
    );
}

#[test]
fn dockerd_restarted_under_running_containers_keeps_references_mounts_and_data_right() {
    if !common::dockerd_restart_allowed("dockerd restart test") {
        return;
    }
    let Some(_docker) = common::require_docker() else {
        return;
    };
    let image = common::ensure_busybox_image();
    let live_restore = common::docker_ok(&["info", "--format", "{{.LiveRestoreEnabled}}"]);
    eprintln!("dockerd live-restore: {}", live_restore.trim());
    let mut plugin = legacy::LegacyPlugin::start();
    let v1 = common::unique_name("hard-v1");
    let v2 = common::unique_name("hard-v2");
    for v in [&v1, &v2] {
        let out = plugin.create(v, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut cleanup = common::Cleanup::new();
    let names: Vec<String> = ["always", "once", "unless"]
        .iter()
        .map(|n| common::unique_name(&format!("hard-{n}")))
        .collect();
    for n in &names {
        cleanup.add(format!("docker rm -f {n} >/dev/null 2>&1"));
    }
    let run = |name: &str, policy: &str, vols: &[&String], script: &str| {
        let mut args = vec!["run", "-d", "--name", name, "--restart", policy];
        let specs: Vec<String> = vols.iter().map(|v| format!("{v}:/{v}")).collect();
        for s in &specs {
            args.push("-v");
            args.push(s);
        }
        args.extend([image.as_str(), "sh", "-c", script]);
        common::docker_ok(&args);
    };
    let script = |v: &str, tag: &str| format!("echo {tag} >> /{v}/log; sync; sleep 3600");
    run(&names[0], "always", &[&v1], &script(&v1, "always"));
    run(&names[1], "no", &[&v1, &v2], &script(&v2, "once"));
    run(&names[2], "unless-stopped", &[&v2], &script(&v2, "unless"));
    let get = |v: &str| -> Value {
        let (_, r) = harness::call_raw(
            &plugin.socket(),
            "VolumeDriver.Get",
            json!({"Name": v}).to_string().into_bytes(),
        );
        r
    };
    let refs = |v: &str| get(v)["Volume"]["Status"]["mounted"].as_u64().unwrap_or(99);
    common::wait_until("three containers running", Duration::from_secs(60), || {
        refs(&v1) == 2 && refs(&v2) == 2
    });
    let data = |v: &str| plugin.root().join("volumes").join(v).join("data/log");
    common::wait_until("the containers wrote", Duration::from_secs(30), || {
        fs::read_to_string(data(&v1))
            .map(|s| s.contains("always"))
            .unwrap_or(false)
            && fs::read_to_string(data(&v2))
                .map(|s| s.lines().count() == 2)
                .unwrap_or(false)
    });

    let started = Instant::now();
    common::restart_dockerd();
    eprintln!("dockerd restarted in {:?}", started.elapsed());
    // Containers with a restart policy come back (and mount again); the other stays stopped.
    common::wait_until(
        "the restart policies to apply",
        Duration::from_secs(120),
        || {
            let running = common::docker(&["ps", "-q", "--filter", &format!("volume={v1}")]);
            let running2 = common::docker(&["ps", "-q", "--filter", &format!("volume={v2}")]);
            String::from_utf8_lossy(&running.stdout).lines().count() == 1
                && String::from_utf8_lossy(&running2.stdout).lines().count() == 1
        },
    );
    common::wait_until(
        "references to match the running containers",
        Duration::from_secs(60),
        || refs(&v1) == 1 && refs(&v2) == 1,
    );
    let mounts: Vec<PathBuf> = allspark::plugin::mounts::parse_mountinfo(
        &fs::read_to_string("/proc/self/mountinfo").unwrap(),
    )
    .into_iter()
    .filter(|m| m.starts_with(plugin.root().join("mounts")))
    .collect();
    let mut unique = mounts.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(mounts.len(), unique.len(), "stacked mounts: {mounts:?}");
    assert_eq!(
        unique.len(),
        2,
        "one live mount per mounted volume: {mounts:?}"
    );
    // Data written before the restart is there; the restarted containers appended to it.
    common::wait_until(
        "the restarted containers wrote",
        Duration::from_secs(30),
        || {
            fs::read_to_string(data(&v1))
                .map(|s| s.matches("always").count() == 2)
                .unwrap_or(false)
                && fs::read_to_string(data(&v2))
                    .map(|s| s.matches("unless").count() == 2)
                    .unwrap_or(false)
        },
    );
    assert!(fs::read_to_string(data(&v2)).unwrap().contains("once"));
    // Everything stops: no reference, no mount left.
    common::docker_ok(&["rm", "-f", &names[0], &names[1], &names[2]]);
    common::wait_until("all references gone", Duration::from_secs(60), || {
        refs(&v1) == 0 && refs(&v2) == 0
    });
    let left: Vec<PathBuf> = allspark::plugin::mounts::parse_mountinfo(
        &fs::read_to_string("/proc/self/mountinfo").unwrap(),
    )
    .into_iter()
    .filter(|m| m.starts_with(plugin.root().join("mounts")))
    .collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    eprintln!("dockerd restart: 3 containers, 2 volumes; references, mounts and data right before and after");
}
