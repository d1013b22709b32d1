//! allspark against Docker's `local` driver, GNU tar (gzip, pigz, zstd) and restic, in one run, with a report.
//!
//! Run with `scripts/bench.sh [--quick]` (or `cargo bench --bench allspark -- [--quick]`).
//! Needs root (real bind mounts) and, for the Docker sections, a running
//! dockerd (they are reported as skipped without one). Every figure is the
//! median of several runs, with min and max; every ratio compares two
//! figures measured in the same run, interleaved. The table goes to stdout
//! and to `bench-results/latest.{md,json}` (`--out DIR` to change).
//!
//! Options (after `--`): `--quick` (smaller workspace, fewer volumes and
//! runs: a smoke check of a minute or two), `--only docker,socket,snapshots,pool`,
//! `--out DIR`, `--generate DIR [--files N --bytes B]` (only write the workspace there). Priority of
//! the bench and every contender: `ALLSPARK_BENCH_NICE` (e.g. -10). Scratch space: `ALLSPARK_BENCH_DIR` (default `/var/tmp`).

// The test helpers the bench uses (a few of common's, which re-exports those of the other three).
#[path = "../../tests/support/common.rs"]
#[allow(unused_imports)]
mod common;
#[path = "../../tests/support/dockerd.rs"]
#[allow(dead_code)]
mod dockerd;
#[path = "../../tests/support/images.rs"]
#[allow(dead_code)]
mod images;
#[path = "../../tests/support/test_plugin.rs"]
#[allow(dead_code)]
mod test_plugin;

mod client;
mod docker;
mod gen;
mod plugin;
mod pool;
mod report;
mod snapshots;
mod socket;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use report::Report;

/// Sizes and repetitions of one run.
#[derive(Clone, Debug)]
pub struct Cfg {
    pub quick: bool,
    /// Rounds of the socket phases and start-up runs.
    pub runs: usize,
    /// Duration of one socket phase.
    pub phase: Duration,
    pub list_per_round: usize,
    pub volumes: usize,
    pub docker_warmup: usize,
    pub docker_runs: usize,
    pub snap_runs: usize,
    /// Rounds of restore vs tar xzf (cheaper than a full snapshot round, and noisier).
    pub restore_runs: usize,
    pub ws_files: usize,
    pub ws_bytes: u64,
    /// The many-file tree (incremental scans that must scale).
    pub many_files: usize,
    pub many_bytes: u64,
}

impl Cfg {
    fn full() -> Cfg {
        Cfg {
            quick: false,
            runs: 5,
            phase: Duration::from_secs(2),
            list_per_round: 6,
            volumes: 10_000,
            docker_warmup: 3,
            docker_runs: 25,
            snap_runs: 3,
            restore_runs: 4,
            ws_files: 20_000,
            ws_bytes: 1 << 30,
            many_files: 200_000,
            many_bytes: 200 << 20,
        }
    }
    fn quick() -> Cfg {
        Cfg {
            quick: true,
            runs: 3,
            phase: Duration::from_millis(500),
            list_per_round: 2,
            volumes: 2_000,
            docker_warmup: 1,
            docker_runs: 4,
            snap_runs: 2,
            restore_runs: 2,
            ws_files: 2_000,
            ws_bytes: 100 << 20,
            many_files: 20_000,
            many_bytes: 20 << 20,
        }
    }
}

pub fn nproc() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn sh(cmd: &str) -> String {
    Command::new("bash")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn storage_driver() -> String {
    let s = sh("docker info --format '{{.Driver}}' 2>/dev/null");
    if s.is_empty() {
        "(no dockerd)".into()
    } else {
        s
    }
}

fn machine() -> Vec<(String, String)> {
    let model = sh("lscpu | sed -n 's/^Model name: *//p' | head -1");
    let mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo");
    let fs = sh("df -T /var/tmp | awk 'NR==2 {print $2\" (\"$1\")\"}'");
    let git = sh(&format!(
        "cd '{}' && git rev-parse --short HEAD && (git diff --quiet HEAD -- src Cargo.toml || echo '(src modified)')",
        env!("CARGO_MANIFEST_DIR")
    ))
    .replace('\n', " ");
    vec![
        ("cores (nproc)".into(), nproc().to_string()),
        ("CPU".into(), model),
        ("memory".into(), mem),
        ("kernel".into(), sh("uname -r")),
        ("scratch filesystem".into(), fs),
        (
            "docker".into(),
            format!(
                "{} (storage driver {})",
                sh("docker version --format '{{.Server.Version}}' 2>/dev/null"),
                storage_driver()
            ),
        ),
        (
            "tools".into(),
            format!(
                "{}, gzip {}, pigz {}, zstd {}, restic {}",
                sh("tar --version | head -1"),
                sh("gzip --version | head -1 | awk '{print $2}'"),
                sh("pigz --version 2>&1 | awk '{print $2}'"),
                sh("zstd --version | sed 's/.* v\\([0-9.]*\\).*/\\1/'"),
                sh("restic version | awk '{print $2}'")
            ),
        ),
        ("rustc".into(), sh("rustc --version")),
        ("allspark".into(), git),
        (
            "load average at start".into(),
            sh("cut -d' ' -f1-3 /proc/loadavg"),
        ),
        (
            "bench priority".into(),
            std::env::var("ALLSPARK_BENCH_NICE")
                .map(|n| {
                    format!("nice {n} for the bench and every contender (dockerd keeps its own)")
                })
                .unwrap_or_else(|_| "default".into()),
        ),
    ]
}

/// Total stall time (µs) of a /proc/pressure file's `some` line.
fn pressure_total(resource: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/pressure/{resource}")).ok()?;
    text.lines()
        .find(|l| l.starts_with("some"))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

fn scratch(prefix: &str, parent: &Path) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(parent)
        .unwrap_or_else(|e| panic!("cannot create scratch space in {}: {e}", parent.display()))
}

/// Remove a scratch directory after unmounting what a plugin may have left there.
fn dispose(dir: tempfile::TempDir) {
    plugin::unmount_under(dir.path());
    let _ = dir.close();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` also runs this binary (without --bench): do nothing then.
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "allspark bench: run with `scripts/bench.sh [--quick]` (cargo bench --bench allspark)"
        );
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(dir) = value("--generate") {
        // Debugging aid: write the workspace of the chosen mode into DIR and stop.
        let cfg = if quick { Cfg::quick() } else { Cfg::full() };
        std::fs::create_dir_all(&dir).expect("create the directory");
        let files = value("--files").map_or(cfg.ws_files, |v| v.parse().expect("--files N"));
        let bytes = value("--bytes").map_or(cfg.ws_bytes, |v| v.parse().expect("--bytes B"));
        let tree = gen::generate(Path::new(&dir), files, bytes).expect("generate");
        println!(
            "{} files, {} directories, {} bytes in {dir}",
            tree.files.len(),
            tree.dirs,
            tree.bytes
        );
        return;
    }
    let only: Option<Vec<String>> =
        value("--only").map(|s| s.split(',').map(str::to_string).collect());
    let wants = |s: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == s));
    let out_dir = value("--out")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results"));
    let parent =
        PathBuf::from(std::env::var("ALLSPARK_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()));
    assert!(
        nix::unistd::geteuid().is_root(),
        "the bench needs root (the plugin makes real bind mounts)"
    );
    let mut cfg = if quick { Cfg::quick() } else { Cfg::full() };
    // A larger (or smaller) workspace for the snapshot and pool sections, e.g. the 10 GB
    // snapshot-on-stop figure: `scripts/bench.sh --only pool --ws-bytes 10G --ws-files 200000`.
    if let Some(b) = value("--ws-bytes") {
        cfg.ws_bytes = allspark::core::options::parse_size(&b)
            .unwrap_or_else(|e| panic!("--ws-bytes {b}: {e}"));
    }
    if let Some(n) = value("--ws-files") {
        cfg.ws_files = n.parse().expect("--ws-files N");
    }
    let bin = common::allspark_bin();
    // On a shared machine: run every contender (plugin, CLI, tar, gzip, pigz) at
    // the same raised priority, so other work disturbs all of them less.
    let nice = std::env::var("ALLSPARK_BENCH_NICE")
        .ok()
        .and_then(|v| v.parse::<i32>().ok());
    if let Some(n) = nice {
        // SAFETY: setpriority on this process only; children inherit it.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) };
        assert_eq!(
            rc,
            0,
            "setpriority({n}): {}",
            std::io::Error::last_os_error()
        );
    }

    let started = Instant::now();
    let pressure0: Vec<Option<f64>> = ["cpu", "io"].iter().map(|r| pressure_total(r)).collect();
    let mut report = Report {
        mode: if quick { "quick" } else { "full" }.into(),
        started: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        machine: machine(),
        ..Default::default()
    };
    eprintln!(
        "allspark bench ({} mode), binary {}",
        report.mode,
        bin.display()
    );

    if wants("docker") {
        // dockerd must see the plugin's bind mounts: keep the root under /var/lib like the e2e tests.
        let dir = scratch("allspark-bench-docker-", Path::new("/var/lib"));
        let (secs, targets) = docker::run(&cfg, &bin, dir.path());
        report.sections.extend(secs);
        report.targets.extend(targets);
        dispose(dir);
    }
    if wants("socket") {
        let dir = scratch("allspark-bench-socket-", &parent);
        let (sec, targets) = socket::run(&cfg, &bin, dir.path());
        report.sections.push(sec);
        report.targets.extend(targets);
        dispose(dir);
    }
    if wants("snapshots") {
        let dir = scratch("allspark-bench-snap-", &parent);
        let (sec, targets) = snapshots::run(&cfg, &bin, dir.path());
        report.sections.push(sec);
        report.targets.extend(targets);
        dispose(dir);
    }
    if wants("pool") {
        let dir = scratch("allspark-bench-pool-", &parent);
        let (sec, targets) = pool::run(&cfg, &bin, dir.path());
        report.sections.push(sec);
        report.targets.extend(targets);
        dispose(dir);
    }
    report.total_secs = started.elapsed().as_secs_f64();
    report.machine.push((
        "load average at end".into(),
        sh("cut -d' ' -f1-3 /proc/loadavg"),
    ));
    // Pressure stall information: the share of the run during which some task
    // waited for a CPU (or for I/O): how much other work competed with the bench.
    let wall_us = report.total_secs * 1e6;
    let stalls: Vec<String> = ["cpu", "io"]
        .iter()
        .zip(&pressure0)
        .filter_map(|(r, p0)| {
            let d = pressure_total(r)? - (*p0)?;
            Some(format!("{r} {:.0} %", d / wall_us * 100.0))
        })
        .collect();
    if !stalls.is_empty() {
        report
            .machine
            .push(("stalls during the run (PSI some)".into(), stalls.join(", ")));
    }
    if quick {
        report.notes.push(
            "Quick mode: a smoke check with a smaller workspace, fewer volumes and runs; its figures are not comparable to the targets.".into(),
        );
    }

    print!("{}", report.text());
    std::fs::create_dir_all(&out_dir).expect("create the output directory");
    let json = serde_json::to_string_pretty(&report.json()).expect("JSON");
    let md = format!("## allspark benchmarks\n\n{}", report.markdown());
    std::fs::write(out_dir.join("latest.json"), &json).expect("write latest.json");
    std::fs::write(out_dir.join("latest.md"), &md).expect("write latest.md");
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    std::fs::write(out_dir.join(format!("{stamp}-{}.json", report.mode)), &json)
        .expect("write the dated copy");
    eprintln!(
        "\nwrote {0}/latest.md and {0}/latest.json",
        out_dir.display()
    );
}
