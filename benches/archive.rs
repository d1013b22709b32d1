//! Manual throughput check of write_archive on a tree of your choice.
//!
//! `ALLSPARK_BENCH_TREE=/some/dir cargo bench --bench archive`; `ALLSPARK_BENCH_CODEC=gzip`,
//! `ALLSPARK_BENCH_LEVEL=N` and `ALLSPARK_BENCH_CHUNK=BYTES` override the defaults of zstd.

use std::fs::File;
use std::time::Instant;

use allspark::archive::{write_archive, CompressOptions, Compression, WriteOptions};

fn main() {
    let Some(tree) = std::env::var_os("ALLSPARK_BENCH_TREE") else {
        eprintln!("ALLSPARK_BENCH_TREE not set; nothing to measure");
        return;
    };
    let codec: Compression = std::env::var("ALLSPARK_BENCH_CODEC")
        .map(|c| c.parse().expect("ALLSPARK_BENCH_CODEC"))
        .unwrap_or_default();
    let mut compression = CompressOptions::new(codec);
    if let Ok(l) = std::env::var("ALLSPARK_BENCH_LEVEL") {
        compression.level = l.parse().expect("ALLSPARK_BENCH_LEVEL");
    }
    if let Ok(c) = std::env::var("ALLSPARK_BENCH_CHUNK") {
        compression.chunk_size = c.parse().expect("ALLSPARK_BENCH_CHUNK");
    }
    let out = std::env::var_os("ALLSPARK_BENCH_OUT")
        .unwrap_or(format!("/tmp/allspark-bench.{}", codec.archive_suffix()).into());
    let start = Instant::now();
    let report = write_archive(
        std::path::Path::new(&tree),
        File::create(&out).expect("create output"),
        &WriteOptions {
            compression: compression.clone(),
            ..WriteOptions::default()
        },
    )
    .expect("write_archive");
    let secs = start.elapsed().as_secs_f64();
    let c = report.compressed.expect("compression stats");
    eprintln!(
        "write_archive {codec} level {} chunk {}: {} files, {:.1} MB read, tar {:.1} MB -> {:.1} MB ({} of {} chunks stored) in {:.2} s = {:.1} MB/s of tar input",
        compression.level,
        compression.chunk_size,
        report.files,
        report.bytes_in as f64 / 1e6,
        c.bytes_in as f64 / 1e6,
        c.bytes_out as f64 / 1e6,
        c.stored_chunks,
        c.chunks,
        secs,
        c.bytes_in as f64 / 1e6 / secs
    );
}
