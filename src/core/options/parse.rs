//! `driver_opts` -> `VolumeSpec`: the accepted keys and flags, and one parser per value, each refusal naming the key, the value and what is accepted.

use std::collections::BTreeMap;

use super::types::{
    BackupPriority, Class, Compression, Keep, MountFlags, Offsite, OwnFs, SnapshotPolicy, Template,
    VolumeSpec,
};
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
    "fs",
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
        check_value(key, value)?;
        match key.as_str() {
            "type" => type_seen = Some(parse_type(value)?),
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
            "offsite" => spec.offsite = Some(parse_offsite(value)?),
            "fs" => spec.fs = Some(parse_fs(value)?),
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
    check_combination(&spec, type_seen.as_deref())?;
    Ok(spec)
}

/// Any value: bounded, without NUL or newline (shown cut to 64 characters when refused).
fn check_value(key: &str, value: &str) -> Result<(), OptionError> {
    if value.len() > MAX_VALUE_LEN || value.contains('\0') || value.contains('\n') {
        return Err(refuse(
            key,
            &value.chars().take(64).collect::<String>(),
            format!("values must be at most {MAX_VALUE_LEN} bytes without NUL or newline"),
        ));
    }
    Ok(())
}

fn parse_type(value: &str) -> Result<String, OptionError> {
    if !matches!(value, "none" | "bind" | "") {
        return Err(refuse(
            "type",
            value,
            "accepted: none, bind (a host directory given by device=)",
        ));
    }
    Ok(value.to_string())
}

fn parse_fs(value: &str) -> Result<OwnFs, OptionError> {
    match value {
        "btrfs" => Ok(OwnFs::Btrfs),
        _ => Err(refuse("fs", value, OwnFs::ACCEPTED)),
    }
}

fn parse_offsite(value: &str) -> Result<Offsite, OptionError> {
    Ok(match value {
        "backups" => Offsite::Backups,
        "snapshots" => Offsite::Snapshots,
        _ => return Err(refuse("offsite", value, Offsite::ACCEPTED)),
    })
}

/// Options that are valid alone but not together: `type=` without `device=`, and `device=`,
/// `parent=` and `pool=` (each says where the data lives).
fn check_combination(spec: &VolumeSpec, type_seen: Option<&str>) -> Result<(), OptionError> {
    if let Some(t) = type_seen {
        if !t.is_empty() && spec.device.is_none() {
            return Err(refuse(
                "type",
                t,
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
    if let Some(fs) = spec.fs {
        let fs = fs.to_string();
        if spec.pool.is_some() || spec.device.is_some() || spec.parent.is_some() {
            return Err(refuse(
                "fs",
                &fs,
                "fs= gives the volume a filesystem of its own: it cannot be combined with pool=, device= or parent=",
            ));
        }
        if spec.size.is_none_or(|s| s < OwnFs::MIN_SIZE) {
            return Err(refuse(
                "fs",
                &fs,
                "fs= needs size= (the size of the volume's own filesystem), at least 256M",
            ));
        }
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
    Ok(())
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

pub(super) fn parse_snapshot(value: &str) -> Result<SnapshotPolicy, OptionError> {
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

/// A size as [`parse_size`] reads it back: the largest binary unit that divides it exactly.
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
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
