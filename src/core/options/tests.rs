//! The option parser and the option types, pinned down by the values users write.

use std::collections::BTreeMap;

use super::parse::parse_snapshot;
use super::*;

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
