//! Manual throughput check of write_tree_gz on a tree of your choice.
//!
//! `ALLSPARK_BENCH_TREE=/some/dir cargo bench --bench archive`

use std::fs::File;
use std::time::Instant;

use allspark::archive::{write_tree_gz, WriteOptions};

fn main() {
    let Some(tree) = std::env::var_os("ALLSPARK_BENCH_TREE") else {
        eprintln!("ALLSPARK_BENCH_TREE not set; nothing to measure");
        return;
    };
    let out = std::env::var_os("ALLSPARK_BENCH_OUT").unwrap_or("/tmp/allspark-bench.tar.gz".into());
    let start = Instant::now();
    let report = write_tree_gz(
        std::path::Path::new(&tree),
        File::create(&out).expect("create output"),
        &WriteOptions::default(),
    )
    .expect("write_tree_gz");
    let secs = start.elapsed().as_secs_f64();
    let gz = report.gz.expect("gz stats");
    eprintln!(
        "write_tree_gz: {} files, {:.1} MB read, tar {:.1} MB -> gz {:.1} MB ({} of {} members stored) in {:.2} s = {:.1} MB/s of tar input",
        report.files,
        report.bytes_in as f64 / 1e6,
        gz.bytes_in as f64 / 1e6,
        gz.bytes_out as f64 / 1e6,
        gz.stored_members,
        gz.members,
        secs,
        gz.bytes_in as f64 / 1e6 / secs
    );
}
