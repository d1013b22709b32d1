//! Zstd frames of parallel archives: one chunk as one independent frame (compressed, or raw blocks for incompressible data), and cutting a stream into frames without decoding it.
//!
//! Every frame is a standard zstd frame (RFC 8878) with its content size and
//! a content checksum, so `zstd -d`, `tar --zstd` and `tar -I zstd` read a
//! file of them as one stream, and a damaged frame is detected by the
//! checksum. Frames are independent: [`super::decode`] decodes them on
//! several cores. Incompressible chunks are written as frames of raw blocks
//! (a copy plus an XXH64), built here without running the compressor.
//!
//! [`FrameHeader`] and [`block_header`] let a reader walk a frame's block
//! headers to find where it ends, reading only 3 bytes per block.

use std::io;

use xxhash_rust::xxh64::xxh64;

/// The zstd frame magic number, little-endian on disk.
pub(crate) const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Largest block a frame may hold (and the size of our raw blocks).
const MAX_BLOCK: usize = 128 * 1024;

/// True for the magic of a skippable frame (0x184D2A50..=0x184D2A5F).
pub(crate) fn is_skippable_magic(m: &[u8]) -> bool {
    m.len() >= 4 && m[1..4] == [0x2a, 0x4d, 0x18] && (m[0] & 0xf0) == 0x50
}

/// A compressor for one worker: `level`, content checksum on.
pub(crate) fn compressor(level: i32) -> io::Result<zstd::bulk::Compressor<'static>> {
    let mut c = zstd::bulk::Compressor::new(level)?;
    c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
    c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))?;
    Ok(c)
}

/// One compressed frame holding `data`.
pub(crate) fn encode_frame(
    c: &mut zstd::bulk::Compressor<'static>,
    data: &[u8],
) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    c.compress_to_buffer(data, &mut out)?;
    Ok(out)
}

/// One frame of raw (stored) blocks holding `data`: single segment, 8-byte
/// content size, XXH64 content checksum.
pub(crate) fn raw_frame(data: &[u8]) -> Vec<u8> {
    let blocks = data.len().div_ceil(MAX_BLOCK).max(1);
    let mut out = Vec::with_capacity(data.len() + 3 * blocks + 17);
    out.extend_from_slice(&MAGIC);
    // Frame header descriptor: FCS field of 8 bytes (11), single segment (1),
    // content checksum (1), no dictionary.
    out.push(0b1110_0100);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let mut pieces = data.chunks(MAX_BLOCK).peekable();
    if pieces.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0]); // one empty, last, raw block
    }
    while let Some(p) = pieces.next() {
        let last = u32::from(pieces.peek().is_none());
        let h = ((p.len() as u32) << 3) | last; // block type 0: raw
        out.extend_from_slice(&h.to_le_bytes()[..3]);
        out.extend_from_slice(p);
    }
    out.extend_from_slice(&(xxh64(data, 0) as u32).to_le_bytes());
    out
}

/// What a frame header says, parsed from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// Bytes of the header (magic included); blocks start right after.
    pub len: usize,
    /// Declared content size, if the header has one.
    pub content_size: Option<u64>,
    /// A 4-byte checksum follows the last block.
    pub checksum: bool,
}

/// Bytes needed to know the header's length: magic plus descriptor.
pub(crate) const HEADER_PREFIX: usize = 5;

/// Header length from the magic and descriptor (`prefix`, [`HEADER_PREFIX`] bytes).
pub(crate) fn header_len(prefix: &[u8]) -> Result<usize, String> {
    if prefix[..4] != MAGIC {
        return Err("not a zstd frame (bad magic number)".into());
    }
    let fhd = prefix[4];
    if fhd & 0x08 != 0 {
        return Err("its frame header sets a reserved bit".into());
    }
    let single = fhd & 0x20 != 0;
    let fcs = match fhd >> 6 {
        0 => usize::from(single),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let did = [0, 1, 2, 4][usize::from(fhd & 3)];
    Ok(HEADER_PREFIX + usize::from(!single) + did + fcs)
}

/// Parse a whole header (`h` is exactly [`header_len`] bytes).
pub(crate) fn parse_header(h: &[u8]) -> FrameHeader {
    let fhd = h[4];
    let single = fhd & 0x20 != 0;
    let fcs_len = match fhd >> 6 {
        0 => usize::from(single),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let field = &h[h.len() - fcs_len..];
    let content_size = match fcs_len {
        0 => None,
        1 => Some(u64::from(field[0])),
        2 => Some(u64::from(u16::from_le_bytes([field[0], field[1]])) + 256),
        4 => Some(u64::from(u32::from_le_bytes([
            field[0], field[1], field[2], field[3],
        ]))),
        _ => Some(u64::from_le_bytes([
            field[0], field[1], field[2], field[3], field[4], field[5], field[6], field[7],
        ])),
    };
    FrameHeader {
        len: h.len(),
        content_size,
        checksum: fhd & 0x04 != 0,
    }
}

/// A block header: `(last, bytes of payload that follow)`.
pub(crate) fn block_header(b: [u8; 3]) -> Result<(bool, usize), String> {
    let v = u32::from_le_bytes([b[0], b[1], b[2], 0]);
    let last = v & 1 != 0;
    let size = (v >> 3) as usize;
    match (v >> 1) & 3 {
        0 | 2 if size <= MAX_BLOCK => Ok((last, size)),
        1 => Ok((last, 1)), // RLE: one byte repeated `size` times
        3 => Err("a block of the reserved type".into()),
        _ => Err(format!(
            "a block of {size} bytes, more than the format allows"
        )),
    }
}

/// Decode one complete frame whose header declares `content_size` into `out`
/// (cleared first; its length must match). The checksum, if any, is checked.
pub(crate) fn decode_frame(
    d: &mut zstd::bulk::Decompressor<'static>,
    frame: &[u8],
    content_size: usize,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    out.clear();
    out.reserve_exact(content_size);
    let n = d
        .decompress_to_buffer(frame, out)
        .map_err(|e| format!("it does not decode: {e}"))?;
    if n != content_size {
        return Err(format!(
            "it decodes to {n} bytes, its header declares {content_size}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(frame: &[u8]) -> usize {
        let hl = header_len(&frame[..HEADER_PREFIX]).expect("header");
        let h = parse_header(&frame[..hl]);
        let mut at = hl;
        loop {
            let (last, n) = block_header([frame[at], frame[at + 1], frame[at + 2]]).expect("block");
            at += 3 + n;
            if last {
                break;
            }
        }
        at + if h.checksum { 4 } else { 0 }
    }

    #[test]
    fn raw_and_compressed_frames_decode_with_zstd_and_walk_to_their_end() {
        let text: Vec<u8> = (0..300_000u32)
            .flat_map(|i| format!("{} ", i % 977).into_bytes())
            .collect();
        let mut c = compressor(3).expect("compressor");
        let mut d = zstd::bulk::Decompressor::new().expect("decompressor");
        for data in [
            &text[..],
            &text[..1],
            &[][..],
            &text[..MAX_BLOCK],
            &text[..MAX_BLOCK + 1],
        ] {
            for frame in [raw_frame(data), encode_frame(&mut c, data).expect("encode")] {
                assert_eq!(walk(&frame), frame.len());
                let hl = header_len(&frame[..HEADER_PREFIX]).expect("header");
                let h = parse_header(&frame[..hl]);
                assert_eq!(h.content_size, Some(data.len() as u64));
                assert!(h.checksum);
                assert_eq!(zstd::decode_all(&frame[..]).expect("zstd reads it"), data);
                let mut out = Vec::new();
                decode_frame(&mut d, &frame, data.len(), &mut out).expect("decode");
                assert_eq!(out, data);
            }
        }
    }

    #[test]
    fn a_damaged_raw_frame_fails_its_checksum() {
        let data = vec![7u8; 50_000];
        let mut f = raw_frame(&data);
        let mid = f.len() / 2;
        f[mid] ^= 1;
        let mut d = zstd::bulk::Decompressor::new().expect("decompressor");
        let mut out = Vec::new();
        assert!(decode_frame(&mut d, &f, data.len(), &mut out).is_err());
        assert!(zstd::decode_all(&f[..]).is_err());
    }

    #[test]
    fn skippable_magic() {
        assert!(is_skippable_magic(&[0x50, 0x2a, 0x4d, 0x18]));
        assert!(is_skippable_magic(&[0x5f, 0x2a, 0x4d, 0x18]));
        assert!(!is_skippable_magic(&MAGIC));
    }
}
