//! Operating volumes: templates, parent volumes, migration under crashes, workspace prune.

use crate::support::harness;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use harness::{cli_env, err_of, Plugin};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_allspark");

fn cli_ok(p: &Plugin, args: &[&str]) -> String {
    let out = cli_env(p, args, &[]);
    assert!(
        out.status.success(),
        "allspark {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn create(p: &Plugin, name: &str, opts: Value) -> String {
    err_of(
        &p.call("VolumeDriver.Create", json!({"Name": name, "Opts": opts}))
            .1,
    )
}

fn mount(p: &Plugin, name: &str, id: &str) -> PathBuf {
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": name, "ID": id}));
    assert_eq!(err_of(&v), "", "{v}");
    PathBuf::from(v["Mountpoint"].as_str().unwrap())
}

fn unmount(p: &Plugin, name: &str, id: &str) {
    let (_, v) = p.call("VolumeDriver.Unmount", json!({"Name": name, "ID": id}));
    assert_eq!(err_of(&v), "", "{v}");
}

fn owner_mode(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

fn base_template(p: &Plugin) {
    assert_eq!(
        create(
            p,
            "base",
            json!({"uid": "1000", "gid": "1000", "mode": "0750"})
        ),
        ""
    );
    let d = p.managed_data("base");
    std::fs::create_dir(d.join("app")).unwrap();
    std::fs::write(d.join("app/Gemfile"), b"source 'https://rubygems.org'\n").unwrap();
    std::os::unix::fs::chown(d.join("app"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::chown(d.join("app/Gemfile"), Some(1000), Some(1001)).unwrap();
    std::fs::set_permissions(
        d.join("app/Gemfile"),
        std::fs::Permissions::from_mode(0o604),
    )
    .unwrap();
    std::os::unix::fs::symlink("app/Gemfile", d.join("link")).unwrap();
}

#[test]
fn templates_copy_a_volume_or_a_snapshot_with_owners_and_modes() {
    let p = Plugin::start(BIN);
    base_template(&p);
    assert_eq!(create(&p, "project-a", json!({"template": "base"})), "");
    let a = p.managed_data("project-a");
    assert_eq!(
        std::fs::read(a.join("app/Gemfile")).unwrap(),
        b"source 'https://rubygems.org'\n"
    );
    assert_eq!(owner_mode(&a.join("app/Gemfile")), (1000, 1001, 0o604));
    assert_eq!(owner_mode(&a.join("app")).0, 1000);
    assert_eq!(
        owner_mode(&a),
        (1000, 1000, 0o750),
        "the template's root owner and mode come along"
    );
    assert_eq!(
        std::fs::read_link(a.join("link")).unwrap(),
        Path::new("app/Gemfile")
    );

    let id = cli_ok(&p, &["snapshot", "create", "base"])
        .trim()
        .to_string();
    std::fs::write(p.managed_data("base").join("app/Gemfile"), b"changed later").unwrap();
    assert_eq!(
        create(
            &p,
            "project-b",
            json!({"template": format!("snapshot:base@{id}"), "uid": "2000"})
        ),
        ""
    );
    let b = p.managed_data("project-b");
    assert_eq!(
        std::fs::read(b.join("app/Gemfile")).unwrap(),
        b"source 'https://rubygems.org'\n",
        "the snapshot's content, not today's"
    );
    assert_eq!(owner_mode(&b.join("app/Gemfile")), (1000, 1001, 0o604));
    assert_eq!(
        owner_mode(&b).0,
        2000,
        "the new volume's own uid= wins on its root"
    );

    for bad in [
        "nosuch",
        "snapshot:base@20200101T000000.000000Z",
        "snapshot:base",
        "../base",
    ] {
        let err = create(&p, "project-bad", json!({"template": bad}));
        assert!(err.contains("template"), "{bad}: {err}");
        assert!(
            !p.root().join("volumes/project-bad").exists(),
            "{bad}: nothing half-created"
        );
        let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "project-bad"}));
        assert!(!err_of(&v).is_empty());
    }
}

#[test]
fn a_child_volume_is_a_subdirectory_of_its_parent() {
    let p = Plugin::start(BIN);
    assert_eq!(
        create(
            &p,
            "target-workspaces",
            json!({"uid": "1000", "gid": "1000"})
        ),
        ""
    );
    assert_eq!(
        create(
            &p,
            "project-abc123",
            json!({"parent": "target-workspaces", "uid": "1000"})
        ),
        ""
    );
    assert_eq!(
        create(&p, "project-def456", json!({"parent": "target-workspaces"})),
        ""
    );
    let err = create(&p, "orphan", json!({"parent": "nosuch"}));
    assert!(err.contains("parent=nosuch"), "{err}");

    let child = mount(&p, "project-abc123", "t1");
    std::fs::write(child.join("app.rb"), b"puts 1").unwrap();
    assert_eq!(
        std::fs::read_dir(&child).unwrap().count(),
        1,
        "a target sees only its own project"
    );
    let parent = mount(&p, "target-workspaces", "builder");
    let mut seen: Vec<String> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        ["project-abc123", "project-def456"],
        "the builder sees every project"
    );
    assert_eq!(
        std::fs::read(parent.join("project-abc123/app.rb")).unwrap(),
        b"puts 1"
    );
    unmount(&p, "target-workspaces", "builder");
    unmount(&p, "project-abc123", "t1");

    let id = cli_ok(&p, &["snapshot", "create", "project-abc123"])
        .trim()
        .to_string();
    let ls: Value =
        serde_json::from_str(&cli_ok(&p, &["snapshot", "ls", "project-abc123", "--json"])).unwrap();
    assert_eq!(ls[0]["id"], id.as_str());
    assert!(
        ls[0]["files"].as_u64().unwrap() <= 2,
        "the child's snapshot covers only the child: {ls}"
    );

    let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": "target-workspaces"}));
    assert!(err_of(&v).contains("parent of"), "{v}");
    let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": "project-def456"}));
    assert_eq!(err_of(&v), "");
    assert!(!p
        .managed_data("target-workspaces")
        .join("project-def456")
        .exists());
    assert!(p
        .managed_data("target-workspaces")
        .join("project-abc123/app.rb")
        .exists());
}

#[test]
fn migration_interrupted_at_every_step_leaves_the_data_reachable() {
    let p = Plugin::start(BIN);
    assert_eq!(
        create(&p, "mig", json!({"uid": "1000", "mode": "0700"})),
        ""
    );
    for i in 0..50 {
        std::fs::write(
            p.managed_data("mig").join(format!("f{i}")),
            format!("content {i}"),
        )
        .unwrap();
    }
    let expect = |dir: &Path| {
        for i in 0..50 {
            assert_eq!(
                std::fs::read_to_string(dir.join(format!("f{i}"))).unwrap(),
                format!("content {i}")
            );
        }
    };
    let mp = mount(&p, "mig", "c");
    let out = cli_env(
        &p,
        &[
            "volume",
            "migrate",
            "mig",
            "--to",
            p.bind_root().join("new").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "refused while mounted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("mounted by 1"));
    unmount(&p, "mig", "c");
    drop(mp);

    for (round, step) in ["migrate.copied", "migrate.verified", "migrate.switched"]
        .iter()
        .enumerate()
    {
        let to = p.bind_root().join(format!("place{round}"));
        let out = cli_env(
            &p,
            &["volume", "migrate", "mig", "--to", to.to_str().unwrap()],
            &[("ALLSPARK_CRASH_AT", step)],
        );
        assert!(!out.status.success(), "the crash hook must fire at {step}");
        let mp = mount(&p, "mig", "after-crash");
        expect(&mp);
        assert_eq!(owner_mode(&mp), (1000, 0, 0o700), "after a crash at {step}");
        unmount(&p, "mig", "after-crash");
    }
    let to = p.bind_root().join("final");
    let out = cli_env(
        &p,
        &["volume", "migrate", "mig", "--to", to.to_str().unwrap()],
        &[],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("allspark volume cleanup mig"),
        "old data must be cleaned first"
    );
    cli_ok(&p, &["volume", "cleanup", "mig"]);
    assert!(
        !p.root().join("volumes/mig").exists(),
        "the managed data is deleted on cleanup"
    );
    cli_ok(
        &p,
        &["volume", "migrate", "mig", "--to", to.to_str().unwrap()],
    );
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "mig"}));
    assert_eq!(v["Volume"]["Status"]["device"], to.to_str().unwrap());
    expect(&to);
    let mp = mount(&p, "mig", "final");
    std::fs::write(mp.join("written-after"), b"new place").unwrap();
    unmount(&p, "mig", "final");
    assert!(
        to.join("written-after").exists(),
        "the volume now lives at the new place"
    );
    let out = cli_env(
        &p,
        &["volume", "cleanup", "mig"],
        &[("ALLSPARK_CRASH_AT", "cleanup.deleted")],
    );
    assert!(!out.status.success());
    cli_ok(&p, &["volume", "cleanup", "mig"]);
    assert!(
        !p.bind_root().join("place2").exists(),
        "the previous place is deleted on cleanup"
    );
    expect(&to);
}

#[test]
fn workspace_prune_snapshots_first_and_never_touches_a_mounted_volume() {
    let p = Plugin::start(BIN);
    assert_eq!(create(&p, "target-workspaces", json!(null)), "");
    assert_eq!(create(&p, "logs-tmp", json!({"class": "temporary"})), "");
    assert_eq!(
        create(&p, "project-old", json!({"parent": "target-workspaces"})),
        ""
    );
    assert_eq!(
        create(&p, "project-busy", json!({"parent": "target-workspaces"})),
        ""
    );
    assert_eq!(
        create(&p, "postgres-data", json!({"class": "critical"})),
        ""
    );
    std::fs::write(
        p.managed_data("target-workspaces")
            .join("project-old/work.txt"),
        b"unsaved work",
    )
    .unwrap();
    let _busy = mount(&p, "project-busy", "running");

    let dry = cli_ok(
        &p,
        &["workspace", "prune", "--older-than", "0m", "--dry-run"],
    );
    assert!(
        dry.contains("logs-tmp: would be") && dry.contains("project-old: would be"),
        "{dry}"
    );
    assert!(
        dry.contains("project-busy: kept: volume project-busy is mounted by 1 container(s)"),
        "{dry}"
    );
    assert!(
        !dry.contains("project-busy: would")
            && !dry.contains("postgres-data")
            && !dry.contains("target-workspaces:"),
        "{dry}"
    );
    assert!(
        p.managed_data("logs-tmp").exists(),
        "--dry-run removes nothing"
    );

    let young = cli_ok(&p, &["workspace", "prune", "--older-than", "30d"]);
    assert!(young.contains("nothing to prune"), "{young}");

    let done = cli_ok(&p, &["workspace", "prune", "--older-than", "0m"]);
    assert!(done.contains("project-old: removed (snapshot"), "{done}");
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "project-old"}));
    assert!(err_of(&v).contains("no such volume"));
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "project-busy"}));
    assert_eq!(err_of(&v), "", "a mounted volume is never pruned");
    let snaps: Value =
        serde_json::from_str(&cli_ok(&p, &["snapshot", "ls", "project-old", "--json"])).unwrap();
    let id = snaps[0]["id"].as_str().unwrap().to_string();
    cli_ok(
        &p,
        &[
            "snapshot",
            "restore",
            "project-old",
            &id,
            "--into",
            "project-old-restored",
        ],
    );
    assert_eq!(
        std::fs::read(p.managed_data("project-old-restored").join("work.txt")).unwrap(),
        b"unsaved work"
    );
    unmount(&p, "project-busy", "running");
}
