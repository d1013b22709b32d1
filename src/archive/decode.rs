//! Parallel decompression of archives: members or frames cut from the input on one thread, decoded on every core, handed out in order; the input hashed once on the way.
//!
//! [`decode`] detects the codec from the first bytes (gzip or zstd) and runs,
//! inside a thread scope:
//!
//! * a *splitter* that reads the input once, computes its sha256 and cuts it
//!   into complete gzip members (their length is in their header, see
//!   [`super::gzip`]) or zstd frames (found by walking the 3-byte block
//!   headers, see [`super::zst`]), each sent to the workers;
//! * *workers* (one per core) that decode a member or frame into a buffer,
//!   checking its crc32 and size or its checksum;
//! * the caller's `body`, on the calling thread, reading the decoded bytes in
//!   order from a [`Decoded`] reader.
//!
//! At most `workers + 2` pieces are in flight (and `workers + 1` spare
//! buffers kept), so memory stays bounded: with our 4 MiB zstd frames and two
//! cores, about 40 MB (pieces are at most [`MAX_PIECE`] compressed and decoded). Input that
//! cannot be cut (gzip from another tool or an allspark version before the
//! length field, a zstd frame without content size or larger than
//! [`MAX_PIECE`]) is decoded from there on as one stream by the splitter,
//! still on its own thread. A damaged piece fails the read with an error
//! naming it (`gzip member 17 at byte 9437623 of the archive: crc32 mismatch`).

use std::io::{self, BufReader, Cursor, Read};

use crossbeam_channel::{bounded, Receiver, Sender};
use sha2::{Digest, Sha256};

use super::{gzip, zst};
use crate::core::options::Compression;

/// Largest member or frame (compressed, and decoded) cut for the workers;
/// larger ones are decoded as a stream. Ours are 1 MiB (gzip) or 4 MiB (zstd);
/// with `threads + 2` in flight, a hostile archive of large frames costs at
/// most about `2 × (threads + 2) × MAX_PIECE` of memory.
pub(crate) const MAX_PIECE: usize = 16 << 20;

/// Size of the pieces the splitter hands out when it decodes a stream itself.
const STREAM_PIECE: usize = 1 << 20;

/// What the splitter saw, once the input is read to its end.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    pub codec: Compression,
    /// Bytes of input read.
    pub compressed_bytes: u64,
    /// Lower-case hex sha256 of the input.
    pub sha256: String,
    /// Members or frames decoded by the workers.
    pub parallel_pieces: u64,
    /// Part of the input was decoded as one stream.
    pub streamed: bool,
}

type Piece = io::Result<Vec<u8>>;

struct Job {
    kind: JobKind,
    data: Vec<u8>,
    /// 1-based number of the member or frame, for messages.
    number: u64,
    /// Its byte offset in the archive.
    offset: u64,
    reply: Sender<Piece>,
}

enum JobKind {
    Gzip,
    Zstd { content_size: usize },
}

/// Detect the codec of `input`, decode it on `threads` workers and call
/// `body` with the decoded stream. Returns `body`'s result and the summary
/// (an error if the input could not be read or decoded to its end; `body`
/// sees such an error on its reads too).
pub(crate) fn decode<R, T>(
    input: R,
    threads: usize,
    body: impl FnOnce(&mut Decoded) -> T,
) -> (T, io::Result<Summary>)
where
    R: Read + Send,
{
    let threads = threads.max(1);
    let in_flight = threads + 2;
    let (job_tx, job_rx) = bounded::<Job>(1);
    let (order_tx, order_rx) = bounded::<Receiver<Piece>>(in_flight);
    let (free_tx, free_rx) = bounded::<Vec<u8>>(threads + 1);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let jobs = job_rx.clone();
            let free = free_rx.clone();
            s.spawn(move || worker(jobs, free));
        }
        drop(job_rx);
        let free = free_rx.clone();
        let splitter = s.spawn(move || {
            let mut sp = Splitter {
                input: BufReader::with_capacity(
                    1 << 20,
                    Hashing {
                        inner: input,
                        hasher: Sha256::new(),
                        count: 0,
                    },
                ),
                jobs: job_tx,
                order: order_tx,
                free,
                number: 0,
                offset: 0,
                parallel: 0,
                streamed: false,
            };
            let result = sp.run();
            if let Err(e) = &result {
                // Tell the reader, unless it is gone (then it does not care).
                sp.send_ready(Err(io::Error::new(e.kind(), e.to_string())));
            }
            result
        });
        let mut reader = Decoded {
            order: order_rx,
            cur: Vec::new(),
            pos: 0,
            free: free_tx,
            done: false,
        };
        let out = body(&mut reader);
        drop(reader);
        let summary = splitter
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the archive reading thread panicked")));
        (out, summary)
    })
}

/// The decoded stream, in order.
pub(crate) struct Decoded {
    order: Receiver<Receiver<Piece>>,
    cur: Vec<u8>,
    pos: usize,
    free: Sender<Vec<u8>>,
    done: bool,
}

impl Read for Decoded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.cur.len() {
                let n = buf.len().min(self.cur.len() - self.pos);
                buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done || buf.is_empty() {
                return Ok(0);
            }
            let Ok(next) = self.order.recv() else {
                // The splitter finished (an error would have come as a piece).
                self.done = true;
                return Ok(0);
            };
            match next.recv() {
                Ok(Ok(piece)) => {
                    let old = std::mem::replace(&mut self.cur, piece);
                    self.pos = 0;
                    let _ = self.free.try_send(old);
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Err(io::Error::other(
                        "a decompression thread stopped unexpectedly",
                    ));
                }
            }
        }
    }
}

/// Hashes and counts what is read through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

struct Splitter<R> {
    input: BufReader<Hashing<R>>,
    jobs: Sender<Job>,
    order: Sender<Receiver<Piece>>,
    free: Receiver<Vec<u8>>,
    /// Members or frames seen so far.
    number: u64,
    /// Byte offset of the next one.
    offset: u64,
    parallel: u64,
    streamed: bool,
}

/// The reader went away (it failed or stopped early): stop quietly.
fn reader_gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the archive reader stopped")
}

impl<R: Read> Splitter<R> {
    fn run(&mut self) -> io::Result<Summary> {
        let mut magic = [0u8; 4];
        let n = self.fill(&mut magic)?;
        let codec = if n >= 2 && magic[..2] == [0x1f, 0x8b] {
            Compression::Gzip
        } else if n == 4 && (magic == zst::MAGIC || zst::is_skippable_magic(&magic)) {
            Compression::Zstd
        } else if n == 0 {
            return Err(corrupt("the archive is empty".into()));
        } else {
            return Err(corrupt(format!(
                "it is neither gzip nor zstd data (it starts with {})",
                hex::encode(&magic[..n])
            )));
        };
        let prefix = magic[..n].to_vec();
        match codec {
            Compression::Gzip => self.gzip(prefix)?,
            Compression::Zstd => self.zstd(prefix)?,
        }
        // Whatever is left is read (and hashed) too: it must be nothing.
        let mut rest = [0u8; 1];
        if self.input.read(&mut rest)? != 0 {
            return Err(corrupt(format!(
                "the archive is damaged: unexpected data after the end of the compressed stream, at byte {}",
                self.input.get_ref().count - 1
            )));
        }
        let h = self.input.get_mut();
        Ok(Summary {
            codec,
            compressed_bytes: h.count,
            sha256: hex::encode(std::mem::take(&mut h.hasher).finalize()),
            parallel_pieces: self.parallel,
            streamed: self.streamed,
        })
    }

    /// Read until `buf` is full or the input ends; the number of bytes read.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.input.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Append exactly `n` more bytes of input to `v`; `what` names it if the input ends.
    fn take(&mut self, v: &mut Vec<u8>, n: usize, what: &str) -> io::Result<()> {
        let start = v.len();
        v.resize(start + n, 0);
        let got = self.fill(&mut v[start..])?;
        if got < n {
            return Err(corrupt(format!(
                "the archive is truncated or damaged: {what} at byte {} ends early",
                self.offset
            )));
        }
        Ok(())
    }

    fn dispatch(&mut self, kind: JobKind, data: Vec<u8>) -> io::Result<()> {
        let (reply, rx) = bounded(1);
        let len = data.len() as u64;
        let job = Job {
            kind,
            data,
            number: self.number,
            offset: self.offset,
            reply,
        };
        self.order.send(rx).map_err(|_| reader_gone())?;
        self.jobs.send(job).map_err(|_| reader_gone())?;
        self.offset += len;
        self.parallel += 1;
        Ok(())
    }

    fn send_ready(&self, piece: Piece) -> bool {
        let (tx, rx) = bounded(1);
        let _ = tx.send(piece);
        self.order.send(rx).is_ok()
    }

    fn gzip(&mut self, mut prefix: Vec<u8>) -> io::Result<()> {
        loop {
            let have = prefix.len();
            prefix.resize(gzip::HEADER_LEN, 0);
            let n = have + self.fill(&mut prefix[have..])?;
            prefix.truncate(n);
            if n == 0 {
                return Ok(());
            }
            self.number += 1;
            let len = match gzip::member_len(&prefix) {
                Some(len) if len <= MAX_PIECE => len,
                _ => return self.stream(prefix, Compression::Gzip),
            };
            let what = format!("gzip member {}", self.number);
            self.take(&mut prefix, len - gzip::HEADER_LEN, &what)?;
            if gzip::declared_size(&prefix) > MAX_PIECE {
                return self.stream(prefix, Compression::Gzip);
            }
            self.dispatch(JobKind::Gzip, std::mem::take(&mut prefix))?;
        }
    }

    fn zstd(&mut self, mut frame: Vec<u8>) -> io::Result<()> {
        loop {
            let have = frame.len();
            frame.resize(4, 0);
            let n = have + self.fill(&mut frame[have..])?;
            frame.truncate(n);
            if n == 0 {
                return Ok(());
            }
            self.number += 1;
            if n == 4 && zst::is_skippable_magic(&frame) {
                // Skippable frame: a 4-byte size, then data nobody decodes.
                self.take(&mut frame, 4, "a skippable frame")?;
                let size = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]) as u64;
                let skipped = io::copy(&mut (&mut self.input).take(size), &mut io::sink())?;
                if skipped < size {
                    return Err(corrupt(format!(
                        "the archive is truncated: the skippable frame at byte {} ends early",
                        self.offset
                    )));
                }
                self.offset += 8 + size;
                frame.clear();
                continue;
            }
            if n < 4 || frame[..4] != zst::MAGIC {
                return Err(corrupt(format!(
                    "the archive is damaged at byte {}: neither a zstd frame nor a skippable frame starts there",
                    self.offset
                )));
            }
            let what = format!("zstd frame {}", self.number);
            self.take(&mut frame, zst::HEADER_PREFIX - 4, &what)?;
            let hlen = zst::header_len(&frame)
                .map_err(|e| corrupt(format!("{what} at byte {} is damaged: {e}", self.offset)))?;
            self.take(&mut frame, hlen - zst::HEADER_PREFIX, &what)?;
            let header = zst::parse_header(&frame);
            let content_size = match header.content_size {
                Some(c) if c <= MAX_PIECE as u64 => c as usize,
                _ => return self.stream(frame, Compression::Zstd),
            };
            loop {
                let at = frame.len();
                self.take(&mut frame, 3, &what)?;
                let (last, size) = zst::block_header([frame[at], frame[at + 1], frame[at + 2]])
                    .map_err(|e| {
                        corrupt(format!("{what} at byte {} is damaged: {e}", self.offset))
                    })?;
                self.take(&mut frame, size, &what)?;
                if frame.len() > MAX_PIECE {
                    return self.stream(frame, Compression::Zstd);
                }
                if last {
                    break;
                }
            }
            if header.checksum {
                self.take(&mut frame, 4, &what)?;
            }
            self.dispatch(JobKind::Zstd { content_size }, std::mem::take(&mut frame))?;
        }
    }

    /// Decode the rest of the input (`prefix`, then what is unread) as one
    /// stream here, handing out pieces of [`STREAM_PIECE`] bytes.
    fn stream(&mut self, prefix: Vec<u8>, codec: Compression) -> io::Result<()> {
        self.streamed = true;
        let at = self.offset;
        let kind = match codec {
            Compression::Gzip => "gzip member",
            Compression::Zstd => "zstd frame",
        };
        let number = self.number;
        let Splitter {
            input, order, free, ..
        } = self;
        let chained = BufReader::with_capacity(1 << 20, Cursor::new(prefix).chain(input));
        let mut decoder: Box<dyn Read + '_> = match codec {
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(chained)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(chained)?),
        };
        loop {
            let mut piece = free
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(STREAM_PIECE));
            piece.clear();
            piece.resize(STREAM_PIECE, 0);
            let mut n = 0;
            while n < STREAM_PIECE {
                match decoder.read(&mut piece[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(corrupt(format!(
                            "{kind} {number} at byte {at} of the archive, or one after it (decoded as one stream from there on), is damaged: {e}"
                        )))
                    }
                }
            }
            piece.truncate(n);
            if n == 0 {
                return Ok(());
            }
            let (tx, rx) = bounded(1);
            let _ = tx.send(Ok(piece));
            order.send(rx).map_err(|_| reader_gone())?;
        }
    }
}

fn worker(jobs: Receiver<Job>, free: Receiver<Vec<u8>>) {
    let mut inflate = flate2::Decompress::new(false);
    let mut unzstd = None;
    for job in jobs.iter() {
        let mut out = free.try_recv().unwrap_or_default();
        let (what, result) = match job.kind {
            JobKind::Gzip => (
                "gzip member",
                gzip::decode_member(&mut inflate, &job.data, &mut out),
            ),
            JobKind::Zstd { content_size } => {
                if unzstd.is_none() {
                    unzstd = zstd::bulk::Decompressor::new().ok();
                }
                let r = match unzstd.as_mut() {
                    Some(d) => zst::decode_frame(d, &job.data, content_size, &mut out),
                    None => Err("no zstd decoder could be created (out of memory?)".into()),
                };
                ("zstd frame", r)
            }
        };
        let piece = result.map(|()| out).map_err(|why| {
            corrupt(format!(
                "{what} {} at byte {} of the archive is damaged: {why}",
                job.number, job.offset
            ))
        });
        // The reader may have gone away; nothing to do then.
        let _ = job.reply.send(piece);
    }
}

/// The whole decoded stream (tests).
#[cfg(test)]
pub(crate) fn decode_all<R: Read + Send>(
    input: R,
    threads: usize,
) -> io::Result<(Vec<u8>, Summary)> {
    let (data, summary) = decode(input, threads, |r| {
        let mut v = Vec::new();
        r.read_to_end(&mut v).map(|_| v)
    });
    // The reader's error first, as `extract` does: when a piece fails, the splitter may only
    // see the reader go away.
    let data = data?;
    Ok((data, summary?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::compress::{CompressOptions, ParallelWriter};
    use std::io::Write;

    fn data() -> Vec<u8> {
        let mut v: Vec<u8> = (0..400_000u32)
            .flat_map(|i| format!("{} ", i % 1999).into_bytes())
            .collect();
        let mut x = 12345u64;
        for _ in 0..300_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push(x as u8);
        }
        v
    }

    fn ours(codec: Compression, data: &[u8]) -> Vec<u8> {
        let opts = CompressOptions {
            chunk_size: 128 * 1024,
            threads: 2,
            ..CompressOptions::new(codec)
        };
        let mut w = ParallelWriter::with_options(Vec::new(), &opts).expect("writer");
        w.write_all(data).expect("write");
        w.finish().expect("finish").0
    }

    #[test]
    fn our_archives_decode_in_parallel_and_are_hashed() {
        let d = data();
        for codec in [Compression::Gzip, Compression::Zstd] {
            let bytes = ours(codec, &d);
            for threads in [1, 3] {
                let (out, s) = decode_all(&bytes[..], threads).expect("decode");
                assert_eq!(out, d);
                assert_eq!(s.codec, codec);
                assert!(!s.streamed);
                assert!(s.parallel_pieces > 5, "{s:?}");
                assert_eq!(s.compressed_bytes, bytes.len() as u64);
                assert_eq!(s.sha256, hex::encode(Sha256::digest(&bytes)));
            }
        }
    }

    #[test]
    fn foreign_streams_are_decoded_as_streams() {
        let d = data();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&d).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let zs = zstd::encode_all(&d[..], 3).expect("zstd");
        // Ours first, then a foreign member: parallel, then streamed.
        let mut mixed = ours(Compression::Gzip, &d);
        mixed.extend_from_slice(&gz);
        for (bytes, expect, codec) in [
            (&gz, d.clone(), Compression::Gzip),
            (&zs, d.clone(), Compression::Zstd),
            (&mixed, [&d[..], &d[..]].concat(), Compression::Gzip),
        ] {
            let (out, s) = decode_all(&bytes[..], 2).expect("decode");
            assert_eq!(out, expect);
            assert!(s.streamed);
            assert_eq!(s.codec, codec);
            assert_eq!(s.sha256, hex::encode(Sha256::digest(bytes)));
        }
    }

    #[test]
    fn skippable_frames_are_skipped() {
        let d = data();
        let mut bytes = vec![0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3];
        bytes.extend(ours(Compression::Zstd, &d));
        let (out, s) = decode_all(&bytes[..], 2).expect("decode");
        assert_eq!(out, d);
        assert!(!s.streamed);
    }

    #[test]
    fn damage_names_the_piece() {
        let d = data();
        for (codec, what) in [
            (Compression::Gzip, "gzip member"),
            (Compression::Zstd, "zstd frame"),
        ] {
            let mut bytes = ours(codec, &d);
            let at = bytes.len() * 2 / 3;
            bytes[at] ^= 0x40;
            let err = decode_all(&bytes[..], 2).expect_err("damaged");
            let msg = err.to_string();
            assert!(msg.contains(what) && msg.contains("at byte"), "{msg}");
            // Truncation and garbage are errors too.
            let bytes = ours(codec, &d);
            let err = decode_all(&bytes[..bytes.len() - 3], 2).expect_err("truncated");
            assert!(err.to_string().contains("truncated"), "{err}");
            let mut extra = bytes.clone();
            extra.extend_from_slice(b"garbage!");
            assert!(decode_all(&extra[..], 2).is_err());
        }
        assert!(decode_all(&b""[..], 1).is_err());
        let e = decode_all(&b"PK\x03\x04 not ours"[..], 1).expect_err("zip");
        assert!(e.to_string().contains("neither gzip nor zstd"), "{e}");
    }

    #[test]
    fn a_reader_that_stops_early_does_not_hang() {
        let d = data();
        let bytes = ours(Compression::Zstd, &d);
        let (n, s) = decode(&bytes[..], 2, |r| {
            let mut b = [0u8; 10];
            r.read(&mut b).expect("read")
        });
        assert!(n > 0);
        assert!(s.is_err());
    }
}
