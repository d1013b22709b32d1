//! Read adapter that follows the tar framing in step with tar-rs, to enforce size limits and capture raw PAX data.
//!
//! tar-rs reads GNU long names and PAX headers fully into memory, sized by
//! the header: a crafted (or gzip-bombed) archive could make it allocate
//! gigabytes. This adapter sits between the gzip decoder and `tar::Archive`,
//! parses every header block as it passes (mirroring tar-rs's framing rules:
//! PAX `size` overrides, GNU sparse extension blocks) and fails the read with
//! a refusal before an oversized extension header reaches tar-rs.
//!
//! It also keeps the raw bytes of the PAX header that belongs to the entry
//! tar-rs returned last: tar-rs's own PAX parser splits records at newlines,
//! which breaks binary extended-attribute values, so the reader parses them
//! itself from these bytes.

use std::cell::RefCell;
use std::io::{self, Read};
use std::rc::Rc;

use tar::Header;

const BLOCK: usize = 512;

/// Limits enforced on the stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Largest PAX extended header (`x` or `g`) accepted.
    pub max_pax: u64,
    /// Largest GNU long name / long link accepted.
    pub max_long_name: u64,
    /// Most GNU sparse extension blocks accepted for one entry.
    pub max_sparse_blocks: u64,
}

/// State shared with the reader.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Raw data of the PAX header of the entry whose header passed last.
    pub current_pax: Option<Vec<u8>>,
    /// Why the guard stopped the stream, if it did.
    pub refusal: Option<String>,
    /// The underlying (decompression) reader failed with this message.
    pub stream_error: Option<String>,
    /// When set, stop interpreting the stream (used to drain the tail).
    pub stop_tracking: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    ExtSparse,
    Data,
    Off,
}

pub(crate) struct Guard<R> {
    inner: R,
    shared: Rc<RefCell<Shared>>,
    limits: Limits,
    state: State,
    block: [u8; BLOCK],
    fill: usize,
    data_left: u64,
    collect: Option<Vec<u8>>,
    collect_left: u64,
    group_pax: Option<Vec<u8>>,
    sparse_blocks: u64,
}

impl<R: Read> Guard<R> {
    pub(crate) fn new(inner: R, shared: Rc<RefCell<Shared>>, limits: Limits) -> Guard<R> {
        Guard {
            inner,
            shared,
            limits,
            state: State::Header,
            block: [0; BLOCK],
            fill: 0,
            data_left: 0,
            collect: None,
            collect_left: 0,
            group_pax: None,
            sparse_blocks: 0,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            match self.state {
                State::Off => return Ok(()),
                State::Header | State::ExtSparse => {
                    let take = (BLOCK - self.fill).min(bytes.len());
                    self.block[self.fill..self.fill + take].copy_from_slice(&bytes[..take]);
                    self.fill += take;
                    bytes = &bytes[take..];
                    if self.fill == BLOCK {
                        self.fill = 0;
                        if self.state == State::Header {
                            self.on_header()?;
                        } else {
                            self.on_sparse_block()?;
                        }
                    }
                }
                State::Data => {
                    let take = self.data_left.min(bytes.len() as u64) as usize;
                    if let Some(c) = self.collect.as_mut() {
                        let want = (self.collect_left as usize).min(take);
                        c.extend_from_slice(&bytes[..want]);
                        self.collect_left -= want as u64;
                    }
                    self.data_left -= take as u64;
                    bytes = &bytes[take..];
                    if self.data_left == 0 {
                        self.end_data();
                    }
                }
            }
        }
        Ok(())
    }

    fn on_header(&mut self) -> Result<(), String> {
        if self.block.iter().all(|&b| b == 0) {
            // End-of-archive marker: tar-rs stops here.
            return Ok(());
        }
        let h = Header::from_byte_slice(&self.block);
        let sum: u32 = self.block[..148]
            .iter()
            .chain(&self.block[156..])
            .map(|&b| u32::from(b))
            .sum::<u32>()
            + 8 * 32;
        if h.cksum().ok() != Some(sum) {
            // tar-rs rejects this header itself.
            self.state = State::Off;
            return Ok(());
        }
        let ty = self.block[156];
        let recognized = h.as_gnu().is_some() || h.as_ustar().is_some();
        let is_ext_type = matches!(ty, b'L' | b'K' | b'x' | b'g');
        let Ok(mut size) = h.entry_size() else {
            self.state = State::Off;
            return Ok(());
        };
        if !is_ext_type {
            if let Some(s) = self.group_pax.as_deref().and_then(pax_size) {
                size = s;
            }
        }
        if matches!(ty, b'x' | b'g') && size > self.limits.max_pax {
            return Err(format!(
                "a PAX extended header of {size} bytes exceeds the limit of {} bytes",
                self.limits.max_pax
            ));
        }
        if recognized && matches!(ty, b'L' | b'K') && size > self.limits.max_long_name {
            return Err(format!(
                "a GNU long name of {size} bytes exceeds the limit of {} bytes",
                self.limits.max_long_name
            ));
        }
        let continues_group = recognized && matches!(ty, b'L' | b'K' | b'x');
        if recognized && ty == b'x' {
            self.collect = Some(Vec::with_capacity(size.min(64 * 1024) as usize));
            self.collect_left = size;
        }
        self.data_left = size
            .checked_add(BLOCK as u64 - 1)
            .map(|s| s & !(BLOCK as u64 - 1))
            .ok_or_else(|| "an entry size overflows".to_string())?;
        if !continues_group {
            // This header is the entry tar-rs hands out next.
            self.shared.borrow_mut().current_pax = self.group_pax.take();
            let extended = ty == b'S' && h.as_gnu().is_some_and(|g| g.is_extended());
            if extended {
                self.sparse_blocks = 0;
                self.state = State::ExtSparse;
                return Ok(());
            }
        }
        self.start_data();
        Ok(())
    }

    fn on_sparse_block(&mut self) -> Result<(), String> {
        self.sparse_blocks += 1;
        if self.sparse_blocks > self.limits.max_sparse_blocks {
            return Err(format!(
                "a sparse file map of more than {} extension blocks",
                self.limits.max_sparse_blocks
            ));
        }
        if self.block[504] != 1 {
            self.start_data();
        }
        Ok(())
    }

    fn start_data(&mut self) {
        if self.data_left == 0 {
            self.end_data();
        } else {
            self.state = State::Data;
        }
    }

    fn end_data(&mut self) {
        if let Some(c) = self.collect.take() {
            self.group_pax = Some(c);
        }
        self.state = State::Header;
    }
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => {
                self.shared.borrow_mut().stream_error = Some(e.to_string());
                return Err(e);
            }
        };
        if self.state != State::Off && self.shared.borrow().stop_tracking {
            self.state = State::Off;
        }
        if let Err(msg) = self.feed(&buf[..n]) {
            self.state = State::Off;
            self.shared.borrow_mut().refusal = Some(msg.clone());
            return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
        }
        Ok(n)
    }
}

/// The `size` record of PAX data exactly as tar-rs interprets it (first
/// `size` record; any malformed record before it means "none").
fn pax_size(data: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(data) {
        let ext = ext.ok()?;
        if ext.key() != Ok("size") {
            continue;
        }
        return ext.value().ok()?.parse().ok();
    }
    None
}

/// One PAX record: key and value bytes.
pub(crate) type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// Parse PAX records properly (length-prefixed, values may contain newlines).
pub(crate) fn parse_pax(mut data: &[u8]) -> Result<Vec<PaxRecord<'_>>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let sp = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or("a PAX record has no length")?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a PAX record has a malformed length")?;
        if len <= sp + 2 || len > data.len() {
            return Err("a PAX record length is out of range".into());
        }
        let rec = &data[sp + 1..len];
        let Some((&b'\n', rec)) = rec.split_last() else {
            return Err("a PAX record does not end with a newline".into());
        };
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or("a PAX record has no `=`")?;
        out.push((&rec[..eq], &rec[eq + 1..]));
        data = &data[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_pax_handles_newlines_in_values() {
        let v: &[u8] = b"a\nb\n12 path=x\n";
        let data = crate::archive::tar_out::pax_records(
            [
                (b"SCHILY.xattr.user.bin".to_vec(), v),
                (b"mtime".to_vec(), &b"1"[..]),
            ]
            .into_iter(),
        );
        let recs = parse_pax(&data).expect("parse");
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0], (&b"SCHILY.xattr.user.bin"[..], v));
        assert_eq!(recs[1], (&b"mtime"[..], &b"1"[..]));
        for bad in [
            &b"5 a=b"[..],
            b"x a=b\n",
            b"99 a=b\n",
            b"6 ab\n\n",
            b"3 =\n",
        ] {
            assert!(
                parse_pax(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn pax_size_mirrors_tar_rs() {
        assert_eq!(pax_size(b"13 size=4096\n"), Some(4096));
        assert_eq!(pax_size(b"9 path=x\n13 size=4096\n"), Some(4096));
        assert_eq!(pax_size(b"9 bad=x\n13 size=4096\n"), None);
        assert_eq!(pax_size(b"10 size=-1\n"), None);
    }
}
