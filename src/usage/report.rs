//! Per-volume usage reports: every volume measured through its listing cache, the figures Docker shows (`UsageCache`), and the filesystems holding volumes.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{measure_cached_with, MeasureOptions, DEFAULT_THRESHOLD_PERCENT};
use crate::core::layout::{HostView, Layout};
use crate::core::names::VolumeName;
use crate::core::options::{BackupPriority, Class};
use crate::core::status::{self, UsageCache};
use crate::core::store::{Store, VolumeRecord};
use crate::fs::beneath::Missing;
use crate::pool::location::Locate;

/// Where the listing cache of a volume lives: `<root>/state/usage-cache/<volume>.bin`.
pub fn listing_cache_path(layout: &Layout, volume: &str) -> PathBuf {
    layout
        .root
        .join("state")
        .join("usage-cache")
        .join(format!("{volume}.bin"))
}

/// One volume as `allspark usage --json` prints it. Field names are stable; every key is always present.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeUsage {
    /// Volume name.
    pub name: String,
    /// The data directory as this process reaches it.
    pub path: PathBuf,
    /// Space on disk in bytes (`du -s -x --block-size=1`); 0 when `error` is set.
    pub bytes: u64,
    /// Sum of file sizes in bytes.
    pub apparent_bytes: u64,
    /// Distinct non-directory inodes.
    pub files: u64,
    /// Directories, the data directory included.
    pub dirs: u64,
    /// The volume's `size` option in bytes, or null.
    pub capacity: Option<u64>,
    /// Whether `capacity` is a limit writes cannot pass (a btrfs qgroup limit on a btrfs
    /// pool) rather than a figure usage is reported against.
    #[serde(default)]
    pub capacity_enforced: bool,
    /// The pool the volume lives in (`default` for `<root>/volumes`; null for `device=`).
    #[serde(default)]
    pub pool: Option<String>,
    /// `bytes` as a percentage of `capacity` (one decimal), or null without `size`.
    pub percent: Option<f64>,
    /// `class` option: critical, important, temporary.
    pub class: Class,
    /// `backup` option: highest, high, medium, low, none.
    pub backup: BackupPriority,
    /// Number of complete snapshots.
    pub snapshots: u64,
    /// Sum of the file sizes in those snapshots, in bytes.
    pub snapshot_bytes: u64,
    /// Id of the newest snapshot, or null.
    pub last_snapshot: Option<String>,
    /// Time of the newest snapshot (RFC 3339), or null.
    pub last_snapshot_at: Option<DateTime<Utc>>,
    /// Live mount references.
    pub mounted: u32,
    /// `percent` is at or above the alert threshold.
    pub alert: bool,
    /// When the volume was measured.
    pub measured_at: DateTime<Utc>,
    /// Why the volume could not be measured, or null.
    pub error: Option<String>,
}

/// A filesystem holding volumes, from `statvfs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FilesystemUsage {
    /// Mount point, as the host sees it.
    pub mount: PathBuf,
    /// Size in bytes (`f_blocks * f_frsize`).
    pub total_bytes: u64,
    /// Used bytes (`(f_blocks - f_bfree) * f_frsize`).
    pub used_bytes: u64,
    /// Available to unprivileged users (`f_bavail * f_frsize`).
    pub available_bytes: u64,
    /// `used / (used + available)` in percent, one decimal (as `df`'s Use%).
    pub percent: f64,
    /// Volumes whose data lies on it.
    pub volumes: Vec<String>,
    /// `percent` is at or above the alert threshold.
    pub alert: bool,
}

impl FilesystemUsage {
    /// `used / (used + available)`, 0..1, unrounded.
    pub fn used_ratio(&self) -> f64 {
        let denom = self.used_bytes + self.available_bytes;
        if denom == 0 {
            0.0
        } else {
            self.used_bytes as f64 / denom as f64
        }
    }
}

/// Everything one measurement produced (`allspark usage --json` prints this object).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub measured_at: DateTime<Utc>,
    pub threshold_percent: f64,
    pub volumes: Vec<VolumeUsage>,
    pub filesystems: Vec<FilesystemUsage>,
    /// Volume records that could not be read.
    pub record_errors: Vec<String>,
}

/// Settings of [`measure_report`].
#[derive(Clone, Debug)]
pub struct ReportOptions {
    pub threshold_percent: f64,
    pub measure: MeasureOptions,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            threshold_percent: DEFAULT_THRESHOLD_PERCENT,
            measure: MeasureOptions::default(),
        }
    }
}

/// Measure every volume (default options); see [`measure_report`].
pub fn measure_all(layout: &Layout, view: &HostView) -> Vec<VolumeUsage> {
    measure_report(layout, view, &ReportOptions::default()).volumes
}

/// Measure every volume through its listing cache, write each volume's [`UsageCache`]
/// atomically (what `docker volume inspect` shows), and stat the filesystems holding them.
/// Volumes are measured one after another; each walk is itself parallel. A `parent=`
/// child's data lies inside its parent's directory, so the parent's figures include it.
pub fn measure_report(layout: &Layout, view: &HostView, opts: &ReportOptions) -> Report {
    let store = Store::new(layout.clone());
    let (records, bad) = match store.all() {
        Ok(x) => x,
        Err(e) => (Vec::new(), vec![e]),
    };
    let record_errors: Vec<String> = bad.iter().map(|e| e.to_string()).collect();
    for e in &record_errors {
        tracing::warn!("{e}");
    }
    if let Err(e) = crate::fs::durable::ensure_dir(&layout.usage_dir(), 0o700) {
        tracing::warn!(dir = %layout.usage_dir().display(), "cannot create usage directory: {e}");
    }
    let mut volumes = Vec::with_capacity(records.len());
    let mut by_dev: Vec<(u64, PathBuf, Vec<String>)> = Vec::new();
    for rec in &records {
        let path = rec.data.local_path(layout, view);
        let u = measure_volume(layout, view, rec, &path, opts);
        if u.error.is_none() {
            if let Ok(m) = fs::metadata(&path) {
                match by_dev.iter_mut().find(|(d, _, _)| *d == m.dev()) {
                    Some((_, _, names)) => names.push(rec.name.to_string()),
                    None => by_dev.push((m.dev(), path.clone(), vec![rec.name.to_string()])),
                }
            }
        }
        volumes.push(u);
    }
    let filesystems = by_dev
        .into_iter()
        .filter_map(|(dev, path, names)| {
            filesystem_usage(&path, dev, view, names, opts.threshold_percent)
                .map_err(|e| tracing::warn!(path = %path.display(), "statvfs failed: {e}"))
                .ok()
        })
        .collect();
    Report {
        measured_at: Utc::now(),
        threshold_percent: opts.threshold_percent,
        volumes,
        filesystems,
        record_errors,
    }
}

/// Measure one volume now (writing its [`UsageCache`]), for a prompt update after Create or
/// Unmount. `Ok(None)` when the volume does not exist: its cached figures are deleted.
pub fn measure_named(
    layout: &Layout,
    view: &HostView,
    name: &str,
    opts: &ReportOptions,
) -> anyhow::Result<Option<VolumeUsage>> {
    let store = Store::new(layout.clone());
    match store.load(&VolumeName::fixed(name))? {
        Some(rec) => {
            let path = rec.data.local_path(layout, view);
            Ok(Some(measure_volume(layout, view, &rec, &path, opts)))
        }
        None => {
            for f in [
                layout.usage(&VolumeName::fixed(name)),
                listing_cache_path(layout, name),
            ] {
                if let Err(e) = fs::remove_file(&f) {
                    if e.kind() != io::ErrorKind::NotFound {
                        tracing::warn!(path = %f.display(), %e, "cannot delete the figures of a removed volume");
                    }
                }
            }
            Ok(None)
        }
    }
}

fn measure_volume(
    layout: &Layout,
    view: &HostView,
    rec: &VolumeRecord,
    path: &Path,
    opts: &ReportOptions,
) -> VolumeUsage {
    let mut v = unmeasured(layout, view, rec, path);
    let cache_file = listing_cache_path(layout, &rec.name);
    // The root is opened without following symlinks (a `parent=` child swapped for a link to
    // a host directory is refused, not measured) and walked through its descriptor.
    let root = match rec.data.open(layout, view, Missing::Refuse) {
        Ok(o) => o.dir,
        Err(e) => {
            tracing::warn!(volume = %rec.name, "cannot measure volume: {e}");
            v.error = Some(format!("cannot measure: {e}"));
            return v;
        }
    };
    match measure_cached_with(&root.proc_path(), &cache_file, &opts.measure) {
        Ok(w) => {
            if w.errors > 0 {
                tracing::warn!(volume = %rec.name, errors = w.errors, first = ?w.first_error,
                    "some entries could not be read; the figures leave them out");
            }
            v.bytes = w.usage.bytes;
            v.apparent_bytes = w.usage.apparent_bytes;
            v.files = w.usage.files;
            v.dirs = w.usage.dirs;
            v.measured_at = Utc::now();
            v.percent = status::percent(v.bytes, v.capacity);
            v.alert = v.percent.is_some_and(|p| p >= opts.threshold_percent);
            save_usage_cache(layout, &rec.name, &v);
        }
        Err(e) => {
            tracing::warn!(volume = %rec.name, path = %path.display(), "cannot measure volume: {e}");
            v.error = Some(format!("cannot measure {}: {e}", path.display()));
        }
    }
    v
}

/// A volume's figures from its record and snapshots alone, before its tree is measured (sizes 0).
fn unmeasured(layout: &Layout, view: &HostView, rec: &VolumeRecord, path: &Path) -> VolumeUsage {
    let ids = crate::pool::cow::all_ids(layout, view, rec, status::snapshot_ids(layout, &rec.name));
    let snapshot_bytes = ids
        .iter()
        .map(|id| super::tree_apparent_size(&layout.volume_snapshots(&rec.name).join(id)))
        .sum();
    let last = ids.last().cloned();
    VolumeUsage {
        name: rec.name.to_string(),
        path: path.to_path_buf(),
        bytes: 0,
        apparent_bytes: 0,
        files: 0,
        dirs: 0,
        capacity: rec.spec.size,
        capacity_enforced: rec.spec.size.is_some()
            && crate::pool::capacity::capacity(layout, view, rec).0,
        pool: match &rec.data {
            crate::core::store::DataLocation::Host { .. } => None,
            d => Some(d.pool().unwrap_or(crate::pool::DEFAULT_POOL).to_string()),
        },
        percent: None,
        class: rec.spec.class,
        backup: rec.spec.backup,
        snapshots: ids.len() as u64,
        snapshot_bytes,
        last_snapshot_at: last.as_ref().map(|id| id.time()),
        last_snapshot: last.map(String::from),
        mounted: rec.mount_count(),
        alert: false,
        measured_at: Utc::now(),
        error: None,
    }
}

/// Write the figures Docker shows ([`UsageCache`]) for a volume just measured.
fn save_usage_cache(layout: &Layout, name: &VolumeName, v: &VolumeUsage) {
    let cache = UsageCache {
        bytes: v.bytes,
        files: v.files,
        measured_at: v.measured_at,
    };
    let bytes = serde_json::to_vec(&cache).expect("usage serializes");
    if let Err(e) = crate::fs::durable::atomic_write(&layout.usage(name), &bytes, 0o600) {
        tracing::warn!(volume = %name, "cannot write usage cache: {e}");
    }
}

/// The topmost directory above `path` on the same device: the mount point holding it.
fn mount_point_of(path: &Path, dev: u64) -> PathBuf {
    let mut p = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    while let Some(parent) = p.parent() {
        match fs::metadata(parent) {
            Ok(m) if m.dev() == dev => p = parent.to_path_buf(),
            _ => break,
        }
    }
    p
}

fn filesystem_usage(
    path: &Path,
    dev: u64,
    view: &HostView,
    volumes: Vec<String>,
    threshold: f64,
) -> nix::Result<FilesystemUsage> {
    let local = mount_point_of(path, dev);
    let s = nix::sys::statvfs::statvfs(&local)?;
    let frsize = s.fragment_size() as u64;
    let total = s.blocks() as u64 * frsize;
    let used = (s.blocks() as u64).saturating_sub(s.blocks_free() as u64) * frsize;
    let avail = s.blocks_available() as u64 * frsize;
    // Report the host's path when this process sees the host under a prefix.
    let mount = match local.strip_prefix(&view.prefix) {
        Ok(rel) if !view.prefix.as_os_str().is_empty() => Path::new("/").join(rel),
        _ => local,
    };
    let mut f = FilesystemUsage {
        mount,
        total_bytes: total,
        used_bytes: used,
        available_bytes: avail,
        percent: 0.0,
        volumes,
        alert: false,
    };
    f.percent = (f.used_ratio() * 1000.0).round() / 10.0;
    f.alert = f.percent >= threshold;
    Ok(f)
}
