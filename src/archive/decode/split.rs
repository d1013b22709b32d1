//! The splitter of [`super::decode`]: reads the input once on its own thread, hashes it, and cuts it into gzip members or zstd frames for the workers, or decodes what cannot be cut as one stream.

use std::io::{self, BufReader, Cursor, Read};

use crossbeam_channel::{bounded, Receiver, Sender};

use super::{corrupt, Job, JobKind, Piece, Summary, MAX_PIECE};
use crate::archive::{gzip, zst};
use crate::core::options::Compression;
use crate::fs::hash::Hashing;

/// Size of the pieces the splitter hands out when it decodes a stream itself.
const STREAM_PIECE: usize = 1 << 20;

/// Reads the input once: detects the codec, hashes it, and cuts it into jobs for the workers
/// (or decodes a stream itself), sending each piece's answer channel in order.
pub(super) struct Splitter<R> {
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
    pub(super) fn new(
        input: R,
        jobs: Sender<Job>,
        order: Sender<Receiver<Piece>>,
        free: Receiver<Vec<u8>>,
    ) -> Splitter<R> {
        Splitter {
            input: BufReader::with_capacity(1 << 20, Hashing::new(input)),
            jobs,
            order,
            free,
            number: 0,
            offset: 0,
            parallel: 0,
            streamed: false,
        }
    }

    pub(super) fn run(&mut self) -> io::Result<Summary> {
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
                self.input.get_ref().count() - 1
            )));
        }
        let h = self.input.get_ref();
        Ok(Summary {
            codec,
            compressed_bytes: h.count(),
            sha256: h.sha256(),
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

    pub(super) fn send_ready(&self, piece: Piece) -> bool {
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
