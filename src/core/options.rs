//! `driver_opts` -> typed `VolumeSpec`, with every refusal a user can act on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::names::VolumeName;
use crate::core::snapshot_id::SnapshotId;

/// Keys accepted in `driver_opts` / `docker volume create -o`.
pub const KEYS: &[&str] = &[
    "type",
    "device",
    "o",
    "uid",
    "gid",
    "mode",
    "snapshot",
    "keep",
    "backup",
    "class",
    "size",
    "template",
    "parent",
    "compression",
    "pool",
    "offsite",
];

/// Flags accepted in `o`.
pub const MOUNT_FLAGS: &[&str] = &[
    "bind",
    "rbind",
    "ro",
    "rw",
    "noatime",
    "nodiratime",
    "relatime",
    "strictatime",
    "nosuid",
    "nodev",
    "noexec",
];

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
}

impl VolumeSpec {
    /// What of this volume goes off-site: its `offsite=` option, else its class's default.
    pub fn offsite(&self) -> Offsite {
        self.offsite
            .unwrap_or_else(|| Offsite::default_for(self.class))
    }
}

/// A refused option: names the key, the value and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid option {key}={value:?}: {accepted}")]
pub struct OptionError {
    pub key: String,
    pub value: String,
    pub accepted: String,
}

fn refuse(key: &str, value: &str, accepted: impl Into<String>) -> OptionError {
    OptionError {
        key: key.to_string(),
        value: value.to_string(),
        accepted: accepted.into(),
    }
}

/// Longest accepted option value, in bytes.
pub const MAX_VALUE_LEN: usize = 4096;

/// Parse `driver_opts` into a spec. `None` (Docker's `Opts: null`) means all defaults.
pub fn parse(opts: Option<&BTreeMap<String, String>>) -> Result<VolumeSpec, OptionError> {
    let mut spec = VolumeSpec::default();
    let Some(opts) = opts else { return Ok(spec) };
    let mut type_seen = None;
    for (key, value) in opts {
        if value.len() > MAX_VALUE_LEN || value.contains('\0') || value.contains('\n') {
            return Err(refuse(
                key,
                &value.chars().take(64).collect::<String>(),
                format!("values must be at most {MAX_VALUE_LEN} bytes without NUL or newline"),
            ));
        }
        match key.as_str() {
            "type" => {
                if !matches!(value.as_str(), "none" | "bind" | "") {
                    return Err(refuse(
                        key,
                        value,
                        "accepted: none, bind (a host directory given by device=)",
                    ));
                }
                type_seen = Some(value.clone());
            }
            "device" => spec.device = Some(parse_device(value)?),
            "o" => spec.flags = parse_flags(value)?,
            "uid" => spec.uid = Some(parse_id(key, value)?),
            "gid" => spec.gid = Some(parse_id(key, value)?),
            "mode" => spec.mode = Some(parse_mode(value)?),
            "snapshot" => spec.snapshot = parse_snapshot(value)?,
            "keep" => spec.keep = parse_keep(value)?,
            "backup" => spec.backup = parse_backup(value)?,
            "class" => spec.class = parse_class(value)?,
            "size" => spec.size = Some(parse_size(value).map_err(|a| refuse(key, value, a))?),
            "template" => spec.template = Some(parse_template(value)?),
            "parent" => {
                spec.parent = Some(
                    VolumeName::parse(value)
                        .map_err(|e| refuse(key, value, format!("a volume name: {e}")))?,
                );
            }
            "compression" => {
                spec.compression = Some(
                    value
                        .parse()
                        .map_err(|_| refuse(key, value, Compression::ACCEPTED))?,
                )
            }
            "offsite" => {
                spec.offsite = Some(match value.as_str() {
                    "backups" => Offsite::Backups,
                    "snapshots" => Offsite::Snapshots,
                    _ => return Err(refuse(key, value, Offsite::ACCEPTED)),
                })
            }
            "pool" => {
                VolumeName::parse(value)
                    .map_err(|e| refuse(key, value, format!("a pool name: {e}")))?;
                // `pool=default` is the same volume as no pool at all.
                spec.pool = (value != "default").then(|| value.clone());
            }
            _ => {
                return Err(refuse(
                    key,
                    value,
                    format!("unknown option {key:?}; accepted keys: {}", KEYS.join(", ")),
                ))
            }
        }
    }
    if let Some(t) = type_seen {
        if !t.is_empty() && spec.device.is_none() {
            return Err(refuse(
                "type",
                &t,
                "type=none/bind needs device=<absolute host path>",
            ));
        }
    }
    if spec.device.is_some() && spec.parent.is_some() {
        return Err(refuse(
            "parent",
            spec.parent.as_deref().unwrap_or_default(),
            "parent= and device= cannot be combined",
        ));
    }
    if let Some(pool) = &spec.pool {
        if spec.device.is_some() || spec.parent.is_some() {
            return Err(refuse(
                "pool",
                pool,
                "pool= cannot be combined with device= (a host directory) or parent= (a child lives in its parent's pool)",
            ));
        }
    }
    Ok(spec)
}

fn parse_device(value: &str) -> Result<String, OptionError> {
    if !value.starts_with('/') {
        return Err(refuse(
            "device",
            value,
            "an absolute host path, e.g. /var/lib/allspark/postgres",
        ));
    }
    if value.split('/').any(|c| c == "..") {
        return Err(refuse(
            "device",
            value,
            "an absolute host path without '..' components",
        ));
    }
    Ok(value.to_string())
}

/// Parse the `o` list of mount flags.
pub fn parse_flags(value: &str) -> Result<MountFlags, OptionError> {
    let mut f = MountFlags::default();
    for flag in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match flag {
            "bind" => {}
            "rbind" => f.recursive = true,
            "ro" => f.readonly = true,
            "rw" => f.readonly = false,
            "noatime" => f.noatime = true,
            "nodiratime" => f.nodiratime = true,
            "relatime" => f.relatime = true,
            "strictatime" => f.strictatime = true,
            "nosuid" => f.nosuid = true,
            "nodev" => f.nodev = true,
            "noexec" => f.noexec = true,
            other => {
                return Err(refuse(
                    "o",
                    value,
                    format!(
                        "flag {other:?} is not supported; accepted flags: {}",
                        MOUNT_FLAGS.join(", ")
                    ),
                ))
            }
        }
    }
    let atime = [f.noatime, f.relatime, f.strictatime]
        .iter()
        .filter(|b| **b)
        .count();
    if atime > 1 {
        return Err(refuse(
            "o",
            value,
            "choose at most one of noatime, relatime, strictatime",
        ));
    }
    Ok(f)
}

fn parse_id(key: &str, value: &str) -> Result<u32, OptionError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|v| *v != u32::MAX)
        .ok_or_else(|| refuse(key, value, "a numeric id from 0 to 4294967294"))
}

fn parse_mode(value: &str) -> Result<u32, OptionError> {
    let digits = value.strip_prefix("0o").unwrap_or(value);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() && digits.len() <= 5 => Ok(m),
        _ => Err(refuse(
            "mode",
            value,
            "an octal mode from 0000 to 7777, e.g. 0755 or 0700",
        )),
    }
}

fn parse_snapshot(value: &str) -> Result<SnapshotPolicy, OptionError> {
    Ok(match value {
        "none" => SnapshotPolicy::None,
        "on-unmount" => SnapshotPolicy::OnUnmount,
        "on-mount" => SnapshotPolicy::OnMount,
        "on-both" => SnapshotPolicy::OnBoth,
        _ => {
            return Err(refuse(
                "snapshot",
                value,
                "accepted: none, on-unmount, on-mount, on-both",
            ))
        }
    })
}

/// Parse `keep`: `10`, or `last=10,daily=7,weekly=4,monthly=12`.
pub fn parse_keep(value: &str) -> Result<Keep, OptionError> {
    const ACCEPTED: &str = "a count like 10, or a list like last=10,daily=7,weekly=4,monthly=12";
    if let Ok(n) = value.parse::<u32>() {
        if n == 0 {
            return Err(refuse(
                "keep",
                value,
                "keep at least one snapshot; ".to_string() + ACCEPTED,
            ));
        }
        return Ok(Keep {
            last: n,
            daily: 0,
            weekly: 0,
            monthly: 0,
        });
    }
    let mut k = Keep {
        last: 0,
        daily: 0,
        weekly: 0,
        monthly: 0,
    };
    for part in value.split(',') {
        let (name, n) = part
            .split_once('=')
            .ok_or_else(|| refuse("keep", value, ACCEPTED))?;
        let n: u32 = n
            .trim()
            .parse()
            .map_err(|_| refuse("keep", value, ACCEPTED))?;
        match name.trim() {
            "last" => k.last = n,
            "daily" => k.daily = n,
            "weekly" => k.weekly = n,
            "monthly" => k.monthly = n,
            _ => return Err(refuse("keep", value, ACCEPTED)),
        }
    }
    if [k.last, k.daily, k.weekly, k.monthly]
        .iter()
        .all(|n| *n == 0)
    {
        return Err(refuse(
            "keep",
            value,
            "keep at least one snapshot; ".to_string() + ACCEPTED,
        ));
    }
    Ok(k)
}

fn parse_backup(value: &str) -> Result<BackupPriority, OptionError> {
    Ok(match value {
        "highest" => BackupPriority::Highest,
        "high" => BackupPriority::High,
        "medium" => BackupPriority::Medium,
        "low" => BackupPriority::Low,
        "none" => BackupPriority::None,
        _ => {
            return Err(refuse(
                "backup",
                value,
                "accepted: highest, high, medium, low, none",
            ))
        }
    })
}

fn parse_class(value: &str) -> Result<Class, OptionError> {
    Ok(match value {
        "critical" => Class::Critical,
        "important" => Class::Important,
        "temporary" => Class::Temporary,
        _ => {
            return Err(refuse(
                "class",
                value,
                "accepted: critical, important, temporary",
            ))
        }
    })
}

/// Parse a size like `50G`, `500M`, `1.5T`, `4096` (binary units).
pub fn parse_size(value: &str) -> Result<u64, String> {
    const ACCEPTED: &str =
        "a size like 500M, 50G or 1T (K, M, G, T are powers of 1024), greater than zero";
    let v = value.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let mult: u64 = match unit
        .trim_end_matches(['i', 'B', 'b'])
        .to_ascii_uppercase()
        .as_str()
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(ACCEPTED.into()),
    };
    let n: f64 = num.parse().map_err(|_| ACCEPTED.to_string())?;
    let bytes = n * mult as f64;
    if !(1.0..1.0e19).contains(&bytes) {
        return Err(ACCEPTED.into());
    }
    Ok(bytes as u64)
}

fn parse_template(value: &str) -> Result<Template, OptionError> {
    const ACCEPTED: &str = "a volume name, or snapshot:<volume>@<id>";
    if let Some(rest) = value.strip_prefix("snapshot:") {
        let (volume, id) = rest
            .split_once('@')
            .ok_or_else(|| refuse("template", value, ACCEPTED))?;
        let bad = |e: String| refuse("template", value, format!("{ACCEPTED}: {e}"));
        return Ok(Template::Snapshot {
            volume: VolumeName::parse(volume).map_err(bad)?,
            id: SnapshotId::parse(id).map_err(bad)?,
        });
    }
    Ok(Template::Volume {
        volume: VolumeName::parse(value)
            .map_err(|e| refuse("template", value, format!("{ACCEPTED}: {e}")))?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn as_str_is_the_value_users_write() {
        use serde_json::to_value;
        for p in [
            SnapshotPolicy::None,
            SnapshotPolicy::OnUnmount,
            SnapshotPolicy::OnMount,
            SnapshotPolicy::OnBoth,
        ] {
            assert_eq!(to_value(p).unwrap(), p.as_str());
            assert_eq!(parse_snapshot(p.as_str()).unwrap(), p);
        }
        for b in [
            BackupPriority::Highest,
            BackupPriority::High,
            BackupPriority::Medium,
            BackupPriority::Low,
            BackupPriority::None,
        ] {
            assert_eq!(to_value(b).unwrap(), b.as_str());
        }
        for c in [Class::Critical, Class::Important, Class::Temporary] {
            assert_eq!(to_value(c).unwrap(), c.as_str());
        }
        for o in [Offsite::Backups, Offsite::Snapshots] {
            assert_eq!(to_value(o).unwrap(), o.as_str());
        }
    }

    #[test]
    fn offsite_defaults_from_the_class_and_an_option_overrides_it() {
        let spec = |pairs: &[(&str, &str)]| parse(Some(&opts(pairs))).unwrap().offsite();
        assert_eq!(spec(&[]), Offsite::Backups);
        assert_eq!(spec(&[("class", "critical")]), Offsite::Snapshots);
        assert_eq!(spec(&[("class", "temporary")]), Offsite::Backups);
        assert_eq!(
            spec(&[("class", "critical"), ("offsite", "backups")]),
            Offsite::Backups
        );
        assert_eq!(spec(&[("offsite", "snapshots")]), Offsite::Snapshots);
        // Records written before the option existed read as the class's default.
        let old: VolumeSpec = serde_json::from_value(serde_json::json!({
            "device": null, "flags": MountFlags::default(), "uid": null, "gid": null, "mode": null,
            "snapshot": "none", "keep": Keep::default(), "backup": "medium", "class": "critical",
            "size": null, "template": null, "parent": null
        }))
        .unwrap();
        assert_eq!(old.offsite(), Offsite::Snapshots);
    }

    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn null_opts_give_defaults() {
        assert_eq!(parse(None).unwrap(), VolumeSpec::default());
    }

    #[test]
    fn local_driver_bind_is_accepted() {
        let s = parse(Some(&opts(&[
            ("type", "none"),
            ("o", "bind,noatime,nodiratime"),
            ("device", "/srv/pg"),
        ])))
        .unwrap();
        assert_eq!(s.device.as_deref(), Some("/srv/pg"));
        assert!(s.flags.noatime && s.flags.nodiratime && !s.flags.readonly);
    }

    #[test]
    fn every_option_is_typed() {
        let s = parse(Some(&opts(&[
            ("uid", "1000"),
            ("gid", "1001"),
            ("mode", "0700"),
            ("snapshot", "on-unmount"),
            ("keep", "last=10,daily=7,weekly=4"),
            ("backup", "highest"),
            ("class", "critical"),
            ("size", "50G"),
            ("template", "snapshot:base@20261125T200000.000000Z"),
            ("parent", "target-workspaces"),
            ("o", "ro,nosuid,nodev,noexec"),
            ("compression", "gzip"),
        ])))
        .unwrap();
        assert_eq!(
            (s.uid, s.gid, s.mode),
            (Some(1000), Some(1001), Some(0o700))
        );
        assert_eq!(s.snapshot, SnapshotPolicy::OnUnmount);
        assert_eq!(
            s.keep,
            Keep {
                last: 10,
                daily: 7,
                weekly: 4,
                monthly: 0
            }
        );
        assert_eq!(s.backup, BackupPriority::Highest);
        assert_eq!(s.class, Class::Critical);
        assert_eq!(s.size, Some(50 << 30));
        assert!(matches!(s.template, Some(Template::Snapshot { .. })));
        assert_eq!(s.parent.as_deref(), Some("target-workspaces"));
        assert!(s.flags.readonly && s.flags.nosuid && s.flags.nodev && s.flags.noexec);
        assert_eq!(s.compression, Some(Compression::Gzip));
        assert_eq!(parse(None).unwrap().compression, None);
    }

    #[test]
    fn compression_names_round_trip() {
        for c in [Compression::Zstd, Compression::Gzip] {
            assert_eq!(c.as_str().parse::<Compression>(), Ok(c));
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        assert_eq!(Compression::Zstd.archive_suffix(), "tar.zst");
        assert_eq!(Compression::default(), Compression::Zstd);
        // A record written before the option existed still reads.
        let old = serde_json::to_value(VolumeSpec::default()).unwrap();
        assert!(old.get("compression").is_none());
        let spec: VolumeSpec = serde_json::from_value(old).unwrap();
        assert_eq!(spec.compression, None);
    }

    #[test]
    fn refusals_name_key_value_and_accepted() {
        let cases = [
            ("colour", "blue", "accepted keys"),
            ("type", "nfs", "none, bind"),
            ("type", "none", "needs device"),
            ("device", "relative/path", "absolute"),
            ("device", "/srv/../etc", "'..'"),
            ("o", "bind,sync", "accepted flags"),
            ("o", "noatime,relatime", "at most one"),
            ("uid", "-1", "numeric id"),
            ("mode", "0999", "octal"),
            ("mode", "17777", "octal"),
            ("snapshot", "always", "on-unmount"),
            ("keep", "forever", "last=10"),
            ("keep", "0", "at least one"),
            ("backup", "urgent", "highest"),
            ("class", "precious", "critical"),
            ("size", "big", "500M"),
            ("size", "0", "500M"),
            ("template", "../x", "volume name"),
            ("parent", "a/b", "volume name"),
            ("compression", "lz4", "zstd, gzip"),
            ("pool", "../x", "pool name"),
            ("offsite", "tape", "backups, snapshots"),
        ];
        for (k, v, hint) in cases {
            let err = parse(Some(&opts(&[(k, v)]))).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(k) && msg.contains(hint), "{k}={v}: {msg}");
        }
    }

    #[test]
    fn long_and_control_values_are_refused() {
        assert!(parse(Some(&opts(&[("class", &"x".repeat(5000))]))).is_err());
        assert!(parse(Some(&opts(&[("device", "/a\nb")]))).is_err());
        assert!(parse(Some(&opts(&[("device", "/a\0b")]))).is_err());
    }

    #[test]
    fn keep_counts_near_u32_max_do_not_overflow() {
        // Found by fuzzing (fuzz/regressions/requests/keep-sum-overflow): the sum overflowed.
        assert_eq!(
            parse_keep("last=4294967295,daily=1").unwrap().last,
            u32::MAX
        );
        assert!(parse_keep("last=4294967295,daily=4294967295,weekly=2").is_ok());
        assert!(parse_keep("last=0,daily=0").is_err());
    }

    #[test]
    fn pool_is_typed_and_refused_with_device_or_parent() {
        let s = parse(Some(&opts(&[("pool", "fast")]))).unwrap();
        assert_eq!(s.pool.as_deref(), Some("fast"));
        assert_eq!(
            parse(Some(&opts(&[("pool", "default")]))).unwrap().pool,
            None
        );
        for other in [("device", "/srv/x"), ("parent", "ws")] {
            let e = parse(Some(&opts(&[("pool", "fast"), other]))).unwrap_err();
            assert!(e.to_string().contains("cannot be combined"), "{e}");
        }
        // Records of volumes without a pool are written as before.
        let old = serde_json::to_value(VolumeSpec::default()).unwrap();
        assert!(old.get("pool").is_none());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert!(parse_size("-1G").is_err());
    }
}
