//! End-to-end against the real dockerd: the plugin on a legacy socket, `docker volume create` and `docker run`.

use crate::support::common;
use crate::support::legacy;

use common::{docker, docker_ok, ensure_busybox_image, require_docker, unique_name};
use legacy::{run, LegacyPlugin};

#[test]
fn docker_volumes_on_allspark_keep_data_owner_mode_and_flags() {
    let Some(_docker) = require_docker() else {
        return;
    };
    let image = ensure_busybox_image();
    let mut p = LegacyPlugin::start();
    let ws = unique_name("ws");
    let out = p.create(
        &ws,
        &[
            "uid=1000",
            "gid=1000",
            "mode=0750",
            "o=noatime,nodiratime",
            "class=important",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    run(&image, &format!("{ws}:/d"), "echo hello > /d/file && sync");
    let read = run(&image, &format!("{ws}:/d"), "cat /d/file");
    assert_eq!(
        read.trim(),
        "hello",
        "data written by one container is read by the next"
    );

    let st = run(&image, &format!("{ws}:/d"), "stat -c '%u %g %a' /d");
    assert_eq!(st.trim(), "1000 1000 750");
    let mi = run(
        &image,
        &format!("{ws}:/d"),
        "grep ' /d ' /proc/self/mountinfo",
    );
    let opts = mi.split_whitespace().nth(5).unwrap_or_default().to_string();
    assert!(
        opts.split(',').any(|o| o == "noatime"),
        "noatime not seen in the container: {mi}"
    );
    assert!(
        opts.split(',').any(|o| o == "nodiratime"),
        "nodiratime not seen in the container: {mi}"
    );

    let ro = unique_name("ro");
    assert!(p.create(&ro, &["o=ro"]).status.success());
    let mi = run(
        &image,
        &format!("{ro}:/d"),
        "grep ' /d ' /proc/self/mountinfo; touch /d/x 2>&1 || echo REFUSED",
    );
    assert!(
        mi.split_whitespace()
            .nth(5)
            .unwrap_or_default()
            .starts_with("ro"),
        "{mi}"
    );
    assert!(
        mi.contains("REFUSED"),
        "a read-only volume must refuse writes: {mi}"
    );

    let inspect = docker_ok(&["volume", "inspect", &ws]);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v[0]["Status"]["class"], "important", "{inspect}");
    assert_eq!(v[0]["Driver"], p.driver.as_str());
}

#[test]
fn docker_shows_our_error_for_bad_options_and_refuses_rm_in_use() {
    let Some(_docker) = require_docker() else {
        return;
    };
    let image = ensure_busybox_image();
    let mut p = LegacyPlugin::start();
    let bad = unique_name("bad");
    let out = p.create(&bad, &["colour=blue"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid option colour=\"blue\"") && err.contains("accepted keys"),
        "{err}"
    );
    let out = p.create(&bad, &["o=bind,sync"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("accepted flags"));

    let used = unique_name("used");
    assert!(p.create(&used, &[]).status.success());
    let ctr = unique_name("holder");
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &ctr,
        "-v",
        &format!("{used}:/d"),
        &image,
        "sleep",
        "300",
    ]);
    let out = docker(&["volume", "rm", &used]);
    let _ = docker(&["rm", "-f", &ctr]);
    assert!(
        !out.status.success(),
        "docker volume rm of a volume in use must fail"
    );
    let out = docker(&["volume", "rm", &used]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn volumes_survive_a_plugin_crash_and_mount_again() {
    let Some(_docker) = require_docker() else {
        return;
    };
    let image = ensure_busybox_image();
    let mut p = LegacyPlugin::start();
    let names: Vec<String> = (0..3).map(|i| unique_name(&format!("keep{i}"))).collect();
    for n in &names {
        assert!(p.create(n, &["class=critical"]).status.success());
        run(&image, &format!("{n}:/d"), &format!("echo {n} > /d/id"));
    }
    p.kill9();
    p.spawn();
    let ls = docker_ok(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("driver={}", p.driver),
    ]);
    for n in &names {
        assert!(
            ls.lines().any(|l| l == n),
            "{n} missing from docker volume ls: {ls}"
        );
        let inspect = docker_ok(&["volume", "inspect", n]);
        assert!(inspect.contains("\"critical\""), "{inspect}");
        assert_eq!(
            run(&image, &format!("{n}:/d"), "cat /d/id").trim(),
            n.as_str()
        );
    }
}
