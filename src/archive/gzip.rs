//! Gzip members of parallel archives: encoding one chunk as a complete member that records its own length, and decoding one member on its own.
//!
//! A member is a standard RFC 1952 gzip member (`gzip -d`, `pigz -d`, GNU
//! `tar xzf` and [`flate2::read::MultiGzDecoder`] read a file of them as one
//! stream) whose header carries an extra field (`FLG.FEXTRA`, which every
//! gzip reader skips) with subfield `AS` holding the member's total length,
//! like BGZF does. A reader can therefore cut the file into members without
//! inflating anything and inflate them on several cores
//! ([`super::decode`]). Archives written before this field existed are read
//! as one stream.
//!
//! ```text
//! 1f 8b 08 04 00000000 XFL ff | 08 00 'A' 'S' 04 00 <member length u32 LE> | deflate | crc32 | isize
//! ```

use std::io;

use flate2::{Compress, Compression, Crc, Decompress, FlushCompress, FlushDecompress, Status};

/// Length of the header of our members (10 fixed bytes, XLEN, one 8-byte subfield).
pub(crate) const HEADER_LEN: usize = 20;

/// Trailer: crc32 and isize.
const TRAILER_LEN: usize = 8;

/// Encode `data` as one gzip member with the length subfield, using `c`
/// (configured for the level wanted, or level 0 to store).
pub(crate) fn encode_member(c: &mut Compress, data: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let xfl = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    // ID1 ID2 CM=deflate FLG=FEXTRA MTIME=0 XFL OS=unknown
    out.extend_from_slice(&[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, xfl, 0xff]);
    // XLEN=8: one subfield `AS`, 4 bytes long: the member length (patched below).
    out.extend_from_slice(&[8, 0, b'A', b'S', 4, 0, 0, 0, 0, 0]);
    deflate_into(c, data, &mut out)?;
    let mut crc = Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    let len = u32::try_from(out.len())
        .map_err(|_| io::Error::other("a gzip member grew past 4 GiB; use smaller chunks"))?;
    out[16..20].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

/// Raw-deflate all of `input` into `out` (appending), ending the stream.
pub(crate) fn deflate_into(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
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

/// A compressor for `level` (0..=9).
pub(crate) fn compressor(level: u32) -> Compress {
    Compress::new(Compression::new(level.min(9)), false)
}

/// The member length recorded in a header of ours, or `None` if `header`
/// (at least [`HEADER_LEN`] bytes) is not one (another gzip writer, an
/// older allspark): such input is decoded as one stream.
pub(crate) fn member_len(header: &[u8]) -> Option<usize> {
    let h = header.get(..HEADER_LEN)?;
    let ours = h[..4] == [0x1f, 0x8b, 8, 4] && h[10..16] == [8, 0, b'A', b'S', 4, 0];
    if !ours {
        return None;
    }
    let len = u32::from_le_bytes([h[16], h[17], h[18], h[19]]) as usize;
    (len >= HEADER_LEN + TRAILER_LEN).then_some(len)
}

/// The uncompressed size a complete member of ours declares (its isize field).
pub(crate) fn declared_size(member: &[u8]) -> usize {
    let n = member.len();
    u32::from_le_bytes([member[n - 4], member[n - 3], member[n - 2], member[n - 1]]) as usize
}

/// Inflate one complete member of ours (as cut by [`member_len`]) into `out`
/// (cleared first), checking that the deflate data ends exactly before the
/// trailer and that crc32 and size match. `Err` says what is wrong.
pub(crate) fn decode_member(
    d: &mut Decompress,
    member: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let n = member.len();
    if n < HEADER_LEN + TRAILER_LEN {
        return Err("it is shorter than a gzip header and trailer".into());
    }
    let want = declared_size(member);
    let crc_stored =
        u32::from_le_bytes([member[n - 8], member[n - 7], member[n - 6], member[n - 5]]);
    let body = &member[HEADER_LEN..n - TRAILER_LEN];
    out.clear();
    // One extra byte of room: inflating more than declared is then detected.
    out.reserve_exact(want + 1);
    d.reset(false);
    let status = d
        .decompress_vec(body, out, FlushDecompress::Finish)
        .map_err(|e| format!("its deflate data is invalid: {e}"))?;
    if status != Status::StreamEnd {
        return Err(if out.len() > want {
            format!("it inflates to more than the {want} bytes its trailer declares")
        } else {
            "its deflate data ends early".into()
        });
    }
    if d.total_in() as usize != body.len() {
        return Err("its deflate data ends before the trailer".into());
    }
    if out.len() != want {
        return Err(format!(
            "it inflates to {} bytes, its trailer declares {want}",
            out.len()
        ));
    }
    let mut crc = Crc::new();
    crc.update(out);
    if crc.sum() != crc_stored {
        return Err(format!(
            "crc32 mismatch (computed {:08x}, stored {crc_stored:08x})",
            crc.sum()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::MultiGzDecoder;
    use std::io::Read;

    #[test]
    fn member_records_its_length_and_decodes_alone_and_as_gzip() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for level in [0, 1, 7] {
            let m = encode_member(&mut compressor(level), &data, level).expect("encode");
            assert_eq!(member_len(&m), Some(m.len()));
            assert_eq!(declared_size(&m), data.len());
            let mut out = Vec::new();
            decode_member(&mut Decompress::new(false), &m, &mut out).expect("decode");
            assert_eq!(out, data);
            let mut std = Vec::new();
            MultiGzDecoder::new(&m[..])
                .read_to_end(&mut std)
                .expect("flate2 reads it");
            assert_eq!(std, data);
        }
    }

    #[test]
    fn damage_is_detected() {
        let data = b"hello hello hello hello".repeat(1000);
        let m = encode_member(&mut compressor(6), &data, 6).expect("encode");
        let mut d = Decompress::new(false);
        let mut out = Vec::new();
        for at in [HEADER_LEN + 3, m.len() / 2, m.len() - 6, m.len() - 2] {
            let mut bad = m.clone();
            bad[at] ^= 0x55;
            assert!(decode_member(&mut d, &bad, &mut out).is_err(), "byte {at}");
        }
        assert!(decode_member(&mut d, &m[..m.len() - 1], &mut out).is_err());
        // Foreign headers are not ours (FNAME set, no extra field).
        let mut foreign = m.clone();
        foreign[3] = 8;
        assert_eq!(member_len(&foreign), None);
    }
}
