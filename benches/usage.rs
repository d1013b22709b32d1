//! Benchmark of `usage::measure` (cold: no listing cache; warm: through the cache) against `du -s -x` on a generated 200 000-file tree. Run with `cargo bench --bench usage`.
//!
//! Settings (environment): `ALLSPARK_BENCH_FILES` (default 200000),
//! `ALLSPARK_BENCH_DIR` (parent of the scratch tree, default /var/tmp),
//! `ALLSPARK_BENCH_RUNS` (default 3; the median is reported).
//! "Cold" means without the listing cache, not with an empty page cache: the
//! tree was just written, so all three contenders read metadata from memory.

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

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let r = f();
        times.push(t.elapsed());
        last = Some(r);
    }
    (median(times), last.unwrap())
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
    let (cold, w) = time(runs, || usage::measure_with(&root, &default).unwrap());
    assert_eq!(w.usage.files, made as u64);
    let four = MeasureOptions { threads: 4 };
    let (cold4, _) = time(runs, || usage::measure_with(&root, &four).unwrap());
    let prime = Instant::now();
    let first = usage::measure_cached(&root, &cache).unwrap();
    let prime = prime.elapsed();
    assert_eq!(first.dirs_listed, dirs as u64);
    let (warm, ww) = time(runs, || usage::measure_cached(&root, &cache).unwrap());
    assert_eq!(
        ww.dirs_reused, dirs as u64,
        "warm runs must reuse every listing"
    );
    let (du_t, du_bytes) = time(runs, || du(&root));
    assert_eq!(w.usage.bytes, du_bytes, "measure and du disagree");
    assert_eq!(ww.usage, w.usage, "warm and cold disagree");

    let cache_size = fs::metadata(&cache).map(|m| m.len()).unwrap_or(0);
    println!();
    println!(
        "{:<44} {:>10} {:>10}",
        "median of {runs} runs".replace("{runs}", &runs.to_string()),
        "time",
        "vs du"
    );
    let row = |name: &str, d: Duration| {
        println!(
            "{:<44} {:>10.1?} {:>9.2}x",
            name,
            d,
            du_t.as_secs_f64() / d.as_secs_f64()
        );
    };
    row("du -s -x --block-size=1", du_t);
    row(
        &format!("measure, cold (no cache, {} threads)", default.threads),
        cold,
    );
    row("measure, cold (no cache, 4 threads)", cold4);
    row("measure, warm (listing cache)", warm);
    println!(
        "{:<44} {:>10.1?}",
        "measure, priming run (lists + writes cache)", prime
    );
    println!();
    println!(
        "figures: {} bytes on disk, {} apparent, {} files, {} dirs; cache file {} bytes",
        w.usage.bytes, w.usage.apparent_bytes, w.usage.files, w.usage.dirs, cache_size
    );
    println!(
        "warm / cold = {:.2} (the cache saves the readdir calls; every entry is still stat'ed)",
        warm.as_secs_f64() / cold.as_secs_f64()
    );
}
