//! The VolumeDriver protocol over the real socket: every call, every refusal, concurrency, limits.

use crate::support::harness;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use harness::{err_of, mount_opts, Plugin};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_allspark");

fn create(p: &Plugin, name: &str, opts: serde_json::Value) -> String {
    let (_, v) = p.call("VolumeDriver.Create", json!({"Name": name, "Opts": opts}));
    err_of(&v)
}

#[test]
fn activate_and_capabilities() {
    let p = Plugin::start(BIN);
    let (s, v) = harness::call_raw(&p.socket(), "Plugin.Activate", Vec::new());
    assert_eq!((s, v), (200, json!({"Implements": ["VolumeDriver"]})));
    let (s, v) = p.call("VolumeDriver.Capabilities", json!({}));
    assert_eq!((s, v), (200, json!({"Capabilities": {"Scope": "local"}})));
}

#[test]
fn create_get_list_path_remove_with_null_opts() {
    let p = Plugin::start(BIN);
    assert_eq!(create(&p, "plain", serde_json::Value::Null), "");
    let (s, v) = p.call("VolumeDriver.Get", json!({"Name": "plain"}));
    assert_eq!(s, 200, "{v}");
    let vol = &v["Volume"];
    assert_eq!(vol["Name"], "plain");
    let created = vol["CreatedAt"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(created).expect("CreatedAt is RFC 3339");
    assert_eq!(vol["Status"]["mounted"], 0);
    assert_eq!(vol["Status"]["class"], "important");
    assert_eq!(
        vol["Mountpoint"],
        p.mount_dir().join("plain").to_str().unwrap()
    );

    let (_, v) = p.call("VolumeDriver.List", json!({}));
    let names: Vec<&str> = v["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["plain"]);
    let (_, v) = p.call("VolumeDriver.Path", json!({"Name": "plain"}));
    assert_eq!(
        v["Mountpoint"],
        p.mount_dir().join("plain").to_str().unwrap()
    );

    let data = p.root().join("volumes/plain/data");
    assert!(data.is_dir());
    std::fs::write(data.join("f"), b"x").unwrap();
    let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": "plain"}));
    assert_eq!(err_of(&v), "");
    assert!(
        !p.root().join("volumes/plain").exists(),
        "managed data must be deleted"
    );
    let (s, v) = p.call("VolumeDriver.Get", json!({"Name": "plain"}));
    assert_ne!(s, 200);
    assert!(err_of(&v).contains("no such volume"), "{v}");
}

#[test]
fn get_of_unknown_volume_is_an_error() {
    let p = Plugin::start(BIN);
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "ghost"}));
    assert_eq!(err_of(&v), "no such volume: ghost");
    let (_, v) = p.call("VolumeDriver.Path", json!({"Name": "ghost"}));
    assert!(err_of(&v).contains("no such volume"));
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "ghost", "ID": "x"}));
    assert!(err_of(&v).contains("no such volume"));
}

#[test]
fn status_carries_options_class_size_and_mount_count() {
    let p = Plugin::start(BIN);
    let opts = json!({"class": "critical", "size": "2G", "backup": "highest", "snapshot": "on-unmount", "o": "noatime"});
    assert_eq!(create(&p, "st", opts.clone()), "");
    p.call("VolumeDriver.Mount", json!({"Name": "st", "ID": "m1"}));
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "st"}));
    let st = &v["Volume"]["Status"];
    assert_eq!(st["options"], opts);
    assert_eq!(st["class"], "critical");
    assert_eq!(st["backup"], "highest");
    assert_eq!(st["size"], 2u64 << 30);
    assert_eq!(st["mounted"], 1);
    p.call("VolumeDriver.Unmount", json!({"Name": "st", "ID": "m1"}));
}

#[test]
fn bad_options_are_refused_with_key_value_and_accepted_values() {
    let p = Plugin::start(BIN);
    for (opts, needle) in [
        (json!({"colour": "blue"}), "accepted keys"),
        (json!({"o": "bind,sync"}), "accepted flags"),
        (json!({"mode": "999"}), "octal"),
        (json!({"class": "gold"}), "critical, important, temporary"),
        (json!({"type": "nfs", "device": "/x"}), "none, bind"),
        (json!({"size": "lots"}), "500M"),
    ] {
        let err = create(&p, "bad", opts.clone());
        assert!(err.contains(needle), "{opts}: {err}");
        let key = opts.as_object().unwrap().keys().next().unwrap().clone();
        assert!(
            err.contains(&key),
            "{opts}: error does not name the key: {err}"
        );
    }
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "bad"}));
    assert!(
        !err_of(&v).is_empty(),
        "a refused create must leave nothing behind"
    );
    assert!(!p.root().join("volumes/bad").exists());
}

#[test]
fn bad_names_are_refused() {
    let p = Plugin::start(BIN);
    for name in ["../escape", "a/b", "", ".hidden", "x\ny", &"n".repeat(256)] {
        let err = create(&p, name, serde_json::Value::Null);
        assert!(err.contains("[a-zA-Z0-9]"), "{name:?}: {err}");
    }
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "../../etc"}));
    assert!(!err_of(&v).is_empty());
    assert!(!p.dir.path().join("escape").exists());
}

#[test]
fn create_is_idempotent_with_same_options_and_refused_with_others() {
    let p = Plugin::start(BIN);
    assert_eq!(create(&p, "same", json!({"class": "critical"})), "");
    std::fs::write(p.root().join("volumes/same/data/keep"), b"1").unwrap();
    assert_eq!(create(&p, "same", json!({"class": "critical"})), "");
    let err = create(&p, "same", json!({"class": "temporary"}));
    assert!(
        err.contains("already exists with other options") && err.contains("class=critical"),
        "{err}"
    );
    assert!(p.root().join("volumes/same/data/keep").exists());
}

#[test]
fn device_paths_must_stay_under_a_bind_root_and_outside_our_dirs() {
    let p = Plugin::start(BIN);
    let outside = tempfile::tempdir().unwrap();
    let err = create(&p, "d1", json!({"device": outside.path()}));
    assert!(err.contains("outside the allowed bind roots"), "{err}");

    std::os::unix::fs::symlink(outside.path(), p.bind_root().join("sneaky")).unwrap();
    let err = create(
        &p,
        "d2",
        json!({"type": "none", "o": "bind", "device": p.bind_root().join("sneaky/x")}),
    );
    assert!(
        err.contains("resolves to"),
        "a symlink pointing out of the root must be refused: {err}"
    );
    assert!(!outside.path().join("x").exists());

    for own in [
        "state",
        "volumes/x",
        "spool",
        "locks",
        "snapshots",
        "mounts",
    ] {
        let err = create(&p, "d3", json!({"device": p.root().join(own)}));
        assert!(err.contains("allspark's own directory"), "{own}: {err}");
    }
    let err = create(&p, "d4", json!({"device": p.root()}));
    assert!(
        err.contains("allspark's own directory"),
        "the root itself contains our dirs: {err}"
    );
    let err = create(&p, "d5", json!({"device": "relative"}));
    assert!(err.contains("absolute"), "{err}");
}

#[test]
fn device_volume_is_bind_mounted_with_flags_and_its_data_survives_remove() {
    let p = Plugin::start(BIN);
    let dev = p.bind_root().join("pg");
    let opts = json!({"type": "none", "o": "bind,noatime,nodiratime,nosuid,nodev,noexec", "device": dev, "uid": "999", "gid": "998", "mode": "0750"});
    assert_eq!(create(&p, "pg", opts), "");
    assert!(dev.is_dir(), "a missing device directory is created");
    let md = std::fs::metadata(&dev).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (999, 998, 0o750));
    std::fs::write(dev.join("PG_VERSION"), b"15").unwrap();

    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "pg", "ID": "c1"}));
    let mp = v["Mountpoint"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read(Path::new(&mp).join("PG_VERSION")).unwrap(),
        b"15"
    );
    let o = mount_opts(Path::new(&mp));
    for flag in ["noatime", "nosuid", "nodev", "noexec", "nodiratime"] {
        assert!(o.split(',').any(|x| x == flag), "{flag} missing in {o}");
    }
    assert!(o.starts_with("rw"), "{o}");
    let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": "pg"}));
    assert!(err_of(&v).contains("mounted by 1 container"), "{v}");
    p.call("VolumeDriver.Unmount", json!({"Name": "pg", "ID": "c1"}));
    assert!(p.live_mounts().is_empty());
    let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": "pg"}));
    assert_eq!(err_of(&v), "");
    assert_eq!(
        std::fs::read(dev.join("PG_VERSION")).unwrap(),
        b"15",
        "device data must never be deleted"
    );
}

#[test]
fn read_only_volume_refuses_writes_through_the_mount() {
    let p = Plugin::start(BIN);
    assert_eq!(create(&p, "ro", json!({"o": "ro"})), "");
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "ro", "ID": "c"}));
    let mp = Path::new(v["Mountpoint"].as_str().unwrap()).to_path_buf();
    assert!(mount_opts(&mp).starts_with("ro"), "{}", mount_opts(&mp));
    let err = std::fs::write(mp.join("f"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    p.call("VolumeDriver.Unmount", json!({"Name": "ro", "ID": "c"}));
}

#[test]
fn owner_and_mode_are_reapplied_at_mount() {
    let p = Plugin::start(BIN);
    assert_eq!(
        create(
            &p,
            "own",
            json!({"uid": "1000", "gid": "1000", "mode": "0700"})
        ),
        ""
    );
    let data = p.root().join("volumes/own/data");
    std::os::unix::fs::chown(&data, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "own", "ID": "c"}));
    let md = std::fs::metadata(v["Mountpoint"].as_str().unwrap()).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (1000, 1000, 0o700)
    );
    p.call("VolumeDriver.Unmount", json!({"Name": "own", "ID": "c"}));
}

#[test]
fn references_are_counted_per_mount_id() {
    let p = Plugin::start(BIN);
    assert_eq!(create(&p, "refs", json!(null)), "");
    let mp = p.mount_dir().join("refs");
    p.call("VolumeDriver.Mount", json!({"Name": "refs", "ID": "a"}));
    p.call("VolumeDriver.Mount", json!({"Name": "refs", "ID": "a"}));
    p.call("VolumeDriver.Mount", json!({"Name": "refs", "ID": "b"}));
    let (_, v) = p.call(
        "VolumeDriver.Unmount",
        json!({"Name": "refs", "ID": "unknown"}),
    );
    assert_eq!(err_of(&v), "", "unknown IDs are harmless");
    p.call("VolumeDriver.Unmount", json!({"Name": "refs", "ID": "a"}));
    p.call("VolumeDriver.Unmount", json!({"Name": "refs", "ID": "b"}));
    assert_eq!(p.live_mounts(), vec![mp.clone()], "a is still mounted once");
    p.call("VolumeDriver.Unmount", json!({"Name": "refs", "ID": "a"}));
    assert!(p.live_mounts().is_empty());
    p.call("VolumeDriver.Unmount", json!({"Name": "refs", "ID": "a"}));
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "refs"}));
    assert_eq!(v["Volume"]["Status"]["mounted"], 0, "never below zero");
}

#[test]
fn sixty_four_concurrent_mount_unmount_pairs_end_at_zero() {
    let p = Plugin::start(BIN);
    assert_eq!(create(&p, "busy", json!(null)), "");
    std::thread::scope(|s| {
        for i in 0..64 {
            let p = &p;
            s.spawn(move || {
                let id = format!("{i:064x}");
                let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "busy", "ID": id}));
                assert_eq!(err_of(&v), "", "{v}");
                let (_, v) = p.call("VolumeDriver.Unmount", json!({"Name": "busy", "ID": id}));
                assert_eq!(err_of(&v), "", "{v}");
            });
        }
    });
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "busy"}));
    assert_eq!(v["Volume"]["Status"]["mounted"], 0);
    assert!(p.live_mounts().is_empty(), "{:?}", p.live_mounts());
}

#[test]
fn malformed_json_oversized_bodies_and_unknown_calls_get_errors_and_the_server_lives_on() {
    let p = Plugin::start(BIN);
    let (s, v) = harness::call_raw(&p.socket(), "VolumeDriver.Create", b"{not json".to_vec());
    assert_eq!(s, 400);
    assert!(err_of(&v).contains("malformed JSON"), "{v}");
    let (s, v) = harness::call_raw(
        &p.socket(),
        "VolumeDriver.Create",
        br#"{"Name": 5}"#.to_vec(),
    );
    assert_eq!(s, 400, "{v}");
    let big = format!(r#"{{"Name":"x","Opts":{{"a":"{}"}}}}"#, "y".repeat(2 << 20));
    let (s, v) = harness::call_raw(&p.socket(), "VolumeDriver.Create", big.into_bytes());
    assert_eq!(s, 413);
    assert!(err_of(&v).contains("larger than"), "{v}");
    let (s, v) = p.call("VolumeDriver.Frobnicate", json!({}));
    assert_eq!(s, 404);
    assert!(err_of(&v).contains("unknown call"));
    let (s, _) = p.call("Plugin.Activate", json!({}));
    assert_eq!(s, 200, "server still serves after bad clients");
}

#[test]
fn an_idle_or_broken_client_does_not_stop_others() {
    use std::io::Write;
    let p = Plugin::start(BIN);
    let _idle = std::os::unix::net::UnixStream::connect(p.socket()).unwrap();
    let mut broken = std::os::unix::net::UnixStream::connect(p.socket()).unwrap();
    broken.write_all(b"GARBAGE\r\n\r\n").unwrap();
    drop(broken);
    let mut half = std::os::unix::net::UnixStream::connect(p.socket()).unwrap();
    half.write_all(b"POST /VolumeDriver.List HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    let (s, _) = p.call("VolumeDriver.List", json!({}));
    assert_eq!(s, 200);
}

#[test]
fn socket_is_0660_and_sigterm_stops_cleanly() {
    let mut p = Plugin::start(BIN);
    let md = std::fs::metadata(p.socket()).unwrap();
    assert_eq!(md.mode() & 0o777, 0o660);
    assert_eq!(md.uid(), 0);
    let rec = std::fs::metadata(p.root().join("state/volumes")).unwrap();
    assert_eq!(rec.mode() & 0o777, 0o700, "state is root-only");
    let status = p.terminate();
    assert!(status.success(), "{status:?}: {}", p.log());
    assert!(!p.socket().exists(), "socket removed at shutdown");
}

#[test]
fn a_second_plugin_on_the_same_root_exits_naming_the_holder() {
    let p = Plugin::start(BIN);
    let pid = p.child.as_ref().unwrap().id();
    let out = std::process::Command::new(BIN)
        .arg("--root")
        .arg(p.root())
        .args(["plugin", "--socket"])
        .arg(p.dir.path().join("other.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("pid {pid}")), "{err}");
}

#[test]
fn state_records_are_root_only_files() {
    let p = Plugin::start(BIN);
    assert_eq!(create(&p, "perm", json!(null)), "");
    let md = std::fs::metadata(p.root().join("state/volumes/perm.json")).unwrap();
    assert_eq!(md.mode() & 0o777, 0o600);
}
