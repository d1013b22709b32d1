//! Hostile input: names, option values, `device` paths, CLI arguments, snapshot files and HTTP
//! requests that try to escape, confuse or exhaust the plugin. Every case must be refused with a
//! clear error (or, for the HTTP ones, cut off without hurting other clients); each test prints
//! its table, and the archive cases covered by tests/archive/malicious.rs are listed by name.

use crate::support::harness;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use harness::{cli, cli_ok, err_of, Plugin};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_allspark");

/// One row of a printed table: what was tried, what came back, whether that is right.
struct Table {
    title: &'static str,
    rows: Vec<(String, String, bool)>,
}

impl Table {
    fn new(title: &'static str) -> Table {
        Table {
            title,
            rows: Vec::new(),
        }
    }
    fn row(&mut self, input: impl Into<String>, outcome: impl Into<String>, ok: bool) {
        self.rows.push((input.into(), outcome.into(), ok));
    }
    /// Print the table and fail if any row is wrong.
    fn finish(self) {
        let short = |s: &str, n: usize| -> String {
            let s = s.escape_debug().to_string();
            if s.chars().count() > n {
                format!("{}…", s.chars().take(n).collect::<String>())
            } else {
                s
            }
        };
        let bad = self.rows.iter().filter(|r| !r.2).count();
        eprintln!(
            "\n== {}: {} inputs, {} refused as expected, {} wrong",
            self.title,
            self.rows.len(),
            self.rows.len() - bad,
            bad
        );
        for (input, outcome, ok) in &self.rows {
            eprintln!(
                "{} {:<58} {}",
                if *ok { "ok  " } else { "FAIL" },
                short(input, 58),
                short(outcome, 110)
            );
        }
        let wrong: Vec<String> = self
            .rows
            .iter()
            .filter(|r| !r.2)
            .map(|r| format!("{:?} -> {}", r.0, r.1))
            .collect();
        assert!(
            wrong.is_empty(),
            "{}: wrong outcomes:\n{}",
            self.title,
            wrong.join("\n")
        );
    }
}

/// Every file below `dir` (relative, sorted), to prove nothing was created.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

/// The state that a refused call must leave untouched (records, data, spool, snapshots).
fn state(p: &Plugin) -> Vec<String> {
    [
        "state/volumes",
        "volumes",
        "spool",
        "snapshots",
        "trash",
        "mounts",
    ]
    .iter()
    .flat_map(|d| {
        listing(&p.root().join(d))
            .into_iter()
            .map(move |f| format!("{d}/{f}"))
    })
    .collect()
}

const NAME_RULE: &str = "names must match";

#[test]
fn hostile_volume_names_are_refused_by_every_call() {
    let p = Plugin::start(BIN);
    // A JSON file next to the records: a name that climbs out of state/volumes must not read it.
    fs::write(p.root().join("state/decoy.json"), b"{}").unwrap();
    let before = state(&p);
    let mut t = Table::new("volume names");
    let long = "n".repeat(256);
    let huge = "n".repeat(4096);
    let names: Vec<&str> = vec![
        "..",
        ".",
        "../x",
        "../decoy",
        "../../../../../etc/passwd",
        "a/b",
        "/abs",
        "a\0b",
        "a\nb",
        "",
        "-x",
        ".hidden",
        "a b",
        "é",
        "a\\b",
        "tab\t",
        &long,
        &huge,
    ];
    for name in names {
        for call in [
            "VolumeDriver.Create",
            "VolumeDriver.Mount",
            "VolumeDriver.Unmount",
            "VolumeDriver.Remove",
            "VolumeDriver.Get",
            "VolumeDriver.Path",
        ] {
            let (status, v) = p.call(call, json!({"Name": name, "ID": "c", "Opts": null}));
            let err = err_of(&v);
            let ok = status == 400 && err.contains(NAME_RULE);
            t.row(
                format!("{call} Name={name:?}"),
                format!("{status} {err}"),
                ok,
            );
        }
    }
    // Mount IDs are opaque keys in the record, never paths.
    let (_, v) = p.call("VolumeDriver.Create", json!({"Name": "idv", "Opts": null}));
    assert_eq!(err_of(&v), "");
    for id in ["../../x", "/etc/passwd", "a\nb", &"i".repeat(4096)] {
        let (status, v) = p.call("VolumeDriver.Mount", json!({"Name": "idv", "ID": id}));
        let (s2, v2) = p.call("VolumeDriver.Unmount", json!({"Name": "idv", "ID": id}));
        let ok = status == 200 && s2 == 200 && p.live_mounts().is_empty();
        t.row(
            format!("Mount+Unmount ID={id:?}"),
            format!(
                "{status} {} / {s2} {}: an opaque key, no path built",
                err_of(&v),
                err_of(&v2)
            ),
            ok,
        );
    }
    let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": "idv"}));
    assert_eq!(err_of(&v), "");
    let after = state(&p);
    t.row(
        "state after all refusals",
        format!("{} entries before, {} after", before.len(), after.len()),
        before == after,
    );
    t.finish();
}

#[test]
fn hostile_option_values_are_refused_naming_the_key() {
    let p = Plugin::start(BIN);
    let before = state(&p);
    let mut t = Table::new("option keys and values");
    let binds = p.bind_root();
    let b = binds.display().to_string();
    let at_limit = format!("{b}/{}", "d".repeat(4096 - b.len() - 1));
    let cases: Vec<(String, String, &str)> = vec![
        ("device".into(), "../etc".into(), "absolute"),
        ("device".into(), format!("{b}/../../etc"), "'..'"),
        ("device".into(), format!("{b}/x/.."), "'..'"),
        ("device".into(), "relative/x".into(), "absolute"),
        ("device".into(), format!("{b}/a\0b"), "NUL"),
        ("device".into(), format!("{b}/a\nb"), "newline"),
        (
            "device".into(),
            format!("{b}/{}", "d".repeat(4096)),
            "at most 4096",
        ),
        ("device".into(), at_limit, "device="),
        ("o".into(), "bind,ro\nrw".into(), "newline"),
        ("o".into(), "ro,exec,suid,dev".into(), "accepted flags"),
        ("o".into(), "remount".into(), "accepted flags"),
        ("o".into(), "noatime,strictatime".into(), "at most one"),
        ("uid".into(), "4294967295".into(), "numeric id"),
        ("uid".into(), "-1".into(), "numeric id"),
        ("gid".into(), "99999999999".into(), "numeric id"),
        ("gid".into(), "0x10".into(), "numeric id"),
        ("mode".into(), "17777".into(), "octal"),
        ("mode".into(), "0o".into(), "octal"),
        ("mode".into(), "-0755".into(), "octal"),
        ("size".into(), "inf".into(), "500M"),
        ("size".into(), "NaN".into(), "500M"),
        ("size".into(), "1e30".into(), "500M"),
        ("size".into(), "99999999999T".into(), "500M"),
        ("size".into(), "-5G".into(), "500M"),
        ("keep".into(), "0".into(), "at least one"),
        ("keep".into(), "last=-1".into(), "last=10"),
        ("keep".into(), "last=99999999999".into(), "last=10"),
        ("snapshot".into(), "on-unmount\n".into(), "newline"),
        ("template".into(), "../x".into(), "volume name"),
        (
            "template".into(),
            "snapshot:../x@20261125T200000.000000Z".into(),
            "volume name",
        ),
        (
            "template".into(),
            "snapshot:v@../../20261125T200000.000000Z".into(),
            "template",
        ),
        ("parent".into(), "../x".into(), "volume name"),
        ("parent".into(), "a/b".into(), "volume name"),
        ("class".into(), "x".repeat(4097), "at most 4096"),
        ("type".into(), "nfs".into(), "none, bind"),
        ("../device".into(), "x".into(), "unknown option"),
        ("a\0".into(), "x".into(), "unknown option"),
        ("k".repeat(4096), "x".into(), "unknown option"),
    ];
    for (key, value, needle) in cases {
        let (status, v) = p.call(
            "VolumeDriver.Create",
            json!({"Name": "hostile", "Opts": {key.clone(): value.clone()}}),
        );
        let err = err_of(&v).to_string();
        let names_key = err.contains(&key.chars().take(64).collect::<String>())
            || err.contains(&key.escape_debug().to_string());
        let ok = (400..500).contains(&status) && err.contains(needle) && names_key;
        t.row(format!("{key}={value:?}"), format!("{status} {err}"), ok);
    }
    // The keep= sum that used to overflow (found by fuzzing) is a valid value now.
    let (status, v) = p.call(
        "VolumeDriver.Create",
        json!({"Name": "keepmax", "Opts": {"keep": "last=4294967295,daily=1"}}),
    );
    t.row(
        "keep=\"last=4294967295,daily=1\" (fuzz finding)",
        format!("{status} {}: accepted", err_of(&v)),
        status == 200,
    );
    p.call("VolumeDriver.Remove", json!({"Name": "keepmax"}));
    let after = state(&p);
    t.row(
        "state after all refusals",
        format!("{} entries before, {} after", before.len(), after.len()),
        before == after,
    );
    assert!(!Path::new("/etc/allspark-hostile").exists());
    t.finish();
}

#[test]
fn hostile_device_paths_are_refused_at_create_and_at_mount() {
    let p = Plugin::start(BIN);
    let binds = p.bind_root();
    let root = p.root();
    let outside = tempfile::tempdir().unwrap();
    let out = outside.path();
    // Another volume whose data a device= must not reach.
    let (_, v) = p.call(
        "VolumeDriver.Create",
        json!({"Name": "victim", "Opts": null}),
    );
    assert_eq!(err_of(&v), "");
    fs::write(root.join("volumes/victim/data/secret"), b"victim's").unwrap();
    let links: [(&str, PathBuf); 10] = [
        ("to-outside", out.to_path_buf()),
        ("to-etc", PathBuf::from("/etc")),
        ("to-state", root.join("state")),
        ("to-victim", root.join("volumes/victim/data")),
        ("rel-mounts", PathBuf::from("../root/mounts")),
        ("chain1", PathBuf::from("chain2")),
        ("loop", PathBuf::from("loop")),
        ("dangling", out.join("not/yet")),
        ("up", PathBuf::from("..")),
        ("proc-root", PathBuf::from("/proc/self/root/etc")),
    ];
    for (name, target) in &links {
        symlink(target, binds.join(name)).unwrap();
    }
    symlink(out, binds.join("chain2")).unwrap();
    fs::write(binds.join("file"), b"a file").unwrap();
    let before = state(&p);
    let mut t = Table::new("device paths");
    let cases: Vec<(PathBuf, &str)> = vec![
        (binds.join("to-outside/x"), "outside the allowed bind roots"),
        (
            binds.join("to-etc/allspark-hostile"),
            "outside the allowed bind roots",
        ),
        (binds.join("to-state"), "own directory"),
        (binds.join("to-state/x"), "own directory"),
        (binds.join("to-victim"), "own directory"),
        (binds.join("rel-mounts/x"), "own directory"),
        (binds.join("chain1/x"), "outside the allowed bind roots"),
        (binds.join("loop/x"), "cannot resolve"),
        (binds.join("dangling"), "outside the allowed bind roots"),
        (
            binds.join("up/outside-binds"),
            "outside the allowed bind roots",
        ),
        (binds.join("up/root/spool"), "own directory"),
        (
            binds.join("proc-root/allspark-hostile"),
            "outside the allowed bind roots",
        ),
        (binds.join("file"), "not a directory"),
        (root.join("trash"), "own directory"),
        (root.join("locks/x"), "own directory"),
        (root.join("volumes/victim/data"), "own directory"),
        (root.join("mounts/victim"), "own directory"),
        (PathBuf::from("/"), "outside the allowed bind roots"),
        (
            PathBuf::from("/proc/self/root"),
            "outside the allowed bind roots",
        ),
    ];
    for (device, needle) in cases {
        let (status, v) = p.call(
            "VolumeDriver.Create",
            json!({"Name": "dev", "Opts": {"type": "none", "o": "bind", "device": device}}),
        );
        let err = err_of(&v).to_string();
        let ok = status == 400 && err.contains(needle) && err.contains("device=");
        t.row(
            format!("device={}", device.display()),
            format!("{status} {err}"),
            ok,
        );
    }
    t.row(
        "nothing created by the refusals",
        format!(
            "outside: {:?}, /etc/allspark-hostile: {}",
            listing(out),
            Path::new("/etc/allspark-hostile").exists()
        ),
        listing(out).is_empty() && !Path::new("/etc/allspark-hostile").exists(),
    );
    t.row(
        "state after all refusals",
        "unchanged".to_string(),
        state(&p) == before,
    );

    // A backing directory swapped for a symlink after Create: every Mount re-resolves it.
    for (name, target) in [
        ("swap-out", out.to_path_buf()),
        ("swap-own", root.join("volumes/victim/data")),
    ] {
        let dev = binds.join(name);
        let (_, v) = p.call(
            "VolumeDriver.Create",
            json!({"Name": name, "Opts": {"device": dev}}),
        );
        assert_eq!(err_of(&v), "", "{name}");
        fs::remove_dir(&dev).unwrap();
        symlink(&target, &dev).unwrap();
        let (status, v) = p.call("VolumeDriver.Mount", json!({"Name": name, "ID": "c"}));
        let err = err_of(&v).to_string();
        let ok = status >= 400 && !err.is_empty() && p.live_mounts().is_empty();
        t.row(
            format!(
                "Mount after {} became a symlink to {}",
                dev.display(),
                target.display()
            ),
            format!("{status} {err}"),
            ok,
        );
        p.call("VolumeDriver.Remove", json!({"Name": name}));
    }
    assert_eq!(
        fs::read(root.join("volumes/victim/data/secret")).unwrap(),
        b"victim's"
    );
    eprintln!(
        "(also: tests/plugin/protocol.rs device_paths_must_stay_under_a_bind_root_and_outside_our_dirs)"
    );
    t.finish();
}

#[test]
fn hostile_cli_arguments_are_refused() {
    let p = Plugin::start(BIN);
    let (_, v) = p.call("VolumeDriver.Create", json!({"Name": "v", "Opts": null}));
    assert_eq!(err_of(&v), "");
    fs::write(p.root().join("volumes/v/data/f"), b"1").unwrap();
    let id = cli_ok(&p, &["snapshot", "create", "v"]).trim().to_string();
    // Decoys a path built from an unchecked name would reach.
    let decoy = p.root().join("decoy").join(&id);
    fs::create_dir_all(&decoy).unwrap();
    fs::write(decoy.join("manifest.json"), b"{}").unwrap();
    let before = state(&p);
    let mut t = Table::new("CLI arguments");
    let cases: Vec<Vec<&str>> = vec![
        vec!["snapshot", "create", "../decoy"],
        vec!["snapshot", "ls", "../decoy"],
        vec!["snapshot", "verify", "../decoy"],
        vec!["snapshot", "verify", "v", "../../decoy"],
        vec!["snapshot", "restore", "../decoy", &id, "--yes"],
        vec!["snapshot", "restore", "v", "../v", "--yes"],
        vec![
            "snapshot",
            "restore",
            "v",
            &id,
            "--into",
            "../escape",
            "--yes",
        ],
        vec!["snapshot", "rm", "../decoy", &id],
        vec!["snapshot", "rm", "v", "../../decoy"],
        vec!["snapshot", "prune", "../decoy"],
        vec!["volume", "inspect", "../decoy"],
        vec![
            "volume",
            "migrate",
            "../decoy",
            "--to",
            "/tmp/allspark-hostile",
        ],
        vec!["volume", "cleanup", "../decoy"],
    ];
    for args in cases {
        let out = cli(&p, &args);
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let code = out.status.code();
        // Refused before any path is built from the argument: the name or id rule is quoted.
        let ok = matches!(code, Some(1) | Some(2))
            && (err.contains("names must match") || err.contains("ids look like"));
        t.row(
            format!("allspark {}", args.join(" ")),
            format!("exit {code:?}: {err}"),
            ok,
        );
    }
    t.row(
        "decoy, state and /tmp untouched",
        String::new(),
        decoy.join("manifest.json").exists()
            && state(&p) == before
            && !Path::new("/tmp/allspark-hostile").exists(),
    );
    t.finish();
}

/// Rewrite a snapshot's manifest (the archive is unchanged, so its checksum still matches).
fn edit_manifest(p: &Plugin, volume: &str, id: &str, f: impl FnOnce(&mut Value)) {
    let path = p
        .root()
        .join("snapshots")
        .join(volume)
        .join(id)
        .join("manifest.json");
    let mut m: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    f(&mut m);
    fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[test]
fn hostile_snapshot_contents_and_manifests() {
    let p = Plugin::start(BIN);
    let data = p.root().join("volumes/s/data");
    let (_, v) = p.call("VolumeDriver.Create", json!({"Name": "s", "Opts": null}));
    assert_eq!(err_of(&v), "");
    let outside = p.dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("precious"), b"keep me").unwrap();
    fs::write(data.join("keep"), b"current").unwrap();
    // A relative symlink that points out of the volume once restored.
    symlink("../../../../outside", data.join("out")).unwrap();
    let full = cli_ok(&p, &["snapshot", "create", "s"]).trim().to_string();
    fs::write(data.join("second"), b"2").unwrap();
    let incr = cli_ok(&p, &["snapshot", "create", "s"]).trim().to_string();
    let mut t = Table::new("snapshot manifests and contents");

    // `deleted` lists of an incremental are applied to the staging tree before its archive.
    for (deleted, needle) in [
        (json!(["../../../../outside/precious"]), "`..`"),
        (json!(["/etc/hostname"]), "absolute"),
        (json!([""]), "destination directory itself"),
        (json!(["."]), "destination directory itself"),
        (json!(["out/precious"]), "symlink"),
        (json!(["\u{0}zz"]), "malformed hex"),
        (json!(["\u{0}2e2e2f2e2e2f6f757473696465"]), "`..`"),
    ] {
        edit_manifest(&p, "s", &incr, |m| m["deleted"] = deleted.clone());
        let out = cli(&p, &["snapshot", "restore", "s", &incr, "--yes"]);
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let ok = out.status.code() == Some(1)
            && err.contains(needle)
            && fs::read(outside.join("precious")).unwrap() == b"keep me"
            && fs::read(data.join("keep")).unwrap() == b"current";
        t.row(format!("manifest deleted={deleted}"), err, ok);
    }
    edit_manifest(&p, "s", &incr, |m| m["deleted"] = json!([]));
    // A parent loop, a missing parent, a foreign volume name: the chain is refused.
    for (field, value, needle) in [
        ("parent", json!(incr.clone()), "loops"),
        ("parent", json!("20000101T000000.000000Z"), "missing"),
    ] {
        edit_manifest(&p, "s", &incr, |m| m[field] = value.clone());
        let out = cli(&p, &["snapshot", "restore", "s", &incr, "--yes"]);
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let ok = out.status.code() == Some(1) && err.contains(needle);
        t.row(format!("manifest {field}={value}"), err, ok);
    }
    edit_manifest(&p, "s", &incr, |m| m["parent"] = json!(full.clone()));
    // Truncated and non-JSON manifests: named, never taken for an absent snapshot.
    let mpath = p
        .root()
        .join("snapshots/s")
        .join(&incr)
        .join("manifest.json");
    let good = fs::read(&mpath).unwrap();
    for (what, bytes) in [
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("binary", vec![0xff, 0x00, 0x13]),
    ] {
        fs::write(&mpath, &bytes).unwrap();
        let out = cli(&p, &["snapshot", "ls", "s"]);
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let ok = out.status.code() == Some(1)
            && err.contains("corrupt")
            && err.contains(&*mpath.to_string_lossy());
        t.row(format!("{what} manifest.json, snapshot ls"), err, ok);
    }
    fs::write(&mpath, &good).unwrap();
    assert_eq!(fs::read(data.join("keep")).unwrap(), b"current");
    cli_ok(&p, &["snapshot", "restore", "s", &incr, "--yes"]);
    let restored_link = fs::read_link(data.join("out")).unwrap();
    t.row(
        "the symlink pointing out is restored as a link, never followed",
        format!("out -> {}", restored_link.display()),
        restored_link == Path::new("../../../../outside")
            && fs::read(outside.join("precious")).unwrap() == b"keep me",
    );
    eprintln!("(also: tests/ops/snapshots.rs a_malicious_snapshot_archive_is_refused_and_nothing_escapes, verify_names_a_corrupted_archive_and_restore_refuses_it; tests/hardening/regressions.rs a_volume_holding_a_device_node_is_snapshotted_verified_and_restored)");
    t.finish();
}

/// The archive cases of tests/archive/malicious.rs, listed in the table by name (not repeated).
#[test]
fn hostile_archive_cases_are_covered_by_archive_malicious() {
    let source = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/archive/malicious.rs"),
    )
    .unwrap();
    let mut t = Table::new("archives (tests/archive/malicious.rs)");
    for (case, test) in [
        (
            "entries with `..` (plain, PAX path, GNU long name)",
            "dotdot_paths_are_refused",
        ),
        ("absolute paths", "absolute_paths_are_refused"),
        (
            "PAX and GNU long names hiding escapes",
            "pax_and_gnu_long_names_are_checked_too",
        ),
        (
            "writing through a symlink (in the archive or already on disk)",
            "writing_through_a_symlink_is_refused",
        ),
        (
            "hard links leaving the tree",
            "hardlinks_leaving_the_tree_are_refused",
        ),
        ("device nodes", "device_nodes_are_refused_unless_allowed"),
        (
            "huge PAX headers, long names, file sizes (no allocation)",
            "huge_headers_are_refused_without_allocating",
        ),
        (
            "truncated and damaged archives",
            "damaged_archives_are_reported_as_corrupt",
        ),
        (
            "refusal before any write of the entry",
            "refusal_happens_before_any_write_of_that_entry",
        ),
        (
            "300 randomly mangled archives",
            "mangled_archives_never_panic_or_escape",
        ),
    ] {
        let present = source.contains(&format!("fn {test}()"));
        t.row(case, format!("tests/archive/malicious.rs::{test}"), present);
    }
    t.row(
        "arbitrary bytes, raw and gzip-wrapped (fuzzing)",
        "fuzz target `extract`, replayed by tests/hardening/fuzz.rs",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds/extract")
            .is_dir(),
    );
    t.finish();
}

#[test]
fn setuid_bits_are_kept_by_restore_and_nosuid_is_the_mount_option_against_them() {
    // Decision (docs/hardening.md): snapshots are copies of our own volumes, so a restore keeps
    // setuid/setgid bits (dropping them would break restored programs); a volume whose content must
    // never run setuid is created with o=nosuid, which every container's mount then carries.
    let p = Plugin::start(BIN);
    let (_, v) = p.call(
        "VolumeDriver.Create",
        json!({"Name": "suid", "Opts": {"o": "nosuid,nodev"}}),
    );
    assert_eq!(err_of(&v), "");
    let data = p.root().join("volumes/suid/data");
    fs::write(data.join("prog"), b"#!/bin/sh\nid\n").unwrap();
    fs::set_permissions(data.join("prog"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir(data.join("shared")).unwrap();
    fs::set_permissions(data.join("shared"), fs::Permissions::from_mode(0o2775)).unwrap();
    let id = cli_ok(&p, &["snapshot", "create", "suid"])
        .trim()
        .to_string();
    fs::remove_file(data.join("prog")).unwrap();
    cli_ok(&p, &["snapshot", "restore", "suid", &id, "--yes"]);
    assert_eq!(
        fs::metadata(data.join("prog")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        fs::metadata(data.join("shared")).unwrap().mode() & 0o7777,
        0o2775
    );
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "suid", "ID": "c"}));
    let mp = PathBuf::from(v["Mountpoint"].as_str().unwrap());
    let opts = harness::mount_opts(&mp);
    assert!(
        opts.split(',').any(|o| o == "nosuid") && opts.split(',').any(|o| o == "nodev"),
        "{opts}"
    );
    p.call("VolumeDriver.Unmount", json!({"Name": "suid", "ID": "c"}));
}

// ---------------------------------------------------------------------------------------------
// HTTP: oversized, malformed, slow and idle clients
// ---------------------------------------------------------------------------------------------

/// Send raw bytes on a fresh connection and read the reply (up to `wait`).
fn raw(sock: &Path, bytes: &[u8], wait: Duration) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_line(reply: &str) -> String {
    reply
        .lines()
        .next()
        .unwrap_or("(connection closed, no reply)")
        .to_string()
}

/// A List call answers within `within`.
fn list_answers(p: &Plugin, within: Duration) -> (bool, Duration) {
    let started = Instant::now();
    let reply = raw(
        &p.socket(),
        b"POST /VolumeDriver.List HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        within,
    );
    (reply.starts_with("HTTP/1.1 200"), started.elapsed())
}

#[test]
fn oversized_and_malformed_http_requests_are_refused() {
    let p = Plugin::start(BIN);
    let sock = p.socket();
    let mut t = Table::new("HTTP requests");
    let wait = Duration::from_secs(15);
    let big_header = format!(
        "POST /VolumeDriver.List HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\n{{}}",
        "h".repeat(1 << 20)
    );
    let many_headers = format!(
        "POST /VolumeDriver.List HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{}Content-Length: 2\r\n\r\n{{}}",
        (0..2000)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect::<String>()
    );
    let huge_chunked = {
        let mut b =
            b"POST /VolumeDriver.Create HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        for _ in 0..20 {
            b.extend_from_slice(format!("{:x}\r\n", 128 << 10).as_bytes());
            b.extend(std::iter::repeat_n(b'a', 128 << 10));
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"0\r\n\r\n");
        b
    };
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "Content-Length: 10 GiB, no body",
            b"POST /VolumeDriver.Create HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 10737418240\r\n\r\n".to_vec(),
            &["HTTP/1.1 413"],
        ),
        ("2.5 MiB chunked body", huge_chunked, &["HTTP/1.1 413"]),
        ("1 MiB header line", big_header.into_bytes(), &["HTTP/1.1 431", "(connection closed"]),
        ("2000 headers", many_headers.into_bytes(), &["HTTP/1.1 431", "(connection closed"]),
        (
            "GET instead of POST",
            b"GET /VolumeDriver.List HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            &["HTTP/1.1 405"],
        ),
        (
            "path traversal in the URL",
            b"POST /../../VolumeDriver.Create HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
            &["HTTP/1.1 404"],
        ),
        (
            "NUL in the call name",
            b"POST /VolumeDriver.List%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
            &["HTTP/1.1 404"],
        ),
        (
            "JSON nested 100000 deep",
            {
                let body = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
                format!(
                    "POST /VolumeDriver.Create HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            },
            &["HTTP/1.1 400"],
        ),
        (
            "Name of 1 MiB - 100 bytes",
            {
                let body = format!("{{\"Name\":\"{}\"}}", "n".repeat((1 << 20) - 100));
                format!(
                    "POST /VolumeDriver.Create HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            },
            &["HTTP/1.1 400"],
        ),
        (
            "invalid UTF-8 in the body",
            {
                let body = b"{\"Name\":\"\xff\xfe\"}";
                let mut b = format!(
                    "POST /VolumeDriver.Create HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                b.extend_from_slice(body);
                b
            },
            &["HTTP/1.1 400"],
        ),
        (
            "not HTTP at all",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls hello\r\n\r\n".to_vec(),
            &["HTTP/1.1 400", "(connection closed"],
        ),
    ];
    for (what, bytes, expected) in cases {
        let started = Instant::now();
        let reply = raw(&sock, &bytes, wait);
        let line = status_line(&reply);
        let ok = expected.iter().any(|e| line.starts_with(e)) && started.elapsed() < wait;
        t.row(what, format!("{line} in {:?}", started.elapsed()), ok);
    }
    let (answers, took) = list_answers(&p, Duration::from_secs(5));
    t.row(
        "a normal call afterwards",
        format!("answered in {took:?}"),
        answers,
    );
    t.row(
        "plugin still running",
        String::new(),
        p.child
            .as_ref()
            .is_some_and(|_| UnixStream::connect(&sock).is_ok()),
    );
    eprintln!("(also: tests/plugin/protocol.rs malformed_json_oversized_bodies_and_unknown_calls_get_errors_and_the_server_lives_on)");
    t.finish();
}

#[test]
fn a_slowloris_client_is_cut_off_by_the_header_timeout_and_blocks_nobody() {
    let p = Plugin::start(BIN);
    let sock = p.socket();
    let mut t = Table::new("slow clients");
    // One header byte per second, forever.
    let slow = std::thread::spawn({
        let sock = sock.clone();
        move || {
            let mut s = UnixStream::connect(&sock).unwrap();
            let started = Instant::now();
            let request = b"POST /VolumeDriver.List HTTP/1.1\r\nHost: slow\r\nX-Padding: "
                .iter()
                .chain(std::iter::repeat(&b'a'));
            for b in request {
                if s.write_all(&[*b]).is_err() {
                    return (
                        started.elapsed(),
                        "the server closed the connection".to_string(),
                    );
                }
                std::thread::sleep(Duration::from_secs(1));
                if started.elapsed() > Duration::from_secs(40) {
                    return (started.elapsed(), "still connected after 40 s".to_string());
                }
            }
            unreachable!()
        }
    });
    // Twenty slow clients more, sending a partial request and nothing else.
    let _partial: Vec<UnixStream> = (0..20)
        .map(|_| {
            let mut s = UnixStream::connect(&sock).unwrap();
            s.write_all(b"POST /VolumeDriver.List HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    // Meanwhile normal calls answer at once.
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let (ok, took) = list_answers(&p, Duration::from_secs(5));
        assert!(ok, "a normal call failed while slow clients were connected");
        worst = worst.max(took);
        std::thread::sleep(Duration::from_millis(500));
    }
    t.row(
        "10 normal calls while 21 slow clients are connected",
        format!("slowest answered in {worst:?}"),
        worst < Duration::from_secs(1),
    );
    // A body announced but sent one byte per second.
    let slow_body = std::thread::spawn({
        let sock = sock.clone();
        move || {
            let mut s = UnixStream::connect(&sock).unwrap();
            s.write_all(
                b"POST /VolumeDriver.List HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
            )
            .unwrap();
            let started = Instant::now();
            s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let mut b = [0u8; 64];
                if let Ok(n) = s.read(&mut b) {
                    let line = String::from_utf8_lossy(&b[..n])
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    return (started.elapsed(), format!("answered {line:?}"));
                }
                if s.write_all(b" ").is_err() {
                    return (
                        started.elapsed(),
                        "the server closed the connection".to_string(),
                    );
                }
                if started.elapsed() > Duration::from_secs(40) {
                    return (started.elapsed(), "still connected after 40 s".to_string());
                }
            }
        }
    });
    let (took, how) = slow.join().unwrap();
    let header_timeout = allspark::plugin::server::HEADER_TIMEOUT;
    t.row(
        "client sending one header byte per second",
        format!("{how} after {took:?} (header timeout {header_timeout:?})"),
        how.contains("closed") && took <= header_timeout + Duration::from_secs(5),
    );
    let (took, how) = slow_body.join().unwrap();
    let body_timeout = allspark::plugin::server::BODY_TIMEOUT;
    t.row(
        "client sending its body one byte per second",
        format!("{how} after {took:?} (body timeout {body_timeout:?})"),
        (how.contains("408") || how.contains("closed"))
            && took <= body_timeout + Duration::from_secs(5),
    );
    t.finish();
}

#[test]
fn five_hundred_idle_connections_do_not_stop_normal_calls() {
    let p = Plugin::start(BIN);
    let sock = p.socket();
    let mut t = Table::new("idle connections");
    let idle: Vec<UnixStream> = (0..500)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let (ok, took) = list_answers(&p, Duration::from_secs(5));
        assert!(ok, "call {i} failed with 500 idle connections open");
        worst = worst.max(took);
    }
    t.row(
        "20 calls with 500 idle connections open",
        format!("slowest answered in {worst:?}"),
        worst < Duration::from_secs(1),
    );
    let (_, v) = p.call("VolumeDriver.Create", json!({"Name": "busy", "Opts": null}));
    t.row(
        "a Create with 500 idle connections open",
        err_of(&v).to_string(),
        err_of(&v).is_empty(),
    );
    // Idle connections that never send a byte are closed too (they hold descriptors).
    let header_timeout = allspark::plugin::server::HEADER_TIMEOUT;
    std::thread::sleep(header_timeout + Duration::from_secs(3));
    let closed = idle
        .iter()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
            let mut b = [0u8; 1];
            matches!((&**s).read(&mut b), Ok(0))
        })
        .count();
    t.row(
        format!("idle connections closed after the header timeout ({header_timeout:?} + 3 s)"),
        format!("{closed} of 500"),
        closed == 500,
    );
    t.finish();
}
