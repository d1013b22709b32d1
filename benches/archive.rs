//! Manual throughput check of write_archive on a tree of your choice, or of extract of an archive.
//!
//! `ALLSPARK_BENCH_TREE=/some/dir cargo bench --bench archive`; `ALLSPARK_BENCH_CODEC=gzip`,
//! `ALLSPARK_BENCH_LEVEL=N` and `ALLSPARK_BENCH_CHUNK=BYTES` override the defaults of zstd.
//! `ALLSPARK_BENCH_INDEX=file` saves the tree's index there; `ALLSPARK_BENCH_PARENT=file`
//! writes an incremental against a saved index (times loading, walking and saving too).
//! `ALLSPARK_BENCH_EXTRACT=archive ALLSPARK_BENCH_DEST=dir`: extract instead (into a new dir).

use std::fs::File;
use std::time::Instant;

use allspark::archive::{
    extract, write_archive, CompressOptions, Compression, ExtractOptions, Index, WriteOptions,
};

fn main() {
    if let Some(archive) = std::env::var_os("ALLSPARK_BENCH_EXTRACT") {
        let dest = std::env::var_os("ALLSPARK_BENCH_DEST").expect("ALLSPARK_BENCH_DEST");
        let start = Instant::now();
        let r = extract(
            File::open(&archive).expect("open the archive"),
            std::path::Path::new(&dest),
            &ExtractOptions::default(),
        )
        .expect("extract");
        eprintln!(
            "extract: {} entries, {:.1} MB, {} pieces in parallel (streamed: {}) in {:.2} s",
            r.entries,
            r.bytes as f64 / 1e6,
            r.parallel_pieces,
            r.streamed,
            start.elapsed().as_secs_f64()
        );
        return;
    }
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
    let parent = std::env::var_os("ALLSPARK_BENCH_PARENT")
        .map(|p| Index::load(std::path::Path::new(&p)).expect("load the parent index"));
    let loaded = start.elapsed().as_secs_f64();
    let report = write_archive(
        std::path::Path::new(&tree),
        File::create(&out).expect("create output"),
        &WriteOptions {
            compression: compression.clone(),
            parent: parent.as_ref(),
            ..WriteOptions::default()
        },
    )
    .expect("write_archive");
    let walked = start.elapsed().as_secs_f64();
    if let Some(p) = std::env::var_os("ALLSPARK_BENCH_INDEX") {
        report
            .index
            .save(std::path::Path::new(&p))
            .expect("save the index");
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "parent index loaded in {loaded:.3} s, walk + archive done at {walked:.3} s, index of {} entries saved at {secs:.3} s; {} unchanged entries skipped",
        report.index.len(),
        report.unchanged_skipped
    );
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
