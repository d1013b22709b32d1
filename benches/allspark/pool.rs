//! Snapshot-on-stop latency of a workspace on a btrfs-image pool (read-only subvolume snapshot) vs the same workspace in the default pool (incremental archive), same run; clone time of each; the background archive of the read-only snapshots.
//!
//! Each stop: Mount, change 1 % of the files, Unmount; the latency is from the Unmount reply
//! until the snapshot is listed (the agent, polling its spool every 20 ms, takes it). Before
//! each timed stop the agent has finished every archive, so no stop competes with one.

use allspark::core::names::VolumeName;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::Conn;
use crate::gen;
use crate::plugin::Plugin;
use crate::report::{quantile_sorted, Section, Target, Unit};
use crate::Cfg;

fn call(socket: &Path, method: &str, body: &str) -> Vec<u8> {
    Conn::connect(socket)
        .and_then(|mut c| c.ok(method, body.as_bytes()))
        .unwrap_or_else(|e| panic!("{method} {body}: {e}"))
}

/// Snapshot ids in a directory (read-only subvolumes, or archive directories).
fn ids(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| allspark::core::snapshot_id::validate(n).is_ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn archiving(root: &Path) -> bool {
    std::fs::read_dir(root.join("snapshots/cow"))
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".archiving-"))
        })
        .unwrap_or(false)
}

/// Wait until every read-only snapshot of `cow` has its archive.
fn wait_archived(root: &Path, deadline: Duration) {
    let t = Instant::now();
    loop {
        let ro = ids(&root.join("pools/p/snapshots/cow"));
        let ar = ids(&root.join("snapshots/cow"));
        if ro.last() == ar.last() && !archiving(root) {
            return;
        }
        assert!(
            t.elapsed() < deadline,
            "the archives of the read-only snapshots did not catch up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The incremental archive of the newest read-only snapshot of `cow` against the archive of the
/// one before, written `runs` times each way (to a sink, uncompressed): from the kernel's send
/// diff between the two snapshots (unchanged directories not walked) and from the full
/// metadata walk. `None` when there are not two snapshots with archives.
fn diff_vs_walk(root: &Path, runs: usize) -> Option<(Vec<f64>, Vec<f64>)> {
    use allspark::archive::{write_tree, Index, WriteOptions};
    use std::os::fd::AsFd;
    let snaps = root.join("pools/p/snapshots/cow");
    let all = ids(&snaps);
    let [.., older, newer] = all.as_slice() else {
        return None;
    };
    let index = Index::load(&root.join("snapshots/cow").join(older).join("index")).ok()?;
    let (older, newer) = (snaps.join(older), snaps.join(newer));
    let open = |p: &Path| std::fs::File::open(p).expect("open a read-only snapshot");
    let (mut diff, mut walk) = (Vec::new(), Vec::new());
    eprintln!("pool: incremental of a read-only snapshot, send diff vs walk, {runs} rounds");
    for _ in 0..runs {
        let t = Instant::now();
        let mut touched =
            allspark::pool::send_diff::between(open(&older).as_fd(), open(&newer).as_fd())
                .expect("send diff");
        touched.add_index_hazards(&index);
        let skip = |rel: &[u8]| touched.skips(rel);
        let opts = WriteOptions {
            parent: Some(&index),
            skip_dir: Some(&skip),
            ..WriteOptions::default()
        };
        write_tree(&newer, std::io::sink(), &opts).expect("incremental from the diff");
        diff.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let opts = WriteOptions {
            parent: Some(&index),
            ..WriteOptions::default()
        };
        write_tree(&newer, std::io::sink(), &opts).expect("incremental from the walk");
        walk.push(t.elapsed().as_secs_f64());
    }
    Some((diff, walk))
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(cfg: &Cfg, bin: &Path, scratch: &Path) -> (Section, Vec<Target>) {
    let stops = if cfg.quick { 5 } else { 20 };
    let mut sec = Section::new(&format!(
        "Snapshot on stop: btrfs pool vs archive ({} stops, {} files, {:.2} GB)",
        stops,
        cfg.ws_files,
        cfg.ws_bytes as f64 / 1e9
    ));
    let root = scratch.join("root");
    let socket = scratch.join("plugin.sock");
    let image = scratch.join("pool.img");
    let pool_size = (cfg.ws_bytes * 4 + (1 << 30)).max(2 << 30);
    let mut p = Plugin::new(bin, &root, &socket, &[], &scratch.join("plugin.log"));
    p.extra = vec![
        "--pool".into(),
        format!("p=btrfs-image:{}:{}", image.display(), pool_size),
    ];
    p.start();
    let agent = Agent(
        Command::new(bin)
            .arg("--root")
            .arg(&root)
            .args([
                "agent",
                "--no-docker-events",
                "--spool-poll-ms",
                "20",
                "--no-schedule",
            ])
            .env_remove("ALLSPARK_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(scratch.join("agent.log")).expect("agent log"),
            ))
            .spawn()
            .expect("start the agent"),
    );
    // Every stop is kept, except for big workspaces: each volume's chain starts a new full
    // archive every 10 snapshots, and at 10 GB three fulls per volume do not fit beside the
    // data on a 250 GB disk; `keep=10` drops a whole chain once the next one is complete.
    let keep = if cfg.ws_bytes >= 4 << 30 { 10 } else { 100 };
    call(
        &socket,
        "VolumeDriver.Create",
        &format!(
            r#"{{"Name":"cow","Opts":{{"pool":"p","snapshot":"on-unmount","keep":"{keep}"}}}}"#
        ),
    );
    call(
        &socket,
        "VolumeDriver.Create",
        &format!(r#"{{"Name":"arc","Opts":{{"snapshot":"on-unmount","keep":"{keep}"}}}}"#),
    );
    let data: [(&str, PathBuf, PathBuf); 2] = [
        (
            "cow",
            root.join("pools/p/volumes/cow"),
            root.join("pools/p/snapshots/cow"),
        ),
        (
            "arc",
            allspark::core::layout::Layout::new(&root).managed_data(&VolumeName::fixed("arc")),
            root.join("snapshots/arc"),
        ),
    ];
    eprintln!(
        "pool: generating the workspace twice ({} files, {:.2} GB each)",
        cfg.ws_files,
        cfg.ws_bytes as f64 / 1e9
    );
    let mut tree = None;
    for (_, dir, _) in &data {
        tree = Some(gen::generate(dir, cfg.ws_files, cfg.ws_bytes).expect("generate"));
    }
    let tree = tree.expect("a tree");
    // SAFETY: sync(2) has no arguments and cannot fail.
    unsafe { libc::sync() };

    // One stop: Mount, change 1 %, Unmount; the time until the snapshot is listed, and the
    // time the snapshot itself recorded.
    let stop = |name: &str, dir: &Path, snaps: &Path, round: usize| -> (f64, f64, f64) {
        let before = ids(snaps).len();
        call(
            &socket,
            "VolumeDriver.Mount",
            &format!(r#"{{"Name":"{name}","ID":"b{round}"}}"#),
        );
        gen::mutate(dir, &tree, round).expect("change 1 % of the files");
        call(
            &socket,
            "VolumeDriver.Unmount",
            &format!(r#"{{"Name":"{name}","ID":"b{round}"}}"#),
        );
        let t = Instant::now();
        while ids(snaps).len() <= before {
            assert!(
                t.elapsed() < Duration::from_secs(600),
                "no snapshot of {name} after a stop"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let latency = t.elapsed().as_secs_f64();
        let id = ids(snaps).pop().expect("an id");
        let meta = if name == "cow" {
            snaps.join(format!("{id}.json"))
        } else {
            snaps.join(&id).join("manifest.json")
        };
        let meta = std::fs::read(&meta)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .unwrap_or_default();
        let ms = |k: &str| meta[k].as_f64().unwrap_or(f64::NAN) / 1000.0;
        (latency, ms("duration_ms"), ms("flush_ms"))
    };
    eprintln!("pool: {stops} stops of each volume (after one warm-up stop each)");
    let (mut cow_lat, mut cow_own, mut arc_lat, mut arc_own) = (vec![], vec![], vec![], vec![]);
    let mut cow_flush = vec![];
    for round in 0..=stops {
        for (name, dir, snaps) in &data {
            wait_archived(&root, Duration::from_secs(1800));
            let (lat, own, flush) = stop(name, dir, snaps, round);
            if round == 0 {
                continue; // the first archive is a full one; the first snapshot warms up
            }
            if *name == "cow" {
                cow_lat.push(lat);
                cow_own.push(own);
                cow_flush.push(flush);
            } else {
                arc_lat.push(lat);
                arc_own.push(own);
            }
        }
    }
    wait_archived(&root, Duration::from_secs(1800));
    let pct = |v: &[f64], q: f64| {
        let mut us: Vec<u64> = v.iter().map(|s| (s * 1e6) as u64).collect();
        us.sort_unstable();
        quantile_sorted(&us, q) as f64 / 1e6
    };
    let (cow_p50, cow_p99) = (pct(&cow_lat, 0.5), pct(&cow_lat, 0.99));
    let (arc_p50, arc_p99) = (pct(&arc_lat, 0.5), pct(&arc_lat, 0.99));
    sec.add(
        "pool.stop.cow",
        "snapshot on stop, btrfs pool (Unmount reply → listed)",
        Unit::Secs,
        cow_lat,
    );
    sec.add(
        "pool.stop.archive",
        "snapshot on stop, default pool: incremental archive (Unmount reply → listed)",
        Unit::Secs,
        arc_lat,
    );
    sec.ratio("pool.stop.cow", "pool.stop.archive");
    sec.add(
        "pool.own.cow",
        "time under the snapshot lock: read-only snapshot + rename",
        Unit::Secs,
        cow_own,
    );
    sec.add(
        "pool.flush.cow",
        "before the lock: syncfs of what the container wrote (btrfs pool)",
        Unit::Secs,
        cow_flush,
    );
    sec.add(
        "pool.own.archive",
        "time under the snapshot lock: incremental archive",
        Unit::Secs,
        arc_own,
    );
    // The archives the agent wrote afterwards from the read-only snapshots.
    let manifests: Vec<serde_json::Value> = ids(&root.join("snapshots/cow"))
        .iter()
        .filter_map(|id| {
            std::fs::read(root.join("snapshots/cow").join(id).join("manifest.json")).ok()
        })
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    let bg: Vec<f64> = manifests
        .iter()
        .filter(|m| m["parent"].is_string())
        .filter_map(|m| m["duration_ms"].as_f64())
        .map(|ms| ms / 1000.0)
        .collect();
    if !bg.is_empty() {
        sec.add(
            "pool.bg.archive",
            "background archive of a read-only snapshot (incremental, no lock held)",
            Unit::Secs,
            bg,
        );
    }

    let diff_runs = if cfg.quick { 3 } else { 7 };
    if let Some((diff, walk)) = diff_vs_walk(&root, diff_runs) {
        sec.add(
            "pool.incr.diff",
            "incremental archive of the last read-only snapshot (1 % of the files changed, spread over the tree): send diff, unchanged directories skipped",
            Unit::Secs,
            diff,
        );
        sec.add(
            "pool.incr.walk",
            "the same incremental from the metadata walk of the whole tree",
            Unit::Secs,
            walk,
        );
        sec.ratio("pool.incr.diff", "pool.incr.walk");
    }
    // The same with the changes in one corner of the tree (neighbours in path order).
    let (_, cow_dir, cow_snaps) = &data[0];
    let before = ids(cow_snaps).len();
    call(
        &socket,
        "VolumeDriver.Mount",
        r#"{"Name":"cow","ID":"local"}"#,
    );
    gen::mutate_local(cow_dir, &tree, stops + 1).expect("change 1 % of the files in one corner");
    call(
        &socket,
        "VolumeDriver.Unmount",
        r#"{"Name":"cow","ID":"local"}"#,
    );
    let t = Instant::now();
    while ids(cow_snaps).len() <= before {
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "no snapshot of cow after a stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_archived(&root, Duration::from_secs(1800));
    if let Some((diff, walk)) = diff_vs_walk(&root, diff_runs) {
        sec.add(
            "pool.incr.diff.local",
            "the same, 1 % of the files changed in one corner of the tree: send diff",
            Unit::Secs,
            diff,
        );
        sec.add(
            "pool.incr.walk.local",
            "the same incremental from the metadata walk",
            Unit::Secs,
            walk,
        );
        sec.ratio("pool.incr.diff.local", "pool.incr.walk.local");
    }

    // Clones: a writable snapshot vs extracting the archive chain into a new volume.
    let last_cow = ids(&root.join("pools/p/snapshots/cow"))
        .pop()
        .expect("a snapshot");
    let last_arc = ids(&root.join("snapshots/arc")).pop().expect("an archive");
    let (mut t_cow, mut t_arc) = (vec![], vec![]);
    let runs = if cfg.quick { 2 } else { 5 };
    eprintln!("pool: clones, {runs} rounds");
    for r in 0..runs {
        let t = Instant::now();
        call(
            &socket,
            "VolumeDriver.Create",
            &format!(
                r#"{{"Name":"cc{r}","Opts":{{"pool":"p","template":"snapshot:cow@{last_cow}"}}}}"#
            ),
        );
        t_cow.push(t.elapsed().as_secs_f64());
        if r < 2 {
            let t = Instant::now();
            call(
                &socket,
                "VolumeDriver.Create",
                &format!(r#"{{"Name":"ac{r}","Opts":{{"template":"snapshot:arc@{last_arc}"}}}}"#),
            );
            t_arc.push(t.elapsed().as_secs_f64());
            call(
                &socket,
                "VolumeDriver.Remove",
                &format!(r#"{{"Name":"ac{r}"}}"#),
            );
        }
        call(
            &socket,
            "VolumeDriver.Remove",
            &format!(r#"{{"Name":"cc{r}"}}"#),
        );
    }
    let clone_med = crate::report::median(&t_cow);
    sec.add(
        "pool.clone.cow",
        "Create with template=snapshot: (btrfs pool: writable snapshot)",
        Unit::Secs,
        t_cow,
    );
    sec.add(
        "pool.clone.archive",
        "Create with template=snapshot: (default pool: archive chain extracted)",
        Unit::Secs,
        t_arc,
    );
    sec.ratio("pool.clone.cow", "pool.clone.archive");
    drop(agent);
    p.stop();
    let _ = Command::new("umount").arg(root.join("pools/p")).status();
    sec.notes.push(format!(
        "Pool: btrfs-image of {:.1} GB (sparse file on the scratch filesystem, loop-mounted); the same generated workspace in each volume; p50/p99: btrfs {:.3} / {:.3} s, archive {:.3} / {:.3} s.",
        pool_size as f64 / 1e9,
        cow_p50,
        cow_p99,
        arc_p50,
        arc_p99
    ));
    sec.notes.push("A read-only snapshot commits the filesystem's transaction: its time grows with the data written since the last one (here 1 % of the files), not with the size of the volume; on paper a 100 GB workspace costs the same as this one for the same change.".into());
    let targets = vec![
        Target {
            what: format!(
                "Snapshot on stop, btrfs pool, p99 ({:.1} GB)",
                cfg.ws_bytes as f64 / 1e9
            ),
            goal: "≤ 1 s".into(),
            measured: format!("p50 {cow_p50:.3} s, p99 {cow_p99:.3} s"),
            met: Some(cow_p99 <= 1.0),
        },
        Target {
            what: "Clone from a snapshot, btrfs pool".into(),
            goal: "≤ 1 s".into(),
            measured: format!("{clone_med:.3} s"),
            met: Some(clone_med <= 1.0),
        },
    ];
    (sec, targets)
}
