//! Parallel compressing writer: cuts its input into chunks compressed on worker threads into independent gzip members or zstd frames, written in order.
//!
//! The output is a sequence of complete members ([`super::gzip`]) or frames
//! ([`super::zst`]); gzip and zstd readers (GNU `tar xzf`, `tar --zstd`)
//! read it as one stream, and [`super::decode`] decodes the pieces on
//! several cores.
//!
//! * Input is cut into chunks of [`CompressOptions::chunk_size`] bytes; each
//!   chunk becomes one member or frame.
//! * At most `threads + 1` chunks are in flight (queued, compressing or waiting
//!   to be written), so memory is bounded whatever the input size.
//! * Chunks that do not compress (random or already-compressed data) are
//!   detected cheaply by compressing four 16 KiB samples spread over the chunk
//!   with level-1 deflate; a chunk is stored (deflate stored blocks, zstd raw
//!   blocks), which costs little more than a copy, only when every sample is
//!   incompressible (a chunk holding a media file's tail and source files
//!   compresses normally).
//! * The sha256 of the compressed output is computed while writing, so callers
//!   get the archive checksum without reading the file again.
//!
//! Levels and chunk sizes were chosen by measurement (docs/benchmarks.md,
//! "Choosing the zstd level and chunk size").

mod chunk;

use std::collections::VecDeque;
use std::io::{self, Write};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use sha2::{Digest, Sha256};

use crate::core::options::Compression;
use chunk::{worker, Done, Encoder, Job};

/// Default gzip chunk size: 1 MiB of input per member.
pub(crate) const DEFAULT_GZIP_CHUNK: usize = 1 << 20;

/// Default zstd chunk size: 4 MiB of input per frame.
pub(crate) const DEFAULT_ZSTD_CHUNK: usize = 4 << 20;

/// Default gzip level. With the zlib-rs backend (a port of zlib-ng, whose
/// levels 3-6 use a faster match finder than zlib's) level 6 archives were
/// 3.0 % larger than `gzip -6`; level 7 is within 2.7 % for about 20 % more
/// compression CPU, still far faster than pigz on the same cores.
pub(crate) const DEFAULT_GZIP_LEVEL: i32 = 7;

/// Default zstd level.
pub(crate) const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Tuning knobs of [`ParallelWriter`].
#[derive(Debug, Clone)]
pub struct CompressOptions {
    /// gzip members or zstd frames.
    pub codec: Compression,
    /// Compression level: gzip 0..=9 (clamped), zstd 1..=19 (clamped; 0 is
    /// zstd's default). Default: [`DEFAULT_GZIP_LEVEL`], [`DEFAULT_ZSTD_LEVEL`].
    pub level: i32,
    /// Number of compressing threads (at least 1). Default: available cores.
    pub threads: usize,
    /// Input bytes per member or frame (at least 4 KiB). Default:
    /// [`DEFAULT_GZIP_CHUNK`], [`DEFAULT_ZSTD_CHUNK`].
    pub chunk_size: usize,
}

impl CompressOptions {
    /// The default settings of `codec`.
    pub fn new(codec: Compression) -> CompressOptions {
        let (level, chunk_size) = match codec {
            Compression::Gzip => (DEFAULT_GZIP_LEVEL, DEFAULT_GZIP_CHUNK),
            Compression::Zstd => (DEFAULT_ZSTD_LEVEL, DEFAULT_ZSTD_CHUNK),
        };
        CompressOptions {
            codec,
            level,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            chunk_size,
        }
    }
}

impl Default for CompressOptions {
    fn default() -> Self {
        CompressOptions::new(Compression::default())
    }
}

/// What a finished [`ParallelWriter`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressStats {
    /// The codec of the members or frames.
    pub codec: Compression,
    /// Uncompressed bytes accepted.
    pub bytes_in: u64,
    /// Compressed bytes written to the inner writer.
    pub bytes_out: u64,
    /// Lower-case hex sha256 of the compressed output.
    pub sha256: String,
    /// Number of gzip members or zstd frames written.
    pub chunks: u64,
    /// Chunks stored without compression because their data did not compress.
    pub stored_chunks: u64,
}

/// A `Write` that compresses on several threads. Call [`finish`](Self::finish)
/// at the end: dropping the writer without it discards buffered data.
pub struct ParallelWriter<W: Write> {
    codec: Compression,
    inner: Option<W>,
    buf: Vec<u8>,
    chunk_size: usize,
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    pending: VecDeque<Receiver<Done>>,
    max_in_flight: usize,
    free: Vec<Vec<u8>>,
    hasher: Sha256,
    bytes_in: u64,
    bytes_out: u64,
    chunks: u64,
    stored_chunks: u64,
    /// Set after the first error: the stream is broken, every later call fails.
    failed: Option<(io::ErrorKind, String)>,
}

impl<W: Write> ParallelWriter<W> {
    /// A writer with the default options of `codec`.
    pub fn new(inner: W, codec: Compression) -> io::Result<Self> {
        Self::with_options(inner, &CompressOptions::new(codec))
    }

    /// A writer with explicit options.
    pub fn with_options(inner: W, opts: &CompressOptions) -> io::Result<Self> {
        let threads = opts.threads.max(1);
        let chunk_size = opts.chunk_size.max(4096);
        let (tx, rx) = bounded::<Job>(threads);
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx = rx.clone();
            let encoder = Encoder::new(opts.codec, opts.level)?;
            let handle = std::thread::Builder::new()
                .name(format!("compress-{i}"))
                .spawn(move || worker(rx, encoder))
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot start a compression thread: {e}"))
                })?;
            workers.push(handle);
        }
        Ok(ParallelWriter {
            codec: opts.codec,
            inner: Some(inner),
            buf: Vec::with_capacity(chunk_size),
            chunk_size,
            jobs: Some(tx),
            workers,
            pending: VecDeque::new(),
            max_in_flight: threads + 1,
            free: Vec::new(),
            hasher: Sha256::new(),
            bytes_in: 0,
            bytes_out: 0,
            chunks: 0,
            stored_chunks: 0,
            failed: None,
        })
    }

    /// Uncompressed bytes accepted so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    /// Compressed bytes written to the inner writer so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    /// The inner writer (e.g. to inspect it); do not write to it directly.
    pub fn get_ref(&self) -> Option<&W> {
        self.inner.as_ref()
    }

    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, msg)) => Err(io::Error::new(
                *kind,
                format!("the compressed stream already failed: {msg}"),
            )),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: io::Error) -> io::Error {
        if self.failed.is_none() {
            self.failed = Some((e.kind(), e.to_string()));
        }
        e
    }

    /// Hand the current buffer to the workers (even if empty).
    fn submit(&mut self) -> io::Result<()> {
        while self.pending.len() >= self.max_in_flight {
            self.write_oldest()?;
        }
        let next = self
            .free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.chunk_size));
        let data = std::mem::replace(&mut self.buf, next);
        let (reply, done) = bounded(1);
        let sent = match &self.jobs {
            Some(jobs) => jobs.send(Job { data, reply }).is_ok(),
            None => false,
        };
        if !sent {
            return Err(self.fail(io::Error::other(
                "the compression threads stopped unexpectedly",
            )));
        }
        self.pending.push_back(done);
        // Write whatever is already finished, without waiting.
        while let Some(front) = self.pending.front() {
            if front.is_empty() {
                break;
            }
            self.write_oldest()?;
        }
        Ok(())
    }

    /// Wait for the oldest chunk and write its member.
    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(rx) = self.pending.pop_front() else {
            return Ok(());
        };
        let done = match rx.recv() {
            Ok(done) => done,
            Err(_) => {
                return Err(self.fail(io::Error::other(
                    "a compression thread died before finishing its chunk",
                )))
            }
        };
        let mut input = done.input;
        input.clear();
        if self.free.len() < self.max_in_flight {
            self.free.push(input);
        }
        let member = match done.chunk {
            Ok(m) => m,
            Err(e) => return Err(self.fail(e)),
        };
        let Some(inner) = self.inner.as_mut() else {
            return Err(self.fail(io::Error::other("writer already finished")));
        };
        if let Err(e) = inner.write_all(&member) {
            return Err(self.fail(e));
        }
        self.hasher.update(&member);
        self.bytes_out += member.len() as u64;
        self.chunks += 1;
        if done.stored {
            self.stored_chunks += 1;
        }
        Ok(())
    }

    /// Compress what is buffered, write every member, flush, stop the
    /// threads, and return the inner writer with the statistics.
    pub fn finish(mut self) -> io::Result<(W, CompressStats)> {
        self.check()?;
        if !self.buf.is_empty() || self.chunks + self.pending.len() as u64 == 0 {
            // An empty input still needs one (empty) member or frame to be valid.
            self.submit()?;
        }
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        self.stop_workers();
        let mut inner = self
            .inner
            .take()
            .ok_or_else(|| io::Error::other("writer already finished"))?;
        inner.flush()?;
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        let stats = CompressStats {
            codec: self.codec,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            sha256,
            chunks: self.chunks,
            stored_chunks: self.stored_chunks,
        };
        Ok((inner, stats))
    }

    fn stop_workers(&mut self) {
        self.pending.clear();
        self.jobs = None;
        for w in self.workers.drain(..) {
            // A worker panic has already surfaced as a failed chunk.
            let _ = w.join();
        }
    }
}

impl<W: Write> Write for ParallelWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.check()?;
        if data.is_empty() {
            return Ok(0);
        }
        let room = self.chunk_size - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        self.bytes_in += n as u64;
        if self.buf.len() >= self.chunk_size {
            self.submit()?;
        }
        Ok(n)
    }

    /// Writes out members that are already compressed; does not cut the
    /// current chunk short (that would hurt the ratio) and does not wait.
    fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        while let Some(front) = self.pending.front() {
            if front.is_empty() {
                break;
            }
            self.write_oldest()?;
        }
        match self.inner.as_mut() {
            Some(inner) => inner.flush(),
            None => Ok(()),
        }
    }
}

impl<W: Write> Drop for ParallelWriter<W> {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::MultiGzDecoder;
    use std::io::Read;

    const CODECS: [Compression; 2] = [Compression::Gzip, Compression::Zstd];

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        // xorshift64*: deterministic, incompressible.
        let mut x = seed | 1;
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        v.truncate(n);
        v
    }

    fn texty(n: usize) -> Vec<u8> {
        let words = [
            "alpha ",
            "beta ",
            "gamma\n",
            "delta ",
            "volume ",
            "snapshot ",
        ];
        let mut v = Vec::with_capacity(n + 16);
        let mut i = 0usize;
        while v.len() < n {
            v.extend_from_slice(words[(i * 7 + i / 3) % words.len()].as_bytes());
            v.extend_from_slice(i.to_string().as_bytes());
            i += 1;
        }
        v.truncate(n);
        v
    }

    fn opts(codec: Compression, threads: usize, chunk_size: usize) -> CompressOptions {
        CompressOptions {
            threads,
            chunk_size,
            ..CompressOptions::new(codec)
        }
    }

    fn compress(
        data: &[u8],
        opts: &CompressOptions,
        write_size: usize,
    ) -> (Vec<u8>, CompressStats) {
        let mut w = ParallelWriter::with_options(Vec::new(), opts).expect("writer");
        for piece in data.chunks(write_size.max(1)) {
            w.write_all(piece).expect("write");
        }
        w.finish().expect("finish")
    }

    fn decode(codec: Compression, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match codec {
            Compression::Gzip => {
                MultiGzDecoder::new(bytes)
                    .read_to_end(&mut out)
                    .expect("gunzip");
            }
            Compression::Zstd => out = zstd::decode_all(bytes).expect("unzstd"),
        }
        out
    }

    #[test]
    fn roundtrip_edge_sizes() {
        let chunk = 64 * 1024;
        for codec in CODECS {
            for &n in &[0, 1, chunk - 1, chunk, chunk + 1, 5 * chunk + 17] {
                let data = texty(n);
                let (out, stats) = compress(&data, &opts(codec, 2, chunk), 10_000);
                assert_eq!(decode(codec, &out), data, "{codec} size {n}");
                assert_eq!(stats.codec, codec);
                assert_eq!(stats.bytes_in, n as u64);
                assert_eq!(stats.bytes_out, out.len() as u64);
                assert_eq!(stats.chunks, (n.max(1)).div_ceil(chunk) as u64, "size {n}");
                assert_eq!(stats.sha256, hex::encode(Sha256::digest(&out)));
            }
        }
    }

    #[test]
    fn roundtrip_several_chunks_one_and_many_threads() {
        let mut data = texty(2 << 20);
        data.extend(pseudo_random((1 << 20) + 12345, 7));
        for codec in CODECS {
            for threads in [1, 3] {
                let (out, stats) = compress(&data, &opts(codec, threads, 1 << 20), 100_003);
                assert_eq!(decode(codec, &out), data);
                assert_eq!(stats.chunks, 4);
                assert!(stats.stored_chunks >= 1, "{stats:?}");
                assert!(out.len() < data.len(), "text part must compress");
            }
        }
    }

    #[test]
    fn random_data_is_stored_and_barely_grows() {
        let data = pseudo_random(2 << 20, 42);
        for codec in CODECS {
            let (out, stats) = compress(&data, &opts(codec, 2, 1 << 20), 1 << 16);
            assert_eq!(stats.stored_chunks, stats.chunks, "{codec}");
            // Stored blocks cost 3-5 bytes per 64-128 KiB plus the framing.
            assert!(
                out.len() < data.len() + data.len() / 1000 + 1024,
                "{codec}: {}",
                out.len()
            );
            assert_eq!(decode(codec, &out), data);
        }
    }

    #[test]
    fn chunk_ending_in_compressible_data_is_not_stored() {
        // The tail of a media file, then source files, in one chunk: the
        // start and the middle look random, the end compresses well.
        let mut data = pseudo_random(640 << 10, 9);
        data.extend(texty(384 << 10));
        for codec in CODECS {
            let (out, stats) = compress(&data, &opts(codec, 2, 1 << 20), 1 << 16);
            assert_eq!((stats.chunks, stats.stored_chunks), (1, 0), "{stats:?}");
            assert!(out.len() < data.len() * 3 / 4, "{}", out.len());
            assert_eq!(decode(codec, &out), data);
        }
    }

    #[test]
    fn compressible_data_is_not_stored() {
        let data = texty(2 << 20);
        for codec in CODECS {
            let (out, stats) = compress(&data, &CompressOptions::new(codec), 1 << 20);
            assert_eq!(stats.stored_chunks, 0);
            assert!(out.len() * 3 < data.len());
        }
    }

    #[test]
    fn other_levels_roundtrip() {
        let data = texty(300_000);
        for (codec, level) in [
            (Compression::Gzip, 0),
            (Compression::Gzip, 1),
            (Compression::Gzip, 9),
            (Compression::Zstd, 1),
            (Compression::Zstd, 0),
            (Compression::Zstd, 19),
        ] {
            let o = CompressOptions {
                level,
                ..opts(codec, 2, 100_000)
            };
            let (out, _) = compress(&data, &o, 4096);
            assert_eq!(decode(codec, &out), data, "{codec} level {level}");
        }
    }

    /// The output of both codecs is read by the command-line tools GNU tar runs.
    #[test]
    fn gzip_and_zstd_commands_read_the_output() {
        let mut data = texty(1_500_000);
        data.extend(pseudo_random(700_000, 3));
        let dir = tempfile::tempdir().expect("tempdir");
        for (codec, tool) in [(Compression::Gzip, "gzip"), (Compression::Zstd, "zstd")] {
            for input in [&data[..], &[][..]] {
                let (out, stats) = compress(input, &opts(codec, 2, 256 * 1024), 65536);
                assert!(stats.chunks >= 1);
                let path = dir.path().join(format!("x.{tool}"));
                std::fs::write(&path, &out).expect("write");
                let got = std::process::Command::new(tool)
                    .arg("-dc")
                    .arg(&path)
                    .output()
                    .unwrap_or_else(|e| panic!("run {tool}: {e}"));
                assert!(
                    got.status.success(),
                    "{tool}: {}",
                    String::from_utf8_lossy(&got.stderr)
                );
                assert_eq!(got.stdout, input, "{tool}");
                // `-t` also checks every member's crc / frame's checksum.
                let st = std::process::Command::new(tool)
                    .arg("-t")
                    .arg(&path)
                    .output()
                    .expect("run the tool's test");
                assert!(st.status.success(), "{tool} -t");
            }
        }
    }

    struct FailAfter(usize);
    impl Write for FailAfter {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.0 < b.len() {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
            }
            self.0 -= b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_error_is_reported_and_sticky() {
        for codec in CODECS {
            let o = CompressOptions {
                level: 1,
                ..opts(codec, 2, 4096)
            };
            let mut w = ParallelWriter::with_options(FailAfter(10_000), &o).expect("writer");
            let data = pseudo_random(1 << 20, 9);
            let r = w.write_all(&data).and_then(|_| w.flush());
            let finished = w.finish();
            assert!(r.is_err() || finished.is_err());
            if let Err(e) = finished {
                assert_eq!(e.kind(), io::ErrorKind::StorageFull);
            }
        }
    }

    #[test]
    fn dropping_unfinished_writer_does_not_hang() {
        for codec in CODECS {
            let mut w = ParallelWriter::new(Vec::new(), codec).expect("writer");
            w.write_all(&texty(5 << 20)).expect("write");
            drop(w);
        }
    }
}
