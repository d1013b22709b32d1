//! The typed volume options (`VolumeSpec` and its enums): what each value means, how it is written back (`as_str`), and its defaults.

use serde::{Deserialize, Serialize};

use crate::core::names::VolumeName;
use crate::core::snapshot_id::SnapshotId;

/// When the agent snapshots a volume on its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotPolicy {
    #[default]
    None,
    OnUnmount,
    OnMount,
    OnBoth,
}

impl SnapshotPolicy {
    /// The option value, as users write it.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotPolicy::None => "none",
            SnapshotPolicy::OnUnmount => "on-unmount",
            SnapshotPolicy::OnMount => "on-mount",
            SnapshotPolicy::OnBoth => "on-both",
        }
    }
    pub fn on_mount(self) -> bool {
        matches!(self, SnapshotPolicy::OnMount | SnapshotPolicy::OnBoth)
    }
    pub fn on_unmount(self) -> bool {
        matches!(self, SnapshotPolicy::OnUnmount | SnapshotPolicy::OnBoth)
    }
}

/// Priority in scheduled backups; `None` is never backed up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupPriority {
    Highest,
    High,
    #[default]
    Medium,
    Low,
    None,
}

impl BackupPriority {
    /// The option value, as users write it.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupPriority::Highest => "highest",
            BackupPriority::High => "high",
            BackupPriority::Medium => "medium",
            BackupPriority::Low => "low",
            BackupPriority::None => "none",
        }
    }
}

/// Persistence class, shown in usage and inspect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Critical,
    #[default]
    Important,
    Temporary,
}

impl Class {
    /// The option value, as users write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Critical => "critical",
            Class::Important => "important",
            Class::Temporary => "temporary",
        }
    }
}

/// What of a volume goes to the off-site remote (`offsite=`); the default follows `class`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Offsite {
    /// Only inside backups (the default of `important` and `temporary` volumes).
    Backups,
    /// Backups, and every completed snapshot chain (the default of `critical` volumes).
    Snapshots,
}

impl Offsite {
    /// Accepted values, for refusals.
    pub const ACCEPTED: &'static str =
        "accepted: backups, snapshots (backups and every snapshot chain)";

    /// The option value, as users write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Offsite::Backups => "backups",
            Offsite::Snapshots => "snapshots",
        }
    }

    /// The default of a class: `critical` volumes send their snapshot chains off-site too.
    pub fn default_for(class: Class) -> Offsite {
        match class {
            Class::Critical => Offsite::Snapshots,
            Class::Important | Class::Temporary => Offsite::Backups,
        }
    }
}

/// Codec of snapshot and backup archives: both are standard tar streams GNU tar reads
/// (`tar --zstd -xf`, `tar -xzf`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Independent zstd frames (`.tar.zst`): the default for new snapshot chains and backups.
    #[default]
    Zstd,
    /// Independent gzip members (`.tar.gz`): what every archive before zstd used.
    Gzip,
}

impl Compression {
    /// Accepted values, for refusals and help texts.
    pub const ACCEPTED: &'static str = "accepted: zstd, gzip";

    /// The option value: `zstd` or `gzip`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
        }
    }

    /// File name suffix of an archive: `tar.zst` or `tar.gz`.
    pub fn archive_suffix(self) -> &'static str {
        match self {
            Compression::Zstd => "tar.zst",
            Compression::Gzip => "tar.gz",
        }
    }

    /// What archives written before this setting existed use (gzip).
    pub fn legacy() -> Compression {
        Compression::Gzip
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "zstd" => Ok(Compression::Zstd),
            "gzip" => Ok(Compression::Gzip),
            _ => Err(format!(
                "unknown compression {s:?}; {}",
                Compression::ACCEPTED
            )),
        }
    }
}

/// Retention of automatic snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keep {
    pub last: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

impl Default for Keep {
    fn default() -> Self {
        Keep {
            last: 10,
            daily: 0,
            weekly: 0,
            monthly: 0,
        }
    }
}

/// Flags of the bind mount made for every mount of the volume.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountFlags {
    pub recursive: bool,
    pub readonly: bool,
    pub noatime: bool,
    pub nodiratime: bool,
    pub relatime: bool,
    pub strictatime: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
}

/// Where a new volume's first content comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Template {
    Volume { volume: VolumeName },
    Snapshot { volume: VolumeName, id: SnapshotId },
}

/// Everything a volume was created with, typed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// Host path backing the volume (as the user wrote it, before resolution).
    pub device: Option<String>,
    pub flags: MountFlags,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
    pub snapshot: SnapshotPolicy,
    pub keep: Keep,
    pub backup: BackupPriority,
    pub class: Class,
    /// Expected capacity in bytes.
    pub size: Option<u64>,
    pub template: Option<Template>,
    pub parent: Option<VolumeName>,
    /// Codec of new snapshot chains and backups of this volume; `None`: the agent's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// The pool the volume lives in; `None` is the default pool (`<root>/volumes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// `offsite=` as given; `None`: the default of the class ([`VolumeSpec::offsite`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsite: Option<Offsite>,
    /// `fs=`: the volume has a filesystem of its own, `size` big (its own pool, see
    /// `crate::pool::own`; `pool` then names that pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<OwnFs>,
}

/// The filesystem of a volume's own image (`fs=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnFs {
    Btrfs,
}

impl OwnFs {
    pub const ACCEPTED: &'static str =
        "accepted: btrfs (the volume gets a filesystem of its own, size= big, in an image file: a write past it fails with ENOSPC)";
    /// The smallest btrfs image allspark makes (a `btrfs-image` pool's or a volume's own):
    /// `mkfs.btrfs` formats it with room to spare.
    pub const MIN_SIZE: u64 = 256 << 20;
}

impl std::fmt::Display for OwnFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OwnFs::Btrfs => "btrfs",
        })
    }
}

impl VolumeSpec {
    /// What of this volume goes off-site: its `offsite=` option, else its class's default.
    pub fn offsite(&self) -> Offsite {
        self.offsite
            .unwrap_or_else(|| Offsite::default_for(self.class))
    }
}
