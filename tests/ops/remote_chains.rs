//! Snapshot chains off-site (moto_server on 127.0.0.1): the agent pushes every completed snapshot of an `offsite=snapshots` volume (catching up after downtime), remote retention follows `keep=` without breaking a chain, `dr restore` puts the newer chain over the backup; `volume push`/`pull` move one volume between two hosts (two state roots).

use crate::remote::{s, sha, text, Host, MARKER, NO_DOCKER};
use crate::support::harness;
use crate::support::s3::{require_s3, Moto, BUCKET};

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use serde_json::{json, Value};

/// The complete snapshots of `volume` on the remote (those with a manifest), by id.
fn remote_snapshots(moto: &Moto, volume: &str) -> BTreeSet<String> {
    moto.keys(&format!("hosts/alpha/snapshots/{volume}/"))
        .iter()
        .filter(|(k, _)| k.ends_with("/manifest.json.age"))
        .map(|(k, _)| k.rsplit('/').nth(1).unwrap().to_string())
        .collect()
}

/// The local snapshot ids of `volume`, oldest first.
fn local_snapshots(h: &Host, volume: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(&h.ok(&["snapshot", "ls", volume, "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

fn snapshot(h: &Host, volume: &str, full: bool) -> String {
    let mut args = vec!["snapshot", "create", volume];
    if full {
        args.push("--full");
    }
    h.ok(&args).trim().lines().last().unwrap().to_string()
}

#[test]
fn the_agent_pushes_completed_snapshots_keeps_chains_and_dr_restores_the_newer_chain() {
    if !require_s3() {
        return;
    }
    let moto = Moto::start(None);
    moto.s3(&["mkbucket", BUCKET]);
    let mut h = Host::new();
    // class=critical sends its chains off-site by default; keep the newest two (and their chain).
    h.create("ledger", json!({"class": "critical", "keep": "2"}));
    h.create("scratch", json!({"snapshot": "none"}));
    let f = h.data("ledger").join("state.txt");
    fs::write(&f, format!("v1 {MARKER}\n")).unwrap();
    fs::write(h.data("scratch").join("x"), "x").unwrap();
    h.add_remote(&moto.endpoint());
    h.backup_and_push();
    // Taken while no agent runs: the agent catches up when it starts.
    fs::write(&f, format!("v2 {MARKER}\n")).unwrap();
    let s1 = snapshot(&h, "ledger", true);
    snapshot(&h, "scratch", true);
    let log = h.p.dir.path().join("agent.log");
    let _agent = harness::Agent::start(
        &h.root(),
        &log,
        &[
            "--no-docker-events",
            "--no-schedule",
            "--docker",
            NO_DOCKER,
            "--remote",
            "offsite",
        ],
    );
    harness::wait_for(
        "the snapshot taken before the agent started, on the remote",
        Duration::from_secs(60),
        || remote_snapshots(&moto, "ledger").contains(&s1),
    );
    // A completed snapshot goes up while the agent runs; three more, one of them full, so
    // keep=2 keeps the newest two and the full snapshot they need, on both sides.
    fs::write(&f, format!("v3 {MARKER}\n")).unwrap();
    let s2 = snapshot(&h, "ledger", false);
    let s3 = snapshot(&h, "ledger", true);
    fs::write(&f, format!("v4 {MARKER}\n")).unwrap();
    let s4 = snapshot(&h, "ledger", false);
    fs::write(&f, format!("v5 {MARKER}\n")).unwrap();
    let s5 = snapshot(&h, "ledger", false);
    let want: BTreeSet<String> = [s3.clone(), s4.clone(), s5.clone()].into();
    harness::wait_for(
        "the remote chain to follow keep=2",
        Duration::from_secs(60),
        || remote_snapshots(&moto, "ledger") == want,
    );
    assert_eq!(
        local_snapshots(&h, "ledger"),
        [s3.clone(), s4.clone(), s5.clone()]
    );
    assert!(!want.contains(&s1) && !want.contains(&s2));
    // No incomplete leftovers of the pruned ones, no snapshot of the offsite=backups volume.
    let all = moto.keys("hosts/alpha/snapshots/");
    assert!(
        all.iter()
            .all(|(k, _)| want.iter().any(|id| k.contains(&format!("/ledger/{id}/")))),
        "{all:?}"
    );
    let grep = moto.s3(&["grep", BUCKET, "hosts/alpha/snapshots/", MARKER]);
    assert!(grep.trim_end().ends_with("hits="), "plaintext: {grep}");
    let ls = h.ok(&["remote", "ls", "offsite"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("ledger") && l.contains(&s5) && l.contains(&s4)),
        "{ls}"
    );
    let agent_log = fs::read_to_string(&log).unwrap_or_default();
    assert!(agent_log.contains("snapshots pushed"), "{agent_log}");
    drop(_agent);

    // Fresh host: the backup holds v1, the newer chain v5; DR ends at v5.
    h.wipe();
    h.add_remote(&moto.endpoint());
    let out = h.dr(&[]);
    assert!(
        out.contains(&format!("snapshot ledger@{s5}: newer than the backup")),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(h.data("ledger").join("state.txt")).unwrap(),
        format!("v5 {MARKER}\n")
    );
    assert_eq!(
        fs::read_to_string(h.data("scratch").join("x")).unwrap(),
        "x"
    );
    // The fetched chain is the volume's local chain now.
    assert_eq!(local_snapshots(&h, "ledger"), [s3, s4, s5]);
}

#[test]
fn volume_push_and_pull_move_a_volume_with_its_options_and_chain_between_two_hosts() {
    if !require_s3() {
        return;
    }
    let moto = Moto::start(None);
    moto.s3(&["mkbucket", BUCKET]);
    let a = Host::new();
    let b = Host::new();
    a.create(
        "proj",
        json!({"uid": "1000", "gid": "1000", "mode": "0750", "snapshot": "on-unmount", "keep": "5"}),
    );
    fs::create_dir_all(a.data("proj").join("src")).unwrap();
    fs::write(a.data("proj").join("src/main.rs"), "fn main() {}\n").unwrap();
    fs::write(a.data("proj").join("big"), harness::noise(3, 3 << 20)).unwrap();
    a.add_remote(&moto.endpoint());
    let out = a.ok(&["volume", "push", "proj", "offsite"]);
    assert!(
        out.contains("pushed volume proj to remote offsite"),
        "{out}"
    );

    // Host B knows the same remote and key; Docker does not answer there, so the volume
    // is created in allspark's records (the plugin serves it at once).
    let add = a.keys.add_args(&moto.endpoint());
    b.ok(&add.iter().map(String::as_str).collect::<Vec<_>>());
    let key = a.key();
    let pull = |extra: &[&str]| {
        let mut args = vec!["volume", "pull", "proj", "offsite", "--identity", s(&key)];
        args.extend_from_slice(extra);
        b.run(&args)
    };
    let o = pull(&[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("created in allspark's records"),
        "{}",
        text(&o)
    );
    assert_eq!(
        sha(&b.data("proj").join("big")),
        sha(&a.data("proj").join("big"))
    );
    use std::os::unix::fs::MetadataExt;
    let md = fs::metadata(b.data("proj")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (1000, 1000, 0o750)
    );
    let rec: Value =
        serde_json::from_slice(&fs::read(b.root().join("state/volumes/proj.json")).unwrap())
            .unwrap();
    assert_eq!(rec["options"]["snapshot"], "on-unmount");
    assert_eq!(rec["options"]["keep"], "5");
    let (_, got) = b.p.call("VolumeDriver.Get", json!({"Name": "proj"}));
    assert!(got["Err"].as_str().unwrap_or("").is_empty(), "{got}");
    assert_eq!(local_snapshots(&b, "proj").len(), 1);

    // A second pull never overwrites silently.
    let o = pull(&[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("already exists") && text(&o).contains("--overwrite"),
        "{}",
        text(&o)
    );
    // The volume changes on A and moves again: an incremental on top of the same chain.
    fs::write(a.data("proj").join("src/main.rs"), "fn main() { v2() }\n").unwrap();
    fs::remove_file(a.data("proj").join("big")).unwrap();
    a.ok(&["volume", "push", "proj", "offsite"]);
    let o = pull(&["--overwrite"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        fs::read_to_string(b.data("proj").join("src/main.rs")).unwrap(),
        "fn main() { v2() }\n"
    );
    assert!(!b.data("proj").join("big").exists());
    assert_eq!(local_snapshots(&b, "proj"), local_snapshots(&a, "proj"));

    // A volume the remote does not hold is named in the refusal.
    let o = b.run(&["volume", "pull", "nope", "offsite", "--identity", s(&key)]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("no complete snapshot chain of volume nope"),
        "{}",
        text(&o)
    );
}

/// Flip one byte in the middle of the remote object of `volume@id` whose name contains `part`
/// (same size, as bit rot or a bad tool would); returns its key.
fn damage_snapshot_object(moto: &Moto, volume: &str, id: &str, part: &str) -> String {
    let key = moto
        .keys(&format!("hosts/alpha/snapshots/{volume}/{id}/"))
        .into_iter()
        .map(|(k, _)| k)
        .find(|k| k.contains(part))
        .unwrap_or_else(|| panic!("no object {part} of {volume}@{id} on the remote"));
    let scratch = tempfile::tempdir().unwrap();
    let obj = scratch.path().join("obj");
    moto.s3(&["get", BUCKET, &key, s(&obj)]);
    let mut bytes = fs::read(&obj).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&obj, &bytes).unwrap();
    moto.s3(&["put", BUCKET, &key, s(&obj)]);
    key
}

#[test]
fn a_damaged_remote_snapshot_is_named_by_verify_and_dr_falls_back_to_an_older_chain_then_the_backup(
) {
    if !require_s3() {
        return;
    }
    let moto = Moto::start(None);
    moto.s3(&["mkbucket", BUCKET]);
    let mut h = Host::new();
    h.create("ledger", json!({"class": "critical"}));
    let f = h.data("ledger").join("state.txt");
    fs::write(&f, "v1\n").unwrap();
    fs::write(h.data("ledger").join("bulk"), harness::noise(9, 1 << 20)).unwrap();
    h.add_remote(&moto.endpoint());
    h.backup_and_push();
    // Two pushes after the backup: a full snapshot (v2), then an incremental one on it (v3).
    let mut ids = Vec::new();
    for v in ["v2", "v3"] {
        fs::write(&f, format!("{v}\n")).unwrap();
        h.ok(&["volume", "push", "ledger", "offsite"]);
        ids.push(local_snapshots(&h, "ledger").last().unwrap().clone());
    }
    let (s1, s2) = (ids[0].clone(), ids[1].clone());
    let list: Value = serde_json::from_str(&h.ok(&["snapshot", "ls", "ledger", "--json"])).unwrap();
    assert_eq!(list[1]["parent"], s1.as_str(), "{list}");
    let newest = damage_snapshot_object(&moto, "ledger", &s2, "snapshot.tar");

    // Verify names the damaged object from the listing alone; the rest is fine.
    let o = h.run(&["remote", "verify", "offsite"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains(&format!("FAILED snapshot ledger@{s2}")) && t.contains(&newest),
        "verify names the object: {t}"
    );
    assert!(t.contains(&format!("ok     snapshot ledger@{s1}")), "{t}");
    assert!(
        t.lines().any(|l| l.starts_with("ok     daily/")),
        "the backup is fine: {t}"
    );

    // DR refuses the damaged chain and restores the older one over the backup, saying so.
    h.wipe();
    h.add_remote(&moto.endpoint());
    let out = h.dr(&[]);
    assert!(
        out.contains(&format!("refused snapshot ledger@{s2}")) && out.contains("damaged"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "ok     snapshot ledger@{s1}: newer than the backup"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "volume ledger fell back to the older snapshot ledger@{s1}"
        )),
        "{out}"
    );
    assert_eq!(fs::read_to_string(&f).unwrap(), "v2\n");

    // With the full snapshot damaged too, no newer chain is whole: the backup's data stays.
    damage_snapshot_object(&moto, "ledger", &s1, "snapshot.tar");
    h.wipe();
    h.add_remote(&moto.endpoint());
    let out = h.dr(&[]);
    for id in [&s2, &s1] {
        assert!(
            out.contains(&format!("refused snapshot ledger@{id}")),
            "{out}"
        );
    }
    assert!(
        out.contains("volume ledger holds the backup's data: every newer snapshot chain on the remote was refused"),
        "{out}"
    );
    assert!(!out.contains("ok     snapshot"), "{out}");
    assert_eq!(fs::read_to_string(&f).unwrap(), "v1\n");
}
