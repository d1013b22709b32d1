//! A btrfs-image pool through the real dockerd (legacy test plugin): a container writing past `size=` gets EDQUOT (and its `df` shows the pool, not the limit) while another volume of the pool is unaffected, snapshot on stop is a read-only subvolume, a clone from it serves a container, `docker volume inspect` says the size is enforced. The same pool on the managed plugin built with `--loop-devices`, which makes, formats and mounts the image in its own namespace while the host's CLI mounts it through the same loop device. A volume with a filesystem of its own (`fs=btrfs`) on both: ENOSPC and its own `df` in the container.

use crate::support::common;
use crate::support::legacy;

use std::path::PathBuf;
use std::time::Duration;

use common::{
    cli_on, docker, docker_ok, ensure_busybox_image, forget_dead_legacy_drivers, loops_backing,
    plugin_script, plugin_script_ok, require_docker, unique_name, wait_until, Cleanup, TestPlugin,
};
use legacy::{run, LegacyPlugin};
use serde_json::Value;

/// `dd` of 200 MB into a volume limited to 64 MB: the container's output must show the quota.
const FILL_PAST_64M: &str =
    "dd if=/dev/zero of=/d/f bs=1M count=200 conv=fsync; echo rc=$?; du -m /d/f; df -k /d | tail -1";

/// `sh -c SCRIPT` in a container with `volume` at /d: its stdout and stderr, whatever its status.
fn container_output(image: &str, volume: &str, script: &str) -> String {
    let out = docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{volume}:/d"),
        image,
        "sh",
        "-c",
        script,
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Create every `(name, options)` on the legacy test plugin, or panic with Docker's refusal.
fn create_all(p: &mut LegacyPlugin, volumes: &[(&String, Vec<&str>)]) {
    for (name, opts) in volumes {
        let out = p.create(name, opts);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_btrfs_pool_limits_snapshots_and_clones_for_containers() {
    let Some(_docker) = require_docker() else {
        return;
    };
    let image = ensure_busybox_image();
    let mut p = LegacyPlugin::start_with(|dir| {
        vec![
            "--pool".into(),
            format!("p=btrfs-image:{}:3G", dir.join("p.img").display()),
        ]
    });
    let _agent = p.start_agent();
    let (small, other, ws) = (
        unique_name("small"),
        unique_name("other"),
        unique_name("ws"),
    );
    create_all(
        &mut p,
        &[
            (&small, vec!["pool=p", "size=64M"]),
            (&other, vec!["pool=p"]),
            (&ws, vec!["pool=p", "snapshot=on-unmount", "uid=1000"]),
        ],
    );

    // Past size=64M the container's write fails; the pool's other volume takes 100 MB.
    let text = container_output(&image, &small, FILL_PAST_64M);
    assert!(text.contains("Disk quota exceeded"), "{text}");
    assert!(!text.contains("rc=0"), "{text}");
    let used: u64 = text
        .lines()
        .find_map(|l| {
            l.split_whitespace()
                .next()
                .filter(|_| l.ends_with("/d/f"))?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no du line: {text}"));
    assert!((48..=64).contains(&used), "stopped at {used} MB: {text}");
    // What the container's df shows is the pool (3 GB), not the 64 MB limit (README: "What a
    // container sees at the limit").
    let df_total_kb: u64 = text
        .lines()
        .find(|l| l.split_whitespace().last() == Some("/d"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no df line: {text}"));
    assert!(df_total_kb > 2 << 20, "df shows {df_total_kb} KB: {text}");
    let out = run(
        &image,
        &format!("{other}:/d"),
        "dd if=/dev/zero of=/d/f bs=1M count=100 conv=fsync 2>/dev/null; echo rc=$?; du -m /d/f",
    );
    assert!(out.contains("rc=0") && out.contains("100\t/d/f"), "{out}");
    let inspect: Value = serde_json::from_str(&docker_ok(&["volume", "inspect", &small])).unwrap();
    let status = &inspect[0]["Status"];
    assert_eq!(status["size_enforced"], true, "{status}");
    assert_eq!(status["pool"], "p", "{status}");

    // Snapshot on stop: a read-only subvolume; a clone of it serves the next container.
    run(
        &image,
        &format!("{ws}:/w"),
        "echo precious > /w/file; mkdir /w/src",
    );
    wait_until("the snapshot on stop", Duration::from_secs(60), || {
        !p.snapshots(&ws).is_empty()
    });
    let snap = &p.snapshots(&ws)[0];
    assert!(snap["kind"].as_str().unwrap().starts_with("cow"), "{snap}");
    let id = snap["id"].as_str().unwrap().to_string();
    let clone = unique_name("clone");
    let out = p.create(&clone, &["pool=p", &format!("template=snapshot:{ws}@{id}")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        run(
            &image,
            &format!("{clone}:/c"),
            "cat /c/file; stat -c '%u' /c"
        )
        .trim(),
        "precious\n1000"
    );
    wait_until(
        "the archive of the snapshot",
        Duration::from_secs(60),
        || p.snapshots(&ws)[0]["kind"] == "cow+archive",
    );
    for v in [&small, &other, &ws, &clone] {
        docker_ok(&["volume", "rm", v]);
    }
    p.volumes.clear();
}

#[test]
fn the_managed_plugin_with_loop_devices_makes_and_serves_a_btrfs_image_pool() {
    let Some(_docker) = require_docker() else {
        return;
    };
    let image = ensure_busybox_image();
    forget_dead_legacy_drivers();
    let mut pool_image = PathBuf::new();
    let plugin = TestPlugin::start_with("allspark-test-loops", &["--loop-devices"], |root| {
        pool_image = root.base.join("p.img");
        vec![format!(
            "ALLSPARK_POOLS=p=btrfs-image:{}:2G",
            pool_image.display()
        )]
    });
    let config: Value = serde_json::from_str(&docker_ok(&[
        "plugin",
        "inspect",
        "--format",
        "{{json .Config.Linux}}",
        &plugin.name,
    ]))
    .unwrap();
    assert_eq!(config["AllowAllDevices"], true, "{config}");
    // The plugin made and formatted the image itself (mkfs.btrfs in its rootfs) and mounted it
    // in its own namespace: one loop device, and no mount on the host.
    wait_until("the pool image", Duration::from_secs(30), || {
        loops_backing(&pool_image).len() == 1
    });
    let host_mount = plugin.root.root().join("pools/p");
    let mounted_on_host = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&format!(" {} ", host_mount.display()))
    };
    assert!(!mounted_on_host());
    let mut cleanup = Cleanup::new();
    cleanup.add(format!(
        "umount -l {} 2>/dev/null; true",
        host_mount.display()
    ));
    let (small, ws) = (unique_name("small"), unique_name("ws"));
    cleanup.add(format!("docker volume rm -f {small} {ws} >/dev/null"));
    for (name, opts) in [
        (&small, ["pool=p", "size=64M"]),
        (&ws, ["pool=p", "uid=1000"]),
    ] {
        let mut args = vec!["volume", "create", "-d", &plugin.name, name.as_str()];
        for o in opts {
            args.extend(["-o", o]);
        }
        docker_ok(&args);
    }
    let text = container_output(&image, &small, FILL_PAST_64M);
    assert!(
        text.contains("Disk quota exceeded") && !text.contains("rc=0"),
        "{text}"
    );
    let put = docker_ok(&[
        "run", "--rm", "-v", &format!("{ws}:/w"), &image, "sh", "-c",
        "echo precious > /w/file && dd if=/dev/zero of=/w/big bs=1M count=100 conv=fsync 2>/dev/null && echo rc=$? && stat -c %u /w",
    ]);
    assert_eq!(put.trim(), "rc=0\n1000", "{put}");

    // The host's CLI reaches the pool: it mounts it through the plugin's loop device (a second
    // one would be a second filesystem over the same bytes).
    let snap = cli_on(&plugin.root.root(), &["snapshot", "create", &ws]);
    assert!(mounted_on_host(), "{snap}");
    assert_eq!(loops_backing(&pool_image).len(), 1);
    let listed: Value = serde_json::from_str(&cli_on(
        &plugin.root.root(),
        &["snapshot", "ls", &ws, "--json"],
    ))
    .unwrap();
    assert!(
        listed[0]["kind"].as_str().unwrap().starts_with("cow"),
        "{listed}"
    );
    assert_eq!(
        std::fs::read(host_mount.join("volumes").join(&ws).join("file")).unwrap(),
        b"precious\n"
    );

    // A plugin restart: the data is served again (the host's mount is still there; the
    // plugin's own is gone with its namespace and is made again, through the same device).
    docker_ok(&["plugin", "disable", "-f", &plugin.name]);
    docker_ok(&["plugin", "enable", &plugin.name]);
    assert_eq!(container_output(&image, &ws, "cat /d/file"), "precious\n");
    assert_eq!(loops_backing(&pool_image).len(), 1);

    // An upgrade keeps the permission and the pools: build.sh refuses to replace the plugin
    // by one without loop devices, and carries ALLSPARK_POOLS over to one with them.
    let out = plugin_script("build.sh", &[&plugin.name]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("pass --loop-devices"),
        "{out:?}"
    );
    plugin_script_ok("build.sh", &["--loop-devices", &plugin.name]);
    let env = docker_ok(&[
        "plugin",
        "inspect",
        "--format",
        "{{json .Settings.Env}}",
        &plugin.name,
    ]);
    assert!(env.contains("ALLSPARK_POOLS=p=btrfs-image:"), "{env}");
    assert_eq!(container_output(&image, &ws, "cat /d/file"), "precious\n");
    // A volume with a filesystem of its own (fs=btrfs) from the same plugin: ENOSPC in the
    // container, its image gone with it.
    let own = unique_name("own");
    cleanup.add(format!("docker volume rm -f {own} >/dev/null"));
    docker_ok(&[
        "volume",
        "create",
        "-d",
        &plugin.name,
        "-o",
        "fs=btrfs",
        "-o",
        "size=300M",
        &own,
    ]);
    let text = container_output(
        &image,
        &own,
        &FILL_PAST_64M.replace("count=200", "count=400"),
    );
    assert!(text.contains("No space left on device"), "{text}");
    let own_image = plugin
        .root
        .root()
        .join("pools")
        .join(format!("{own}.fs.img"));
    assert!(own_image.exists());
    docker_ok(&["volume", "rm", &small, &ws, &own]);
    assert!(!own_image.exists(), "the image goes with the volume");
    drop(cleanup);
    drop(plugin);
}

#[test]
fn a_volume_with_its_own_filesystem_gives_containers_enospc_and_its_own_df() {
    let Some(_docker) = require_docker() else {
        return;
    };
    let image = ensure_busybox_image();
    let mut p = LegacyPlugin::start();
    let (own, other) = (unique_name("own"), unique_name("other"));
    create_all(
        &mut p,
        &[(&own, vec!["fs=btrfs", "size=300M"]), (&other, vec![])],
    );
    let text = container_output(
        &image,
        &own,
        &FILL_PAST_64M.replace("count=200", "count=400"),
    );
    assert!(
        text.contains("No space left on device") && !text.contains("rc=0"),
        "{text}"
    );
    // df in the container shows the volume's own 300 MB, not the host's disk.
    let df_total_kb: u64 = text
        .lines()
        .find(|l| l.split_whitespace().last() == Some("/d"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no df line: {text}"));
    assert!(
        (250 << 10..=300 << 10).contains(&df_total_kb),
        "df shows {df_total_kb} KB: {text}"
    );
    let out = run(
        &image,
        &format!("{other}:/d"),
        "dd if=/dev/zero of=/d/f bs=1M count=100 conv=fsync 2>/dev/null; echo rc=$?",
    );
    assert!(out.contains("rc=0"), "{out}");
    let inspect: Value = serde_json::from_str(&docker_ok(&["volume", "inspect", &own])).unwrap();
    assert_eq!(inspect[0]["Status"]["size_enforced"], true, "{inspect}");
    let img = p.root().join("pools").join(format!("{own}.fs.img"));
    assert!(img.exists());
    docker_ok(&["volume", "rm", &own, &other]);
    p.volumes.clear();
    assert!(!img.exists(), "the image goes with the volume");
    assert!(loops_backing(&img).is_empty());
}
