//! Hashing as bytes pass: a `Read` or `Write` wrapper that feeds a SHA-256 hasher and counts the bytes.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// A reader or writer that hashes and counts the bytes read or written through it.
pub(crate) struct Hashing<T> {
    inner: T,
    hash: Sha256,
    count: u64,
}

impl<T> Hashing<T> {
    pub(crate) fn new(inner: T) -> Hashing<T> {
        Hashing {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes passed through so far.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// The SHA-256 of the bytes passed through so far, in hex.
    pub(crate) fn sha256(&self) -> String {
        hex::encode(self.hash.clone().finalize())
    }

    pub(crate) fn get_ref(&self) -> &T {
        &self.inner
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    fn passed(&mut self, bytes: &[u8]) {
        self.hash.update(bytes);
        self.count += bytes.len() as u64;
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.passed(&buf[..n]);
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.passed(&data[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_are_hashed_and_counted() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let mut r = Hashing::new(&b"abc"[..]);
        assert_eq!((r.count(), r.sha256()), (0, empty.to_string()));
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!((r.count(), r.sha256()), (3, abc.to_string()));
        let mut w = Hashing::new(Vec::new());
        w.write_all(b"ab").unwrap();
        w.write_all(b"c").unwrap();
        assert_eq!((w.count(), w.sha256()), (3, abc.to_string()));
        assert_eq!(w.get_ref(), b"abc");
    }
}
