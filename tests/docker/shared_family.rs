//! Shared trees through the real dockerd, once on the legacy-registered plugin and once on the
//! managed plugin: with containers running on a parent's child and on one of two volumes on one
//! `device=`, `snapshot restore` of the parent (or of the other device volume) is refused naming
//! the volume in use and its container; with a container on the parent, `workspace prune` keeps
//! the child naming the parent and its container (and the device volume naming its twin); with
//! nothing in use both are done right. Not one byte of the other volumes' data is lost.

use crate::support::backups::text;
use crate::support::common::{
    docker, docker_ok, ensure_sleeper_image, forget_dead_legacy_drivers, require_docker,
    unique_name, Cleanup, TestPlugin,
};
use crate::support::legacy::{run, LegacyPlugin};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The plugin under test, as the CLI and Docker reach it.
struct Target {
    driver: String,
    root: PathBuf,
    binds: PathBuf,
}

impl Target {
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_allspark"))
            .arg("--root")
            .arg(&self.root)
            .arg("--bind-root")
            .arg(&self.binds)
            .args(args)
            .env("ALLSPARK_LOG", "info")
            .output()
            .unwrap()
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "allspark {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn create(&self, name: &str, opts: &[String]) {
        let mut args = vec!["volume", "create", "-d", &self.driver];
        for o in opts {
            args.extend(["-o", o]);
        }
        args.push(name);
        docker_ok(&args);
    }

    fn snapshot(&self, vol: &str) -> String {
        self.cli_ok(&["snapshot", "create", vol]).trim().to_string()
    }
}

/// `cat` of every file given, through a throwaway container on the volume.
fn read(image: &str, vol: &str, files: &[&str]) -> String {
    let script = files
        .iter()
        .map(|f| format!("echo {f}=$(cat /v/{f} 2>&1)"))
        .collect::<Vec<_>>()
        .join("; ");
    run(image, &format!("{vol}:/v"), &script)
}

fn write(image: &str, vol: &str, file: &str, content: &str) {
    run(
        image,
        &format!("{vol}:/v"),
        &format!("echo {content} > /v/{file}"),
    );
}

/// A long-running container on a volume that writes a file into it.
fn start_user(image: &str, name: &str, vol: &str, file: &str) {
    docker_ok(&[
        "run",
        "-d",
        "--name",
        name,
        "-v",
        &format!("{vol}:/v"),
        image,
    ]);
    docker_ok(&["exec", name, "sh", "-c", &format!("echo live > /v/{file}")]);
}

fn refused(out: &Output, names: &[&str]) {
    let t = text(out);
    assert!(!out.status.success(), "must be refused: {t}");
    for n in names {
        assert!(t.contains(n), "the refusal names {n}: {t}");
    }
}

fn a_family_through_dockerd(t: &Target) {
    let image = ensure_sleeper_image();
    let [par, kid, d1, d2, c_kid, c_d2, c_par] = [
        "fam-par",
        "fam-kid",
        "fam-d1",
        "fam-d2",
        "fam-c-kid",
        "fam-c-d2",
        "fam-c-par",
    ]
    .map(unique_name);
    let mut cleanup = Cleanup::new();
    cleanup.add(format!(
        "docker volume rm -f {kid} {par} {d1} {d2} >/dev/null 2>&1; true"
    ));
    cleanup.add(format!(
        "docker rm -f {c_kid} {c_d2} {c_par} >/dev/null 2>&1; true"
    ));
    let shared = t.binds.join(unique_name("shared"));
    let device = [
        "type=none".to_string(),
        "o=bind".to_string(),
        format!("device={}", shared.display()),
    ];
    t.create(&par, &[]);
    t.create(&kid, &[format!("parent={par}")]);
    t.create(
        &d1,
        &[device.to_vec(), vec!["class=temporary".into()]].concat(),
    );
    t.create(&d2, &device);
    for v in [&par, &kid, &d1] {
        write(&image, v, "orig", &format!("orig-of-{v}"));
    }
    let id_par = t.snapshot(&par);
    let id_d1 = t.snapshot(&d1);
    for v in [&par, &kid, &d1] {
        write(&image, v, "later", &format!("later-of-{v}"));
    }

    // A container works in the child, another in the twin of d1.
    start_user(&image, &c_kid, &kid, "live");
    start_user(&image, &c_d2, &d2, "live");
    let out = t.cli(&["snapshot", "restore", &par, &id_par, "--yes"]);
    refused(&out, &[&kid, &c_kid]);
    let out = t.cli(&["snapshot", "restore", &d1, &id_d1, "--yes"]);
    refused(&out, &[&d2, &c_d2]);
    // `writer`: the volume whose name the test wrote into the files (d2 sees d1's).
    let intact = |v: &str, writer: &str, files: &[&str]| {
        let got = read(&image, v, files);
        for f in files {
            let want = if *f == "live" {
                "live".to_string()
            } else {
                format!("{f}-of-{writer}")
            };
            assert!(
                got.contains(&format!("{f}={want}")),
                "{v}/{f} intact: {got}"
            );
        }
    };
    intact(&kid, &kid, &["orig", "later", "live"]);
    intact(&d2, &d1, &["orig", "later"]);
    intact(&par, &par, &["orig", "later"]);
    assert!(read(&image, &d2, &["live"]).contains("live=live"));

    // The builder works through the parent; the child is not pruned, naming both.
    docker_ok(&["rm", "-f", &c_kid]);
    start_user(&image, &c_par, &par, "builder");
    let out = t.cli(&["workspace", "prune", "--older-than", "0m"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    let line = |v: &str| {
        said.lines()
            .find(|l| l.contains(v) && l.contains("kept"))
            .unwrap_or_else(|| panic!("prune says nothing about {v}: {said}"))
            .to_string()
    };
    let kid_line = line(&kid);
    assert!(
        kid_line.contains(&par) && kid_line.contains(&c_par),
        "{kid_line}"
    );
    let d1_line = line(&d1);
    assert!(
        d1_line.contains(&d2) && d1_line.contains(&c_d2),
        "{d1_line}"
    );
    intact(&kid, &kid, &["orig", "later", "live"]);
    intact(&d1, &d1, &["orig", "later"]);

    // Nothing in use: the restores and the prune are done.
    docker_ok(&["rm", "-f", &c_par, &c_d2]);
    t.cli_ok(&["snapshot", "restore", &par, &id_par, "--yes"]);
    let got = read(&image, &kid, &["orig", "later"]);
    assert!(got.contains(&format!("orig=orig-of-{kid}")), "{got}");
    assert!(
        !got.contains(&format!("later=later-of-{kid}")),
        "the child is back at the snapshot: {got}"
    );
    t.cli_ok(&["snapshot", "restore", &d1, &id_d1, "--yes"]);
    let got = read(&image, &d2, &["orig", "later"]);
    assert!(
        got.contains(&format!("orig=orig-of-{d1}")),
        "d2 shares d1's restored directory: {got}"
    );
    assert!(!got.contains("later=later"), "{got}");
    let out = t.cli_ok(&["workspace", "prune", "--older-than", "0m"]);
    for v in [&kid, &d1] {
        assert!(
            out.lines()
                .any(|l| l.contains(v.as_str()) && l.contains("removed")),
            "{v} pruned: {out}"
        );
        assert!(
            !docker(&["volume", "inspect", v]).status.success(),
            "{v} is gone from Docker"
        );
    }
    // The device directory outlives d1 (allspark never deletes a device's data): d2 keeps it.
    let got = read(&image, &d2, &["orig"]);
    assert!(got.contains(&format!("orig=orig-of-{d1}")), "{got}");
    assert!(shared.join("orig").is_file());
    let got = read(&image, &par, &["orig", "builder"]);
    assert!(got.contains(&format!("orig=orig-of-{par}")), "{got}");
    assert!(!Path::new(&t.root)
        .join(format!("volumes/{par}/data/{kid}"))
        .exists());
}

#[test]
fn shared_trees_through_dockerd_and_the_legacy_driver() {
    let Some(_docker) = require_docker() else {
        return;
    };
    let p = LegacyPlugin::start();
    let binds = p.dir.path().join("binds");
    std::fs::create_dir_all(&binds).unwrap();
    a_family_through_dockerd(&Target {
        driver: p.driver.clone(),
        root: p.root(),
        binds,
    });
}

#[test]
fn shared_trees_through_dockerd_and_the_managed_plugin() {
    let Some(_docker) = require_docker() else {
        return;
    };
    forget_dead_legacy_drivers();
    let plugin = TestPlugin::start("allspark-test-family");
    a_family_through_dockerd(&Target {
        driver: plugin.name.clone(),
        root: plugin.root.root(),
        binds: plugin.root.binds(),
    });
}
