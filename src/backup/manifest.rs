//! The backup manifest (`manifest.json`, written last and atomically) and the last-run record read by the metrics.
//!
//! Fields (stable; the first four are the old `backup.sh`'s):
//!
//! | field | meaning |
//! |---|---|
//! | `timestamp` | RFC 3339 UTC, whole seconds (`2024-01-31T02:00:03Z`) |
//! | `type` | `hourly`, `daily`, `weekly`, `monthly` |
//! | `volumes` | names of the volumes archived in the backup |
//! | `databases` | names of the dumps in the backup |
//! | `files` | `[{name, kind: volume\|database, size, sha256, source, compression: zstd\|gzip, covers}]`; `covers`: the volumes a dump stands for |
//! | `covered_by_dump` | `{volume: dump}`: volumes left out of the file archives because a dump stands for them (the database method, see the README) |
//! | `started_at`, `finished_at`, `duration_ms` | the run |
//! | `outcome` | `ok` or `failed` |
//! | `errors` | sentences saying what failed and what to do |
//! | `stopped_containers` | containers stopped for the backup (and started again) |
//! | `records` | every volume record at backup time, `{name, options}` (disaster recovery recreates them all) |
//!
//! A manifest written by the old script (no `files`, no `outcome`) still
//! reads: its outcome is unknown and verify only test-reads its archives.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::BackupType;
use crate::core::options::Compression;
use crate::fs::durable;

/// File name of the manifest inside a backup directory.
pub const MANIFEST: &str = "manifest.json";

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
}

/// What a file of the backup holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Volume,
    Database,
}

/// One file of the backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the backup directory, e.g. `postgres-data.tar.zst`.
    pub name: String,
    pub kind: FileKind,
    /// Size in bytes of the (compressed) file.
    pub size: u64,
    /// Lower-case hex sha256 of the file.
    pub sha256: String,
    /// The volume or the dump's name.
    #[serde(default)]
    pub source: String,
    /// The volume's options at backup time (to recreate it by hand if needed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// Uncompressed bytes (file data of a volume, SQL of a dump).
    #[serde(default)]
    pub bytes_in: u64,
    /// Codec of the file (dumps are gzip); manifests written before zstd existed are gzip.
    #[serde(default = "Compression::legacy")]
    pub compression: Compression,
    /// For a dump: the volumes of its container, not archived because the dump stands for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub covers: Vec<String>,
}

/// `manifest.json` of a backup directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackupManifest {
    #[serde(with = "secs")]
    pub timestamp: DateTime<Utc>,
    #[serde(rename = "type")]
    pub kind: BackupType,
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub databases: Vec<String>,
    #[serde(default)]
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub duration_ms: u64,
    /// `None` for a manifest of the old script.
    #[serde(default)]
    pub outcome: Option<Outcome>,
    #[serde(default)]
    pub errors: Vec<String>,
    #[serde(default)]
    pub stopped_containers: Vec<String>,
    /// Volumes not archived because a dump stands for them: volume name -> dump name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub covered_by_dump: BTreeMap<String, String>,
    /// The allspark version that wrote it.
    #[serde(default)]
    pub allspark_version: String,
    /// Every volume record at backup time, also `parent=` children and `backup=none` volumes
    /// that have no archive of their own: `allspark dr restore` recreates them all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<RecordEntry>,
}

/// A volume record as the manifest keeps it: enough to create the volume again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordEntry {
    pub name: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl BackupManifest {
    pub fn is_ok(&self) -> bool {
        self.outcome == Some(Outcome::Ok)
    }

    /// The entry of file `name`.
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }

    /// `ok`, `failed` or `unknown` (old script).
    pub fn outcome_str(&self) -> &'static str {
        match self.outcome {
            Some(Outcome::Ok) => "ok",
            Some(Outcome::Failed) => "failed",
            None => "unknown",
        }
    }
}

/// The records to keep in a manifest, by name.
pub fn records_of(
    records: &[std::sync::Arc<crate::core::store::VolumeRecord>],
) -> Vec<RecordEntry> {
    let mut v: Vec<RecordEntry> = records
        .iter()
        .map(|r| RecordEntry {
            name: r.name.clone(),
            options: r.options.clone(),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Read the manifest of backup directory `dir`; `Ok(None)` when there is none (incomplete backup).
pub fn read(dir: &Path) -> anyhow::Result<Option<BackupManifest>> {
    let path = super::manifest_path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    serde_json::from_slice(&bytes).map(Some).with_context(|| {
        format!(
            "{} is not a valid backup manifest; the backup cannot be trusted, use another one",
            path.display()
        )
    })
}

/// Read the manifest of `dir`, refusing an incomplete backup.
pub fn read_required(dir: &Path) -> anyhow::Result<BackupManifest> {
    read(dir)?.with_context(|| {
        format!(
            "{} has no manifest.json: it is not a backup directory, or the backup is incomplete (interrupted or still running); pick a complete one with `allspark backup ls`",
            dir.display()
        )
    })
}

/// Write the manifest of `dir` atomically.
pub fn write(dir: &Path, m: &BackupManifest) -> anyhow::Result<()> {
    let path = super::manifest_path(dir);
    let mut bytes = serde_json::to_vec_pretty(m)?;
    bytes.push(b'\n');
    durable::atomic_write(&path, &bytes, 0o644).with_context(|| {
        format!(
            "cannot write {}; check free space where backups are written",
            path.display()
        )
    })
}

/// `<root>/state/agent/last-backup-<type>.json`, read by the metrics.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LastBackup {
    pub finished_at: DateTime<Utc>,
    pub ok: bool,
    /// The backup directory (absent when the run failed before creating it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

/// Record the end of a run of `kind` atomically.
pub fn write_last(
    layout: &crate::core::layout::Layout,
    kind: BackupType,
    rec: &LastBackup,
) -> anyhow::Result<()> {
    let path = super::last_backup_path(layout, kind);
    durable::ensure_dir(&layout.agent_dir(), 0o700)
        .with_context(|| format!("cannot create {}", layout.agent_dir().display()))?;
    let bytes = serde_json::to_vec_pretty(rec)?;
    durable::atomic_write(&path, &bytes, 0o644)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// RFC 3339 with whole seconds and `Z`, as the old script wrote `timestamp`.
mod secs {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_script_manifest_reads() {
        let old = r#"{
    "timestamp": "2024-01-31T02:00:03Z",
    "type": "daily",
    "volumes": ["builder-data", "target-workspaces"],
    "databases": ["allspark_production"]
}"#;
        let m: BackupManifest = serde_json::from_str(old).unwrap();
        assert_eq!(m.kind, BackupType::Daily);
        assert_eq!(m.outcome, None);
        assert_eq!(m.outcome_str(), "unknown");
        assert!(m.files.is_empty());
    }

    #[test]
    fn timestamp_is_whole_seconds_utc() {
        let m = BackupManifest {
            timestamp: DateTime::parse_from_rfc3339("2024-01-31T02:00:03.123Z")
                .unwrap()
                .with_timezone(&Utc),
            kind: BackupType::Monthly,
            volumes: vec![],
            databases: vec![],
            files: vec![],
            started_at: None,
            finished_at: None,
            duration_ms: 0,
            outcome: Some(Outcome::Ok),
            errors: vec![],
            stopped_containers: vec![],
            covered_by_dump: BTreeMap::new(),
            allspark_version: String::new(),
            records: vec![],
        };
        let v: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(v["timestamp"], "2024-01-31T02:00:03Z");
        assert_eq!(v["type"], "monthly");
        assert_eq!(v["outcome"], "ok");
    }
}
