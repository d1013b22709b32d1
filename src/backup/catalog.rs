//! Listing the backups under a backup root: `<root>/<type>/<YYYYmmdd_HHMMSS>/`, complete or not.
//!
//! `allspark backup ls --json` prints an array of [`BackupEntry`] with the
//! stable fields `type`, `dir`, `name`, `timestamp`, `complete`, `outcome`
//! (`ok`, `failed`, `unknown` for the old script's manifests, `incomplete`
//! without a manifest, `unreadable` with a broken one), `size` (bytes of all
//! files in the directory), `files`, `errors`.

use std::fs;
use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;
use serde::Serialize;

use super::manifest::{self, BackupManifest};
use super::{parse_dir_name, BackupType, Settings};

/// One backup directory.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct BackupEntry {
    #[serde(rename = "type")]
    pub kind: BackupType,
    pub dir: PathBuf,
    /// The directory's name (`YYYYmmdd_HHMMSS`, local time).
    pub name: String,
    /// When it was taken: the manifest's timestamp, else the name's local time.
    pub timestamp: String,
    /// The name's local time (what retention counts from).
    #[serde(skip)]
    pub stamp: NaiveDateTime,
    /// Has a readable manifest.
    pub complete: bool,
    pub outcome: String,
    pub size: u64,
    pub files: usize,
    pub errors: Vec<String>,
    #[serde(skip)]
    pub manifest: Option<BackupManifest>,
    /// A manifest exists but cannot be read.
    #[serde(skip)]
    pub unreadable: bool,
}

impl BackupEntry {
    /// Complete and its outcome is `ok`.
    pub(crate) fn is_ok(&self) -> bool {
        self.manifest.as_ref().is_some_and(|m| m.is_ok())
    }
}

/// Every backup directory of every type, oldest first within a type (types in order daily, weekly, monthly).
/// Names that are not `YYYYmmdd_HHMMSS` (scratch dirs, stray files) are skipped.
pub(crate) fn list(settings: &Settings) -> anyhow::Result<Vec<BackupEntry>> {
    let mut out = Vec::new();
    for kind in BackupType::ALL {
        out.extend(list_type(settings, kind)?);
    }
    Ok(out)
}

/// The backup directories of one type, oldest first.
pub(crate) fn list_type(settings: &Settings, kind: BackupType) -> anyhow::Result<Vec<BackupEntry>> {
    let dir = settings.type_dir(kind);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(anyhow::anyhow!(
                "cannot list {}: {e}; check --backup-root and its permissions",
                dir.display()
            ))
        }
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Some(stamp) = parse_dir_name(&name) else {
            continue;
        };
        if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        out.push(entry(kind, &e.path(), &name, stamp));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn entry(kind: BackupType, dir: &Path, name: &str, stamp: NaiveDateTime) -> BackupEntry {
    let (manifest, unreadable, err) = match manifest::read(dir) {
        Ok(m) => (m, false, None),
        Err(e) => (None, true, Some(format!("{e:#}"))),
    };
    let size = dir_size(dir);
    let timestamp = match &manifest {
        Some(m) => m
            .timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        None => stamp.format("%Y-%m-%dT%H:%M:%S").to_string(),
    };
    let outcome = match (&manifest, unreadable) {
        (Some(m), _) => m.outcome_str().to_string(),
        (None, true) => "unreadable".to_string(),
        (None, false) => "incomplete".to_string(),
    };
    let mut errors = manifest
        .as_ref()
        .map(|m| m.errors.clone())
        .unwrap_or_default();
    errors.extend(err);
    BackupEntry {
        kind,
        dir: dir.to_path_buf(),
        name: name.to_string(),
        timestamp,
        stamp,
        complete: manifest.is_some(),
        outcome,
        size,
        files: manifest.as_ref().map(|m| m.files.len()).unwrap_or(0),
        errors,
        manifest,
        unreadable,
    }
}

/// Total size of the regular files directly in `dir`.
fn dir_size(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
