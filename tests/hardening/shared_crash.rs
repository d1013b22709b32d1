//! Crash injection at every step of the operations that move, fill, prune or restore shared
//! trees (`volume migrate`/`cleanup`, Create with `template=`, `workspace prune`, `backup
//! restore`), checked against a model: after each crash and the recovery (a plugin restart, the
//! operation run again), every volume is usable at exactly one place with its data, no byte of
//! another volume is lost, and no unmarked staging directory is left.
//!
//! The steps come from the binary's own list (`allspark::core::crashpoint`), so a new step is
//! crash-tested as soon as it is listed (and every `crash_point` call must be listed).

use crate::support::backups::text;
use crate::support::harness;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use allspark::core::crashpoint;
use harness::{cli_env, try_call, Plugin};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_allspark");

type Files = BTreeMap<String, Vec<u8>>;

/// Every volume of the world and the files the test wrote into it (a parent's files are its own
/// top-level files; its children's subdirectories are checked through the children).
struct World {
    p: Plugin,
    model: BTreeMap<String, Files>,
}

fn files(tag: &str, n: usize) -> Files {
    (0..n)
        .map(|i| {
            (
                format!("{tag}-{i}"),
                harness::noise(7 + i as u64, 1000 + 997 * i)
                    .into_iter()
                    .chain(tag.bytes())
                    .collect(),
            )
        })
        .collect()
}

impl World {
    /// A parent with a child, two volumes on one `device=`, a plain volume, a temporary one.
    fn new() -> World {
        let p = Plugin::start(BIN);
        let shared = p.bind_root().join("shared");
        let dev = json!({"type": "none", "o": "bind", "device": shared.to_str().unwrap()});
        let mut w = World {
            p,
            model: BTreeMap::new(),
        };
        for (name, opts) in [
            ("par", json!(null)),
            ("kid", json!({"parent": "par"})),
            ("dev1", dev.clone()),
            ("dev2", dev),
            ("solo", json!({"uid": "1000", "mode": "0750"})),
            ("tmp", json!({"class": "temporary"})),
        ] {
            assert_eq!(w.p.create(name, opts), "", "create {name}");
        }
        for name in ["par", "kid", "dev1", "solo", "tmp"] {
            w.write(name, files(name, 4));
        }
        // dev2 shares dev1's directory: it sees the same files.
        w.model.insert("dev2".into(), w.model["dev1"].clone());
        w
    }

    /// Write `f` into volume `name` through a mount, and into the model.
    fn write(&mut self, name: &str, f: Files) {
        let mp = self.p.mount(name, "writer");
        for (k, v) in &f {
            fs::write(mp.join(k), v).unwrap();
        }
        self.p.unmount(name, "writer");
        self.model.entry(name.into()).or_default().extend(f);
    }

    /// Every volume of the model mounts, shows exactly its files' content, and unmounts;
    /// volumes out of the model do not exist; no unmarked migration copy and no restore
    /// staging directory is left anywhere.
    fn check(&self, when: &str) {
        self.check_staging(when, false);
    }

    /// [`World::check`] right after a crash: a restore's staging directory may be left (marked
    /// by its name) for the next restore to remove.
    fn check_crashed(&self, when: &str) {
        self.check_staging(when, true);
    }

    fn check_staging(&self, when: &str, crashed: bool) {
        let (_, list) = self.p.call("VolumeDriver.List", json!({}));
        let listed: Vec<&str> = list["Volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["Name"].as_str().unwrap())
            .collect();
        if let Some(name) = listed.iter().find(|n| !self.model.contains_key(**n)) {
            panic!("{when}: volume {name} exists but should not");
        }
        for (name, f) in &self.model {
            assert!(listed.contains(&name.as_str()), "{when}: {name} is missing");
            let mp = self.p.mount(name, "checker");
            for (k, v) in f {
                let got = fs::read(mp.join(k))
                    .unwrap_or_else(|e| panic!("{when}: {name}/{k} unreadable: {e}"));
                assert!(
                    got == *v,
                    "{when}: {name}/{k} differs ({} bytes)",
                    got.len()
                );
            }
            self.p.unmount(name, "checker");
        }
        for top in [self.p.root(), self.p.bind_root()] {
            for path in walk(&top) {
                let n = path.file_name().unwrap().to_string_lossy().into_owned();
                assert!(
                    crashed || !n.contains(".allspark-staging-"),
                    "{when}: restore staging left at {}",
                    path.display()
                );
                if n.ends_with(".allspark-migrating") && path.is_dir() {
                    assert!(
                        path.join(".allspark-migrating").is_file(),
                        "{when}: unmarked migration copy at {}",
                        path.display()
                    );
                }
            }
        }
    }

    fn cli(&self, args: &[&str], crash_at: Option<&str>) -> Output {
        let env: Vec<(&str, &str)> = crash_at
            .map(|s| ("ALLSPARK_CRASH_AT", s))
            .into_iter()
            .collect();
        cli_env(&self.p, args, &env)
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args, None);
        assert!(out.status.success(), "allspark {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run the CLI with a crash at `step`: it must abort there.
    fn crash(&self, args: &[&str], step: &str) {
        let out = self.cli(args, Some(step));
        assert!(
            out.status.code().is_none() && text(&out).contains("aborting on purpose"),
            "the crash hook must fire at {step}: {}",
            text(&out)
        );
    }

    /// The device path (host directory) the plugin reports for a volume.
    fn device(&self, name: &str) -> Option<String> {
        let (_, v) = self.p.call("VolumeDriver.Get", json!({"Name": name}));
        v["Volume"]["Status"]["device"].as_str().map(str::to_string)
    }
}

/// Every path below `dir` (not following links), mount points of other volumes included.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn every_operation_lists_its_crash_steps() {
    for (op, steps) in crashpoint::OPERATIONS {
        assert!(!steps.is_empty(), "{op} lists no step");
        for s in *steps {
            assert!(crashpoint::is_known(s));
        }
    }
}

#[test]
fn migrate_and_cleanup_crashed_at_every_step_keep_every_volume_at_one_place() {
    for step in crashpoint::MIGRATE {
        let mut w = World::new();
        let to = w.p.bind_root().join("moved");
        let to_s = to.to_str().unwrap();
        w.crash(&["volume", "migrate", "solo", "--to", to_s], step);
        w.p.restart_with(&[]);
        w.check(&format!("after a crash at {step}"));
        let switched = *step == "migrate.switched";
        assert_eq!(
            w.device("solo").as_deref() == Some(to_s),
            switched,
            "after a crash at {step} the record names the old place until the switch"
        );
        let again = w.cli(&["volume", "migrate", "solo", "--to", to_s], None);
        if switched {
            assert!(
                text(&again).contains("allspark volume cleanup solo"),
                "a finished migration is refused clearly: {}",
                text(&again)
            );
        } else {
            assert!(
                again.status.success(),
                "re-run after {step}: {}",
                text(&again)
            );
        }
        assert_eq!(w.device("solo").as_deref(), Some(to_s));
        w.check(&format!(
            "after the re-run of a migration crashed at {step}"
        ));
        // New writes land at the new place.
        w.write("solo", files("after", 1));
        assert!(to.join("after-0").is_file(), "{step}: solo lives at {to_s}");

        for cstep in crashpoint::CLEANUP {
            w.crash(&["volume", "cleanup", "solo"], cstep);
            w.check(&format!("after a cleanup crashed at {cstep}"));
        }
        w.cli_ok(&["volume", "cleanup", "solo"]);
        assert!(
            !w.p.root().join("volumes/solo").exists(),
            "the old data is gone"
        );
        w.check(&format!("after the cleanup ({step})"));
    }
}

/// A volume's record has its template's content (owners aside) and nothing else.
fn expect_copy(w: &World, name: &str, of: &str) {
    let mp = w.p.mount(name, "reader");
    let mut seen: Vec<String> = fs::read_dir(&mp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    seen.sort();
    let want: Vec<String> = w.model[of].keys().cloned().collect();
    assert_eq!(seen, want, "{name} is a copy of {of}");
    for (k, v) in &w.model[of] {
        assert!(fs::read(mp.join(k)).unwrap() == *v, "{name}/{k}");
    }
    w.p.unmount(name, "reader");
}

#[test]
fn template_fill_crashed_at_every_step_leaves_a_whole_volume_or_none() {
    for step in crashpoint::TEMPLATE {
        let mut w = World::new();
        let empty_dev = w.p.bind_root().join("empty");
        fs::create_dir(&empty_dev).unwrap();
        let targets = [
            ("copy", json!({"template": "solo"})),
            (
                "devcopy",
                json!({"device": empty_dev.to_str().unwrap(), "template": "solo"}),
            ),
            ("kidcopy", json!({"parent": "par", "template": "solo"})),
        ];
        for (name, opts) in &targets {
            w.p.restart_with(&[("ALLSPARK_CRASH_AT", step)]);
            let r = try_call(
                &w.p.socket(),
                "VolumeDriver.Create",
                &json!({"Name": name, "Opts": opts}),
            );
            assert!(r.is_err(), "the plugin must abort at {step}: {r:?}");
            w.p.restart_with(&[]);
            let recorded = *step == "template.recorded";
            let (_, got) = w.p.call("VolumeDriver.Get", json!({"Name": name}));
            assert_eq!(
                harness::err_of(&got).is_empty(),
                recorded,
                "{name} after a crash at {step}: {got}"
            );
            if !recorded {
                // Nothing of the half copy stays where the volume would live, once the
                // restarted plugin has recovered (it listens first, recovers after).
                let gone = || match *name {
                    "copy" => !w.p.root().join("volumes/copy").exists(),
                    "devcopy" => fs::read_dir(&empty_dev).unwrap().count() == 0,
                    _ => !w.p.root().join("volumes/par/data/kidcopy").exists(),
                };
                harness::wait_for(
                    &format!("the half copy of {name} removed after {step}"),
                    std::time::Duration::from_secs(20),
                    gone,
                );
                assert_eq!(
                    w.p.create(name, opts.clone()),
                    "",
                    "re-create {name} after {step}"
                );
            }
            harness::wait_for(
                &format!("no fill journal left after {step}"),
                std::time::Duration::from_secs(20),
                || {
                    fs::read_dir(w.p.root().join("state/filling"))
                        .map(|d| d.count())
                        .unwrap_or(0)
                        == 0
                },
            );
            expect_copy(&w, name, "solo");
            w.model.insert(name.to_string(), w.model["solo"].clone());
            w.check(&format!("after a template fill crashed at {step}"));
        }
    }
}

/// The newest snapshot id of a volume (also of a removed one).
fn last_snapshot(w: &World, name: &str) -> String {
    let ls = w.cli_ok(&["snapshot", "ls", name, "--json"]);
    let v: Value = serde_json::from_str(&ls).unwrap();
    v.as_array().unwrap().last().expect("a snapshot")["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn workspace_prune_crashed_at_every_step_loses_nothing() {
    for step in crashpoint::PRUNE {
        let mut w = World::new();
        let prune = ["workspace", "prune", "--older-than", "0m"];
        w.crash(&prune, step);
        w.p.restart_with(&[]);
        // Children go first: the crash hit the first candidate, kid.
        if *step == "prune.removed" {
            w.model.remove("kid");
        }
        w.check(&format!("after a prune crashed at {step}"));
        w.cli_ok(&prune);
        let kid = w.model.remove("kid").unwrap_or_else(|| files("kid", 4));
        let tmp = w.model.remove("tmp").unwrap();
        w.check(&format!("after the prune re-run ({step})"));
        // Every pruned byte comes back from its snapshot, the child inside its parent.
        for (name, f) in [("kid", kid), ("tmp", tmp)] {
            let id = last_snapshot(&w, name);
            w.cli_ok(&["snapshot", "restore", name, &id, "--into", name, "--yes"]);
            w.model.insert(name.into(), f);
        }
        assert!(w.p.root().join("volumes/par/data/kid/kid-0").is_file());
        w.check(&format!("after restoring what the prune ({step}) removed"));
    }
}

#[test]
fn backup_restore_crashed_at_every_step_leaves_old_or_restored_data_and_finishes() {
    let file_steps: Vec<&str> = crashpoint::BACKUP_RESTORE
        .iter()
        .copied()
        .filter(|s| !s.starts_with("restore.dump-"))
        .collect();
    // The dump steps need a database container: tests/docker/databases.rs crashes them.
    assert_eq!(file_steps.len() + 2, crashpoint::BACKUP_RESTORE.len());
    for step in file_steps {
        let mut w = World::new();
        let backups = w.p.dir.path().join("backups");
        // Docker is pointed nowhere: the volumes are archived, and the run says loudly that
        // dumps and stop-labelled containers could not be handled.
        let run = w.cli(
            &[
                "backup",
                "run",
                "daily",
                "--backup-root",
                backups.to_str().unwrap(),
            ],
            None,
        );
        let out = text(&run);
        assert!(
            out.contains("4 volume(s)") && out.contains("cannot connect to Docker"),
            "{out}"
        );
        let dir = fs::read_dir(backups.join("daily"))
            .unwrap()
            .next()
            .unwrap_or_else(|| panic!("no backup: {out}"))
            .unwrap()
            .path();
        let backed_up = w.model.clone();
        // Changed after the backup: par and its child kid go back, the rest stays.
        w.write(
            "par",
            files("par", 2)
                .into_keys()
                .map(|k| (k, b"later".to_vec()))
                .collect(),
        );
        w.write(
            "kid",
            files("kid", 2)
                .into_keys()
                .map(|k| (k, b"later".to_vec()))
                .collect(),
        );
        w.write("solo", files("solo-later", 2));
        let restore = [
            "backup",
            "restore",
            dir.to_str().unwrap(),
            "--volume",
            "par",
            "--yes",
        ];
        let before = w.model.clone();
        w.crash(&restore, step);
        w.p.restart_with(&[]);
        // Before the swap the old content, after it the backup's: never a mix.
        let swapped = step != "restore.staged";
        for name in ["par", "kid"] {
            let src = if swapped { &backed_up } else { &before };
            w.model.insert(name.into(), src[name].clone());
        }
        w.check_crashed(&format!("after a backup restore crashed at {step}"));
        w.cli_ok(&restore);
        for name in ["par", "kid"] {
            w.model.insert(name.into(), backed_up[name].clone());
        }
        w.check(&format!(
            "after the re-run of a backup restore crashed at {step}"
        ));
    }
}
