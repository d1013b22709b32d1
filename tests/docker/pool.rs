//! A btrfs-image pool through the real dockerd (legacy test plugin): a container writing past `size=` gets EDQUOT (and its `df` shows the pool, not the limit) while another volume of the pool is unaffected, snapshot on stop is a read-only subvolume, a clone from it serves a container, `docker volume inspect` says the size is enforced.

use crate::support::common;
use crate::support::legacy;

use std::time::Duration;

use common::{docker, docker_ok, ensure_busybox_image, require_docker, unique_name, wait_until};
use legacy::{run, LegacyPlugin};
use serde_json::Value;

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
    for (name, opts) in [
        (&small, vec!["pool=p", "size=64M"]),
        (&other, vec!["pool=p"]),
        (&ws, vec!["pool=p", "snapshot=on-unmount", "uid=1000"]),
    ] {
        let out = p.create(name, &opts);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Past size=64M the container's write fails; the pool's other volume takes 100 MB.
    let out = docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{small}:/d"),
        &image,
        "sh",
        "-c",
        "dd if=/dev/zero of=/d/f bs=1M count=200 conv=fsync; echo rc=$?; du -m /d/f; df -k /d | tail -1",
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
