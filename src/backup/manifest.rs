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
//! | `files[].producer` | for a dump: `{container, image, compose_project, compose_service}` of the container that wrote it; restore feeds the dump only to the same one (see [`Producer`]) |
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
pub(crate) const MANIFEST: &str = "manifest.json";

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
    Ok,
    Failed,
}

/// What a file of the backup holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FileKind {
    Volume,
    Database,
}

/// One file of the backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileEntry {
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
    /// For a dump: the container that wrote it (absent in manifests written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<Producer>,
}

/// Compose's project label.
pub(crate) const COMPOSE_PROJECT: &str = "com.docker.compose.project";
/// Compose's service label.
pub(crate) const COMPOSE_SERVICE: &str = "com.docker.compose.service";

/// The identity of the container a dump came from.
///
/// A restore feeds a dump only to a container with the same identity: the
/// same compose project and service when the producer had both labels (the
/// container may have been recreated, renamed or upgraded meanwhile), else
/// the same container name. The image is recorded for the operator, not
/// compared (a database is restored into a newer image on purpose).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Producer {
    /// The container's name at backup time.
    pub container: String,
    /// Its image, as Docker listed it.
    #[serde(default)]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_service: Option<String>,
}

impl Producer {
    /// The identity of container `c`.
    pub(crate) fn of(c: &crate::docker::ContainerInfo) -> Producer {
        let label = |k: &str| c.labels.get(k).filter(|v| !v.is_empty()).cloned();
        Producer {
            container: c.name.clone(),
            image: c.image.clone(),
            compose_project: label(COMPOSE_PROJECT),
            compose_service: label(COMPOSE_SERVICE),
        }
    }

    /// The compose project and service, when both are known.
    fn compose(&self) -> Option<(&str, &str)> {
        Some((
            self.compose_project.as_deref()?,
            self.compose_service.as_deref()?,
        ))
    }

    /// `compose service db of project shop (container shop-db-1, image postgres:16)`, or `container db (image …)`.
    pub(crate) fn describe(&self) -> String {
        let image = if self.image.is_empty() {
            String::new()
        } else {
            format!(", image {}", self.image)
        };
        match self.compose() {
            Some((p, s)) => format!(
                "compose service {s} of project {p} (container {}{image})",
                self.container
            ),
            None => format!("container {}{image}", self.container),
        }
    }

    /// `Ok` when `other` is the same producer; else the mismatch, in words.
    pub(crate) fn matches(&self, other: &Producer) -> Result<(), String> {
        match (self.compose(), other.compose()) {
            (Some(a), Some(b)) if a == b => Ok(()),
            (Some(_), _) => Err(format!(
                "the dump was written by {}, but the restore container is {}: not the same compose project and service",
                self.describe(),
                other.describe()
            )),
            (None, _) if self.container == other.container => Ok(()),
            (None, _) => Err(format!(
                "the dump was written by {}, but the restore container is {}: not the same container name",
                self.describe(),
                other.describe()
            )),
        }
    }
}

/// `manifest.json` of a backup directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct BackupManifest {
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
pub(crate) struct RecordEntry {
    pub name: crate::core::names::VolumeName,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl BackupManifest {
    pub(crate) fn is_ok(&self) -> bool {
        self.outcome == Some(Outcome::Ok)
    }

    /// The entry of file `name`.
    pub(crate) fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }

    /// `ok`, `failed` or `unknown` (old script).
    pub(crate) fn outcome_str(&self) -> &'static str {
        match self.outcome {
            Some(Outcome::Ok) => "ok",
            Some(Outcome::Failed) => "failed",
            None => "unknown",
        }
    }
}

/// The records to keep in a manifest, by name.
pub(crate) fn records_of(
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
pub(crate) fn read(dir: &Path) -> anyhow::Result<Option<BackupManifest>> {
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
pub(crate) fn read_required(dir: &Path) -> anyhow::Result<BackupManifest> {
    read(dir)?.with_context(|| {
        format!(
            "{} has no manifest.json: it is not a backup directory, or the backup is incomplete (interrupted or still running); pick a complete one with `allspark backup ls`",
            dir.display()
        )
    })
}

/// Write the manifest of `dir` atomically.
pub(crate) fn write(dir: &Path, m: &BackupManifest) -> anyhow::Result<()> {
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
pub(crate) struct LastBackup {
    pub finished_at: DateTime<Utc>,
    pub ok: bool,
    /// The backup directory (absent when the run failed before creating it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

/// Record the end of a run of `kind` atomically.
pub(crate) fn write_last(
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

    pub(super) fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
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

    fn producer(name: &str, compose: Option<(&str, &str)>) -> Producer {
        Producer {
            container: name.into(),
            image: "busybox".into(),
            compose_project: compose.map(|c| c.0.to_string()),
            compose_service: compose.map(|c| c.1.to_string()),
        }
    }

    #[test]
    fn producer_identity_matching() {
        let db = producer("shop-db-1", Some(("shop", "db")));
        // Recreated (other name, newer image): the same service.
        let mut recreated = producer("shop-db-2", Some(("shop", "db")));
        recreated.image = "postgres:17".into();
        assert_eq!(db.matches(&recreated), Ok(()));
        // Another service, another project, or no compose labels at all: refused, naming both.
        for other in [
            producer("shop-db-1", Some(("shop", "evil"))),
            producer("shop-db-1", Some(("other", "db"))),
            producer("shop-db-1", None),
        ] {
            let e = db.matches(&other).unwrap_err();
            assert!(
                e.contains("compose service db of project shop") && e.contains(&other.container),
                "{e}"
            );
        }
        // Plain containers: by name.
        let plain = producer("victim", None);
        assert_eq!(plain.matches(&producer("victim", None)), Ok(()));
        assert_eq!(plain.matches(&producer("victim", Some(("p", "s")))), Ok(()));
        let e = plain.matches(&producer("attacker", None)).unwrap_err();
        assert!(
            e.contains("container victim") && e.contains("container attacker"),
            "{e}"
        );
        // A producer with only one compose label is matched by name.
        let mut half = producer("x", None);
        half.compose_project = Some("p".into());
        assert!(half.matches(&producer("y", Some(("p", "s")))).is_err());
        assert!(half.matches(&producer("x", Some(("p", "s")))).is_ok());
    }

    #[test]
    fn a_dump_entry_without_producer_reads() {
        let e: FileEntry = serde_json::from_str(
            r#"{"name":"db.sql.gz","kind":"database","size":1,"sha256":"00","source":"db"}"#,
        )
        .unwrap();
        assert_eq!(e.producer, None);
        let v = serde_json::to_value(&e).unwrap();
        assert!(v.get("producer").is_none());
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
