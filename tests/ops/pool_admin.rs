//! Pool administration without Docker, on real btrfs images: `pool create` from the CLI (durable, completed after a kill), `volume migrate --pool` between the default pool and two btrfs pools (with its crash points), and the refusal to remove a volume whose newest read-only snapshot has no archive yet.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

use super::pool::{
    create, data, is_subvolume, kinds, mount, pool_is_mounted, pool_plugin, pool_root, recovered,
    unmount, unmount_path, BIN,
};
use crate::support::harness::{cli, cli_ok, err_of, noise, Plugin};

/// The CLI with `ALLSPARK_CRASH_AT=<step>`: it must abort there.
fn cli_crashing(p: &Plugin, step: &str, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .arg("--root")
        .arg(p.root())
        .args(args)
        .env("ALLSPARK_CRASH_AT", step)
        .env("ALLSPARK_DOCKER", "unix:///nonexistent.sock")
        .output()
        .unwrap();
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains(step),
        "allspark {args:?} did not crash at {step}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `cli` that must fail; its stderr.
fn cli_err(p: &Plugin, args: &[&str]) -> String {
    let out = cli(p, args);
    assert!(!out.status.success(), "allspark {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn pool_ls(p: &Plugin, name: &str) -> Value {
    let all: Value = serde_json::from_str(&cli_ok(p, &["pool", "ls", "--json"])).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("pool {name} not listed: {all}"))
}

fn record(p: &Plugin, name: &str) -> Value {
    serde_json::from_str::<Value>(&cli_ok(p, &["volume", "inspect", name])).unwrap()["record"]
        .clone()
}

fn image_pool_mount(p: &Plugin, name: &str) -> PathBuf {
    p.root().join("pools").join(name)
}

#[test]
fn pool_create_is_durable_and_an_interrupted_creation_is_completed() {
    let mut p = Plugin::start(BIN);
    let img = p.dir.path().join("fast.img");
    let spec = format!("btrfs-image:{}:1G", img.display());
    let partial = PathBuf::from(format!("{}.allspark-partial", img.display()));

    // Killed after the image was sized, before it was formatted.
    cli_crashing(&p, "pool-image-sized", &["pool", "create", "fast", &spec]);
    assert!(partial.exists() && !img.exists());
    let fast = pool_ls(&p, "fast");
    assert_eq!(fast["ready"], false, "{fast}");
    assert!(
        fast["problem"]
            .as_str()
            .unwrap()
            .contains("pool create fast"),
        "{fast}"
    );
    let (_, v) = p.call(
        "VolumeDriver.Create",
        json!({"Name": "early", "Opts": {"pool": "fast"}}),
    );
    assert!(
        err_of(&v).contains("was interrupted") && err_of(&v).contains("pool create fast"),
        "no volume in a half-created pool: {v}"
    );
    // The next plugin start completes it (the half-built image deleted and built again).
    p.terminate();
    p.spawn();
    recovered(&p);
    assert!(!partial.exists() && img.exists(), "{}", p.log());
    assert_eq!(pool_ls(&p, "fast")["ready"], true, "{}", p.log());

    // Killed after its entry was recorded: the same command again completes it.
    let img2 = p.dir.path().join("slow.img");
    let spec2 = format!("btrfs-image:{}:512M", img2.display());
    cli_crashing(
        &p,
        "pool-entry-recorded",
        &["pool", "create", "slow", &spec2],
    );
    let other = cli_err(&p, &["pool", "create", "slow", &spec]);
    assert!(
        other.contains("was interrupted") && other.contains(&spec2),
        "{other}"
    );
    let out = cli_ok(&p, &["pool", "create", "slow", &spec2]);
    assert!(out.contains("interrupted creation was completed"), "{out}");
    assert!(is_subvolume_root_ready(&image_pool_mount(&p, "slow")));

    // Refusals: the same name, the same image, an existing file (kept as it was).
    assert!(cli_err(&p, &["pool", "create", "fast", &spec]).contains("already exists"));
    assert!(cli_err(&p, &["pool", "create", "again", &spec]).contains("already uses"));
    let theirs = p.dir.path().join("theirs.img");
    std::fs::write(&theirs, b"not ours").unwrap();
    let e = cli_err(
        &p,
        &[
            "pool",
            "create",
            "x",
            &format!("btrfs-image:{}:1G", theirs.display()),
        ],
    );
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(std::fs::read(&theirs).unwrap(), b"not ours");
    assert!(cli_err(&p, &["pool", "create", "y", "zfs:/tank"]).contains("unknown kind"));
    // A creation that fails is undone: no entry is left behind.
    let plain = p.dir.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let e = cli_err(
        &p,
        &["pool", "create", "z", &format!("btrfs:{}", plain.display())],
    );
    assert!(e.contains("not a btrfs filesystem"), "{e}");
    let listed: Value = serde_json::from_str(&cli_ok(&p, &["pool", "ls", "--json"])).unwrap();
    assert!(
        !listed.as_array().unwrap().iter().any(|x| x["name"] == "z"),
        "{listed}"
    );

    // Volumes in a created pool are subvolumes; the pool survives a restart of a plugin that
    // does not configure it, and its image unmounted behind the plugin's back.
    create(&p, "ws", json!({"pool": "fast"}));
    let ws = image_pool_mount(&p, "fast").join("volumes/ws");
    assert!(is_subvolume(&ws));
    std::fs::write(ws.join("f"), b"kept").unwrap();
    p.terminate();
    unmount_path(&image_pool_mount(&p, "fast"));
    p.spawn();
    let m = mount(&p, "ws", "c1");
    assert_eq!(std::fs::read(m.join("f")).unwrap(), b"kept");
    unmount(&p, "ws", "c1");
    let fast = pool_ls(&p, "fast");
    assert_eq!(
        (&fast["ready"], &fast["created"]),
        (&json!(true), &json!(true)),
        "{fast}"
    );
}

/// A created pool's root: mounted btrfs with the pool's directories.
fn is_subvolume_root_ready(root: &Path) -> bool {
    root.join(".allspark-pool").is_file() && root.join("volumes").is_dir()
}

#[test]
fn volume_migrate_moves_a_volume_between_pools_and_keeps_its_snapshots() {
    let p = pool_plugin();
    let q_img = p.dir.path().join("q.img");
    cli_ok(
        &p,
        &[
            "pool",
            "create",
            "q",
            &format!("btrfs-image:{}:1G", q_img.display()),
        ],
    );
    create(
        &p,
        "db",
        json!({"uid": "999", "mode": "0750", "size": "200M"}),
    );
    let m = mount(&p, "db", "c1");
    std::fs::create_dir_all(m.join("base")).unwrap();
    std::fs::write(m.join("base/blob"), noise(5, 3 << 20)).unwrap();
    std::os::unix::fs::symlink("base/blob", m.join("link")).unwrap();
    // Refused while mounted, naming the count.
    let e = cli_err(&p, &["volume", "migrate", "db", "--pool", "p"]);
    assert!(e.contains("mounted by 1 container"), "{e}");
    unmount(&p, "db", "c1");
    let old = p.root().join("volumes/db/data");

    // Killed after the copy: the record still names the old place; the next run starts over.
    cli_crashing(
        &p,
        "tier.copied",
        &["volume", "migrate", "db", "--pool", "p"],
    );
    assert_eq!(record(&p, "db")["data"]["kind"], "managed");
    assert!(pool_root(&p).join("volumes/.creating-db").exists());
    let out = cli_ok(&p, &["volume", "migrate", "db", "--pool", "p"]);
    assert!(out.contains("old data kept"), "{out}");
    assert!(!pool_root(&p).join("volumes/.creating-db").exists());
    let moved = data(&p, "db");
    assert!(is_subvolume(&moved), "data on a btrfs pool is a subvolume");
    assert_eq!(
        std::fs::read(moved.join("base/blob")).unwrap(),
        noise(5, 3 << 20)
    );
    assert_eq!(
        std::fs::read_link(moved.join("link")).unwrap(),
        Path::new("base/blob")
    );
    let md = std::fs::metadata(&moved).unwrap();
    assert_eq!((md.uid(), md.permissions().mode() & 0o7777), (999, 0o750));
    let usage: Value = serde_json::from_str(&cli_ok(&p, &["pool", "usage", "--json"])).unwrap();
    let row = usage["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["volume"] == "db")
        .unwrap()
        .clone();
    assert_eq!(
        (&row["pool"], &row["enforced"]),
        (&json!("p"), &json!(true)),
        "size= is a limit in the new pool: {row}"
    );
    assert!(
        old.join("base/blob").exists(),
        "the old data stays until cleanup"
    );
    let e = cli_err(&p, &["volume", "migrate", "db", "--pool", "q"]);
    assert!(e.contains("volume cleanup db"), "{e}");
    cli_ok(&p, &["volume", "cleanup", "db"]);
    assert!(!old.exists());

    // A read-only snapshot without its archive is archived before the volume leaves the pool;
    // across filesystems the data is copied, and --delete-source drops the old subvolume and
    // its read-only snapshots.
    let id = cli_ok(&p, &["snapshot", "create", "db", "--no-archive"])
        .trim()
        .to_string();
    assert_eq!(kinds(&p, "db"), ["cow"]);
    cli_ok(
        &p,
        &["volume", "migrate", "db", "--pool", "q", "--delete-source"],
    );
    let in_q = image_pool_mount(&p, "q").join("volumes/db");
    assert!(is_subvolume(&in_q));
    assert_eq!(
        std::fs::read(in_q.join("base/blob")).unwrap(),
        noise(5, 3 << 20)
    );
    assert!(!data(&p, "db").exists() && !pool_root(&p).join("snapshots/db").exists());
    let s = p.snapshots("db");
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(
        (s[0]["id"].as_str(), s[0]["kind"].as_str()),
        (Some(id.as_str()), Some("archive"))
    );

    // Killed after the switch, before the rename: the next open rolls it forward.
    cli_crashing(
        &p,
        "tier.switched",
        &["volume", "migrate", "db", "--pool", "p"],
    );
    assert_eq!(record(&p, "db")["data"]["pool"], "p");
    let m = mount(&p, "db", "c2");
    assert_eq!(
        std::fs::read(m.join("base/blob")).unwrap(),
        noise(5, 3 << 20)
    );
    unmount(&p, "db", "c2");
    assert!(data(&p, "db").exists() && !pool_root(&p).join("volumes/.creating-db").exists());

    // Back to the default pool.
    cli_ok(&p, &["volume", "cleanup", "db"]);
    assert!(!in_q.exists(), "the copy in q is deleted by cleanup");
    cli_ok(
        &p,
        &[
            "volume",
            "migrate",
            "db",
            "--pool",
            "default",
            "--delete-source",
        ],
    );
    assert_eq!(
        std::fs::read(old.join("base/blob")).unwrap(),
        noise(5, 3 << 20)
    );
    assert!(!data(&p, "db").exists());
    let rec = record(&p, "db");
    assert_eq!(rec["data"]["kind"], "managed", "{rec}");
    assert!(rec["options"].get("pool").is_none(), "{rec}");
    assert!(pool_is_mounted(&p));
}

#[test]
fn a_volume_whose_newest_read_only_snapshot_has_no_archive_is_not_removed() {
    let p = pool_plugin();
    create(&p, "ws", json!({"pool": "p"}));
    std::fs::write(data(&p, "ws").join("f"), b"only here").unwrap();
    let id = cli_ok(&p, &["snapshot", "create", "ws", "--no-archive"])
        .trim()
        .to_string();
    let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": "ws"}));
    let e = err_of(&v);
    assert!(
        e.contains(&id) && e.contains("no archive yet") && e.contains("snapshot archive ws"),
        "{v}"
    );
    assert!(data(&p, "ws").join("f").exists(), "nothing was removed");
    assert_eq!(kinds(&p, "ws"), ["cow"]);
    cli_ok(&p, &["snapshot", "archive", "ws"]);
    assert_eq!(kinds(&p, "ws"), ["cow+archive"]);
    let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": "ws"}));
    assert_eq!(err_of(&v), "", "{v}");
    assert!(!data(&p, "ws").exists());
    // The archive outlives the volume and restores without it.
    let s = p.snapshots("ws");
    assert_eq!(
        (s.len(), s[0]["kind"].as_str()),
        (1, Some("archive")),
        "{s:?}"
    );
}

#[test]
fn the_shipped_compose_file_puts_workspaces_on_a_named_cow_pool_and_works_without_one() {
    let p = Plugin::start_with_pool(BIN, "bulk", "1G", &[]);
    let fast = p.dir.path().join("fast");
    cli_ok(
        &p,
        &["pool", "create", "fast", &format!("dir:{}", fast.display())],
    );
    let unset = crate::support::common::compose_volume_opts(&[]);
    let named = crate::support::common::compose_volume_opts(&[
        ("ALLSPARK_WORKSPACE_POOL", "bulk"),
        ("ALLSPARK_FAST_POOL", "fast"),
    ]);
    for (suffix, vols) in [("a", &unset), ("b", &named)] {
        for (short, opts) in vols.iter() {
            let name = format!("{short}-{suffix}");
            let mut opts = opts.clone();
            // Host paths may be swapped, options never: the device= directory moves under
            // this plugin's bind root.
            if opts.contains_key("device") {
                let dev = p.bind_root().join(&name);
                opts.insert("device".into(), dev.display().to_string());
            }
            create(&p, &name, json!(opts));
        }
    }
    let placed = |name: &str| -> String {
        let d = &record(&p, name)["data"];
        match d["kind"].as_str().unwrap() {
            "pool" => d["pool"].as_str().unwrap().to_string(),
            other => other.to_string(),
        }
    };
    for (short, _) in &unset {
        let expected = if short == "postgres-data" {
            "host"
        } else {
            "managed"
        };
        assert_eq!(
            placed(&format!("{short}-a")),
            expected,
            "{short} without pools"
        );
    }
    for (short, want) in [
        ("postgres-data", "host"),
        ("redis-data", "fast"),
        ("builder-data", "fast"),
        ("target-workspaces", "bulk"),
        ("shared-ssh-keys", "managed"),
        ("log-data", "bulk"),
    ] {
        assert_eq!(
            placed(&format!("{short}-b")),
            want,
            "{short} with pools named"
        );
    }
    let ws = p.root().join("pools/bulk/volumes/target-workspaces-b");
    assert!(is_subvolume(&ws), "the workspaces are a btrfs subvolume");
    assert!(fast.join("volumes/redis-data-b").is_dir());
    assert_eq!(unset.len(), 6, "{unset:?}");
}
