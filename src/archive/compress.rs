//! Parallel gzip writer: compresses fixed-size chunks on worker threads into independent gzip members, in order.
//!
//! The output is a sequence of complete gzip members (RFC 1952 section 2.2
//! allows any number of members in one file). `gzip -d`, `pigz -d`, GNU
//! `tar xzf` and [`flate2::read::MultiGzDecoder`] all read it as one stream.
//!
//! * Input is cut into chunks of [`PgzOptions::chunk_size`] bytes; each chunk
//!   becomes one member (10-byte header, raw deflate, crc32 + isize trailer).
//! * At most `2 × threads` chunks are in flight (queued, compressing or waiting
//!   to be written), so memory is bounded whatever the input size.
//! * Chunks that do not compress (random or already-compressed data) are
//!   detected cheaply by compressing four 16 KiB samples spread over the chunk
//!   at level 1; a chunk is emitted as stored deflate blocks, which costs
//!   little more than a copy, only when every sample is incompressible (a
//!   chunk holding a media file's tail and source files compresses normally).
//! * The sha256 of the compressed output is computed while writing, so callers
//!   get the archive checksum without reading the file again.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use sha2::{Digest, Sha256};

/// Default chunk size: 1 MiB of input per gzip member.
pub const DEFAULT_CHUNK_SIZE: usize = 1 << 20;

/// Size of each sample used by the incompressibility probe.
const PROBE_SAMPLE: usize = 16 * 1024;

/// Number of samples, spread from the start to the end of a chunk.
const PROBE_SAMPLES: usize = 4;

/// A sample whose level-1 output is larger than this fraction (in 1/1000) of
/// its input counts as incompressible.
const PROBE_RATIO_PER_MILLE: usize = 950;

/// Tuning knobs of [`ParallelGzWriter`].
#[derive(Debug, Clone)]
pub struct PgzOptions {
    /// Compression level 0..=9 (values above 9 are clamped). Default 7: with the
    /// zlib-rs backend (a port of zlib-ng, whose levels 3-6 use a faster match
    /// finder than zlib's), level 6 archives were 3.0 % larger than `gzip -6`;
    /// level 7 is within 2.7 % for about 20 % more compression CPU, still far
    /// faster than pigz on the same cores (docs/benchmarks.md).
    pub level: u32,
    /// Number of compressing threads (at least 1). Default: available cores.
    pub threads: usize,
    /// Input bytes per gzip member (at least 4 KiB). Default 1 MiB.
    pub chunk_size: usize,
}

impl Default for PgzOptions {
    fn default() -> Self {
        PgzOptions {
            level: 7,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// What a finished [`ParallelGzWriter`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GzStats {
    /// Uncompressed bytes accepted.
    pub bytes_in: u64,
    /// Compressed bytes written to the inner writer.
    pub bytes_out: u64,
    /// Lower-case hex sha256 of the compressed output.
    pub sha256: String,
    /// Number of gzip members written.
    pub members: u64,
    /// Members stored without compression because their data did not compress.
    pub stored_members: u64,
}

struct Job {
    data: Vec<u8>,
    reply: Sender<Done>,
}

struct Done {
    /// The complete gzip member, or the reason it could not be built.
    member: io::Result<Vec<u8>>,
    /// The input buffer, handed back for reuse.
    input: Vec<u8>,
    stored: bool,
}

/// A `Write` that gzip-compresses on several threads. Call [`finish`](Self::finish)
/// at the end: dropping the writer without it discards buffered data.
pub struct ParallelGzWriter<W: Write> {
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
    members: u64,
    stored_members: u64,
    /// Set after the first error: the stream is broken, every later call fails.
    failed: Option<(io::ErrorKind, String)>,
}

impl<W: Write> ParallelGzWriter<W> {
    /// A writer with default options (level 7, one thread per core, 1 MiB chunks).
    pub fn new(inner: W) -> io::Result<Self> {
        Self::with_options(inner, &PgzOptions::default())
    }

    /// A writer with explicit options.
    pub fn with_options(inner: W, opts: &PgzOptions) -> io::Result<Self> {
        let threads = opts.threads.max(1);
        let chunk_size = opts.chunk_size.max(4096);
        let level = Compression::new(opts.level.min(9));
        let (tx, rx) = bounded::<Job>(threads);
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("pgzip-{i}"))
                .spawn(move || worker(rx, level))
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot start a compression thread: {e}"))
                })?;
            workers.push(handle);
        }
        Ok(ParallelGzWriter {
            inner: Some(inner),
            buf: Vec::with_capacity(chunk_size),
            chunk_size,
            jobs: Some(tx),
            workers,
            pending: VecDeque::new(),
            max_in_flight: 2 * threads,
            free: Vec::new(),
            hasher: Sha256::new(),
            bytes_in: 0,
            bytes_out: 0,
            members: 0,
            stored_members: 0,
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
        let member = match done.member {
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
        self.members += 1;
        if done.stored {
            self.stored_members += 1;
        }
        Ok(())
    }

    /// Compress what is buffered, write every member, flush, stop the
    /// threads, and return the inner writer with the statistics.
    pub fn finish(mut self) -> io::Result<(W, GzStats)> {
        self.check()?;
        if !self.buf.is_empty() || self.members + self.pending.len() as u64 == 0 {
            // An empty input still needs one (empty) member to be valid gzip.
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
        let stats = GzStats {
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            sha256,
            members: self.members,
            stored_members: self.stored_members,
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

impl<W: Write> Write for ParallelGzWriter<W> {
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

impl<W: Write> Drop for ParallelGzWriter<W> {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

fn worker(jobs: Receiver<Job>, level: Compression) {
    let mut full = Compress::new(level, false);
    let mut stored = Compress::new(Compression::none(), false);
    let mut probe = Compress::new(Compression::fast(), false);
    let mut scratch = Vec::with_capacity(PROBE_SAMPLES * PROBE_SAMPLE * 9 / 8 + 64);
    for job in jobs.iter() {
        let incompressible =
            level.level() > 0 && is_incompressible(&mut probe, &mut scratch, &job.data);
        let c = if incompressible {
            &mut stored
        } else {
            &mut full
        };
        let member = gzip_member(c, &job.data, level);
        // The receiver may be gone if the writer was dropped; nothing to do then.
        let _ = job.reply.send(Done {
            member,
            input: job.data,
            stored: incompressible,
        });
    }
}

/// True if level-1 deflate cannot shrink any of the samples of `data` below 95 %.
/// (Two samples were not enough: a tar chunk often holds the end of a media file and
/// then source files; storing it cost 1-2 % of the archive size on mixed trees.)
fn is_incompressible(probe: &mut Compress, scratch: &mut Vec<u8>, data: &[u8]) -> bool {
    if data.len() < 1024 {
        return false;
    }
    if data.len() <= PROBE_SAMPLES * PROBE_SAMPLE {
        return sample_incompressible(probe, scratch, data);
    }
    let last = data.len() - PROBE_SAMPLE;
    (0..PROBE_SAMPLES).all(|k| {
        let at = k * last / (PROBE_SAMPLES - 1);
        sample_incompressible(probe, scratch, &data[at..at + PROBE_SAMPLE])
    })
}

fn sample_incompressible(probe: &mut Compress, scratch: &mut Vec<u8>, sample: &[u8]) -> bool {
    scratch.clear();
    match deflate_into(probe, sample, scratch) {
        Ok(()) => scratch.len() * 1000 > sample.len() * PROBE_RATIO_PER_MILLE,
        // The probe only decides the strategy; compress normally if it fails.
        Err(_) => false,
    }
}

/// Raw-deflate all of `input` into `out` (appending), ending the stream.
fn deflate_into(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    c.reset();
    let mut consumed = 0usize;
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(64 * 1024 + (input.len() - consumed) / 8);
        }
        let before_in = c.total_in();
        let before_out = c.total_out();
        let status = c
            .compress_vec(&input[consumed..], out, FlushCompress::Finish)
            .map_err(|e| io::Error::other(format!("deflate failed: {e}")))?;
        consumed += (c.total_in() - before_in) as usize;
        match status {
            Status::StreamEnd => return Ok(()),
            Status::Ok | Status::BufError => {
                if c.total_in() == before_in && c.total_out() == before_out {
                    // No progress although there is room: make sure there is more.
                    out.reserve(out.capacity().max(64 * 1024));
                }
            }
        }
    }
}

/// One complete gzip member (RFC 1952) holding `data`.
fn gzip_member(c: &mut Compress, data: &[u8], level: Compression) -> io::Result<Vec<u8>> {
    let xfl = match level.level() {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    // ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL OS=unknown
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 0xff]);
    deflate_into(c, data, &mut out)?;
    let mut crc = Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::MultiGzDecoder;
    use std::io::Read;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        // xorshift64*: deterministic, incompressible enough for deflate.
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

    fn compress(data: &[u8], opts: &PgzOptions, write_size: usize) -> (Vec<u8>, GzStats) {
        let mut w = ParallelGzWriter::with_options(Vec::new(), opts).expect("writer");
        for piece in data.chunks(write_size.max(1)) {
            w.write_all(piece).expect("write");
        }
        w.finish().expect("finish")
    }

    fn decode(gz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        MultiGzDecoder::new(gz)
            .read_to_end(&mut out)
            .expect("decode");
        out
    }

    #[test]
    fn roundtrip_edge_sizes() {
        let chunk = 64 * 1024;
        let opts = PgzOptions {
            level: 6,
            threads: 2,
            chunk_size: chunk,
        };
        for &n in &[0, 1, chunk - 1, chunk, chunk + 1, 5 * chunk + 17] {
            let data = texty(n);
            let (gz, stats) = compress(&data, &opts, 10_000);
            assert_eq!(decode(&gz), data, "size {n}");
            assert_eq!(stats.bytes_in, n as u64);
            assert_eq!(stats.bytes_out, gz.len() as u64);
            assert_eq!(stats.members, (n.max(1)).div_ceil(chunk) as u64, "size {n}");
            assert_eq!(stats.sha256, hex::encode(Sha256::digest(&gz)));
        }
    }

    #[test]
    fn roundtrip_several_mib_default_chunks_one_and_many_threads() {
        let mut data = texty(2 << 20);
        data.extend(pseudo_random((1 << 20) + 12345, 7));
        for threads in [1, 3] {
            let opts = PgzOptions {
                threads,
                ..PgzOptions::default()
            };
            let (gz, stats) = compress(&data, &opts, 100_003);
            assert_eq!(decode(&gz), data);
            assert_eq!(stats.members, 4);
            assert!(stats.stored_members >= 1, "{stats:?}");
            assert!(gz.len() < data.len(), "text part must compress");
        }
    }

    #[test]
    fn random_data_is_stored_and_barely_grows() {
        let data = pseudo_random(2 << 20, 42);
        let (gz, stats) = compress(&data, &PgzOptions::default(), 1 << 16);
        assert_eq!(stats.stored_members, stats.members);
        // Stored blocks cost 5 bytes per 64 KiB plus the member framing.
        assert!(
            gz.len() < data.len() + data.len() / 1000 + 1024,
            "{}",
            gz.len()
        );
        assert_eq!(decode(&gz), data);
    }

    #[test]
    fn chunk_ending_in_compressible_data_is_not_stored() {
        // The tail of a media file, then source files, in one chunk: the
        // start and the middle look random, the end compresses well.
        let mut data = pseudo_random(640 << 10, 9);
        data.extend(texty(384 << 10));
        let (gz, stats) = compress(&data, &PgzOptions::default(), 1 << 16);
        assert_eq!((stats.members, stats.stored_members), (1, 0), "{stats:?}");
        assert!(gz.len() < data.len() * 3 / 4, "{}", gz.len());
        assert_eq!(decode(&gz), data);
    }

    #[test]
    fn compressible_data_is_not_stored() {
        let data = texty(2 << 20);
        let (gz, stats) = compress(&data, &PgzOptions::default(), 1 << 20);
        assert_eq!(stats.stored_members, 0);
        assert!(gz.len() * 3 < data.len());
    }

    #[test]
    fn level_zero_and_nine_roundtrip() {
        let data = texty(300_000);
        for level in [0, 1, 9] {
            let opts = PgzOptions {
                level,
                threads: 2,
                chunk_size: 100_000,
            };
            let (gz, _) = compress(&data, &opts, 4096);
            assert_eq!(decode(&gz), data, "level {level}");
        }
    }

    #[test]
    fn gzip_command_reads_concatenated_members() {
        let mut data = texty(1_500_000);
        data.extend(pseudo_random(700_000, 3));
        let opts = PgzOptions {
            level: 6,
            threads: 2,
            chunk_size: 256 * 1024,
        };
        let (gz, _) = compress(&data, &opts, 65536);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.gz");
        std::fs::write(&path, &gz).expect("write gz");
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&path)
            .output()
            .expect("run gzip");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, data);
        // `gzip -t` also checks every member's crc.
        let st = std::process::Command::new("gzip")
            .arg("-t")
            .arg(&path)
            .status()
            .expect("run gzip -t");
        assert!(st.success());
    }

    #[test]
    fn empty_input_is_valid_gzip_for_gzip_command() {
        let (gz, stats) = compress(&[], &PgzOptions::default(), 1);
        assert_eq!(stats.members, 1);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("e.gz");
        std::fs::write(&path, &gz).expect("write gz");
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&path)
            .output()
            .expect("run gzip");
        assert!(out.status.success());
        assert!(out.stdout.is_empty());
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
        let opts = PgzOptions {
            level: 1,
            threads: 2,
            chunk_size: 4096,
        };
        let mut w = ParallelGzWriter::with_options(FailAfter(10_000), &opts).expect("writer");
        let data = pseudo_random(1 << 20, 9);
        let r = w.write_all(&data).and_then(|_| w.flush());
        let finished = w.finish();
        assert!(r.is_err() || finished.is_err());
        if let Err(e) = finished {
            assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        }
    }

    #[test]
    fn dropping_unfinished_writer_does_not_hang() {
        let mut w = ParallelGzWriter::new(Vec::new()).expect("writer");
        w.write_all(&texty(5 << 20)).expect("write");
        drop(w);
    }
}
