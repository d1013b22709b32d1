//! Benchmark of `usage::measure` (cold: no listing cache; warm: through the cache) against `du -s -x` on a generated 200 000-file tree. Run with `cargo bench --bench usage`.
//!
//! Settings (environment): `ALLSPARK_BENCH_FILES` (default 200000),
//! `ALLSPARK_BENCH_DIR` (parent of the scratch tree, default /var/tmp),
//! `ALLSPARK_BENCH_RUNS` (default 3; the median is reported).
//! "Cold" means without the listing cache, not with an empty page cache: the
//! tree was just written, so all three contenders read metadata from memory.
//! Wall time depends on what else runs on the machine; the CPU column (user +
//! system, all threads; `du`'s from `RUSAGE_CHILDREN`) is the steadier figure.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use allspark::usage::{self, MeasureOptions};

/// Deterministic pseudo-random numbers (64-bit LCG, high bits).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// 200 top directories x 10 sub-directories x files; a quarter of the files empty, the rest 1..3000 bytes.
fn generate(root: &Path, files: usize) -> (usize, usize) {
    let top = 200;
    let sub = 10;
    let per_dir = files.div_ceil(top * sub);
    let content: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 253) as u8).collect();
    let mut rng = Lcg(42);
    let mut made = 0;
    let mut dirs = 1;
    'outer: for t in 0..top {
        for s in 0..sub {
            let d = root.join(format!("d{t:03}")).join(format!("s{s:02}"));
            fs::create_dir_all(&d).unwrap();
            dirs += if s == 0 { 2 } else { 1 };
            for f in 0..per_dir {
                if made == files {
                    break 'outer;
                }
                let r = rng.next();
                let len = if r.is_multiple_of(4) {
                    0
                } else {
                    (r / 4 % 3000) as usize + 1
                };
                let mut file = fs::File::create(d.join(format!("f{f:04}.dat"))).unwrap();
                file.write_all(&content[..len]).unwrap();
                made += 1;
            }
        }
    }
    (made, dirs)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// CPU time (user + system) of this process (`RUSAGE_SELF`, all threads) or of its waited-for children.
fn cpu(who: libc::c_int) -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct we pass.
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Median wall time, median CPU time (of this process and of children), and the last result.
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let mut times = Vec::new();
    let mut cpus = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let c0 = cpu(libc::RUSAGE_SELF) + cpu(libc::RUSAGE_CHILDREN);
        let t = Instant::now();
        let r = f();
        times.push(t.elapsed());
        cpus.push(cpu(libc::RUSAGE_SELF) + cpu(libc::RUSAGE_CHILDREN) - c0);
        last = Some(r);
    }
    (median(times), median(cpus), last.unwrap())
}

fn du(dir: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-s", "-x", "--block-size=1"])
        .arg(dir)
        .output()
        .expect("run du");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing useful: only run when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        println!("usage bench: run with `cargo bench --bench usage`");
        return;
    }
    let files = env_usize("ALLSPARK_BENCH_FILES", 200_000);
    let runs = env_usize("ALLSPARK_BENCH_RUNS", 3).max(1);
    let parent = std::env::var("ALLSPARK_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let scratch = tempfile::Builder::new()
        .prefix("allspark-usage-bench-")
        .tempdir_in(&parent)
        .expect("scratch directory");
    let root = scratch.path().join("vol");
    let cache = scratch.path().join("cache.bin");

    let t = Instant::now();
    let (made, dirs) = generate(&root, files);
    println!(
        "generated {made} files in {dirs} directories under {} in {:.1?}",
        root.display(),
        t.elapsed()
    );
    // Let every directory age past the racy window, so the warm runs can use the cache.
    std::thread::sleep(usage::RACY_WINDOW + Duration::from_millis(500));

    let default = MeasureOptions::default();
    let opts = |threads| MeasureOptions { threads };
    let (cold, cold_cpu, w) = time(runs, || usage::measure_with(&root, &default).unwrap());
    assert_eq!(w.usage.files, made as u64);
    let mut cold_rows = Vec::new();
    for n in [2, 4, 8] {
        let (t, c, r) = time(runs, || usage::measure_with(&root, &opts(n)).unwrap());
        assert_eq!(r.usage, w.usage, "{n} threads disagree");
        cold_rows.push((n, t, c));
    }
    let prime = Instant::now();
    let first = usage::measure_cached(&root, &cache).unwrap();
    let prime = prime.elapsed();
    assert_eq!(first.dirs_listed, dirs as u64);
    let (warm, warm_cpu, ww) = time(runs, || usage::measure_cached(&root, &cache).unwrap());
    assert_eq!(
        ww.dirs_reused, dirs as u64,
        "warm runs must reuse every listing"
    );
    let mut warm_rows = Vec::new();
    for n in [2, 4] {
        let (t, c, r) = time(runs, || {
            usage::measure_cached_with(&root, &cache, &opts(n)).unwrap()
        });
        assert_eq!(r.usage, w.usage, "{n} threads disagree");
        warm_rows.push((n, t, c));
    }
    let (du_t, du_cpu, du_bytes) = time(runs, || du(&root));
    assert_eq!(w.usage.bytes, du_bytes, "measure and du disagree");
    assert_eq!(ww.usage, w.usage, "warm and cold disagree");
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let cache_size = fs::metadata(&cache).map(|m| m.len()).unwrap_or(0);
    println!();
    println!(
        "{:<52} {:>10} {:>10} {:>10}",
        format!("median of {runs} runs"),
        "wall",
        "vs du",
        "cpu"
    );
    let row = |name: &str, d: Duration, c: Duration| {
        println!(
            "{:<52} {:>10.1?} {:>9.2}x {:>10.1?}",
            name,
            d,
            du_t.as_secs_f64() / d.as_secs_f64(),
            c
        );
    };
    row("du -s -x --block-size=1", du_t, du_cpu);
    row(
        &format!(
            "measure, cold (no cache, default {} threads)",
            default.threads
        ),
        cold,
        cold_cpu,
    );
    for (n, t, c) in &cold_rows {
        row(&format!("measure, cold (no cache, {n} threads)"), *t, *c);
    }
    row(
        &format!(
            "measure, warm (listing cache, default {} threads)",
            default.threads
        ),
        warm,
        warm_cpu,
    );
    for (n, t, c) in &warm_rows {
        row(
            &format!("measure, warm (listing cache, {n} threads)"),
            *t,
            *c,
        );
    }
    println!(
        "{:<52} {:>10.1?}",
        "measure, priming run (lists + writes cache)", prime
    );
    println!();
    println!(
        "figures: {} bytes on disk, {} apparent, {} files, {} dirs; cache file {} bytes",
        w.usage.bytes, w.usage.apparent_bytes, w.usage.files, w.usage.dirs, cache_size
    );
    println!(
        "warm / cold = {:.2} wall, {:.2} cpu (the cache saves the readdir calls; every entry is still stat'ed)",
        warm.as_secs_f64() / cold.as_secs_f64(),
        warm_cpu.as_secs_f64() / cold_cpu.as_secs_f64()
    );
    println!(
        "cpu vs du: cold {:.2}x, warm {:.2}x of du's cpu time",
        cold_cpu.as_secs_f64() / du_cpu.as_secs_f64(),
        warm_cpu.as_secs_f64() / du_cpu.as_secs_f64()
    );
    println!(
        "load average at the end: {} (other work on the machine skews the figures)",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}
