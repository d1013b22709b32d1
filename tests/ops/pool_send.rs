//! The background archive of a read-only snapshot on a real `btrfs-image` pool, incremental from the kernel's send diff against the previous read-only snapshot: its index is the full walk's and the chain restores to the snapshot.

use super::pool::{create, data, kinds, mount, pool_plugin, pool_root, unmount};
use crate::support::harness::{wait_for, Agent};

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use allspark::archive::{
    apply_deletions, extract, write_tree, ExtractOptions, Index, WriteOptions,
};
use serde_json::json;

fn stop(p: &crate::support::harness::Plugin, round: usize, change: impl FnOnce(&Path)) {
    let m = mount(p, "ws", &format!("c{round}"));
    change(&m);
    unmount(p, "ws", &format!("c{round}"));
    wait_for("the archive", Duration::from_secs(60), || {
        kinds(p, "ws").len() == round && kinds(p, "ws").iter().all(|k| k == "cow+archive")
    });
}

#[test]
fn pool_archive_from_the_send_diff_has_the_full_walks_index_and_restores_the_snapshot() {
    let p = pool_plugin();
    let agent_log = p.dir.path().join("agent.log");
    let _agent = Agent::start(&p.root(), &agent_log, &["--no-docker-events"]);
    create(&p, "ws", json!({"pool": "p", "snapshot": "on-unmount"}));
    assert!(data(&p, "ws").exists());
    stop(&p, 1, |m| {
        for d in 0..12 {
            let sub = m.join(format!("d{d}/inner"));
            std::fs::create_dir_all(&sub).unwrap();
            std::fs::write(sub.join("f"), format!("file {d}")).unwrap();
        }
        std::fs::create_dir_all(m.join("old/deep")).unwrap();
        std::fs::write(m.join("old/deep/x"), b"x").unwrap();
    });
    stop(&p, 2, |m| {
        std::fs::write(m.join("d3/inner/f"), b"changed").unwrap();
        std::fs::rename(m.join("old"), m.join("d5/new")).unwrap();
        std::fs::remove_dir_all(m.join("d7")).unwrap();
        std::fs::write(m.join("d9/added"), b"added").unwrap();
    });
    let snaps = p.snapshots("ws");
    let ids: Vec<&str> = snaps.iter().map(|s| s["id"].as_str().unwrap()).collect();
    let archives = p.root().join("snapshots/ws");
    let index = |id: &str| Index::load(&archives.join(id).join("index")).unwrap();
    let ro2 = pool_root(&p).join("snapshots/ws").join(ids[1]);
    let walked = write_tree(
        &ro2,
        std::io::sink(),
        &WriteOptions {
            parent: Some(&index(ids[0])),
            ..WriteOptions::default()
        },
    )
    .unwrap();
    assert_eq!(index(ids[1]), walked.index);
    let log = std::fs::read_to_string(&agent_log).unwrap_or_default();
    assert!(!log.contains("walking the whole tree"), "{log}");
    assert!(log.contains("incremental from the snapshot diff"), "{log}");

    let dest = p.dir.path().join("restored");
    for (i, s) in snaps.iter().enumerate() {
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(archives.join(ids[i]).join("manifest.json")).unwrap(),
        )
        .unwrap();
        let deleted: Vec<String> = serde_json::from_value(m["deleted"].clone()).unwrap();
        if !deleted.is_empty() {
            apply_deletions(&dest, &deleted).unwrap();
        }
        let archive = archives.join(ids[i]).join(s["archive"].as_str().unwrap());
        extract(
            std::fs::File::open(archive).unwrap(),
            &dest,
            &ExtractOptions::default(),
        )
        .unwrap();
    }
    let diff = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&ro2)
        .arg(&dest)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
}
