//! Pools without Docker: a real `btrfs-image` pool (3 GB sparse, in the scratch directory) on the real plugin, agent and CLI: snapshots on stop as read-only subvolumes with their archive afterwards, clones, restores by swap, qgroup limits, remounts, and kills mid-snapshot, mid-clone and mid-image.

use crate::support::common::loops_backing;
use crate::support::harness;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{cli, cli_ok, err_of, noise, wait_for, Agent, Plugin};
use serde_json::{json, Value};

pub(super) const BIN: &str = env!("CARGO_BIN_EXE_allspark");

pub(super) fn pool_plugin() -> Plugin {
    Plugin::start_with_pool(BIN, "p", "3G", &[])
}

pub(super) fn pool_root(p: &Plugin) -> PathBuf {
    p.root().join("pools").join("p")
}

/// Where a pool volume's data (a subvolume) lives.
pub(super) fn data(p: &Plugin, name: &str) -> PathBuf {
    pool_root(p).join("volumes").join(name)
}

pub(super) fn create(p: &Plugin, name: &str, opts: Value) {
    let (_, v) = p.call("VolumeDriver.Create", json!({"Name": name, "Opts": opts}));
    assert_eq!(err_of(&v), "", "create {name}: {v}");
}

pub(super) fn mount(p: &Plugin, name: &str, id: &str) -> PathBuf {
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": name, "ID": id}));
    assert_eq!(err_of(&v), "", "mount {name}: {v}");
    PathBuf::from(v["Mountpoint"].as_str().unwrap())
}

pub(super) fn unmount(p: &Plugin, name: &str, id: &str) {
    let (_, v) = p.call("VolumeDriver.Unmount", json!({"Name": name, "ID": id}));
    assert_eq!(err_of(&v), "", "unmount {name}: {v}");
}

pub(super) fn kinds(p: &Plugin, volume: &str) -> Vec<String> {
    p.snapshots(volume)
        .iter()
        .map(|s| s["kind"].as_str().unwrap().to_string())
        .collect()
}

/// Is `dir` the root of a btrfs subvolume (inode 256 on btrfs)?
pub(super) fn is_subvolume(dir: &Path) -> bool {
    let st = nix::sys::statfs::statfs(dir).unwrap();
    st.filesystem_type().0 as i64 == 0x9123_683E && std::fs::metadata(dir).unwrap().ino() == 256
}

/// Unmount the pool behind the plugin's back (retried while a call in flight holds it busy).
fn unmount_pool(p: &Plugin) {
    unmount_path(&pool_root(p));
}

/// Unmount an image pool's mount point, retried while a call in flight holds it busy.
pub(super) fn unmount_path(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match nix::mount::umount2(path, nix::mount::MntFlags::empty()) {
            Ok(()) => return,
            Err(nix::errno::Errno::EBUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("umount {}: {e}", path.display()),
        }
    }
}

/// Wait until the plugin's start-up recovery (which opens the pools) is done.
pub(super) fn recovered(p: &Plugin) {
    wait_for("the plugin's recovery", Duration::from_secs(20), || {
        p.log().matches("recovery done").count() >= p.log().matches("plugin listening").count()
    });
}

pub(super) fn pool_is_mounted(p: &Plugin) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    allspark::plugin::mounts::parse_mountinfo(&text).contains(&pool_root(p))
}

#[test]
fn snapshot_on_stop_is_a_read_only_subvolume_and_its_archive_follows() {
    let p = pool_plugin();
    let _agent = Agent::start(
        &p.root(),
        &p.dir.path().join("agent.log"),
        &["--no-docker-events"],
    );
    create(
        &p,
        "ws",
        json!({"pool": "p", "snapshot": "on-unmount", "uid": "1000"}),
    );
    assert!(
        is_subvolume(&data(&p, "ws")),
        "a pool volume is a subvolume"
    );
    let m = mount(&p, "ws", "c1");
    std::fs::create_dir_all(m.join("src")).unwrap();
    std::fs::write(m.join("src/main.rs"), b"fn main() {}\n").unwrap();
    std::fs::write(m.join("blob"), noise(7, 3 << 20)).unwrap();
    unmount(&p, "ws", "c1");
    wait_for("the read-only snapshot", Duration::from_secs(30), || {
        !p.snapshots("ws").is_empty()
    });
    wait_for("its archive", Duration::from_secs(60), || {
        kinds(&p, "ws") == ["cow+archive"]
    });
    let s = &p.snapshots("ws")[0];
    let id = s["id"].as_str().unwrap();
    assert_eq!(s["trigger"], "unmount", "{s}");
    assert_eq!(s["cow"]["pool"], "p", "{s}");
    let ro = pool_root(&p).join("snapshots/ws").join(id);
    assert!(is_subvolume(&ro));
    assert_eq!(
        std::fs::read(ro.join("src/main.rs")).unwrap(),
        b"fn main() {}\n"
    );
    let err = std::fs::write(ro.join("src/main.rs"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    // The archive is a standard tar GNU tar restores without allspark.
    let archive = p
        .root()
        .join("snapshots/ws")
        .join(id)
        .join(s["archive"].as_str().unwrap());
    let out_dir = p.dir.path().join("untar");
    std::fs::create_dir_all(&out_dir).unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&out_dir)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        std::fs::read(out_dir.join("blob")).unwrap(),
        noise(7, 3 << 20)
    );
    // Get shows both kinds counted once per id.
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "ws"}));
    assert_eq!(v["Volume"]["Status"]["snapshots"], 1, "{v}");
    assert_eq!(v["Volume"]["Status"]["pool"], "p", "{v}");
}

#[test]
fn clone_from_snapshot_and_volume_share_blocks_and_restore_swaps_a_subvolume_in() {
    let p = pool_plugin();
    create(&p, "base", json!({"pool": "p", "uid": "1000", "keep": "2"}));
    let m = mount(&p, "base", "c1");
    std::fs::write(m.join("big"), noise(3, 64 << 20)).unwrap();
    std::fs::write(m.join("note"), b"v1").unwrap();
    unmount(&p, "base", "c1");
    let id = cli_ok(&p, &["snapshot", "create", "base", "--no-archive"])
        .trim()
        .to_string();
    assert_eq!(kinds(&p, "base"), ["cow"], "no archive yet");

    let t = Instant::now();
    create(
        &p,
        "clone",
        json!({"pool": "p", "template": format!("snapshot:base@{id}")}),
    );
    create(&p, "copy", json!({"pool": "p", "template": "base"}));
    let clone_time = t.elapsed();
    assert!(
        clone_time < Duration::from_secs(2),
        "two 64 MB clones took {clone_time:?}"
    );
    for v in ["clone", "copy"] {
        assert!(is_subvolume(&data(&p, v)));
        assert_eq!(std::fs::read(data(&p, v).join("note")).unwrap(), b"v1");
        assert_eq!(
            std::fs::metadata(data(&p, v)).unwrap().uid(),
            1000,
            "owner kept"
        );
    }
    // Shared extents: the pool's used space grew far less than 2 x 64 MB.
    let usage: Value = serde_json::from_str(&cli_ok(&p, &["pool", "usage", "--json"])).unwrap();
    let pool = usage["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "p")
        .unwrap();
    assert!(
        pool["space"]["used_bytes"].as_u64().unwrap() < 120 << 20,
        "{pool}"
    );
    // Writing into a clone leaves its source alone.
    std::fs::write(data(&p, "clone").join("note"), b"clone").unwrap();
    assert_eq!(std::fs::read(data(&p, "base").join("note")).unwrap(), b"v1");

    // Restore by swap: the volume is a subvolume again, with the snapshot's content.
    let m = mount(&p, "base", "c1");
    std::fs::write(m.join("note"), b"v2").unwrap();
    std::fs::remove_file(m.join("big")).unwrap();
    let busy = cli(&p, &["snapshot", "restore", "base", &id, "--yes"]);
    assert!(!busy.status.success(), "restore refused while mounted");
    unmount(&p, "base", "c1");
    let out = cli_ok(&p, &["snapshot", "restore", "base", &id, "--yes"]);
    assert!(out.contains("swapped in"), "{out}");
    assert!(is_subvolume(&data(&p, "base")));
    assert_eq!(std::fs::read(data(&p, "base").join("note")).unwrap(), b"v1");
    assert_eq!(
        std::fs::read(data(&p, "base").join("big")).unwrap().len(),
        64 << 20
    );
    let leftovers: Vec<_> = std::fs::read_dir(pool_root(&p).join("volumes"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Restore --into a new volume of the same pool is a clone too.
    let out = cli_ok(&p, &["snapshot", "restore", "base", &id, "--into", "again"]);
    assert!(
        out.contains("swapped in") || out.contains("writable"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(data(&p, "again").join("note")).unwrap(),
        b"v1"
    );

    // keep=2 prunes read-only snapshots: after three more, two are left.
    for _ in 0..3 {
        cli_ok(&p, &["snapshot", "create", "base", "--no-archive"]);
    }
    let ids: Vec<String> = p
        .snapshots("base")
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(!ids.contains(&id));

    // Remove: refused while mounted, then the subvolume and its snapshots go.
    mount(&p, "base", "c9");
    let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": "base"}));
    assert!(err_of(&v).contains("mounted"), "{v}");
    unmount(&p, "base", "c9");
    // The newest read-only snapshot has no archive (--no-archive): kept until it has one.
    let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": "base"}));
    assert!(err_of(&v).contains("no archive yet"), "{v}");
    cli_ok(&p, &["snapshot", "archive", "base"]);
    let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": "base"}));
    assert_eq!(err_of(&v), "", "{v}");
    assert!(!data(&p, "base").exists());
    assert!(!pool_root(&p).join("snapshots/base").exists());
    assert_eq!(
        std::fs::read_dir(pool_root(&p).join("trash"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read(data(&p, "clone").join("note")).unwrap(),
        b"clone",
        "clones outlive their source"
    );
}

/// A `snapshot restore --into NEW` that fails after NEW was created leaves no volume NEW
/// behind, whichever step failed: here the restore into the btrfs pool itself (only the
/// snapshot's archive is left, and it is damaged), which used to leave NEW recorded.
#[test]
fn a_failed_restore_into_a_new_pool_volume_removes_the_new_volume() {
    let p = pool_plugin();
    create(&p, "src", json!({"pool": "p"}));
    std::fs::write(data(&p, "src").join("note"), b"v1").unwrap();
    let id = cli_ok(&p, &["snapshot", "create", "src", "--no-archive"])
        .trim()
        .to_string();
    cli_ok(&p, &["snapshot", "archive", "src"]);
    let snaps = p.snapshots("src");
    let archive = snaps[0]["archive"].as_str().expect("archived").to_string();
    // The read-only snapshot goes: the restore has to extract the archive.
    let ro = pool_root(&p).join("snapshots/src").join(&id);
    let out = Command::new("btrfs")
        .arg("subvolume")
        .arg("delete")
        .arg(&ro)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let archive = p.root().join("snapshots/src").join(&id).join(archive);
    std::fs::write(&archive, noise(5, 64 << 10)).unwrap();

    let out = cli(&p, &["snapshot", "restore", "src", &id, "--into", "copy"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a damaged archive restores nothing");
    assert!(stderr.contains("damaged"), "{stderr}");
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "copy"}));
    assert!(
        err_of(&v).contains("no such volume"),
        "the half-made volume is removed: {v}"
    );
    assert!(!data(&p, "copy").exists());
    let leftovers: Vec<_> = std::fs::read_dir(pool_root(&p).join("volumes"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "src")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Write `len` bytes to `path` in 1 MiB chunks: the bytes written and the error that stopped it.
pub(super) fn fill(path: &Path, len: usize) -> (usize, Option<std::io::Error>) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xA5u8; 1 << 20];
    let mut done = 0;
    while done < len {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_data()) {
            return (done, Some(e));
        }
        done += chunk.len();
    }
    (done, None)
}

#[test]
fn size_is_a_qgroup_limit_that_stops_writes_and_spares_other_volumes() {
    let p = pool_plugin();
    create(&p, "small", json!({"pool": "p", "size": "64M"}));
    create(&p, "other", json!({"pool": "p"}));
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "small"}));
    assert_eq!(v["Volume"]["Status"]["size_enforced"], true, "{v}");
    let small = mount(&p, "small", "c1");
    let (written, err) = fill(&small.join("f"), 200 << 20);
    let err = err.expect("a write past size=64M fails");
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    assert!(
        (48 << 20..=64 << 20).contains(&written),
        "stopped at {written} bytes"
    );
    let other = mount(&p, "other", "c2");
    let (written, err) = fill(&other.join("f"), 100 << 20);
    assert!(err.is_none() && written == 100 << 20, "{err:?}");
    let usage: Value = serde_json::from_str(&cli_ok(&p, &["pool", "usage", "--json"])).unwrap();
    let small_u = usage["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["volume"] == "small")
        .unwrap();
    assert_eq!(small_u["limit_bytes"], 64 << 20, "{small_u}");
    assert_eq!(small_u["enforced"], true);
    // The default pool says why it cannot enforce a size.
    create(&p, "plain", json!({"size": "1G"}));
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "plain"}));
    assert_eq!(v["Volume"]["Status"]["size_enforced"], false, "{v}");
    assert!(v["Volume"]["Status"]["size_enforcement"]
        .as_str()
        .unwrap()
        .contains("not enforced"));
    unmount(&p, "small", "c1");
    unmount(&p, "other", "c2");
}

#[test]
fn unknown_pools_are_refused_naming_the_configured_ones() {
    let p = pool_plugin();
    let (_, v) = p.call(
        "VolumeDriver.Create",
        json!({"Name": "x", "Opts": {"pool": "fast"}}),
    );
    let e = err_of(&v);
    assert!(
        e.contains("no such pool") && e.contains("default (dir:") && e.contains("p (btrfs-image:"),
        "{e}"
    );
    let (_, v) = p.call(
        "VolumeDriver.Create",
        json!({"Name": "x", "Opts": {"pool": "p", "parent": "y"}}),
    );
    assert!(err_of(&v).contains("cannot be combined"), "{v}");
    let ls = cli_ok(&p, &["pool", "ls"]);
    assert!(ls.contains("btrfs-image") && ls.contains("yes"), "{ls}");
}

#[test]
fn the_pool_is_mounted_again_after_a_restart_and_after_an_unmount_behind_its_back() {
    let mut p = pool_plugin();
    create(&p, "keep", json!({"pool": "p"}));
    std::fs::write(data(&p, "keep").join("f"), b"still here").unwrap();
    // A reboot: the plugin stops and the pool is no longer mounted.
    recovered(&p);
    p.terminate();
    unmount_pool(&p);
    assert!(!pool_is_mounted(&p));
    p.spawn();
    recovered(&p);
    assert!(pool_is_mounted(&p), "mounted again at start: {}", p.log());
    assert_eq!(
        std::fs::read(data(&p, "keep").join("f")).unwrap(),
        b"still here"
    );
    // Unmounted behind the running plugin's back: the next Mount mounts it again.
    unmount_pool(&p);
    assert!(
        !pool_is_mounted(&p),
        "{}\n{}",
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(pool_root(&p).to_str().unwrap()))
            .collect::<Vec<_>>()
            .join("\n"),
        p.log()
    );
    let m = mount(&p, "keep", "c1");
    assert_eq!(std::fs::read(m.join("f")).unwrap(), b"still here");
    assert!(pool_is_mounted(&p));
    unmount(&p, "keep", "c1");
    // Nothing was ever written into the empty mount point while it was unmounted.
    assert!(p.log().contains("mounting it again"), "{}", p.log());
}

/// A pool whose image is missing at start (its disk not mounted yet, the file moved) is not
/// made anew: a new, empty filesystem would take the volumes' place. It stays unready, its
/// volumes fail naming the image, and the image put back serves them again.
#[test]
fn a_missing_pool_image_is_not_made_anew_at_start() {
    let mut p = pool_plugin();
    create(&p, "keep", json!({"pool": "p"}));
    std::fs::write(data(&p, "keep").join("f"), b"on the real image").unwrap();
    recovered(&p);
    p.terminate();
    unmount_pool(&p);
    let image = p.pool_image("p");
    let aside = image.with_extension("img.aside");
    std::fs::rename(&image, &aside).unwrap();
    p.spawn();
    recovered(&p);
    assert!(!image.exists(), "a new image was made: {}", p.log());
    assert!(
        p.log().contains("is missing (is its disk mounted?)"),
        "{}",
        p.log()
    );
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "keep", "ID": "c1"}));
    assert!(err_of(&v).contains(image.to_str().unwrap()), "{v}");
    p.terminate();
    std::fs::rename(&aside, &image).unwrap();
    p.spawn();
    recovered(&p);
    let m = mount(&p, "keep", "c2");
    assert_eq!(std::fs::read(m.join("f")).unwrap(), b"on the real image");
    unmount(&p, "keep", "c2");
}

/// The image still attached where another mount namespace mounted it (the managed plugin's,
/// the host's CLI, an admin's `mount -o loop`): mounting the pool again must go through that
/// same loop device. A second loop device on the file would be a second, independent btrfs
/// over the same bytes (the kernel mounts it under a temporary fsid) and corrupt it.
#[test]
fn an_image_still_attached_elsewhere_is_mounted_through_the_same_loop_device() {
    let p = pool_plugin();
    create(&p, "keep", json!({"pool": "p"}));
    std::fs::write(data(&p, "keep").join("f"), b"one filesystem").unwrap();
    recovered(&p);
    let image = p.pool_image("p");
    let loops = loops_backing(&image);
    assert_eq!(loops.len(), 1, "{loops:?}");
    let elsewhere = p.root().parent().unwrap().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let dev = PathBuf::from(&loops[0]);
    nix::mount::mount(
        Some(dev.as_path()),
        &elsewhere,
        Some("btrfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    unmount_pool(&p);
    let m = mount(&p, "keep", "c1");
    assert_eq!(std::fs::read(m.join("f")).unwrap(), b"one filesystem");
    assert_eq!(
        loops_backing(&image),
        loops,
        "a second loop device was attached"
    );
    // One filesystem: the same device number, and a write through one mount shows in the other.
    let dev_of = |path: &Path| std::fs::metadata(path).unwrap().dev();
    assert_eq!(dev_of(&pool_root(&p)), dev_of(&elsewhere));
    std::fs::write(elsewhere.join("volumes/keep/g"), b"seen").unwrap();
    assert_eq!(std::fs::read(m.join("g")).unwrap(), b"seen");
    assert!(p.log().contains("already attached"), "{}", p.log());
    unmount(&p, "keep", "c1");
    unmount_path(&elsewhere);
}

/// A call that is expected to kill the plugin (crash injection): the reply, if any.
pub(super) fn call_dying(p: &Plugin, method: &str, body: Value) {
    let sock = p.socket();
    let body = body.to_string();
    let _ = std::panic::catch_unwind(move || {
        harness::call_raw(&sock, method, body.into_bytes());
    });
}

#[test]
fn kills_mid_snapshot_mid_clone_and_mid_image_leave_nothing_half_done() {
    // An image killed after it was sized, before it was formatted: cleaned up at the next start.
    // The pool is made new (image and record gone): a pool made once is never formatted anew.
    let mut p = Plugin::start_with_pool(BIN, "p", "3G", &[]);
    recovered(&p);
    p.terminate();
    unmount_pool(&p);
    std::fs::remove_file(p.pool_image("p")).unwrap();
    std::fs::remove_file(p.root().join("state/pools.json")).unwrap();
    p.env = vec![("ALLSPARK_CRASH_AT".into(), "pool-image-sized".into())];
    let mut child = Command::new(BIN)
        .arg("--root")
        .arg(p.root())
        .arg("plugin")
        .arg("--socket")
        .arg(p.socket())
        .args(&p.extra_args)
        .env("ALLSPARK_CRASH_AT", "pool-image-sized")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the plugin did not stop at the crash point pool-image-sized");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let partial = PathBuf::from(format!("{}.allspark-partial", p.pool_image("p").display()));
    assert!(partial.exists() && !p.pool_image("p").exists());
    p.env.clear();
    p.spawn();
    assert!(!partial.exists(), "the half-created image was removed");
    assert!(
        p.pool_image("p").exists() && pool_is_mounted(&p),
        "{}",
        p.log()
    );

    // Mid-snapshot: killed after the read-only snapshot, before its rename.
    create(&p, "ws", json!({"pool": "p"}));
    std::fs::write(data(&p, "ws").join("f"), b"one").unwrap();
    let out = Command::new(BIN)
        .arg("--root")
        .arg(p.root())
        .args(["snapshot", "create", "ws"])
        .env("ALLSPARK_CRASH_AT", "cow-snapshot-made")
        .env("ALLSPARK_DOCKER", "unix:///nonexistent.sock")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(p.snapshots("ws").is_empty(), "no half snapshot is listed");
    let snap_dir = pool_root(&p).join("snapshots/ws");
    let names = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        names(&snap_dir).iter().any(|n| n.starts_with(".tmp-")),
        "{:?}",
        names(&snap_dir)
    );
    let id = cli_ok(&p, &["snapshot", "create", "ws"]).trim().to_string();
    assert_eq!(
        names(&snap_dir)
            .iter()
            .filter(|n| n.starts_with('.'))
            .count(),
        0,
        "leftover cleaned: {:?}",
        names(&snap_dir)
    );
    assert_eq!(kinds(&p, "ws"), ["cow+archive"]);

    // Mid-clone: the plugin is killed after the clone, before the record.
    p.terminate();
    p.env = vec![("ALLSPARK_CRASH_AT".into(), "pool-clone-made".into())];
    p.spawn();
    call_dying(
        &p,
        "VolumeDriver.Create",
        json!({"Name": "c1", "Opts": {"pool": "p", "template": format!("snapshot:ws@{id}")}}),
    );
    p.kill9();
    assert!(pool_root(&p).join("volumes/.creating-c1").exists());
    p.env.clear();
    p.spawn();
    wait_for(
        "the leftover clone removed",
        Duration::from_secs(10),
        || !pool_root(&p).join("volumes/.creating-c1").exists(),
    );
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "c1"}));
    assert!(
        err_of(&v).contains("no such volume"),
        "never acknowledged, never recorded: {v}"
    );
    // Killed after the record, before the rename: completed at the next start.
    p.terminate();
    p.env = vec![("ALLSPARK_CRASH_AT".into(), "pool-create-recorded".into())];
    p.spawn();
    call_dying(
        &p,
        "VolumeDriver.Create",
        json!({"Name": "c2", "Opts": {"pool": "p", "template": format!("snapshot:ws@{id}")}}),
    );
    p.kill9();
    p.env.clear();
    p.spawn();
    wait_for(
        "the interrupted clone completed",
        Duration::from_secs(10),
        || data(&p, "c2").join("f").exists(),
    );
    assert_eq!(std::fs::read(data(&p, "c2").join("f")).unwrap(), b"one");
    create(
        &p,
        "c1",
        json!({"pool": "p", "template": format!("snapshot:ws@{id}")}),
    );
    assert_eq!(std::fs::read(data(&p, "c1").join("f")).unwrap(), b"one");
}

#[test]
fn a_mount_does_not_wait_for_an_archive_being_written() {
    let p = pool_plugin();
    create(&p, "big", json!({"pool": "p"}));
    let blob = noise(11, 48 << 20);
    for i in 0..6 {
        std::fs::write(data(&p, "big").join(format!("f{i}")), &blob).unwrap();
    }
    // `snapshot create` takes the read-only snapshot, then writes its archive (seconds).
    let mut snap = Command::new(BIN)
        .arg("--root")
        .arg(p.root())
        .args(["snapshot", "create", "big"])
        .env("ALLSPARK_DOCKER", "unix:///nonexistent.sock")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let archiving = p.root().join("snapshots/big");
    wait_for("the archive being written", Duration::from_secs(30), || {
        std::fs::read_dir(&archiving)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(".archiving-"))
            })
            .unwrap_or(false)
    });
    let t = Instant::now();
    mount(&p, "big", "c1");
    let took = t.elapsed();
    let still_archiving = snap.try_wait().unwrap().is_none();
    assert!(
        took < Duration::from_millis(1500),
        "Mount took {took:?} during an archive"
    );
    assert!(
        still_archiving,
        "the archive was still being written when Mount returned"
    );
    unmount(&p, "big", "c1");
    assert!(snap.wait().unwrap().success());
    assert_eq!(kinds(&p, "big"), ["cow+archive"]);
}

#[test]
fn a_dir_pool_holds_plain_directories_snapshotted_as_archives() {
    let dir = tempfile::Builder::new()
        .prefix("allspark-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let hdd = dir.path().join("hdd");
    let p = Plugin::start_with(BIN, &["--pool", &format!("hdd=dir:{}", hdd.display())]);
    assert!(hdd.join(".allspark-pool").exists(), "{}", p.log());
    create(&p, "logs", json!({"pool": "hdd", "size": "1G"}));
    let data = hdd.join("volumes/logs");
    assert!(data.is_dir() && !is_subvolume(&data));
    let m = mount(&p, "logs", "c1");
    std::fs::write(m.join("app.log"), b"line 1\n").unwrap();
    unmount(&p, "logs", "c1");
    let id = cli_ok(&p, &["snapshot", "create", "logs"])
        .trim()
        .to_string();
    assert_eq!(kinds(&p, "logs"), ["archive"]);
    std::fs::write(data.join("app.log"), b"overwritten\n").unwrap();
    cli_ok(&p, &["snapshot", "restore", "logs", &id, "--yes"]);
    assert_eq!(std::fs::read(data.join("app.log")).unwrap(), b"line 1\n");
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "logs"}));
    assert_eq!(v["Volume"]["Status"]["size_enforced"], false, "{v}");
    assert_eq!(v["Volume"]["Status"]["pool"], "hdd", "{v}");
    let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": "logs"}));
    assert_eq!(err_of(&v), "", "{v}");
    assert!(!data.exists());
    assert_eq!(std::fs::read_dir(hdd.join("trash")).unwrap().count(), 0);
    // The pool's disk "unmounted": its marker is gone, and nothing is written there.
    std::fs::remove_file(hdd.join(".allspark-pool")).unwrap();
    let (_, v) = p.call(
        "VolumeDriver.Create",
        json!({"Name": "x", "Opts": {"pool": "hdd"}}),
    );
    assert!(err_of(&v).contains("no .allspark-pool marker"), "{v}");
    assert!(!hdd.join("volumes/x").exists());
}
