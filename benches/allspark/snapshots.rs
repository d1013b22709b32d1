//! Snapshots of a generated workspace: allspark full / incremental / restore (the CLI, release build) vs tar czf, tar -I pigz, tar xzf.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::client::Conn;
use crate::gen;
use crate::plugin::{run_ok, timed, Plugin, Timed};
use crate::report::{max, Section, Target, Unit};
use crate::Cfg;

fn sync_all() {
    // SAFETY: sync(2) has no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn file_size(p: &Path) -> u64 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .len()
}

/// Read every file once, so all contenders start with the tree in the page cache.
fn warm(root: &Path, tree: &gen::Tree) {
    let mut buf = vec![0u8; 1 << 20];
    for f in &tree.files {
        use std::io::Read;
        let mut file = fs::File::open(root.join(&f.rel)).expect("open generated file");
        while file.read(&mut buf).expect("read generated file") > 0 {}
    }
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir").flatten() {
            let t = e.file_type().expect("file type");
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                n += 1;
            }
        }
    }
    n
}

pub fn run(cfg: &Cfg, bin: &Path, scratch: &Path) -> (Section, Vec<Target>) {
    let mut sec = Section::new(&format!(
        "Snapshots of a generated workspace ({} files, {:.2} GB)",
        cfg.ws_files,
        cfg.ws_bytes as f64 / 1e9
    ));
    let root = scratch.join("root");
    let out = scratch.join("out");
    let xdir = scratch.join("x");
    fs::create_dir_all(&out).expect("out dir");
    fs::create_dir_all(&xdir).expect("x dir");
    let socket = scratch.join("plugin.sock");
    let mut p = Plugin::new(bin, &root, &socket, &[], &scratch.join("plugin.log"));
    p.start();
    // A fresh connection per call: the plugin closes idle keep-alive connections.
    let call = |method: &str, body: &[u8]| {
        Conn::connect(&socket)
            .and_then(|mut c| c.ok(method, body))
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    };
    call("VolumeDriver.Create", br#"{"Name":"ws","Opts":{}}"#);
    let data = allspark::core::layout::Layout::new(&root).managed_data("ws");

    eprintln!(
        "snapshots: generating {} files, {:.2} GB under {}",
        cfg.ws_files,
        cfg.ws_bytes as f64 / 1e9,
        data.display()
    );
    let t = Instant::now();
    let tree = gen::generate(&data, cfg.ws_files, cfg.ws_bytes).expect("generate the workspace");
    let gen_secs = t.elapsed().as_secs_f64();
    sync_all();
    warm(&data, &tree);
    let kinds = [gen::Kind::Text, gen::Kind::Binary, gen::Kind::Random];
    let by_kind: Vec<String> = kinds
        .iter()
        .map(|k| {
            let (n, b) = tree
                .files
                .iter()
                .filter(|f| f.kind == *k)
                .fold((0, 0u64), |(n, b), f| (n + 1, b + f.size));
            format!("{k:?} {n} files / {:.0} MB", b as f64 / 1e6)
        })
        .collect();
    sec.notes.push(format!(
        "Workspace: {} files in {} directories, {:.1} MB ({}), generated in {:.1} s (generator v{}, deterministic).",
        tree.files.len(),
        tree.dirs,
        tree.bytes as f64 / 1e6,
        by_kind.join(", "),
        gen_secs,
        gen::GENERATOR_VERSION
    ));

    let allspark = |args: &[&str]| -> Timed {
        let mut c = Command::new(bin);
        c.arg("--root")
            .arg(&root)
            .args(args)
            .env_remove("ALLSPARK_LOG");
        timed(&mut c)
    };
    let data_s = data.to_str().expect("UTF-8 path").to_string();
    let czf = out.join("czf.tar.gz");
    let pgz = out.join("pigz.tar.gz");
    let shell = |script: String| -> Timed { timed(Command::new("bash").args(["-c", &script])) };

    // Full snapshots, interleaved.
    eprintln!(
        "snapshots: full, {} rounds of allspark / tar czf / tar -I pigz",
        cfg.snap_runs
    );
    let mut full_id: Option<String> = None;
    let (mut t_full, mut t_czf, mut t_pigz, mut rss_full) = (vec![], vec![], vec![], vec![]);
    let (mut c_full, mut c_czf, mut c_pigz) = (vec![], vec![], vec![]);
    let mut full_size = 0;
    for round in 0..cfg.snap_runs {
        for k in 0..3 {
            match (k + round) % 3 {
                0 => {
                    if let Some(id) = full_id.take() {
                        let _ = fs::remove_dir_all(root.join("snapshots/ws").join(id));
                    }
                    sync_all();
                    let r = allspark(&["snapshot", "create", "ws", "--full"]);
                    let id = r.stdout.trim().to_string();
                    full_size =
                        file_size(&root.join("snapshots/ws").join(&id).join("snapshot.tar.gz"));
                    full_id = Some(id);
                    t_full.push(r.secs);
                    c_full.push(r.cpu_secs);
                    rss_full.push(r.maxrss_kib as f64);
                }
                1 => {
                    let _ = fs::remove_file(&czf);
                    sync_all();
                    let c = czf.display();
                    let r = shell(format!("tar -czf {c} -C {data_s} . && sync {c}"));
                    t_czf.push(r.secs);
                    c_czf.push(r.cpu_secs);
                }
                _ => {
                    let _ = fs::remove_file(&pgz);
                    sync_all();
                    let c = pgz.display();
                    let r = shell(format!("tar -I pigz -cf {c} -C {data_s} . && sync {c}"));
                    t_pigz.push(r.secs);
                    c_pigz.push(r.cpu_secs);
                }
            }
        }
    }
    let full_id = full_id.expect("a full snapshot");
    let czf_size = file_size(&czf);
    let pigz_size = file_size(&pgz);
    sec.add(
        "snap.full",
        "allspark snapshot create --full",
        Unit::Secs,
        t_full,
    );
    sec.add(
        "snap.czf",
        "tar czf (+ sync of the archive)",
        Unit::Secs,
        t_czf,
    );
    sec.add(
        "snap.pigz",
        "tar -I pigz (+ sync of the archive)",
        Unit::Secs,
        t_pigz,
    );
    let r_czf = sec.ratio("snap.full", "snap.czf").unwrap_or(f64::NAN);
    let r_pigz = {
        let a = sec.get("snap.full").map(|f| f.median()).unwrap_or(f64::NAN);
        let b = sec.get("snap.pigz").map(|f| f.median()).unwrap_or(f64::NAN);
        a / b
    };
    sec.ratio("snap.pigz", "snap.czf");
    sec.add(
        "cpu.full",
        "CPU time: allspark full snapshot",
        Unit::Secs,
        c_full,
    );
    sec.add(
        "cpu.czf",
        "CPU time: tar czf (tar + gzip)",
        Unit::Secs,
        c_czf,
    );
    sec.add(
        "cpu.pigz",
        "CPU time: tar -I pigz (tar + pigz)",
        Unit::Secs,
        c_pigz,
    );
    sec.ratio("cpu.full", "cpu.czf");
    sec.ratio("cpu.pigz", "cpu.czf");
    sec.add(
        "size.full",
        "allspark full snapshot size",
        Unit::Bytes,
        vec![full_size as f64],
    );
    sec.add(
        "size.gzip6",
        "gzip -6 size (tar czf)",
        Unit::Bytes,
        vec![czf_size as f64],
    );
    sec.add(
        "size.pigz",
        "pigz -6 size (tar -I pigz)",
        Unit::Bytes,
        vec![pigz_size as f64],
    );
    let r_size = sec.ratio("size.full", "size.gzip6").unwrap_or(f64::NAN);
    sec.ratio("size.pigz", "size.gzip6");
    sec.add(
        "size.tree",
        "workspace (file bytes)",
        Unit::Bytes,
        vec![tree.bytes as f64],
    );

    // Incrementals after changing 1 % of the files each time.
    eprintln!("snapshots: incremental, {} rounds", cfg.snap_runs);
    let (mut t_inc, mut rss_inc, mut inc_sizes) = (vec![], vec![], vec![]);
    let mut changed = (0, 0);
    for round in 0..cfg.snap_runs {
        changed = gen::mutate(&data, &tree, round).expect("change 1 % of the files");
        sync_all();
        let r = allspark(&["snapshot", "create", "ws"]);
        let id = r.stdout.trim().to_string();
        let dir = root.join("snapshots/ws").join(&id);
        let m: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("manifest.json")).expect("manifest"))
                .expect("manifest JSON");
        assert!(
            m["parent"].is_string(),
            "snapshot {id} is not incremental: {m}"
        );
        inc_sizes.push(file_size(&dir.join("snapshot.tar.gz")) as f64);
        t_inc.push(r.secs);
        rss_inc.push(r.maxrss_kib as f64);
    }
    sec.add(
        "snap.incr",
        &format!(
            "allspark incremental, {} files ({:.1} MB) changed",
            changed.0,
            changed.1 as f64 / 1e6
        ),
        Unit::Secs,
        t_inc,
    );
    let r_inc = sec.ratio("snap.incr", "snap.full").unwrap_or(f64::NAN);
    sec.add(
        "size.incr",
        "allspark incremental snapshot size",
        Unit::Bytes,
        inc_sizes,
    );

    // Restore of the full snapshot into a new volume vs tar xzf of the gzip -6 archive.
    eprintln!(
        "snapshots: restore, {} rounds of allspark / tar xzf",
        cfg.restore_runs
    );
    let (mut t_rest, mut t_xzf, mut rss_rest) = (vec![], vec![], vec![]);
    let (mut c_rest, mut c_xzf) = (vec![], vec![]);
    let mut checked = false;
    for round in 0..cfg.restore_runs {
        for k in 0..2 {
            if (k + round) % 2 == 0 {
                let new = format!("ws-restore-{round}");
                sync_all();
                let r = allspark(&[
                    "snapshot", "restore", "ws", &full_id, "--into", &new, "--yes",
                ]);
                t_rest.push(r.secs);
                c_rest.push(r.cpu_secs);
                rss_rest.push(r.maxrss_kib as f64);
                if !checked {
                    let dir = allspark::core::layout::Layout::new(&root).managed_data(&new);
                    let n = count_files(&dir);
                    assert_eq!(n, tree.files.len(), "restored file count");
                    checked = true;
                }
                let body = format!("{{\"Name\":\"{new}\"}}");
                call("VolumeDriver.Remove", body.as_bytes());
            } else {
                let dir: PathBuf = xdir.join(format!("r{round}"));
                fs::create_dir_all(&dir).expect("extraction dir");
                sync_all();
                let r = timed(
                    Command::new("tar")
                        .arg("-xzf")
                        .arg(&czf)
                        .arg("-C")
                        .arg(&dir),
                );
                t_xzf.push(r.secs);
                c_xzf.push(r.cpu_secs);
                run_ok(Command::new("rm").arg("-rf").arg(&dir));
            }
        }
    }
    sec.add(
        "snap.restore",
        "allspark snapshot restore --into (full)",
        Unit::Secs,
        t_rest,
    );
    sec.add("snap.xzf", "tar xzf (gzip -6 archive)", Unit::Secs, t_xzf);
    let r_rest = sec.ratio("snap.restore", "snap.xzf").unwrap_or(f64::NAN);
    sec.add(
        "cpu.restore",
        "CPU time: allspark restore",
        Unit::Secs,
        c_rest,
    );
    sec.add(
        "cpu.xzf",
        "CPU time: tar xzf (tar + gzip -d)",
        Unit::Secs,
        c_xzf,
    );
    sec.ratio("cpu.restore", "cpu.xzf");
    sec.add(
        "mem.full",
        "CLI peak memory: full snapshot (max RSS, /usr/bin/time)",
        Unit::KiB,
        rss_full,
    );
    sec.add(
        "mem.incr",
        "CLI peak memory: incremental (max RSS)",
        Unit::KiB,
        rss_inc,
    );
    sec.add(
        "mem.restore",
        "CLI peak memory: restore (max RSS)",
        Unit::KiB,
        rss_rest,
    );
    let mem_max = ["mem.full", "mem.incr", "mem.restore"]
        .iter()
        .filter_map(|k| sec.get(k))
        .map(|f| max(&f.samples))
        .fold(0.0, f64::max);
    p.stop();
    sec.notes.push(format!(
        "Page cache kept warm for every contender (the tree is read once after generation; 24 GiB of RAM hold it); `sync` runs before each timed run. Every archive is fsynced before the clock stops (allspark does it itself; the bench runs `sync FILE` after tar). Runs are interleaved, rotating the order each round. {} compression threads (allspark) and pigz on the same {} cores.",
        crate::nproc(),
        crate::nproc()
    ));
    sec.notes.push("CPU time is user + system of the command and the processes it waited for (from /usr/bin/time): it hardly grows when other work competes for the cores, unlike wall time. tar czf is single-threaded and barely slows down when the second core is busy; allspark and pigz, which need both cores, do.".into());
    sec.notes.push("The allspark times are the whole CLI process (state checks, walk, archive, index, manifest, fsyncs; restore: sha256 check of the archive, extraction into staging, creation of the volume, swap).".into());

    let targets = vec![
        Target {
            what: "Full snapshot vs `tar czf`".into(),
            goal: "≥ 2× faster".into(),
            measured: format!("{:.2}× faster", 1.0 / r_czf),
            met: Some(1.0 / r_czf >= 2.0),
        },
        Target {
            what: "Full snapshot vs `tar -I pigz`".into(),
            goal: "no slower (≤ 1.00)".into(),
            measured: format!("{r_pigz:.3}× the time"),
            met: Some(r_pigz <= 1.0),
        },
        Target {
            what: "Snapshot size vs `gzip -6`".into(),
            goal: "within 3 %".into(),
            measured: format!("{:+.2} %", (r_size - 1.0) * 100.0),
            met: Some((r_size - 1.0).abs() <= 0.03 || r_size < 1.0),
        },
        Target {
            what: "Incremental (1 % of files changed) / full".into(),
            goal: "≤ 5 %".into(),
            measured: format!("{:.2} %", r_inc * 100.0),
            met: Some(r_inc <= 0.05),
        },
        Target {
            what: "Restore vs `tar xzf`".into(),
            goal: "≥ tar xzf speed (≤ 1.00)".into(),
            measured: format!("{r_rest:.3}× the time"),
            met: Some(r_rest <= 1.0),
        },
        Target {
            what: "CLI peak memory (snapshot, restore)".into(),
            goal: "≤ 64 MB".into(),
            measured: Unit::KiB.show(mem_max),
            met: Some(mem_max * 1024.0 <= 64e6),
        },
    ];
    (sec, targets)
}
