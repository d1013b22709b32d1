//! The usage listing cache file (`<root>/state/usage-cache/<volume>.bin`): per directory its inode, times and entry names, with a checksum.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

/// One cached directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct CachedDir {
    pub(super) ino: u64,
    pub(super) mtime: (i64, i64),
    pub(super) ctime: (i64, i64),
    /// Entry names (no `.`/`..`, no `/`, no NUL).
    pub(super) names: Vec<Vec<u8>>,
}

/// Directory listings of one tree, keyed by path relative to its root (empty = the root).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListingCache {
    pub(super) dirs: HashMap<Vec<u8>, CachedDir>,
}

const CACHE_MAGIC: &[u8; 16] = b"allspark-usage\x00\x01";

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

impl ListingCache {
    /// Number of cached directories.
    pub fn len(&self) -> usize {
        self.dirs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    /// Read a cache file; a missing, unreadable or corrupt file gives an empty cache.
    pub fn load(path: &Path) -> ListingCache {
        match fs::read(path) {
            Ok(b) => ListingCache::decode(&b).unwrap_or_else(|| {
                tracing::warn!(path = %path.display(), "usage cache is corrupt; measuring without it");
                ListingCache::default()
            }),
            Err(_) => ListingCache::default(),
        }
    }

    /// Binary form: magic, count, then per directory its key, inode, times and names; FNV-1a checksum last.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.dirs.len() * 64);
        out.extend_from_slice(CACHE_MAGIC);
        out.extend_from_slice(&(self.dirs.len() as u64).to_le_bytes());
        let mut keys: Vec<&Vec<u8>> = self.dirs.keys().collect();
        keys.sort();
        for k in keys {
            let d = &self.dirs[k];
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&d.ino.to_le_bytes());
            for t in [d.mtime.0, d.mtime.1, d.ctime.0, d.ctime.1] {
                out.extend_from_slice(&t.to_le_bytes());
            }
            out.extend_from_slice(&(d.names.len() as u32).to_le_bytes());
            for n in &d.names {
                out.extend_from_slice(&(n.len() as u16).to_le_bytes());
                out.extend_from_slice(n);
            }
        }
        let sum = fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Parse [`ListingCache::encode`]'s output; `None` if anything is off.
    pub fn decode(bytes: &[u8]) -> Option<ListingCache> {
        let (body, sum) = bytes.split_at(bytes.len().checked_sub(8)?);
        if fnv1a(body).to_le_bytes() != sum || !body.starts_with(CACHE_MAGIC) {
            return None;
        }
        let mut r = Reader(&body[CACHE_MAGIC.len()..]);
        let n = r.u64()?;
        let mut dirs = HashMap::with_capacity(n.min(1 << 20) as usize);
        for _ in 0..n {
            let klen = r.u32()? as usize;
            let key = r.take(klen)?.to_vec();
            let ino = r.u64()?;
            let mtime = (r.i64()?, r.i64()?);
            let ctime = (r.i64()?, r.i64()?);
            let count = r.u32()? as usize;
            let mut names = Vec::with_capacity(count.min(1 << 16));
            for _ in 0..count {
                let len = r.u16()? as usize;
                let name = r.take(len)?;
                if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
                    return None;
                }
                if name.contains(&0) {
                    return None;
                }
                names.push(name.to_vec());
            }
            dirs.insert(
                key,
                CachedDir {
                    ino,
                    mtime,
                    ctime,
                    names,
                },
            );
        }
        r.0.is_empty().then_some(ListingCache { dirs })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trips_and_rejects_corruption() {
        let mut c = ListingCache::default();
        c.dirs.insert(
            b"a/b".to_vec(),
            CachedDir {
                ino: 42,
                mtime: (1, 2),
                ctime: (3, 4),
                names: vec![b"x".to_vec(), vec![0xff, b'y']],
            },
        );
        c.dirs.insert(
            Vec::new(),
            CachedDir {
                ino: 7,
                mtime: (5, 6),
                ctime: (7, 8),
                names: vec![],
            },
        );
        let enc = c.encode();
        assert_eq!(ListingCache::decode(&enc), Some(c));
        for i in [0, 20, enc.len() / 2, enc.len() - 1] {
            let mut bad = enc.clone();
            bad[i] ^= 1;
            assert_eq!(ListingCache::decode(&bad), None, "flipped byte {i}");
        }
        assert_eq!(ListingCache::decode(&enc[..enc.len() - 3]), None);
        assert_eq!(ListingCache::decode(b""), None);
    }
}
