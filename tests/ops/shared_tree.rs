//! Destructive operations know every volume that shares the tree (found in review: each of
//! these deleted live data of a mounted volume). Socket-level plugin, real mounts, the CLI.

use crate::support::harness;

use std::fs;
use std::path::Path;

use harness::{cli, cli_ok, err_of, Plugin};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_allspark");

fn create(p: &Plugin, name: &str, opts: serde_json::Value) -> String {
    let (_, v) = p.call("VolumeDriver.Create", json!({"Name": name, "Opts": opts}));
    err_of(&v)
}

fn mount(p: &Plugin, name: &str, id: &str) {
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": name, "ID": id}));
    assert_eq!(err_of(&v), "", "mount {name}");
}

fn unmount(p: &Plugin, name: &str, id: &str) {
    let (_, v) = p.call("VolumeDriver.Unmount", json!({"Name": name, "ID": id}));
    assert_eq!(err_of(&v), "", "unmount {name}");
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn snapshot_id(p: &Plugin, volume: &str) -> String {
    cli_ok(p, &["snapshot", "create", volume]);
    let ls = cli_ok(p, &["snapshot", "ls", volume, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&ls).unwrap_or_else(|e| panic!("{e}: {ls}"));
    v.as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn restoring_a_parent_while_a_child_is_mounted_is_refused_naming_the_child() {
    let p = Plugin::start(BIN);
    assert_eq!(create(&p, "par", json!(null)), "");
    assert_eq!(create(&p, "kid", json!({"parent": "par"})), "");
    let id = snapshot_id(&p, "par");
    mount(&p, "kid", "builder");
    let work = p.mount_dir().join("kid/work");
    fs::write(&work, b"written by the running container").unwrap();
    let out = cli(&p, &["snapshot", "restore", "par", &id, "--yes"]);
    assert!(!out.status.success(), "restore must be refused");
    let err = stderr_of(&out);
    assert!(
        err.contains("volume kid") && err.contains("mounted"),
        "{err}"
    );
    assert_eq!(
        fs::read(&work).unwrap(),
        b"written by the running container"
    );
    unmount(&p, "kid", "builder");
    // Unmounted, the restore goes through.
    cli_ok(&p, &["snapshot", "restore", "par", &id, "--yes"]);
}

#[test]
fn restoring_one_of_two_volumes_on_one_device_while_the_other_is_mounted_is_refused() {
    let p = Plugin::start(BIN);
    let dev = p.bind_root().join("shared");
    fs::create_dir_all(&dev).unwrap();
    let d = dev.to_str().unwrap();
    assert_eq!(create(&p, "a", json!({"device": d})), "");
    assert_eq!(create(&p, "b", json!({"device": d})), "");
    fs::write(dev.join("f"), b"v1").unwrap();
    let id = snapshot_id(&p, "a");
    mount(&p, "b", "c");
    fs::write(p.mount_dir().join("b/f"), b"v2 live").unwrap();
    let out = cli(&p, &["snapshot", "restore", "a", &id, "--yes"]);
    assert!(!out.status.success(), "restore must be refused");
    assert!(stderr_of(&out).contains("volume b"), "{}", stderr_of(&out));
    assert_eq!(fs::read(dev.join("f")).unwrap(), b"v2 live");
    unmount(&p, "b", "c");
}

#[test]
fn migrate_refuses_a_parent_a_target_inside_the_source_and_an_unmarked_staging_directory() {
    let p = Plugin::start(BIN);
    assert_eq!(create(&p, "par", json!(null)), "");
    assert_eq!(create(&p, "kid", json!({"parent": "par"})), "");
    fs::write(p.root().join("volumes/par/data/kid/keep"), b"child data").unwrap();
    let to = p.bind_root().join("newhome");
    let out = cli(
        &p,
        &[
            "--bind-root",
            p.bind_root().to_str().unwrap(),
            "volume",
            "migrate",
            "par",
            "--to",
            to.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("parent of kid"),
        "{}",
        stderr_of(&out)
    );

    // --to inside the source.
    let dev = p.bind_root().join("src");
    fs::create_dir_all(&dev).unwrap();
    assert_eq!(
        create(&p, "solo", json!({"device": dev.to_str().unwrap()})),
        ""
    );
    fs::write(dev.join("data"), b"solo").unwrap();
    let inside = dev.join("sub/dir");
    let out = cli(
        &p,
        &[
            "--bind-root",
            p.bind_root().to_str().unwrap(),
            "volume",
            "migrate",
            "solo",
            "--to",
            inside.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("inside the volume's own data"),
        "{}",
        stderr_of(&out)
    );

    // `<to>.allspark-migrating` is another volume's device directory: never deleted.
    let to = p.bind_root().join("dest");
    let victim = p.bind_root().join("dest.allspark-migrating");
    fs::create_dir_all(&victim).unwrap();
    assert_eq!(
        create(&p, "victim", json!({"device": victim.to_str().unwrap()})),
        ""
    );
    fs::write(victim.join("precious"), b"victim data").unwrap();
    let out = cli(
        &p,
        &[
            "--bind-root",
            p.bind_root().to_str().unwrap(),
            "volume",
            "migrate",
            "solo",
            "--to",
            to.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("not a half copy allspark made"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(fs::read(victim.join("precious")).unwrap(), b"victim data");
    assert_eq!(fs::read(dev.join("data")).unwrap(), b"solo");
}

#[test]
fn migrate_cleanup_keeps_old_data_another_volume_still_uses() {
    let p = Plugin::start(BIN);
    let dev = p.bind_root().join("both");
    fs::create_dir_all(&dev).unwrap();
    let d = dev.to_str().unwrap();
    assert_eq!(create(&p, "one", json!({"device": d})), "");
    assert_eq!(create(&p, "two", json!({"device": d})), "");
    fs::write(dev.join("f"), b"shared").unwrap();
    let to = p.bind_root().join("moved");
    let out = cli(
        &p,
        &[
            "--bind-root",
            p.bind_root().to_str().unwrap(),
            "volume",
            "migrate",
            "one",
            "--to",
            to.to_str().unwrap(),
            "--delete-source",
        ],
    );
    assert!(!out.status.success(), "deleting the source must be refused");
    assert!(
        stderr_of(&out).contains("volume two"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(fs::read(dev.join("f")).unwrap(), b"shared");
    assert_eq!(
        fs::read(to.join("f")).unwrap(),
        b"shared",
        "the migration itself happened"
    );
}

#[test]
fn a_child_adopting_an_existing_directory_keeps_it_on_remove_and_a_template_never_overwrites() {
    let p = Plugin::start(BIN);
    assert_eq!(create(&p, "par", json!(null)), "");
    let existing = p.root().join("volumes/par/data/project");
    fs::create_dir_all(&existing).unwrap();
    fs::write(existing.join("main.rs"), b"fn main() {}").unwrap();
    assert_eq!(create(&p, "project", json!({"parent": "par"})), "");
    let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": "project"}));
    assert_eq!(err_of(&v), "");
    assert_eq!(
        fs::read(existing.join("main.rs")).unwrap(),
        b"fn main() {}",
        "Remove deleted data the volume adopted"
    );

    assert_eq!(create(&p, "tpl", json!(null)), "");
    fs::write(p.root().join("volumes/tpl/data/main.rs"), b"template").unwrap();
    let dev = p.bind_root().join("userdir");
    fs::create_dir_all(&dev).unwrap();
    fs::write(dev.join("main.rs"), b"user's file").unwrap();
    fs::set_permissions(&dev, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    let err = create(
        &p,
        "filled",
        json!({"device": dev.to_str().unwrap(), "template": "tpl"}),
    );
    assert!(err.contains("already holds data"), "{err}");
    assert_eq!(fs::read(dev.join("main.rs")).unwrap(), b"user's file");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&dev).unwrap().mode() & 0o7777, 0o750);
}

#[test]
fn prune_counts_the_parents_mount_as_use_and_brings_a_child_back_inside_its_parent() {
    let p = Plugin::start(BIN);
    assert_eq!(create(&p, "builder", json!(null)), "");
    assert_eq!(create(&p, "proj", json!({"parent": "builder"})), "");
    fs::write(p.root().join("volumes/builder/data/proj/code"), b"work").unwrap();
    mount(&p, "builder", "b");
    let out = cli_ok(&p, &["workspace", "prune", "--older-than", "0m"]);
    assert!(
        p.root().join("volumes/builder/data/proj/code").exists(),
        "prune removed a workspace the builder is using: {out}"
    );
    unmount(&p, "builder", "b");
    let out = cli_ok(&p, &["workspace", "prune", "--older-than", "0m"]);
    assert!(out.contains("removed"), "{out}");
    assert!(!p.root().join("state/volumes/proj.json").exists());
    let id = snapshot_id_of_existing(&p, "proj");
    cli_ok(&p, &["snapshot", "restore", "proj", &id, "--into", "proj"]);
    let rec: serde_json::Value =
        serde_json::from_slice(&fs::read(p.root().join("state/volumes/proj.json")).unwrap())
            .unwrap();
    assert_eq!(rec["options"]["parent"], "builder", "{rec}");
    assert_eq!(
        fs::read(p.root().join("volumes/builder/data/proj/code")).unwrap(),
        b"work",
        "the workspace came back inside its parent"
    );
    assert!(!Path::new(&p.root().join("volumes/proj")).exists());
}

fn snapshot_id_of_existing(p: &Plugin, volume: &str) -> String {
    let ls = cli_ok(p, &["snapshot", "ls", volume, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&ls).unwrap();
    v.as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}
