//! Scheduled backups (replacing the platform's cron `backup.sh` and `restore.sh`): settings, types and the pieces below.
//!
//! A backup is a directory `<backup-root>/<type>/<YYYYmmdd_HHMMSS>/` (local
//! time, like the old script) holding
//!
//! * one `<volume>.tar.zst` (or `<volume>.tar.gz`: the volume's `compression`
//!   option, else the `--compression` setting) per allspark volume whose
//!   `backup` priority is not `none` and whose class is not `temporary`
//!   (unless asked), highest priority first: a full, standard archive
//!   (`tar --zstd -xf` or `tar xzf` reads it). A volume mounted by a running
//!   container that carries a dump label is **not** archived: its dump stands
//!   for it (see [`run`] for why);
//! * one `<name>.sql.gz` per database dump: the stdout of the command in the
//!   label `allspark.backup.dump=<command>` of a running container, gzipped;
//! * `manifest.json`, written last and atomically ([`manifest`]). A
//!   directory without it is an incomplete backup (a crash, a run still going).
//!
//! `hourly` backups hold the dumps only (no volume archive, no container stopped).
//!
//! Modules: [`run`] (one backup), [`dump`] (Docker exec of dump, restore and
//! maintenance commands), [`quiesce`] (containers stopped for a backup and
//! always started again), [`catalog`] (listing), [`retention`] (pruning by
//! age), [`verify`] (checksums and test extraction) and [`restore`].
//!
//! Container labels:
//!
//! | label | meaning |
//! |---|---|
//! | `allspark.backup.dump=<command>` | `sh -c <command>` is exec'd in the running container; its stdout is the dump, which replaces the file archive of the container's volumes |
//! | `allspark.backup.name=<name>` | the dump's file name (`<name>.sql.gz`); default the container name |
//! | `allspark.backup.stop=true` | stopped while a daily, weekly or monthly backup archives the volumes, always started again |
//! | `allspark.restore.exec=<command>` | `sh -c <command>` gets the gunzipped dump of the same name on stdin at restore; it must exit non-zero on any error |
//! | `allspark.restore.wait=<command>` | run until it exits 0 (at most [`restore::READY_TIMEOUT`]) before the restore command, e.g. `pg_isready -h 127.0.0.1 -U postgres` |
//! | `allspark.maintenance.exec=<command>` | `sh -c <command>` is exec'd by the agent on the label's schedule |
//! | `allspark.maintenance.schedule=<cron>` | when: a 5-field cron expression, local time |

pub(crate) mod catalog;
pub(crate) mod dump;
pub(crate) mod feed;
pub(crate) mod manifest;
pub(crate) mod quiesce;
pub(crate) mod restore;
pub(crate) mod retention;
pub(crate) mod run;
pub(crate) mod verify;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};

/// Label: the dump command of a database container.
pub(crate) const LABEL_DUMP: &str = "allspark.backup.dump";
/// Label: the name of the dump (file `<name>.sql.gz`).
pub(crate) const LABEL_NAME: &str = "allspark.backup.name";
/// Label: stop this container while a backup runs.
pub(crate) const LABEL_STOP: &str = "allspark.backup.stop";
/// Label: the command that reads a dump on stdin at restore.
pub(crate) const LABEL_RESTORE: &str = "allspark.restore.exec";
/// Label: a readiness command run until it succeeds before the restore command.
pub(crate) const LABEL_RESTORE_WAIT: &str = "allspark.restore.wait";
/// Label: a maintenance command the agent runs on a schedule.
pub(crate) const LABEL_MAINTENANCE_EXEC: &str = "allspark.maintenance.exec";
/// Label: the cron schedule of the maintenance command.
pub(crate) const LABEL_MAINTENANCE_SCHEDULE: &str = "allspark.maintenance.schedule";

/// Format of a backup directory's name (local time).
pub(crate) const DIR_FORMAT: &str = "%Y%m%d_%H%M%S";

/// The four kinds of scheduled backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupType {
    /// Database dumps only.
    Hourly,
    Daily,
    Weekly,
    Monthly,
}

impl BackupType {
    pub const ALL: [BackupType; 4] = [
        BackupType::Hourly,
        BackupType::Daily,
        BackupType::Weekly,
        BackupType::Monthly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackupType::Hourly => "hourly",
            BackupType::Daily => "daily",
            BackupType::Weekly => "weekly",
            BackupType::Monthly => "monthly",
        }
    }

    /// Only database dumps: no volume archive, no container stopped.
    pub fn dumps_only(self) -> bool {
        self == BackupType::Hourly
    }
}

impl fmt::Display for BackupType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackupType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hourly" => Ok(BackupType::Hourly),
            "daily" => Ok(BackupType::Daily),
            "weekly" => Ok(BackupType::Weekly),
            "monthly" => Ok(BackupType::Monthly),
            _ => Err(format!(
                "unknown backup type {s:?}; accepted: hourly, daily, weekly, monthly"
            )),
        }
    }
}

/// How long backups of each type are kept: hourly ones by elapsed hours, the others by calendar days.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keep {
    pub hourly_hours: u32,
    pub daily_days: u32,
    pub weekly_days: u32,
    pub monthly_days: u32,
}

impl Default for Keep {
    fn default() -> Self {
        Keep {
            hourly_hours: 48,
            daily_days: 7,
            weekly_days: 30,
            monthly_days: 365,
        }
    }
}

/// The retention window of one type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// Removed once this many hours old (hourly backups).
    Hours(u32),
    /// Removed once this many calendar days old.
    Days(u32),
}

impl Keep {
    pub fn of(&self, kind: BackupType) -> Window {
        match kind {
            BackupType::Hourly => Window::Hours(self.hourly_hours),
            BackupType::Daily => Window::Days(self.daily_days),
            BackupType::Weekly => Window::Days(self.weekly_days),
            BackupType::Monthly => Window::Days(self.monthly_days),
        }
    }
}

/// Restrict which containers take part (dumps, stops, restore hooks) to those carrying `key=value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelFilter {
    pub key: String,
    pub value: String,
}

impl FromStr for LabelFilter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok(LabelFilter {
                key: k.to_string(),
                value: v.to_string(),
            }),
            _ => Err(format!(
                "invalid container label filter {s:?}; write KEY=VALUE, e.g. com.docker.compose.project=allspark"
            )),
        }
    }
}

impl fmt::Display for LabelFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// Settings shared by run, prune, ls, verify and restore.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `<backup-root>` (`--backup-root` / `ALLSPARK_BACKUP_ROOT`).
    pub backup_root: PathBuf,
    pub keep: Keep,
    /// Back up `class=temporary` volumes too.
    pub include_temporary: bool,
    /// Only containers with this label take part.
    pub container_label: Option<LabelFilter>,
}

impl Settings {
    pub fn new(backup_root: impl Into<PathBuf>) -> Settings {
        Settings {
            backup_root: backup_root.into(),
            keep: Keep::default(),
            include_temporary: false,
            container_label: None,
        }
    }

    /// `<backup-root>/<type>`.
    pub fn type_dir(&self, kind: BackupType) -> PathBuf {
        self.backup_root.join(kind.as_str())
    }
}

/// The time encoded in a backup directory's name, if it is one.
pub(crate) fn parse_dir_name(name: &str) -> Option<NaiveDateTime> {
    if name.len() != 15 {
        return None;
    }
    NaiveDateTime::parse_from_str(name, DIR_FORMAT).ok()
}

/// The name of a backup directory for a (local) time.
pub(crate) fn dir_name(t: NaiveDateTime) -> String {
    t.format(DIR_FORMAT).to_string()
}

/// The `manifest.json` of a backup directory.
pub(crate) fn manifest_path(dir: &Path) -> PathBuf {
    dir.join(manifest::MANIFEST)
}

/// Where the last run of `kind` is recorded for metrics.
pub(crate) fn last_backup_path(layout: &crate::core::layout::Layout, kind: BackupType) -> PathBuf {
    layout.agent_dir().join(format!("last-backup-{kind}.json"))
}

/// Lock serialising backups and restores on one state root (`<root>/state/agent/backup.lock`).
pub(crate) fn lock_path(layout: &crate::core::layout::Layout) -> PathBuf {
    layout.agent_dir().join("backup.lock")
}

/// Take the backup lock, waiting (and saying so) when another backup or restore holds it.
pub(crate) fn take_lock(
    layout: &crate::core::layout::Layout,
) -> anyhow::Result<crate::fs::durable::FileLock> {
    use crate::fs::durable::{ensure_dir, FileLock, LockKind};
    use anyhow::Context;
    let dir = layout.agent_dir();
    ensure_dir(&dir, 0o700)
        .with_context(|| format!("cannot create {}; check --root", dir.display()))?;
    let path = lock_path(layout);
    if let Some(l) = FileLock::try_acquire(&path, LockKind::Exclusive)
        .with_context(|| format!("cannot open {}", path.display()))?
    {
        return Ok(l);
    }
    tracing::warn!(lock = %path.display(), "another backup or restore is running; waiting for it to finish");
    FileLock::acquire(&path, LockKind::Exclusive)
        .with_context(|| format!("cannot take {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_names_roundtrip_and_junk_is_ignored() {
        let t = NaiveDateTime::parse_from_str("20240131_020003", DIR_FORMAT).unwrap();
        assert_eq!(dir_name(t), "20240131_020003");
        assert_eq!(parse_dir_name("20240131_020003"), Some(t));
        for junk in [
            ".verify-1",
            "20240131",
            "20241331_020003",
            "x20240131_02000",
            "",
        ] {
            assert_eq!(parse_dir_name(junk), None, "{junk}");
        }
    }

    #[test]
    fn types_and_filters_parse() {
        assert_eq!("weekly".parse::<BackupType>(), Ok(BackupType::Weekly));
        assert_eq!("hourly".parse::<BackupType>(), Ok(BackupType::Hourly));
        assert!("yearly".parse::<BackupType>().is_err());
        assert!(BackupType::Hourly.dumps_only() && !BackupType::Daily.dumps_only());
        let f: LabelFilter = "a.b=c=d".parse().unwrap();
        assert_eq!((f.key.as_str(), f.value.as_str()), ("a.b", "c=d"));
        assert!("=x".parse::<LabelFilter>().is_err());
        assert!("nolabel".parse::<LabelFilter>().is_err());
    }
}
