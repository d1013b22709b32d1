//! Snapshots with the real dockerd: snapshot-on-unmount of an allspark volume and `allspark.snapshot=on-stop` of a local volume.

use crate::support::common;
use crate::support::legacy;

use std::time::Duration;

use common::{docker_ok, ensure_busybox_image, require_docker, unique_name, wait_until, Cleanup};
use legacy::{run, LegacyPlugin};

#[test]
fn a_stopped_container_leaves_a_snapshot_and_the_next_one_is_incremental() {
    let Some(_docker) = require_docker() else {
        return;
    };
    let image = ensure_busybox_image();
    let mut p = LegacyPlugin::start();
    let _agent = p.start_agent();
    let ws = unique_name("workspace");
    let out = p.create(&ws, &["snapshot=on-unmount", "uid=1000", "gid=1000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = format!("{ws}:/workspace");
    run(&image, &v, "for i in $(seq 1 100); do mkdir -p /workspace/src/m$((i % 10)); seq 1 2000 > /workspace/src/m$((i % 10))/f$i.txt; done");
    wait_until(
        "a snapshot after the container stopped",
        Duration::from_secs(60),
        || p.snapshots(&ws).len() == 1,
    );
    let first_listing = run(
        &image,
        &v,
        "find /workspace | sort | xargs md5sum 2>/dev/null | sort",
    );
    wait_until(
        "the snapshot of the listing run",
        Duration::from_secs(60),
        || p.snapshots(&ws).len() == 2,
    );

    run(&image, &v, "echo changed > /workspace/src/m1/f1.txt");
    wait_until("the incremental snapshot", Duration::from_secs(60), || {
        p.snapshots(&ws).len() == 3
    });
    let snaps = p.snapshots(&ws);
    assert_eq!(snaps[0]["trigger"], "unmount");
    assert!(snaps[0]["parent"].is_null());
    assert_eq!(snaps[2]["parent"], snaps[1]["id"]);
    let full = snaps[0]["bytes_in"].as_u64().unwrap();
    let incr = snaps[2]["bytes_in"].as_u64().unwrap();
    assert!(
        incr * 100 < full,
        "1 % changed: incremental read {incr} bytes of {full}"
    );

    let first = snaps[0]["id"].as_str().unwrap().to_string();
    p.cli_ok(&["snapshot", "restore", &ws, &first, "--yes"]);
    let restored = run(
        &image,
        &v,
        "find /workspace | sort | xargs md5sum 2>/dev/null | sort",
    );
    assert_eq!(
        restored, first_listing,
        "restoring the first snapshot gives the first state back"
    );
    assert_eq!(
        run(&image, &v, "stat -c '%u %g' /workspace").trim(),
        "1000 1000"
    );
}

#[test]
fn a_labelled_container_gets_its_local_volumes_snapshotted_when_it_stops() {
    let Some(_docker) = require_docker() else {
        return;
    };
    let image = ensure_busybox_image();
    let p = LegacyPlugin::start();
    let _agent = p.start_agent();
    let local = unique_name("localvol");
    docker_ok(&["volume", "create", &local]);
    let mut cleanup = Cleanup::new();
    cleanup.add(format!("docker volume rm -f {local}"));
    // Give the agent a moment to subscribe to events.
    std::thread::sleep(Duration::from_secs(1));
    docker_ok(&[
        "run",
        "--rm",
        "--label",
        "allspark.snapshot=on-stop",
        "-v",
        &format!("{local}:/data"),
        &image,
        "sh",
        "-c",
        "echo precious > /data/file",
    ]);
    wait_until(
        "a snapshot of the local volume",
        Duration::from_secs(60),
        || p.snapshots(&local).len() == 1,
    );
    let snaps = p.snapshots(&local);
    assert_eq!(snaps[0]["trigger"], "stop");
    assert_eq!(snaps[0]["driver"], "local");
    let id = snaps[0]["id"].as_str().unwrap().to_string();
    run(
        &image,
        &format!("{local}:/data"),
        "echo overwritten > /data/file",
    );
    p.cli_ok(&["snapshot", "verify", &local]);
    p.cli_ok(&["snapshot", "restore", &local, &id, "--yes"]);
    assert_eq!(
        run(&image, &format!("{local}:/data"), "cat /data/file").trim(),
        "precious"
    );
}

#[test]
fn a_container_that_stops_while_the_agent_is_down_is_caught_up_from_the_events_cursor() {
    let Some(_docker) = require_docker() else {
        return;
    };
    let image = ensure_busybox_image();
    let p = LegacyPlugin::start();
    let local = unique_name("missed");
    docker_ok(&["volume", "create", &local]);
    let mut cleanup = Cleanup::new();
    cleanup.add(format!("docker volume rm -f {local}"));
    let cursor = p.root().join("state/agent/events-cursor.json");
    {
        let _agent = p.start_agent();
        wait_until(
            "the agent to save its events cursor",
            Duration::from_secs(30),
            || cursor.exists(),
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The agent is down: this container's stop is only in dockerd's event log.
    docker_ok(&[
        "run",
        "--rm",
        "--label",
        "allspark.snapshot=on-stop",
        "-v",
        &format!("{local}:/data"),
        &image,
        "sh",
        "-c",
        "echo while-away > /data/file",
    ]);
    assert!(p.snapshots(&local).is_empty());
    let _agent = p.start_agent();
    wait_until(
        "the missed stop to be caught up",
        Duration::from_secs(60),
        || p.snapshots(&local).len() == 1,
    );
    assert_eq!(p.snapshots(&local)[0]["trigger"], "stop");
}
