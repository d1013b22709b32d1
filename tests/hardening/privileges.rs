//! Privileges: who can talk to the plugin, who can read its state, what the managed plugin asks
//! Docker for, and a read-only volume staying read-only for every container (end to end).

use crate::support::common;
use crate::support::harness;
use crate::support::legacy;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::{err_of, Plugin};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_allspark");

#[test]
fn the_socket_is_root_only_and_nobody_else_can_call() {
    let p = Plugin::start(BIN);
    let md = fs::symlink_metadata(p.socket()).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!(md.mode() & 0o7777, 0o660, "socket mode");
    assert_eq!((md.uid(), md.gid()), (0, 0), "socket owner");
    // An unprivileged user (nobody) is refused by the kernel before the plugin sees anything.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--unix-socket"])
        .arg(p.socket())
        .args(["-X", "POST", "-d", "{}", "http://plugin/VolumeDriver.List"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("curl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody could call the plugin");
    assert!(
        err.contains("Permission denied") || err.contains("Couldn't connect"),
        "{err}"
    );
    // Root can.
    let (status, _) = p.call("VolumeDriver.List", json!({}));
    assert_eq!(status, 200);
}

/// Every file allspark writes for itself is 0600, every directory 0700, owned by root.
#[test]
fn state_files_are_0600_and_state_directories_0700() {
    let p = Plugin::start(BIN);
    let agent = harness::Agent::offline(&p, &["--usage-interval", "1"]);
    // A workload touching every kind of state: records, locks, spool, snapshots, usage, stats.
    for (name, opts) in [
        ("plain", json!(null)),
        ("auto", json!({"snapshot": "on-unmount", "size": "1G"})),
        ("child", json!({"parent": "plain"})),
    ] {
        let (_, v) = p.call("VolumeDriver.Create", json!({"Name": name, "Opts": opts}));
        assert_eq!(err_of(&v), "", "{name}");
    }
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "auto", "ID": "c"}));
    let mp = PathBuf::from(v["Mountpoint"].as_str().unwrap());
    fs::write(mp.join("f"), b"data").unwrap();
    p.call("VolumeDriver.Unmount", json!({"Name": "auto", "ID": "c"}));
    let out = Command::new(BIN)
        .arg("--root")
        .arg(p.root())
        .args(["snapshot", "create", "plain"])
        .output()
        .unwrap();
    assert!(out.status.success());
    common::wait_until(
        "the agent's snapshot and usage",
        Duration::from_secs(30),
        || {
            p.root()
                .join("snapshots/auto")
                .read_dir()
                .map(|d| d.count() > 0)
                .unwrap_or(false)
                && p.root().join("state/usage/auto.json").exists()
                && fs::read_dir(p.root().join("spool")).unwrap().count() == 0
        },
    );
    std::thread::sleep(Duration::from_secs(6)); // the plugin's call statistics are flushed every 5 s
    drop(agent);

    let mut checked = 0;
    let mut wrong = Vec::new();
    let mut check = |path: &Path, want_dir: u32, want_file: u32| {
        let md = fs::symlink_metadata(path).unwrap();
        let mode = md.mode() & 0o7777;
        let want = if md.is_dir() { want_dir } else { want_file };
        checked += 1;
        if md.uid() != 0 || mode & !want != 0 {
            wrong.push(format!("{} {:o} uid {}", path.display(), mode, md.uid()));
        }
    };
    check(&p.root(), 0o700, 0);
    for top in ["state", "spool", "locks", "snapshots", "trash", "volumes"] {
        let base = p.root().join(top);
        check(&base, 0o700, 0o600);
        if top == "volumes" {
            continue; // volumes/<name>/data is the users' data, with the owner and mode they chose
        }
        let mut stack = vec![base];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                check(&e.path(), 0o700, 0o600);
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
            }
        }
    }
    for f in ["plugin.lock", "agent.lock"] {
        check(&p.root().join(f), 0o700, 0o600);
    }
    eprintln!("{checked} state files and directories checked");
    assert!(
        wrong.is_empty(),
        "more open than 0600/0700:\n{}",
        wrong.join("\n")
    );
}

/// The managed plugin asks Docker for CAP_SYS_ADMIN only, and for exactly the documented mounts.
#[test]
fn the_managed_plugin_asks_for_cap_sys_admin_only() {
    let config: Value = serde_json::from_str(
        &fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("plugin/config.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(config["linux"]["capabilities"], json!(["CAP_SYS_ADMIN"]));
    assert_ne!(config["linux"]["allowAllDevices"], json!(true));
    assert!(
        config["linux"]["devices"]
            .as_array()
            .is_none_or(|d| d.is_empty()),
        "devices: {}",
        config["linux"]["devices"]
    );
    for flag in ["ipcHost", "pidHost"] {
        assert_ne!(config[flag], json!(true), "{flag}");
    }
    assert_eq!(
        config["network"]["type"], "host",
        "documented: no network use, host chosen"
    );
    let mounts: Vec<(String, String, Vec<String>)> = config["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["source"].as_str().unwrap().to_string(),
                m["destination"].as_str().unwrap().to_string(),
                m["options"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        mounts,
        vec![
            (
                "/var/lib/allspark".to_string(),
                "/var/lib/allspark".to_string(),
                vec!["rbind".to_string(), "rw".to_string()]
            ),
            (
                "/".to_string(),
                "/host".to_string(),
                vec!["rbind".to_string(), "rslave".to_string()]
            ),
        ],
        "the plugin's mounts are the state root and the host view, nothing else"
    );
    assert_eq!(config["propagatedMount"], "/mnt/volumes");
}

#[test]
fn a_read_only_volume_stays_read_only_in_every_container() {
    let Some(_docker) = common::require_docker() else {
        return;
    };
    let image = common::ensure_busybox_image();
    let mut plugin = legacy::LegacyPlugin::start();
    let vol = common::unique_name("ro");
    let out = plugin.create(&vol, &["o=ro,nosuid,nodev"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspect = common::docker_ok(&["volume", "inspect", &vol]);
    let host_file = plugin.root().join("volumes").join(&vol).join("data/file");
    fs::write(&host_file, b"written by the host\n").unwrap_or_else(|e| {
        panic!(
            "{}: {e}\n{inspect}\n{}",
            host_file.display(),
            fs::read_to_string(plugin.dir.path().join("plugin.log")).unwrap_or_default()
        )
    });
    let mut cleanup = common::Cleanup::new();
    // Two containers at the same time, one asking for :rw explicitly, one with --mount.
    let a = common::unique_name("ro-a");
    let b = common::unique_name("ro-b");
    for n in [&a, &b] {
        cleanup.add(format!("docker rm -f {n} >/dev/null 2>&1"));
    }
    common::docker_ok(&[
        "run",
        "-d",
        "--name",
        &a,
        "-v",
        &format!("{vol}:/data:rw"),
        &image,
        "sleep",
        "3600",
    ]);
    common::docker_ok(&[
        "run",
        "-d",
        "--name",
        &b,
        "--mount",
        &format!("type=volume,src={vol},dst=/data"),
        &image,
        "sleep",
        "3600",
    ]);
    for c in [&a, &b] {
        let read = common::docker_ok(&["exec", c, "cat", "/data/file"]);
        assert_eq!(read, "written by the host\n");
        for attempt in [
            "touch /data/new",
            "echo x >> /data/file",
            "mkdir /data/d",
            "rm /data/file",
            "chmod 777 /data/file",
        ] {
            let out = common::docker(&["exec", c, "sh", "-c", attempt]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{c}: `{attempt}` succeeded");
            assert!(
                err.contains("Read-only file system"),
                "{c}: `{attempt}`: {err}"
            );
        }
        let info = common::docker_ok(&["exec", c, "cat", "/proc/self/mountinfo"]);
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == Some("/data"))
            .unwrap_or_else(|| panic!("{c}: no /data in {info}"));
        let opts: Vec<&str> = line.split(' ').nth(5).unwrap().split(',').collect();
        assert!(
            opts.contains(&"ro") && opts.contains(&"nosuid") && opts.contains(&"nodev"),
            "{c}: {line}"
        );
    }
    let (_, v) = harness::call_raw(
        &plugin.socket(),
        "VolumeDriver.Get",
        json!({"Name": vol}).to_string().into_bytes(),
    );
    assert_eq!(v["Volume"]["Status"]["mounted"], 2);
    common::docker_ok(&["rm", "-f", &a, &b]);
    assert_eq!(
        fs::read(plugin.root().join("volumes").join(&vol).join("data/file")).unwrap(),
        b"written by the host\n"
    );
    eprintln!(
        "read-only volume: 2 containers (:rw asked, --mount), 5 kinds of write refused in each"
    );
}
