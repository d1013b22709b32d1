//! Durable volume records (one JSON file per volume under `<root>/state/volumes/`) and their locks.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::core::layout::Layout;
use crate::core::names::VolumeName;
use crate::core::options::VolumeSpec;
use crate::fs::durable::{self, FileLock, LockKind};

mod runtime;
pub use runtime::{boot_id, Runtime};

/// Version of the record format written by this build.
pub const RECORD_VERSION: u32 = 1;

/// Where a volume's data lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DataLocation {
    /// Inside `<root>/volumes/<volume>/data`, optionally a subdirectory of it (a `parent=` child).
    Managed {
        volume: VolumeName,
        subdir: Option<String>,
    },
    /// A host directory (a `device=` volume or a child of one), as the host sees it.
    Host { path: PathBuf },
    /// `<pool root>/volumes/<volume>` of a configured pool (a subvolume on btrfs),
    /// optionally a subdirectory of it (a `parent=` child). See [`crate::pool`].
    Pool {
        pool: String,
        volume: VolumeName,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subdir: Option<String>,
    },
}

impl DataLocation {
    /// The same location one directory down (for `parent=` children).
    pub fn child(&self, name: &str) -> DataLocation {
        match self {
            DataLocation::Managed { volume, subdir } => DataLocation::Managed {
                volume: volume.clone(),
                subdir: Some(match subdir {
                    Some(s) => format!("{s}/{name}"),
                    None => name.to_string(),
                }),
            },
            DataLocation::Host { path } => DataLocation::Host {
                path: path.join(name),
            },
            DataLocation::Pool {
                pool,
                volume,
                subdir,
            } => DataLocation::Pool {
                pool: pool.clone(),
                volume: volume.clone(),
                subdir: Some(match subdir {
                    Some(s) => format!("{s}/{name}"),
                    None => name.to_string(),
                }),
            },
        }
    }
    /// Does removing the volume delete this data? Only managed directories are ours to delete
    /// (and among them, not a directory a child adopted: see [`VolumeRecord::adopted`]).
    pub fn owned(&self) -> bool {
        matches!(
            self,
            DataLocation::Managed { .. } | DataLocation::Pool { .. }
        )
    }

    /// The pool of the data (`None`: the default pool or a host directory).
    pub fn pool(&self) -> Option<&str> {
        match self {
            DataLocation::Pool { pool, .. } => Some(pool),
            _ => None,
        }
    }
}

/// One volume, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub version: u32,
    pub name: VolumeName,
    pub created_at: DateTime<Utc>,
    /// The options exactly as given at Create.
    pub options: BTreeMap<String, String>,
    pub spec: VolumeSpec,
    pub data: DataLocation,
    /// Live references: Docker mount ID -> how many times it is mounted. Runtime state, kept
    /// in `<root>/state/refs/<name>.json` for this boot (see [`Runtime`]), not in the durable
    /// record (older records that carry it are still read).
    #[serde(default, skip_serializing)]
    pub mounts: BTreeMap<String, u32>,
    #[serde(default)]
    pub last_mounted_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_unmounted_at: Option<DateTime<Utc>>,
    /// A previous location kept after a migration until cleaned up.
    #[serde(default)]
    pub previous_data: Option<DataLocation>,
    /// A migration under way: the host directory its verified copy is being moved to. While
    /// set, a copy found there is allspark's (the next `volume migrate` finishes or discards it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrating_to: Option<PathBuf>,
    /// The data directory existed (with content) before this volume was created: allspark
    /// did not create that data, so Remove keeps it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
}

impl VolumeRecord {
    /// A new, unmounted record created now.
    pub fn new(
        name: &VolumeName,
        options: BTreeMap<String, String>,
        spec: VolumeSpec,
        data: DataLocation,
    ) -> VolumeRecord {
        VolumeRecord {
            version: RECORD_VERSION,
            name: name.clone(),
            created_at: Utc::now(),
            options,
            spec,
            data,
            mounts: BTreeMap::new(),
            last_mounted_at: None,
            last_unmounted_at: None,
            previous_data: None,
            migrating_to: None,
            adopted: false,
        }
    }

    /// A new managed-directory record from `key=value` options (fixtures, tools).
    pub fn managed(
        name: &VolumeName,
        opts: &[(&str, &str)],
    ) -> Result<VolumeRecord, crate::core::options::OptionError> {
        let options: BTreeMap<String, String> = opts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let spec = crate::core::options::parse(Some(&options))?;
        let data = DataLocation::Managed {
            volume: name.clone(),
            subdir: None,
        };
        Ok(VolumeRecord::new(name, options, spec, data))
    }

    /// How many references are live.
    pub fn mount_count(&self) -> u32 {
        self.mounts.values().sum()
    }
}

/// Errors reading or writing records.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("volume record {path} is corrupt ({reason}); move it aside (e.g. to {path}.corrupt) and recreate the volume, or restore it from a backup of {dir}")]
    Corrupt {
        path: PathBuf,
        reason: String,
        dir: PathBuf,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

#[derive(Clone)]
struct Cached {
    ino: u64,
    mtime_ns: i64,
    size: u64,
    record: Arc<VolumeRecord>,
}

/// Access to the records. The files are the truth; the in-memory cache is checked
/// against each file's inode, size and mtime on every read, so it is never stale.
pub struct Store {
    layout: Layout,
    cache: Mutex<HashMap<VolumeName, Cached>>,
    /// The last listing of the records directory, see [`Store::names`].
    names_cache: Mutex<Option<(DirStamp, Arc<Vec<VolumeName>>)>>,
}

/// How long after its last change a directory's listing may be kept.
pub const LISTING_RACY_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// What changes when a directory's entries change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DirStamp {
    ino: u64,
    mtime: i64,
    ctime: i64,
}

impl DirStamp {
    fn of(m: &fs::Metadata) -> DirStamp {
        DirStamp {
            ino: m.ino(),
            mtime: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        }
    }
}

fn unix_nanos(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

impl Store {
    pub fn new(layout: Layout) -> Store {
        Store {
            layout,
            cache: Mutex::new(HashMap::new()),
            names_cache: Mutex::new(None),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Take the record lock of a volume (short-lived; held across read-modify-write).
    pub fn lock(&self, name: &VolumeName) -> Result<FileLock, StoreError> {
        let p = self.layout.record_lock(name);
        FileLock::acquire(&p, LockKind::Exclusive).map_err(io_err("lock", &p))
    }

    /// Read a record; `Ok(None)` when the volume does not exist.
    pub fn load(&self, name: &VolumeName) -> Result<Option<Arc<VolumeRecord>>, StoreError> {
        Ok(self.load_durable(name)?.map(|r| self.with_runtime(r)))
    }

    /// Read the durable record alone, without this boot's mount references (cheaper: no
    /// runtime file is read); `Ok(None)` when the volume does not exist.
    pub fn load_durable(&self, name: &VolumeName) -> Result<Option<Arc<VolumeRecord>>, StoreError> {
        let path = self.layout.record(name);
        let meta = fs::metadata(&path);
        self.load_cached(name, &path, meta, true)
    }

    /// [`load`](Self::load) with the record's metadata already taken, without keeping it in the cache (for [`all`](Self::all)).
    fn load_with(
        &self,
        name: &VolumeName,
        path: &Path,
        meta: io::Result<fs::Metadata>,
    ) -> Result<Option<Arc<VolumeRecord>>, StoreError> {
        Ok(self
            .load_cached(name, path, meta, false)?
            .map(|r| self.with_runtime(r)))
    }

    /// The durable record: from the cache while the file's inode, mtime and size match. A
    /// record read from its file is kept in the cache with `keep` (the per-volume calls), not
    /// by a pass over every record ([`all`](Self::all)): with 10 000 volumes, the plugin's
    /// recovery filled the cache with every record and its idle memory grew by 10 MB.
    fn load_cached(
        &self,
        name: &VolumeName,
        path: &Path,
        meta: io::Result<fs::Metadata>,
        keep: bool,
    ) -> Result<Option<Arc<VolumeRecord>>, StoreError> {
        let meta = match meta {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.cache_lock().remove(name);
                return Ok(None);
            }
            Err(e) => return Err(io_err("read", path)(e)),
        };
        let key = (
            meta.ino(),
            meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            meta.size(),
        );
        let cached = self
            .cache_lock()
            .get(name)
            .filter(|c| (c.ino, c.mtime_ns, c.size) == key)
            .map(|c| c.record.clone());
        if let Some(record) = cached {
            return Ok(Some(record));
        }
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", path)(e)),
        };
        let record: VolumeRecord =
            serde_json::from_slice(&bytes).map_err(|e| self.corrupt(path, e.to_string()))?;
        if record.name != *name {
            return Err(self.corrupt(path, format!("it names volume {:?}", record.name)));
        }
        let record = Arc::new(record);
        if !keep {
            return Ok(Some(record));
        }
        self.cache_lock().insert(
            name.clone(),
            Cached {
                ino: key.0,
                mtime_ns: key.1,
                size: key.2,
                record: record.clone(),
            },
        );
        Ok(Some(record))
    }

    fn corrupt(&self, path: &Path, reason: String) -> StoreError {
        StoreError::Corrupt {
            path: path.to_path_buf(),
            reason,
            dir: self.layout.state_dir(),
        }
    }

    fn cache_lock(&self) -> std::sync::MutexGuard<'_, HashMap<VolumeName, Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write a record atomically (temp, fsync, rename, fsync dir), and its runtime part (see
    /// [`save_runtime`](Self::save_runtime)). Caller holds the lock.
    pub fn save(&self, record: &VolumeRecord) -> Result<(), StoreError> {
        let path = self.layout.record(&record.name);
        let mut bytes =
            serde_json::to_vec_pretty(record).map_err(|e| self.corrupt(&path, e.to_string()))?;
        bytes.push(b'\n');
        durable::atomic_write(&path, &bytes, 0o600).map_err(io_err("write", &path))?;
        self.save_runtime(record)
    }

    /// Delete a record durably. Caller holds the lock.
    pub fn delete(&self, name: &VolumeName) -> Result<(), StoreError> {
        let path = self.layout.record(name);
        self.cache_lock().remove(name);
        durable::remove_durable(&path).map_err(io_err("delete", &path))?;
        let refs = self.layout.refs(name);
        match fs::remove_file(&refs) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("delete", &refs)(e)),
            _ => Ok(()),
        }
    }

    /// The volumes created with `parent=name`, sorted.
    pub fn children(&self, name: &VolumeName) -> Result<Vec<VolumeName>, StoreError> {
        Ok(self
            .all()?
            .0
            .iter()
            .filter(|r| r.spec.parent.as_ref() == Some(name))
            .map(|r| r.name.clone())
            .collect())
    }

    /// Names of all volumes, sorted.
    ///
    /// The listing is kept while the records directory's inode, mtime and ctime stay the
    /// same (every record written, renamed or deleted changes them), and only once they are
    /// [`LISTING_RACY_WINDOW`] older than the listing: a change in the same clock tick as
    /// the one before it could leave the mtime as it was (git's "racy" rule).
    pub fn names(&self) -> Result<Arc<Vec<VolumeName>>, StoreError> {
        let dir = self.layout.state_dir();
        let before = fs::metadata(&dir).map_err(io_err("list", &dir))?;
        let stamp = DirStamp::of(&before);
        let cached = self.names_cache_lock().clone();
        if let Some((s, names)) = cached {
            if s == stamp {
                return Ok(names);
            }
        }
        let started = std::time::SystemTime::now();
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            if let Some(name) = record_name(&entry.file_name()) {
                names.push(name);
            }
        }
        names.sort_unstable();
        let names = Arc::new(names);
        let window = LISTING_RACY_WINDOW.as_nanos() as i64;
        let now = unix_nanos(started);
        let settled = stamp.mtime + window <= now && stamp.ctime + window <= now;
        *self.names_cache_lock() = settled.then(|| (stamp, names.clone()));
        Ok(names)
    }

    fn names_cache_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<(DirStamp, Arc<Vec<VolumeName>>)>> {
        self.names_cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// All records that read cleanly, and the errors of those that did not.
    ///
    /// Each record is stat'ed relative to the open state directory (fstatat), not
    /// by its full path: a `List` of 10 000 volumes spent a third of its time
    /// walking the same path components again (see docs/benchmarks.md).
    pub fn all(&self) -> Result<(Vec<Arc<VolumeRecord>>, Vec<StoreError>), StoreError> {
        let dir = self.layout.state_dir();
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            let Some(name) = record_name(&entry.file_name()) else {
                continue;
            };
            let meta = match entry.metadata() {
                // `load` follows a symlinked record; so does this.
                Ok(m) if m.file_type().is_symlink() => fs::metadata(entry.path()),
                other => other,
            };
            match self.load_with(&name, &entry.path(), meta) {
                Ok(Some(r)) => ok.push(r),
                Ok(None) => {}
                Err(e) => bad.push((name, e)),
            }
        }
        ok.sort_by(|a, b| a.name.cmp(&b.name));
        bad.sort_by(|a, b| a.0.cmp(&b.0));
        let bad = bad.into_iter().map(|(_, e)| e).collect();
        Ok((ok, bad))
    }
}

/// The volume name of a file in the state directory, if it is a record (`<valid name>.json`).
fn record_name(file: &std::ffi::OsStr) -> Option<VolumeName> {
    let file = file.to_str()?;
    if file.starts_with('.') {
        return None;
    }
    let name = file.strip_suffix(".json")?;
    VolumeName::parse(name).ok()
}

#[cfg(test)]
mod tests;
