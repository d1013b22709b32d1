//! Issue 12's escapes through the real dockerd: the managed plugin (the host's `/` at `/host`
//! inside it) and the legacy socket driver (on the host). The socket-level versions are in
//! tests/hardening/escapes.rs; here every step is what a user of Docker can do: containers of
//! a parent volume plant links, `docker volume create` and `docker run -v` do the rest.
//!
//! - A container of a `parent=` volume replaces a child's directory with a symlink to a
//!   root-owned 0700 host directory holding a secret, before the child's Create and after it.
//!   For the managed plugin the link's target is `/host/<dir>`: an absolute target resolves in
//!   the plugin's namespace, where that is the host's directory (a target without `/host`
//!   would name nothing there). `docker volume create` (with owner and mode, or a template
//!   copied from the child) and `docker run -v child:/x` must fail naming the link, no
//!   container may read the secret, and the directory keeps its owner, mode and content,
//!   also after the child is removed.
//! - `o=rbind,ro` on a `device=` directory holding a tmpfs: the container sees the submount,
//!   read-only like the rest, and the host's tmpfs is still mounted, with its data, after the
//!   container exits (before the fix, detaching the staging mount propagated to the host).

use crate::support::common;
use crate::support::legacy::LegacyPlugin;
use crate::support::outside::{Outside, SECRET};

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use common::{
    docker, docker_ok, ensure_busybox_image, forget_dead_legacy_drivers, require_docker,
    unique_name, Cleanup, TestPlugin,
};

/// What the attacks need to know about a driver.
struct Target {
    /// Docker's driver name.
    driver: String,
    /// Prefix under which the driver sees the host's `/` (`/host` in the managed plugin).
    host_prefix: &'static str,
    /// A host directory inside the driver's allowed bind roots.
    bind_root: PathBuf,
    /// The managed plugin, restarted after the test mounts a tmpfs on the host: its view of
    /// the host is fixed when it starts (see [`rbind_keeps_submounts`]).
    managed: Option<String>,
}

/// `docker run --rm [-v SPEC…] busybox sh -c SCRIPT`, whatever its exit status.
fn run(volumes: &[String], script: &str) -> std::process::Output {
    let mut args = vec!["run".to_string(), "--rm".to_string()];
    for v in volumes {
        args.push("-v".to_string());
        args.push(v.clone());
    }
    args.extend([
        common::BUSYBOX_IMAGE.to_string(),
        "sh".to_string(),
        "-c".to_string(),
        script.to_string(),
    ]);
    docker(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn run_ok(volumes: &[String], script: &str) -> String {
    let out = run(volumes, script);
    assert!(
        out.status.success(),
        "docker run {volumes:?} sh -c {script:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn create(driver: &str, name: &str, opts: &[String]) -> std::process::Output {
    let mut args = vec!["volume", "create", "-d", driver];
    for o in opts {
        args.extend(["-o", o]);
    }
    args.push(name);
    docker(&args)
}

/// Asserts that a docker command failed with a message naming `link` as a symbolic link.
fn assert_refused_naming(out: &std::process::Output, link: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "{what} succeeded through a symlinked child:\n{stdout}{stderr}"
    );
    assert!(
        stderr.contains(&format!("{link} is a symbolic link")),
        "{what} must fail naming the link {link}: {stderr}"
    );
    assert!(
        !stdout.as_bytes().windows(SECRET.len()).any(|w| w == SECRET),
        "{what} printed the host's secret: {stdout}"
    );
}

/// The symlinked-child attacks, before and after the child's Create.
fn symlinked_children(t: &Target, cleanup: &mut Cleanup) {
    let outside = Outside::new();
    let before = outside.seen();
    let link_target = format!("{}{}", t.host_prefix, outside.path().display());
    let (par, early, late, copy) = (
        unique_name("esc-par"),
        unique_name("esc-early"),
        unique_name("esc-late"),
        unique_name("esc-copy"),
    );
    cleanup.add(format!(
        "docker volume rm -f {copy} {late} {early} {par} >/dev/null 2>&1"
    ));
    let ok = |out: std::process::Output, what: &str| {
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(create(&t.driver, &par, &[]), "create the parent");
    let par_mount = format!("{par}:/p");

    // Before Create: the parent's container plants the link where the child will be made.
    run_ok(
        std::slice::from_ref(&par_mount),
        &format!("ln -s {link_target} /p/{early}"),
    );
    let child_opts = [
        format!("parent={par}"),
        "uid=4242".to_string(),
        "gid=4242".to_string(),
        "mode=0777".to_string(),
    ];
    let out = create(&t.driver, &early, &child_opts);
    assert_refused_naming(
        &out,
        &format!("{par}/data/{early}"),
        "docker volume create of a child planted as a link",
    );
    assert_eq!(
        outside.seen(),
        before,
        "Create changed the outside directory"
    );

    // After Create: the child exists, then the parent's container swaps it for the link.
    ok(create(&t.driver, &late, &child_opts), "create the child");
    run_ok(
        &[format!("{late}:/x")],
        "echo mine > /x/file && stat -c '%u %g %a' /x",
    );
    run_ok(
        std::slice::from_ref(&par_mount),
        &format!("rm -rf /p/{late} && ln -s {link_target} /p/{late} && ls -l /p/{late}"),
    );
    let late_link = format!("{par}/data/{late}");
    let out = run(
        &[format!("{late}:/x")],
        "ls -la /x; cat /x/secret; chmod 0777 /x; touch /x/planted",
    );
    assert_refused_naming(&out, &late_link, "docker run -v child:/x");
    let out = create(&t.driver, &copy, &[format!("template={late}")]);
    assert_refused_naming(&out, &late_link, "docker volume create -o template=child");
    // The parent's own container still mounts (the link is data in its tree, shown as a link).
    let listed = run_ok(
        std::slice::from_ref(&par_mount),
        &format!("stat -c '%F' /p/{late}"),
    );
    assert_eq!(listed.trim(), "symbolic link");
    assert_eq!(
        outside.seen(),
        before,
        "Mount changed the outside directory"
    );

    // Removing the child removes the link, never what it points at.
    docker_ok(&["volume", "rm", &late]);
    assert_eq!(
        outside.seen(),
        before,
        "removing the child changed the outside directory"
    );
    assert!(
        outside.path().join("secret").exists(),
        "removing the child deleted the outside directory's content"
    );
}

/// `o=rbind,ro` (and `o=rbind,noatime`) on a `device=` directory holding a tmpfs.
fn rbind_keeps_submounts(t: &Target, cleanup: &mut Cleanup) {
    let dev = t.bind_root.join(unique_name("withsub"));
    let sub = dev.join("sub");
    fs::create_dir_all(&sub).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&sub)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs on {}", sub.display());
    // Runs after the volumes are removed (registered first).
    cleanup.add(format!(
        "umount {s} 2>/dev/null; rm -rf {d}",
        s = sub.display(),
        d = dev.display()
    ));
    fs::write(sub.join("on-tmpfs"), b"submount data").unwrap();
    fs::write(dev.join("top"), b"top data").unwrap();
    // The managed plugin sees host mounts that existed when it started, not later ones under
    // a directory of the filesystem holding /var/lib/docker: runc makes its rootfs's parent
    // mount (that filesystem's mount) private in the plugin's namespace, so the `rslave` copy
    // at /host is cut off from the host's propagation (docs/hardening.md, known limits).
    // Restart it, as a reboot or `docker plugin disable`/`enable` does.
    if let Some(plugin) = &t.managed {
        docker_ok(&["plugin", "disable", "-f", plugin]);
        docker_ok(&["plugin", "enable", plugin]);
    }
    let host_has_tmpfs = || {
        allspark::plugin::mounts::parse_mountinfo(
            &fs::read_to_string("/proc/self/mountinfo").unwrap(),
        )
        .iter()
        .any(|m| m == &sub)
    };
    for flags in ["rbind,ro", "rbind,noatime"] {
        let vol = unique_name("esc-rbind");
        cleanup.add(format!("docker volume rm -f {vol} >/dev/null 2>&1"));
        let out = create(
            &t.driver,
            &vol,
            &[
                "type=none".to_string(),
                format!("o={flags}"),
                format!("device={}", dev.display()),
            ],
        );
        assert!(
            out.status.success(),
            "{flags}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen = run_ok(
            &[format!("{vol}:/x")],
            "cat /x/sub/on-tmpfs; echo; \
             for f in /x/top2 /x/sub/new; do touch $f 2>/dev/null && echo WROTE || echo REFUSED; done; \
             grep ' /x/sub ' /proc/self/mountinfo",
        );
        let lines: Vec<&str> = seen.lines().collect();
        assert_eq!(
            lines.first().copied(),
            Some("submount data"),
            "{flags}: the container must see the tmpfs below the device directory: {seen}"
        );
        let expect = if flags.contains("ro") {
            "REFUSED"
        } else {
            "WROTE"
        };
        assert_eq!(
            lines.get(1..3),
            Some(&[expect, expect][..]),
            "{flags}: writes into the volume and into its submount: {seen}"
        );
        let sub_line = lines.get(3).copied().unwrap_or_default();
        assert!(
            sub_line.contains(" - tmpfs "),
            "{flags}: the submount is the tmpfs: {seen}"
        );
        let sub_opts = sub_line.split_whitespace().nth(5).unwrap_or_default();
        assert_eq!(
            sub_opts.split(',').next() == Some("ro"),
            flags.contains("ro"),
            "{flags}: the submount's options: {sub_line}"
        );
        // The container has exited: the host's tmpfs is still there, with its data.
        assert!(
            host_has_tmpfs(),
            "{flags}: the host's tmpfs at {} was unmounted",
            sub.display()
        );
        assert_eq!(fs::read(sub.join("on-tmpfs")).unwrap(), b"submount data");
        docker_ok(&["volume", "rm", &vol]);
        assert!(
            host_has_tmpfs(),
            "{flags}: removing the volume unmounted the host's tmpfs"
        );
        let _ = fs::remove_file(dev.join("top2"));
        let _ = fs::remove_file(sub.join("new"));
    }
}

#[test]
fn escapes_through_dockerd_and_the_managed_plugin_are_refused() {
    let Some(_docker) = require_docker() else {
        return;
    };
    let started = Instant::now();
    ensure_busybox_image();
    forget_dead_legacy_drivers();
    let plugin = TestPlugin::start("allspark-test-escapes");
    let t = Target {
        driver: plugin.name.clone(),
        host_prefix: "/host",
        bind_root: plugin.root.binds(),
        managed: Some(plugin.name.clone()),
    };
    let mut cleanup = Cleanup::new();
    symlinked_children(&t, &mut cleanup);
    rbind_keeps_submounts(&t, &mut cleanup);
    eprintln!("managed plugin escapes: {:?}", started.elapsed());
}

#[test]
fn escapes_through_dockerd_and_the_legacy_driver_are_refused() {
    let Some(_docker) = require_docker() else {
        return;
    };
    let started = Instant::now();
    ensure_busybox_image();
    let plugin = LegacyPlugin::start();
    let t = Target {
        driver: plugin.driver.clone(),
        host_prefix: "",
        bind_root: plugin.dir.path().join("binds"),
        managed: None,
    };
    fs::create_dir_all(&t.bind_root).unwrap();
    let mut cleanup = Cleanup::new();
    symlinked_children(&t, &mut cleanup);
    rbind_keeps_submounts(&t, &mut cleanup);
    eprintln!("legacy driver escapes: {:?}", started.elapsed());
}
