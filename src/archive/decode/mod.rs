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

mod split;

use std::io::{self, Read};

use crossbeam_channel::{bounded, Receiver, Sender};

use super::{gzip, zst};
use crate::core::options::Compression;
use split::Splitter;

/// Largest member or frame (compressed, and decoded) cut for the workers;
/// larger ones are decoded as a stream. Ours are 1 MiB (gzip) or 4 MiB (zstd);
/// with `threads + 2` in flight, a hostile archive of large frames costs at
/// most about `2 × (threads + 2) × MAX_PIECE` of memory.
pub(crate) const MAX_PIECE: usize = 16 << 20;

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
            let mut sp = Splitter::new(input, job_tx, order_tx, free);
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

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
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
    use sha2::{Digest, Sha256};
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
