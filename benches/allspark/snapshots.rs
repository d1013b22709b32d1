//! Snapshots of a generated workspace and of a 200 000-file tree: allspark (zstd and gzip) full / incremental / restore (the CLI, release build) vs tar czf, tar -I pigz, tar -I 'zstd -T0 -3', restic.

use allspark::core::names::VolumeName;
use std::cell::{Cell, RefCell};
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

/// Bytes of the regular files under `dir` (a restic repository).
fn dir_size(dir: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir").flatten() {
            let m = e.metadata().expect("metadata");
            if m.is_dir() {
                stack.push(e.path());
            } else {
                n += m.len();
            }
        }
    }
    n
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

/// Wall and CPU seconds and peak memory of every run of one contender.
#[derive(Default)]
struct Runs {
    secs: Vec<f64>,
    cpu: Vec<f64>,
    rss_kib: Vec<f64>,
}

impl Runs {
    fn push(&mut self, t: &Timed) {
        self.secs.push(t.secs);
        self.cpu.push(t.cpu_secs);
        self.rss_kib.push(t.maxrss_kib as f64);
    }
}

/// Run every contender once per round, rotating the order each round.
fn interleave(rounds: usize, contenders: &mut [&mut dyn FnMut(usize) -> Timed]) -> Vec<Runs> {
    let n = contenders.len();
    let mut runs: Vec<Runs> = (0..n).map(|_| Runs::default()).collect();
    for round in 0..rounds {
        for k in 0..n {
            let i = (k + round) % n;
            sync_all();
            let t = contenders[i](round);
            runs[i].push(&t);
        }
    }
    runs
}

/// `restic` with a password, each repository with its own cache next to it.
struct Restic;

impl Restic {
    fn cache(repo: &Path) -> PathBuf {
        repo.with_extension("cache")
    }

    fn cmd(&self, repo: &Path) -> Command {
        let mut c = Command::new("restic");
        c.arg("-q")
            .arg("--repo")
            .arg(repo)
            .arg("--cache-dir")
            .arg(Self::cache(repo))
            .env("RESTIC_PASSWORD", "allspark-bench");
        c
    }

    /// A fresh, empty repository at `repo` (untimed).
    fn init(&self, repo: &Path) {
        let _ = fs::remove_dir_all(repo);
        let _ = fs::remove_dir_all(Self::cache(repo));
        run_ok(self.cmd(repo).arg("init"));
    }

    /// `restic backup DATA`, then `sync -f` of the repository's filesystem (timed).
    fn backup(&self, repo: &Path, data: &Path) -> Timed {
        let mut c = self.cmd(repo);
        c.arg("backup").arg(data);
        let script = format!("{} && sync -f {}", shell_words(&c), repo.display());
        timed(
            Command::new("bash")
                .args(["-c", &script])
                .env("RESTIC_PASSWORD", "allspark-bench"),
        )
    }
}

/// A command line for `bash -c` (paths here have no spaces or quotes).
fn shell_words(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The snapshot id printed by `allspark snapshot create`.
fn id_of(t: &Timed) -> String {
    t.stdout.trim().to_string()
}

fn manifest(root: &Path, volume: &str, id: &str) -> serde_json::Value {
    let p = root
        .join("snapshots")
        .join(volume)
        .join(id)
        .join("manifest.json");
    serde_json::from_slice(&fs::read(&p).expect("manifest")).expect("manifest JSON")
}

fn archive_size(root: &Path, volume: &str, id: &str) -> u64 {
    let m = manifest(root, volume, id);
    file_size(
        &root
            .join("snapshots")
            .join(volume)
            .join(id)
            .join(m["archive"].as_str().expect("archive name")),
    )
}

/// What one tree's full-snapshot comparison measured (ratios of medians), and
/// the archives the restores start from.
struct FullResult {
    zstd_vs_tar_zstd: f64,
    size_vs_tar_zstd: f64,
    zstd_vs_restic: f64,
    zstd_id: String,
    gzip_id: String,
    czf: PathBuf,
    tzst: PathBuf,
}

/// Full snapshots of `volume` (data in `data`): allspark zstd and gzip vs tar czf,
/// tar -I pigz, tar -I 'zstd -T0 -3' and restic's first backup, interleaved.
#[allow(clippy::too_many_arguments)]
fn full_snapshots(
    sec: &mut Section,
    tag: &str,
    what: &str,
    rounds: usize,
    allspark: &dyn Fn(&[&str]) -> Timed,
    root: &Path,
    volume: &str,
    data: &Path,
    out: &Path,
    restic: &Restic,
) -> FullResult {
    eprintln!("snapshots: {what}: full, {rounds} rounds of 6 contenders");
    let data_s = data.to_str().expect("UTF-8 path").to_string();
    let czf = out.join(format!("{tag}-czf.tar.gz"));
    let pgz = out.join(format!("{tag}-pigz.tar.gz"));
    let tzst = out.join(format!("{tag}-zstd.tar.zst"));
    let repo = out.join(format!("{tag}-restic"));
    let shell = |script: String| -> Timed { timed(Command::new("bash").args(["-c", &script])) };
    let ids: RefCell<[Option<String>; 2]> = RefCell::new([None, None]);
    let allspark_full = |codec: &str, slot: usize| -> Timed {
        if let Some(id) = ids.borrow_mut()[slot].take() {
            let _ = fs::remove_dir_all(root.join("snapshots").join(volume).join(id));
        }
        sync_all();
        let t = allspark(&[
            "--compression",
            codec,
            "snapshot",
            "create",
            volume,
            "--full",
        ]);
        ids.borrow_mut()[slot] = Some(id_of(&t));
        t
    };
    let restic_size = Cell::new(0);
    let runs = {
        let mut a_zstd = |_r: usize| allspark_full("zstd", 0);
        let mut a_gzip = |_r: usize| allspark_full("gzip", 1);
        let mut t_czf = |_r: usize| {
            let _ = fs::remove_file(&czf);
            sync_all();
            let c = czf.display();
            shell(format!("tar -czf {c} -C {data_s} . && sync {c}"))
        };
        let mut t_pigz = |_r: usize| {
            let _ = fs::remove_file(&pgz);
            sync_all();
            let c = pgz.display();
            shell(format!("tar -I pigz -cf {c} -C {data_s} . && sync {c}"))
        };
        let mut t_zstd = |_r: usize| {
            let _ = fs::remove_file(&tzst);
            sync_all();
            let c = tzst.display();
            shell(format!(
                "tar -I 'zstd -T0 -3' -cf {c} -C {data_s} . && sync {c}"
            ))
        };
        let mut r_backup = |_r: usize| {
            restic.init(&repo);
            sync_all();
            let t = restic.backup(&repo, data);
            restic_size.set(dir_size(&repo));
            t
        };
        interleave(
            rounds,
            &mut [
                &mut a_zstd,
                &mut a_gzip,
                &mut t_czf,
                &mut t_pigz,
                &mut t_zstd,
                &mut r_backup,
            ],
        )
    };
    let [zstd_id, gzip_id] = ids.into_inner().map(|i| i.expect("a full snapshot"));
    let k = |s: &str| format!("{tag}.{s}");
    // Figures of the second tree say which tree they are about.
    let l = |s: &str| {
        if tag == "ws" {
            s.to_string()
        } else {
            format!("{tag}: {s}")
        }
    };
    let labels = [
        ("full.zstd", "allspark snapshot create --full (zstd)"),
        ("full.gzip", "allspark snapshot create --full (gzip)"),
        ("full.czf", "tar czf (+ sync of the archive)"),
        ("full.pigz", "tar -I pigz (+ sync)"),
        ("full.tzst", "tar -I 'zstd -T0 -3' (+ sync)"),
        (
            "full.restic",
            "restic backup, first run into a fresh repository (+ sync)",
        ),
    ];
    for ((key, label), r) in labels.iter().zip(&runs) {
        sec.add(&k(key), &l(label), Unit::Secs, r.secs.clone());
    }
    let r_tzst = sec
        .ratio(&k("full.zstd"), &k("full.tzst"))
        .unwrap_or(f64::NAN);
    sec.ratio(&k("full.gzip"), &k("full.czf"));
    sec.ratio(&k("full.pigz"), &k("full.czf"));
    let r_restic = {
        let a = sec.get(&k("full.zstd")).map_or(f64::NAN, |f| f.median());
        let b = sec.get(&k("full.restic")).map_or(f64::NAN, |f| f.median());
        a / b
    };
    let cpu_labels = [
        "CPU time: allspark full, zstd",
        "CPU time: allspark full, gzip",
        "CPU time: tar czf (tar + gzip)",
        "CPU time: tar -I pigz",
        "CPU time: tar -I 'zstd -T0 -3'",
        "CPU time: restic first backup",
    ];
    for (((key, _), label), r) in labels.iter().zip(cpu_labels).zip(&runs) {
        sec.add(
            &k(&format!("cpu.{key}")),
            &l(label),
            Unit::Secs,
            r.cpu.clone(),
        );
    }
    sec.ratio(&k("cpu.full.zstd"), &k("cpu.full.tzst"));
    sec.ratio(&k("cpu.full.gzip"), &k("cpu.full.czf"));
    let sizes = [
        (
            "size.zstd",
            "allspark zstd archive size",
            archive_size(root, volume, &zstd_id),
        ),
        (
            "size.gzip",
            "allspark gzip archive size",
            archive_size(root, volume, &gzip_id),
        ),
        ("size.czf", "gzip -6 size (tar czf)", file_size(&czf)),
        ("size.pigz", "pigz -6 size (tar -I pigz)", file_size(&pgz)),
        (
            "size.tzst",
            "zstd -3 size (tar -I 'zstd -T0 -3')",
            file_size(&tzst),
        ),
        (
            "size.restic",
            "restic repository size (restic 0.14: no compression)",
            restic_size.get(),
        ),
    ];
    for (key, label, v) in sizes {
        sec.add(&k(key), &l(label), Unit::Bytes, vec![v as f64]);
    }
    let s_tzst = sec
        .ratio(&k("size.zstd"), &k("size.tzst"))
        .unwrap_or(f64::NAN);
    sec.ratio(&k("size.gzip"), &k("size.czf"));
    sec.ratio(&k("size.restic"), &k("size.tzst"));
    if tag == "ws" {
        sec.add(
            "mem.full",
            "CLI peak memory: full snapshot, zstd (max RSS, /usr/bin/time)",
            Unit::KiB,
            runs[0].rss_kib.clone(),
        );
    }
    FullResult {
        zstd_vs_tar_zstd: r_tzst,
        size_vs_tar_zstd: s_tzst,
        zstd_vs_restic: r_restic,
        zstd_id,
        gzip_id,
        czf,
        tzst,
    }
}

/// Make sure the newest snapshot of `volume` is a zstd full (the parent of the
/// incrementals that follow); an untimed one is taken if needed.
fn zstd_parent(allspark: &dyn Fn(&[&str]) -> Timed, volume: &str) {
    let ls = allspark(&["snapshot", "ls", volume, "--json"]);
    let all: serde_json::Value = serde_json::from_str(&ls.stdout).expect("snapshot ls JSON");
    let last = all.as_array().and_then(|a| a.last()).cloned();
    if last.is_none_or(|m| m["compression"] != "zstd") {
        allspark(&[
            "--compression",
            "zstd",
            "snapshot",
            "create",
            volume,
            "--full",
        ]);
    }
}

pub fn run(cfg: &Cfg, bin: &Path, scratch: &Path) -> (Section, Vec<Target>) {
    let mut sec = Section::new(&format!(
        "Snapshots of a generated workspace ({} files, {:.2} GB) and of a {}-file tree",
        cfg.ws_files,
        cfg.ws_bytes as f64 / 1e9,
        cfg.many_files
    ));
    let root = scratch.join("root");
    let out = scratch.join("out");
    let xdir = scratch.join("x");
    fs::create_dir_all(&out).expect("out dir");
    fs::create_dir_all(&xdir).expect("x dir");
    let restic = Restic;
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
    call("VolumeDriver.Create", br#"{"Name":"many","Opts":{}}"#);
    let layout = allspark::core::layout::Layout::new(&root);
    let data = layout.managed_data(&VolumeName::fixed("ws"));
    let many = layout.managed_data(&VolumeName::fixed("many"));

    eprintln!(
        "snapshots: generating {} files, {:.2} GB under {}, and {} files under {}",
        cfg.ws_files,
        cfg.ws_bytes as f64 / 1e9,
        data.display(),
        cfg.many_files,
        many.display()
    );
    let t = Instant::now();
    let tree = gen::generate(&data, cfg.ws_files, cfg.ws_bytes).expect("generate the workspace");
    let gen_secs = t.elapsed().as_secs_f64();
    let many_tree =
        gen::generate(&many, cfg.many_files, cfg.many_bytes).expect("generate the many-file tree");
    sync_all();
    warm(&data, &tree);
    warm(&many, &many_tree);
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
        "Workspace (`ws`): {} files in {} directories, {:.1} MB ({}), generated in {:.1} s (generator v{}, deterministic). Many-file tree (`200k`): {} files in {} directories, {:.1} MB, same generator.",
        tree.files.len(),
        tree.dirs,
        tree.bytes as f64 / 1e6,
        by_kind.join(", "),
        gen_secs,
        gen::GENERATOR_VERSION,
        many_tree.files.len(),
        many_tree.dirs,
        many_tree.bytes as f64 / 1e6,
    ));

    let allspark = |args: &[&str]| -> Timed {
        let mut c = Command::new(bin);
        c.arg("--root")
            .arg(&root)
            .args(args)
            .env_remove("ALLSPARK_LOG")
            .env_remove("ALLSPARK_COMPRESSION");
        timed(&mut c)
    };

    let ws = full_snapshots(
        &mut sec,
        "ws",
        "workspace",
        cfg.snap_runs,
        &allspark,
        &root,
        "ws",
        &data,
        &out,
        &restic,
    );
    let mf = full_snapshots(
        &mut sec,
        "200k",
        "many-file tree",
        cfg.snap_runs,
        &allspark,
        &root,
        "many",
        &many,
        &out,
        &restic,
    );

    // Incrementals: allspark (parent: a zstd full) vs restic's next backup of the same repository.
    zstd_parent(&allspark, "ws");
    let ws_repo = out.join("ws-restic");
    eprintln!(
        "snapshots: incremental after 1 % changed, {} rounds",
        cfg.snap_runs
    );
    let (mut inc1, mut rinc1, mut inc_sizes) = (Runs::default(), Runs::default(), vec![]);
    let mut changed = (0, 0);
    for round in 0..cfg.snap_runs {
        changed = gen::mutate(&data, &tree, round).expect("change 1 % of the files");
        for k in 0..2 {
            sync_all();
            if (k + round) % 2 == 0 {
                let t = allspark(&["snapshot", "create", "ws"]);
                let id = id_of(&t);
                let m = manifest(&root, "ws", &id);
                assert!(
                    m["parent"].is_string(),
                    "snapshot {id} is not incremental: {m}"
                );
                inc_sizes.push(archive_size(&root, "ws", &id) as f64);
                inc1.push(&t);
            } else {
                rinc1.push(&restic.backup(&ws_repo, &data));
            }
        }
    }
    eprintln!(
        "snapshots: incremental with nothing changed, {} rounds",
        cfg.snap_runs
    );
    let (mut inc0, mut rinc0) = (Runs::default(), Runs::default());
    for round in 0..cfg.snap_runs {
        for k in 0..2 {
            sync_all();
            if (k + round) % 2 == 0 {
                inc0.push(&allspark(&["snapshot", "create", "ws"]));
            } else {
                rinc0.push(&restic.backup(&ws_repo, &data));
            }
        }
    }
    zstd_parent(&allspark, "many");
    let many_repo = out.join("200k-restic");
    let (mut minc0, mut mrinc0) = (Runs::default(), Runs::default());
    for round in 0..cfg.snap_runs {
        for k in 0..2 {
            sync_all();
            if (k + round) % 2 == 0 {
                minc0.push(&allspark(&["snapshot", "create", "many"]));
            } else {
                mrinc0.push(&restic.backup(&many_repo, &many));
            }
        }
    }
    sec.add(
        "ws.incr1",
        &format!(
            "allspark incremental, {} files ({:.1} MB) changed",
            changed.0,
            changed.1 as f64 / 1e6
        ),
        Unit::Secs,
        inc1.secs.clone(),
    );
    sec.add(
        "ws.restic.incr1",
        "restic backup, next run after the same change",
        Unit::Secs,
        rinc1.secs,
    );
    let r_inc1 = sec.ratio("ws.incr1", "ws.restic.incr1").unwrap_or(f64::NAN);
    let r_inc_full = {
        let a = sec.get("ws.incr1").map_or(f64::NAN, |f| f.median());
        let b = sec.get("ws.full.zstd").map_or(f64::NAN, |f| f.median());
        a / b
    };
    sec.add(
        "ws.size.incr",
        "allspark incremental snapshot size",
        Unit::Bytes,
        inc_sizes,
    );
    sec.add(
        "ws.incr0",
        "allspark incremental, nothing changed",
        Unit::Secs,
        inc0.secs.clone(),
    );
    sec.add(
        "ws.restic.incr0",
        "restic backup, next run, nothing changed",
        Unit::Secs,
        rinc0.secs,
    );
    let r_inc0 = sec.ratio("ws.incr0", "ws.restic.incr0").unwrap_or(f64::NAN);
    sec.add(
        "200k.incr0",
        "200k: allspark incremental, nothing changed",
        Unit::Secs,
        minc0.secs.clone(),
    );
    sec.add(
        "200k.cpu.incr0",
        "200k: CPU time of that incremental",
        Unit::Secs,
        minc0.cpu.clone(),
    );
    sec.add(
        "200k.restic.incr0",
        "200k: restic backup, next run, nothing changed",
        Unit::Secs,
        mrinc0.secs,
    );
    let r_minc0 = sec
        .ratio("200k.incr0", "200k.restic.incr0")
        .unwrap_or(f64::NAN);
    let minc0_med = sec.get("200k.incr0").map_or(f64::NAN, |f| f.median());

    // Restores of the workspace's full snapshots into new volumes vs tar and restic.
    eprintln!(
        "snapshots: restore, {} rounds of allspark zstd / allspark gzip / tar -I zstd -x / tar xzf / restic restore",
        cfg.restore_runs
    );
    let mut checked = false;
    let restore_into = |id: &str, round: usize, codec: &str, checked: &mut bool| -> Timed {
        let new = format!("ws-restore-{codec}-{round}");
        let t = allspark(&["snapshot", "restore", "ws", id, "--into", &new, "--yes"]);
        if !*checked {
            let n = count_files(&layout.managed_data(&VolumeName::fixed(&new)));
            assert_eq!(n, tree.files.len(), "restored file count");
            *checked = true;
        }
        let body = format!("{{\"Name\":\"{new}\"}}");
        call("VolumeDriver.Remove", body.as_bytes());
        t
    };
    let untar = |flags: &str, archive: &Path, round: usize| -> Timed {
        let dir: PathBuf = xdir.join(format!("r{round}"));
        fs::create_dir_all(&dir).expect("extraction dir");
        sync_all();
        let t = timed(
            Command::new("tar")
                .args(flags.split(' '))
                .arg(archive)
                .arg("-C")
                .arg(&dir),
        );
        run_ok(Command::new("rm").arg("-rf").arg(&dir));
        t
    };
    let restic_target = xdir.join("restic");
    let restores = {
        let mut a_zstd = |r: usize| restore_into(&ws.zstd_id, r, "zstd", &mut checked);
        let mut a_gzip = |r: usize| restore_into(&ws.gzip_id, r, "gzip", &mut true);
        let mut t_zstd = |r: usize| untar("-I zstd -xf", &ws.tzst, r);
        let mut t_xzf = |r: usize| untar("-xzf", &ws.czf, r);
        let mut r_restore = |_r: usize| {
            let _ = fs::remove_dir_all(&restic_target);
            sync_all();
            let mut c = restic.cmd(&ws_repo);
            c.args(["restore", "latest", "--target"])
                .arg(&restic_target);
            let t = timed(&mut c);
            run_ok(Command::new("rm").arg("-rf").arg(&restic_target));
            t
        };
        interleave(
            cfg.restore_runs,
            &mut [
                &mut a_zstd,
                &mut a_gzip,
                &mut t_zstd,
                &mut t_xzf,
                &mut r_restore,
            ],
        )
    };
    let rlabels = [
        ("rest.zstd", "allspark snapshot restore --into (zstd full)"),
        ("rest.gzip", "allspark snapshot restore --into (gzip full)"),
        ("rest.tzst", "tar -I zstd -xf (zstd -3 archive)"),
        ("rest.xzf", "tar xzf (gzip -6 archive)"),
        (
            "rest.restic",
            "restic restore latest (the last incremental's state)",
        ),
    ];
    for ((key, label), r) in rlabels.iter().zip(&restores) {
        sec.add(&format!("ws.{key}"), label, Unit::Secs, r.secs.clone());
    }
    let r_rzstd = sec
        .ratio("ws.rest.zstd", "ws.rest.tzst")
        .unwrap_or(f64::NAN);
    let r_rgzip = sec.ratio("ws.rest.gzip", "ws.rest.xzf").unwrap_or(f64::NAN);
    sec.ratio("ws.rest.restic", "ws.rest.tzst");
    let rcpu_labels = [
        "CPU time: allspark restore, zstd",
        "CPU time: allspark restore, gzip",
        "CPU time: tar -I zstd -xf (tar + zstd -d)",
        "CPU time: tar xzf (tar + gzip -d)",
        "CPU time: restic restore",
    ];
    for (((key, _), label), r) in rlabels.iter().zip(rcpu_labels).zip(&restores) {
        sec.add(&format!("ws.cpu.{key}"), label, Unit::Secs, r.cpu.clone());
    }
    sec.ratio("ws.cpu.rest.zstd", "ws.cpu.rest.tzst");
    sec.ratio("ws.cpu.rest.gzip", "ws.cpu.rest.xzf");
    sec.add(
        "mem.incr",
        "CLI peak memory: incremental, workspace (max RSS)",
        Unit::KiB,
        inc1.rss_kib,
    );
    sec.add(
        "mem.incr.200k",
        "CLI peak memory: incremental, 200k tree (max RSS)",
        Unit::KiB,
        minc0.rss_kib,
    );
    sec.add(
        "mem.restore",
        "CLI peak memory: restore, zstd (max RSS)",
        Unit::KiB,
        restores[0].rss_kib.clone(),
    );
    let mem_max = ["mem.full", "mem.incr", "mem.restore"]
        .iter()
        .filter_map(|k| sec.get(k))
        .map(|f| max(&f.samples))
        .fold(0.0, f64::max);
    p.stop();
    sec.notes.push(format!(
        "Page cache kept warm for every contender (both trees are read once after generation; 24 GiB of RAM hold them); `sync` runs before each timed run. Every archive is fsynced before the clock stops (allspark does it itself; the bench runs `sync FILE` after tar and `sync -f REPO` after restic). Runs are interleaved, rotating the order each round. allspark, pigz, zstd -T0 and restic all use the same {} cores.",
        crate::nproc()
    ));
    sec.notes.push("CPU time is user + system of the command and the processes it waited for (from /usr/bin/time): it hardly grows when other work competes for the cores, unlike wall time.".into());
    sec.notes.push("The allspark times are the whole CLI process (state checks, walk, archive, index, manifest, fsyncs; restore: extraction into staging with decompression on every core and the sha256 computed on the way, checked against the manifest before the swap, creation of the volume, swap). restic: `restic backup DIR` / `restic restore latest --target DIR` with a local repository and cache in the scratch directory (restic 0.14 deduplicates and encrypts, and has no compression).".into());

    let met_le = |r: f64, goal: f64| Some(r <= goal);
    let targets = vec![
        Target {
            what: "Full snapshot, zstd, workspace: time vs `tar -I 'zstd -T0 -3'`".into(),
            goal: "≤ 1.00".into(),
            measured: format!("{:.3}× the time", ws.zstd_vs_tar_zstd),
            met: met_le(ws.zstd_vs_tar_zstd, 1.0),
        },
        Target {
            what: "Full snapshot, zstd, workspace: size vs `zstd -3`".into(),
            goal: "no larger (≤ 1.00)".into(),
            measured: format!("{:.4}×", ws.size_vs_tar_zstd),
            met: met_le(ws.size_vs_tar_zstd, 1.0),
        },
        Target {
            what: "Full snapshot, zstd, workspace: time vs restic's first backup".into(),
            goal: "faster (< 1.00)".into(),
            measured: format!("{:.3}× the time", ws.zstd_vs_restic),
            met: Some(ws.zstd_vs_restic < 1.0),
        },
        Target {
            what: "Full snapshot, zstd, 200k tree: time vs `tar -I 'zstd -T0 -3'`".into(),
            goal: "≤ 1.00".into(),
            measured: format!("{:.3}× the time", mf.zstd_vs_tar_zstd),
            met: met_le(mf.zstd_vs_tar_zstd, 1.0),
        },
        Target {
            what: "Full snapshot, zstd, 200k tree: size vs `zstd -3`".into(),
            goal: "no larger (≤ 1.00)".into(),
            measured: format!("{:.4}×", mf.size_vs_tar_zstd),
            met: met_le(mf.size_vs_tar_zstd, 1.0),
        },
        Target {
            what: "Full snapshot, zstd, 200k tree: time vs restic's first backup".into(),
            goal: "faster (< 1.00)".into(),
            measured: format!("{:.3}× the time", mf.zstd_vs_restic),
            met: Some(mf.zstd_vs_restic < 1.0),
        },
        Target {
            what: "Incremental, 1 % changed: time vs restic's next backup".into(),
            goal: "≤ 1.00".into(),
            measured: format!(
                "{r_inc1:.3}× the time ({:.2} % of the full)",
                r_inc_full * 100.0
            ),
            met: met_le(r_inc1, 1.0),
        },
        Target {
            what: "Incremental, nothing changed: time vs restic's next backup".into(),
            goal: "≤ 1.00".into(),
            measured: format!("{r_inc0:.3}× the time"),
            met: met_le(r_inc0, 1.0),
        },
        Target {
            what: "Incremental, 200k files, nothing changed".into(),
            goal: "well under 1 s, ≤ restic".into(),
            measured: format!("{} ({r_minc0:.3}× restic)", Unit::Secs.show(minc0_med)),
            met: Some(minc0_med < 1.0 && r_minc0 <= 1.0),
        },
        Target {
            what: "Restore, zstd: time vs `tar -I zstd -x`".into(),
            goal: "≤ 1.00 (≥ 1.0× its speed)".into(),
            measured: format!("{r_rzstd:.3}× the time"),
            met: met_le(r_rzstd, 1.0),
        },
        Target {
            what: "Restore, gzip: time vs `tar xzf`".into(),
            goal: "≤ 0.667 (≥ 1.5× its speed)".into(),
            measured: format!("{r_rgzip:.3}× the time"),
            met: met_le(r_rgzip, 1.0 / 1.5),
        },
        Target {
            what: "CLI peak memory (workspace snapshot, restore)".into(),
            goal: "≤ 64 MB".into(),
            measured: Unit::KiB.show(mem_max),
            met: Some(mem_max * 1024.0 <= 64e6),
        },
    ];
    (sec, targets)
}
