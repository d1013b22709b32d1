//! The snapshot manifest (`manifest.json`): a plain serde type, the on-disk format of one snapshot.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::core::options::Compression;

/// Version of the manifest format written by this build.
pub const MANIFEST_FORMAT: u32 = 1;
/// File name of the archive inside a snapshot directory: `snapshot.tar.zst` or
/// `snapshot.tar.gz` (what every snapshot before zstd has).
pub fn archive_name(compression: Compression) -> String {
    format!("snapshot.{}", compression.archive_suffix())
}
/// File name of the manifest inside a snapshot directory.
pub const MANIFEST_NAME: &str = "manifest.json";
/// File name of the file index (for the next incremental) inside a snapshot directory.
pub const INDEX_NAME: &str = "index";

/// Why a snapshot was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The last container using the volume stopped (`snapshot=on-unmount`).
    Unmount,
    /// Before the first mount (`snapshot=on-mount`).
    Mount,
    /// A container labelled `allspark.snapshot=on-stop` stopped.
    Stop,
    /// `allspark snapshot create`.
    Manual,
    /// A scheduled run.
    Schedule,
}

impl Trigger {
    /// The name shown by `snapshot ls` (the serialized form).
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Unmount => "unmount",
            Trigger::Mount => "mount",
            Trigger::Stop => "stop",
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
        }
    }
}

/// Everything known about one snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub volume: crate::core::names::VolumeName,
    /// The snapshot this one is incremental to; `None` for a full snapshot.
    pub parent: Option<String>,
    pub trigger: Trigger,
    pub created_at: DateTime<Utc>,
    /// Archive file name inside the snapshot directory.
    pub archive: String,
    /// Codec of the archive; manifests written before zstd existed are gzip.
    #[serde(default = "Compression::legacy")]
    pub compression: Compression,
    /// Entries stored in the archive.
    pub files: u64,
    /// Bytes of file data read from the volume.
    pub bytes_in: u64,
    /// Size of the compressed archive.
    pub bytes_stored: u64,
    /// sha256 of the archive file, hex.
    pub sha256: String,
    pub duration_ms: u64,
    /// Paths (relative, `/`-separated) that existed in the parent and are gone.
    #[serde(default)]
    pub deleted: Vec<String>,
    /// Entries not stored: files that vanished during the walk, sockets, unreadable entries.
    #[serde(default)]
    pub skipped: u64,
    /// Files that changed while they were read (stored as first seen).
    #[serde(default)]
    pub changed_during_walk: u64,
    /// The spool event that caused this snapshot, so a redo after a crash is recognised.
    #[serde(default)]
    pub event: Option<String>,
    /// Docker volume driver of the source (`allspark` or e.g. `local`).
    #[serde(default)]
    pub driver: Option<String>,
}

impl Manifest {
    pub fn is_full(&self) -> bool {
        self.parent.is_none()
    }
}

/// Read a manifest; a corrupt one is an error naming the file.
pub fn read(path: &Path) -> Result<Manifest, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{} is corrupt: {e}", path.display()))
}
