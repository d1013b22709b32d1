//! One chunk on a worker thread: probed for incompressible data, then encoded as one complete gzip member or zstd frame (stored when it does not compress).

use std::io;

use crossbeam_channel::{Receiver, Sender};
use flate2::Compress;

use crate::archive::{gzip, zst};
use crate::core::options::Compression;

/// Size of each sample used by the incompressibility probe.
const PROBE_SAMPLE: usize = 16 * 1024;

/// Number of samples, spread from the start to the end of a chunk.
const PROBE_SAMPLES: usize = 4;

/// A sample whose level-1 output is larger than this fraction (in 1/1000) of
/// its input counts as incompressible.
const PROBE_RATIO_PER_MILLE: usize = 950;

pub(super) struct Job {
    pub(super) data: Vec<u8>,
    pub(super) reply: Sender<Done>,
}

pub(super) struct Done {
    /// The complete member or frame, or the reason it could not be built.
    pub(super) chunk: io::Result<Vec<u8>>,
    /// The input buffer, handed back for reuse.
    pub(super) input: Vec<u8>,
    pub(super) stored: bool,
}

/// The per-thread compressor state of one codec.
pub(super) enum Encoder {
    Gzip {
        full: Box<Compress>,
        stored: Box<Compress>,
        level: u32,
    },
    Zstd(zstd::bulk::Compressor<'static>),
}

impl Encoder {
    pub(super) fn new(codec: Compression, level: i32) -> io::Result<Encoder> {
        Ok(match codec {
            Compression::Gzip => {
                let level = level.clamp(0, 9) as u32;
                Encoder::Gzip {
                    full: Box::new(gzip::compressor(level)),
                    stored: Box::new(gzip::compressor(0)),
                    level,
                }
            }
            Compression::Zstd => Encoder::Zstd(zst::compressor(level.clamp(0, 19))?),
        })
    }

    fn encode(&mut self, data: &[u8], incompressible: bool) -> io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip {
                full,
                stored,
                level,
            } => {
                let c = if incompressible { stored } else { full };
                gzip::encode_member(c, data, *level)
            }
            Encoder::Zstd(_) if incompressible => Ok(zst::raw_frame(data)),
            Encoder::Zstd(c) => zst::encode_frame(c, data),
        }
    }

    /// Gzip level 0 stores everything anyway: no need to probe.
    fn probes(&self) -> bool {
        !matches!(self, Encoder::Gzip { level: 0, .. })
    }
}

pub(super) fn worker(jobs: Receiver<Job>, mut encoder: Encoder) {
    let mut probe = gzip::compressor(1);
    let mut scratch = Vec::with_capacity(PROBE_SAMPLES * PROBE_SAMPLE * 9 / 8 + 64);
    for job in jobs.iter() {
        let incompressible =
            encoder.probes() && is_incompressible(&mut probe, &mut scratch, &job.data);
        let chunk = encoder.encode(&job.data, incompressible);
        // The receiver may be gone if the writer was dropped; nothing to do then.
        let _ = job.reply.send(Done {
            chunk,
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
    match gzip::deflate_into(probe, sample, scratch) {
        Ok(()) => scratch.len() * 1000 > sample.len() * PROBE_RATIO_PER_MILLE,
        // The probe only decides the strategy; compress normally if it fails.
        Err(_) => false,
    }
}
