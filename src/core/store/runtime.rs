//! The runtime part of a volume record: this boot's mount references and last-use times,
//! kept beside the durable record in a file written in place without fsync.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{io_err, Store, StoreError, VolumeRecord};
use crate::fs::durable;

/// The runtime part of a volume: its mount references, which describe bind mounts and so die
/// with the host. Written atomically without fsync (a crash of the plugin keeps it: the page
/// cache survives; a reboot voids it: the boot id changes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Runtime {
    pub boot_id: String,
    #[serde(default)]
    pub mounts: BTreeMap<String, u32>,
    #[serde(default)]
    pub last_mounted_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_unmounted_at: Option<DateTime<Utc>>,
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`; `ALLSPARK_BOOT_ID` overrides it, for
/// tests that simulate a reboot).
pub fn boot_id() -> String {
    if let Some(id) = std::env::var_os("ALLSPARK_BOOT_ID").filter(|v| !v.is_empty()) {
        return id.to_string_lossy().into_owned();
    }
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
    .clone()
}

fn later(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

impl Store {
    /// The record with this boot's runtime part: references from another boot are void (their
    /// bind mounts died with it); the last-use times are kept whatever the boot.
    pub(super) fn with_runtime(&self, record: Arc<VolumeRecord>) -> Arc<VolumeRecord> {
        let Ok(bytes) = read_runtime(&self.layout.refs(&record.name)) else {
            // No runtime file: a record from before runtime files keeps its own references.
            return record;
        };
        let Ok(rt) = serde_json::from_slice::<Runtime>(&bytes) else {
            tracing::warn!(volume = %record.name, "unreadable mount references: treated as none");
            let mut r = (*record).clone();
            r.mounts.clear();
            return Arc::new(r);
        };
        let mut r = (*record).clone();
        r.mounts = if rt.boot_id == boot_id() {
            rt.mounts
        } else {
            BTreeMap::new()
        };
        r.last_mounted_at = later(r.last_mounted_at, rt.last_mounted_at);
        r.last_unmounted_at = later(r.last_unmounted_at, rt.last_unmounted_at);
        Arc::new(r)
    }

    /// Write the runtime part (references, last-use times) in place, without fsync: it must
    /// survive a crash of the plugin, not a reboot (see [`write_runtime`]). Caller holds the
    /// record lock.
    pub fn save_runtime(&self, record: &VolumeRecord) -> Result<(), StoreError> {
        let path = self.layout.refs(&record.name);
        let rt = Runtime {
            boot_id: boot_id(),
            mounts: record.mounts.clone(),
            last_mounted_at: record.last_mounted_at,
            last_unmounted_at: record.last_unmounted_at,
        };
        let bytes = serde_json::to_vec(&rt).map_err(|e| self.corrupt(&path, e.to_string()))?;
        match write_runtime(&path, &bytes) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A state root from before runtime files: make the directory once.
                durable::ensure_dir(&self.layout.refs_dir(), 0o700)
                    .and_then(|()| write_runtime(&path, &bytes))
                    .map_err(io_err("write", &path))
            }
            other => other.map_err(io_err("write", &path)),
        }
    }
}

/// Replace the content of a runtime file in place: one `pwrite` at offset 0 under an
/// exclusive `flock` of the file, padded with spaces (JSON allows trailing whitespace) so
/// it covers all of the old content.
///
/// Why not a temp file and a rename, like durable records: on ext4, renaming over an
/// existing file starts writeback of the new one (`auto_da_alloc`), and freeing the old
/// inode frees its blocks (a discard on `-o discard` mounts); a Mount+Unmount pair spent
/// most of its time there. In place, nothing is allocated or freed after the first write.
/// Readers take a shared `flock` ([`read_runtime`]), so they never see half a write; a crash
/// of the process keeps what was written (the page cache survives it; the file is far below
/// one page, which one `pwrite` copies whole); a reboot voids the content (boot id).
fn write_runtime(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let f = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io::Error::from(e))?;
    let old = f.metadata()?.len();
    let mut buf = bytes.to_vec();
    if (buf.len() as u64) < old {
        buf.resize(old as usize, b' ');
    }
    f.write_all_at(&buf, 0)?;
    // Shrink a file that once held many references, rarely: the padding would grow costly.
    if old > 4096 && (bytes.len() as u64) < old / 4 {
        f.set_len(bytes.len() as u64)?;
    }
    Ok(())
}

/// Read a runtime file under a shared `flock` (see [`write_runtime`]).
fn read_runtime(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let f = fs::File::open(path)?;
    let mut f = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockShared)
        .map_err(|(_, e)| io::Error::from(e))?;
    let mut bytes = Vec::with_capacity(256);
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}
