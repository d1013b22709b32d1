//! Fuzz harness bodies, shared by the cargo-fuzz targets (`fuzz/fuzz_targets/`) and the plain
//! regression tests (`tests/hardening/fuzz.rs`, which compiles this file with `#[path]`).
//!
//! Each function takes arbitrary bytes, drives one piece of allspark with them and panics when an
//! invariant breaks; a panic inside allspark is a finding too. Everything happens in a per-process
//! scratch directory (`ALLSPARK_FUZZ_SCRATCH`, else tmpfs `/dev/shm`, else the temp dir).
//! `scripts/fuzz.sh` runs the targets in a private mount namespace where every other mount is
//! read-only, so an escape could not damage the host: it fails with EROFS, which the checks
//! below treat as a finding.
#![allow(dead_code)]

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use allspark::archive::{self, ExtractOptions, Index};
use allspark::core::layout::{HostView, Layout};
use allspark::core::names::VolumeName;
use allspark::core::options::{self, MountFlags, VolumeSpec};
use allspark::core::store::{DataLocation, Store, StoreError};
use allspark::core::{names, snapshot_id, spool, status};
use allspark::plugin::api::DriverApi;
use allspark::plugin::driver::{Driver, DriverSettings};
use allspark::plugin::mounts::{RecordingSys, Sys};
use allspark::plugin::protocol::{CreateRequest, MountRequest, NameRequest};
use allspark::plugin::server::Handler;
use allspark::pool::location::Locate;
use allspark::snapshot::manifest;
use serde_json::{json, Value};

/// A host path no harness may ever create: device paths and symlinks aim at it.
pub const FORBIDDEN: &str = "/nonexistent-allspark-fuzz";
/// Content of the file that sits next to every destination and must never change.
const PRECIOUS: &[u8] = b"outside the destination: must never change";
/// The text of EROFS: under scripts/fuzz.sh, only a write outside the scratch directory gets it.
const EROFS_TEXT: &str = "Read-only file system";

/// Did `msg` report EROFS, beyond what it merely echoes of the input (names, paths and values
/// are quoted in error messages, and the fuzzer learns to write the text itself)?
fn erofs(msg: &str, input: &[u8]) -> bool {
    let echoed = String::from_utf8_lossy(input).matches(EROFS_TEXT).count();
    msg.matches(EROFS_TEXT).count() > echoed
}

/// The per-process scratch directory (created once, canonical).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = match std::env::var_os("ALLSPARK_FUZZ_SCRATCH") {
            Some(d) => PathBuf::from(d),
            None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        };
        let dir = tempfile::Builder::new()
            .prefix("allspark-fuzz-")
            .tempdir_in(&base)
            .unwrap_or_else(|e| {
                panic!(
                    "cannot create a scratch directory in {}: {e}",
                    base.display()
                )
            })
            .keep();
        dir.canonicalize().expect("canonical scratch directory")
    })
}

/// Delete the scratch directory (the regression tests call it at the end).
pub fn remove_scratch() {
    let _ = fs::remove_dir_all(scratch());
}

/// An empty directory `name` in the scratch directory (one per thread: the regression tests
/// run in parallel).
fn fresh(name: &str) -> PathBuf {
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    let d = scratch().join(format!("{name}-{thread}"));
    match fs::remove_dir_all(&d) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => panic!("cannot clear {}: {e}", d.display()),
    }
    fs::create_dir_all(&d).expect("create a scratch directory");
    d
}

/// `p` lies inside `dir`, lexically (no `..`) and, when it exists, once resolved.
fn inside(p: &Path, dir: &Path) -> bool {
    if !p.starts_with(dir) || p.components().any(|c| c == Component::ParentDir) {
        return false;
    }
    match p.canonicalize() {
        Ok(real) => real.starts_with(dir),
        Err(_) => true,
    }
}

fn assert_nothing_forbidden() {
    assert!(
        fs::symlink_metadata(FORBIDDEN).is_err(),
        "{FORBIDDEN} was created: something escaped the scratch directory"
    );
}

/// A cursor over the fuzz input: every read succeeds (zeros once the input is used up).
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.byte() as usize % xs.len()]
    }
    /// Up to `max` raw bytes (the length comes from the input).
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = (self.byte() as usize).min(max).min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
    pub fn text(&mut self, max: usize) -> String {
        String::from_utf8_lossy(self.bytes(max)).into_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// (a) requests: wire decoding and option parsing
// ---------------------------------------------------------------------------------------------

/// First byte picks the decoder, the rest is its input: the three request bodies as
/// `serde_json` decodes them for the driver, a bare `Opts` map, and the single-option parsers.
pub fn requests(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => {
            if let Ok(r) = serde_json::from_slice::<CreateRequest>(rest) {
                let _ = names::validate(&r.name);
                check_options(r.opts.as_ref());
            }
        }
        1 => {
            if let Ok(r) = serde_json::from_slice::<NameRequest>(rest) {
                check_name(&r.name);
            }
        }
        2 => {
            if let Ok(r) = serde_json::from_slice::<MountRequest>(rest) {
                check_name(&r.name);
            }
        }
        3 => {
            if let Ok(opts) = serde_json::from_slice::<BTreeMap<String, String>>(rest) {
                check_options(Some(&opts));
            }
        }
        k => {
            let text = String::from_utf8_lossy(rest);
            match k {
                4 => {
                    if let Ok(keep) = options::parse_keep(&text) {
                        assert!(
                            [keep.last, keep.daily, keep.weekly, keep.monthly]
                                .iter()
                                .any(|n| *n > 0),
                            "keep={text:?} accepted but keeps nothing: {keep:?}"
                        );
                    }
                }
                5 => {
                    if let Ok(n) = options::parse_size(&text) {
                        assert!(n >= 1, "size={text:?} accepted as {n}");
                    }
                }
                6 => {
                    if let Ok(f) = options::parse_flags(&text) {
                        let atime = [f.noatime, f.relatime, f.strictatime];
                        assert!(atime.iter().filter(|b| **b).count() <= 1);
                        let _ = allspark::plugin::mounts::mount_attrs(&f);
                    }
                }
                _ => {
                    check_name(&text);
                    if snapshot_id::validate(&text).is_ok() {
                        snapshot_id::parse(&text).expect("a valid id parses");
                    }
                }
            }
        }
    }
}

fn check_name(name: &str) {
    if names::validate(name).is_ok() {
        assert!(!name.is_empty() && name.len() <= names::MAX_NAME_LEN);
        assert!(
            !name.contains('/') && name != "." && name != ".." && !name.starts_with('.'),
            "name {name:?} accepted but it is a path"
        );
    }
}

/// `options::parse` either refuses naming one of the given keys, or gives a spec whose every
/// field is within its documented bounds and which survives the record's JSON round trip.
fn check_options(opts: Option<&BTreeMap<String, String>>) {
    match options::parse(opts) {
        Ok(spec) => {
            for (k, v) in opts.into_iter().flatten() {
                assert!(
                    options::KEYS.contains(&k.as_str()),
                    "unknown key {k:?} accepted"
                );
                assert!(
                    v.len() <= options::MAX_VALUE_LEN && !v.contains('\0') && !v.contains('\n'),
                    "{k}={v:?} accepted"
                );
            }
            check_spec(&spec);
            let json = serde_json::to_vec(&spec).expect("spec serializes");
            let back: VolumeSpec = serde_json::from_slice(&json).expect("spec deserializes");
            assert_eq!(back, spec, "the spec changes through its record");
            assert_eq!(
                options::parse(opts).ok(),
                Some(spec),
                "parse is not deterministic"
            );
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                opts.is_some_and(|o| o.contains_key(&e.key)),
                "the refusal names key {:?}, which was not given: {msg}",
                e.key
            );
            assert!(
                !e.accepted.trim().is_empty(),
                "the refusal says nothing: {msg}"
            );
        }
    }
}

fn check_spec(spec: &VolumeSpec) {
    if let Some(d) = &spec.device {
        assert!(
            d.starts_with('/') && !d.split('/').any(|c| c == ".."),
            "device={d:?} accepted"
        );
    }
    if let Some(p) = &spec.parent {
        assert!(names::validate(p).is_ok(), "parent={p:?} accepted");
    }
    match &spec.template {
        Some(options::Template::Volume { volume }) => assert!(names::validate(volume).is_ok()),
        Some(options::Template::Snapshot { volume, id }) => {
            assert!(names::validate(volume).is_ok() && snapshot_id::validate(id).is_ok())
        }
        None => {}
    }
    assert!(spec.mode.unwrap_or(0) <= 0o7777);
    assert!(spec.uid != Some(u32::MAX) && spec.gid != Some(u32::MAX));
    assert!(spec.size.unwrap_or(1) >= 1);
    let k = spec.keep;
    assert!(
        [k.last, k.daily, k.weekly, k.monthly]
            .iter()
            .any(|n| *n > 0),
        "a spec that keeps no snapshot: {k:?}"
    );
    let f: &MountFlags = &spec.flags;
    assert!(
        [f.noatime, f.relatime, f.strictatime]
            .iter()
            .filter(|b| **b)
            .count()
            <= 1
    );
}

// ---------------------------------------------------------------------------------------------
// (a) driver_api: sequences of calls through DriverApi over a real Driver on a scratch root
// ---------------------------------------------------------------------------------------------

/// A `RecordingSys` (no real mounts) that refuses to touch anything outside the scratch root.
struct GuardSys {
    inner: RecordingSys,
    allowed: PathBuf,
}

impl GuardSys {
    fn check(&self, what: &str, p: &Path) {
        assert!(
            inside(p, &self.allowed),
            "the driver tried to {what} {}, outside its root and bind roots",
            p.display()
        );
    }
}

/// Where a descriptor's directory is now (what the kernel says, not a name we were given).
fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

impl Sys for GuardSys {
    fn bind_mount(&self, src: BorrowedFd<'_>, dst: &Path, flags: &MountFlags) -> io::Result<()> {
        self.check("bind-mount", &fd_path(src));
        self.check("bind-mount onto", dst);
        self.inner.bind_mount(src, dst, flags)
    }
    fn unmount(&self, dst: &Path) -> io::Result<()> {
        self.check("unmount", dst);
        self.inner.unmount(dst)
    }
    fn set_owner_mode(
        &self,
        dir: BorrowedFd<'_>,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    ) -> io::Result<()> {
        self.check("chown/chmod", &fd_path(dir));
        self.inner.set_owner_mode(dir, uid, gid, mode)
    }
    fn mount_points(&self) -> io::Result<Vec<PathBuf>> {
        self.inner.mount_points()
    }
}

const MAX_CALLS: usize = 24;
const CALLS: &[&str] = &[
    "Plugin.Activate",
    "VolumeDriver.Capabilities",
    "VolumeDriver.Create",
    "VolumeDriver.Remove",
    "VolumeDriver.Mount",
    "VolumeDriver.Unmount",
    "VolumeDriver.Path",
    "VolumeDriver.Get",
    "VolumeDriver.List",
    "VolumeDriver.Frobnicate",
    "",
];
const NAMES: &[&str] = &["a", "b", "c", "a.b", "p", "0", "A-_.9", "mounts", "state"];
const HOSTILE_NAMES: &[&str] = &[
    "",
    ".",
    "..",
    "../a",
    "a/b",
    "/a",
    "a\0b",
    "a\nb",
    "-a",
    ".a",
    "a ",
    "é",
    "../plugin-stats",
];
const IDS: &[&str] = &["c1", "c2", "", "c1/../c2"];

/// Symlinks planted in the bind root before the calls: out of the roots, into our own
/// directories, loops.
const LINKS: &[(&str, &str)] = &[
    ("out", FORBIDDEN),
    ("own", "../root/state"),
    ("mnt", "../root/mounts"),
    ("vols", "../root/volumes"),
    ("loop", "loop"),
    ("up", ".."),
    ("here", "."),
];

/// Create/Mount/Unmount/Remove/Get/Path/List (and raw bodies, unknown calls) with names,
/// mount IDs and options drawn from the input. After every call: the reply is JSON with a
/// non-empty `Err` on failure; every record reads back; references and (recorded) mounts agree
/// one to one; nothing is half-created (no temp files, no data directory without its record,
/// an empty trash); every path the driver touched is inside the scratch root.
pub fn driver_api(data: &[u8]) {
    let dir = fresh("driver");
    let root = dir.join("root");
    let binds = dir.join("binds");
    fs::create_dir_all(&binds).expect("mkdir binds");
    fs::write(binds.join("file"), b"not a directory").expect("write");
    for (link, target) in LINKS {
        symlink(target, binds.join(link)).expect("symlink");
    }
    let layout = Layout::new(&root);
    let sys = Arc::new(GuardSys {
        inner: RecordingSys::default(),
        allowed: dir.clone(),
    });
    let driver = Arc::new(
        Driver::new(
            layout.clone(),
            sys.clone(),
            DriverSettings {
                mount_dir: layout.mounts_dir(),
                bind_roots: vec![binds.clone(), root.clone()],
                view: HostView::default(),
                snapshot_wait: Duration::ZERO,
                protected: Vec::new(),
            },
        )
        .expect("driver"),
    );
    let api = DriverApi {
        driver: driver.clone(),
    };
    let mut input = Input::new(data);
    for _ in 0..MAX_CALLS {
        if input.is_empty() {
            break;
        }
        let (call, body) = next_call(&mut input, &dir);
        let reply = api.handle(call, &body);
        check_reply(call, &body, reply.status.as_u16(), &reply.body);
        check_driver_state(&driver, &sys, &layout, &dir);
    }
    assert_nothing_forbidden();
}

fn next_call(inp: &mut Input, dir: &Path) -> (&'static str, Vec<u8>) {
    let body = |v: Value| v.to_string().into_bytes();
    match inp.byte() % 12 {
        0..=2 => {
            let name = name(inp);
            let opts = opts(inp, dir);
            (
                "VolumeDriver.Create",
                body(json!({"Name": name, "Opts": opts})),
            )
        }
        3 | 4 => {
            let (name, id) = (name(inp), id(inp));
            ("VolumeDriver.Mount", body(json!({"Name": name, "ID": id})))
        }
        5 => {
            let (name, id) = (name(inp), id(inp));
            (
                "VolumeDriver.Unmount",
                body(json!({"Name": name, "ID": id})),
            )
        }
        6 => ("VolumeDriver.Remove", body(json!({"Name": name(inp)}))),
        7 => ("VolumeDriver.Get", body(json!({"Name": name(inp)}))),
        8 => ("VolumeDriver.Path", body(json!({"Name": name(inp)}))),
        9 => ("VolumeDriver.List", body(json!({}))),
        10 => {
            let call = inp.pick(CALLS);
            (call, inp.bytes(255).to_vec())
        }
        _ => (inp.pick(&CALLS[..2]), Vec::new()),
    }
}

fn name(inp: &mut Input) -> String {
    match inp.byte() % 8 {
        0 => inp.pick(HOSTILE_NAMES).to_string(),
        1 => inp.text(40),
        2 => "n".repeat(255 + (inp.byte() % 2) as usize),
        _ => inp.pick(NAMES).to_string(),
    }
}

fn id(inp: &mut Input) -> String {
    match inp.byte() % 4 {
        0 => inp.text(20),
        _ => inp.pick(IDS).to_string(),
    }
}

fn opts(inp: &mut Input, dir: &Path) -> Value {
    if inp.byte().is_multiple_of(6) {
        return Value::Null;
    }
    let mut m = serde_json::Map::new();
    for _ in 0..inp.byte() % 5 {
        let key = match inp.byte() % 10 {
            0 => inp.text(12),
            _ => inp.pick(options::KEYS).to_string(),
        };
        let value = value_for(inp, &key, dir);
        m.insert(key, Value::String(value));
    }
    Value::Object(m)
}

fn value_for(inp: &mut Input, key: &str, dir: &Path) -> String {
    match inp.byte() % 16 {
        0 => return inp.text(64),
        1 => return "x".repeat(4096 + (inp.byte() % 2) as usize),
        _ => {}
    }
    let d = dir.display();
    let s: &[&str] = match key {
        "device" => {
            let rel = [
                "binds/x",
                "binds/x/y",
                "binds",
                "binds/out",
                "binds/out/x",
                "binds/own",
                "binds/own/x",
                "binds/mnt/x",
                "binds/vols/a",
                "binds/loop",
                "binds/loop/x",
                "binds/up/x",
                "binds/up/root/state",
                "binds/here/x",
                "binds/file",
                "binds/file/x",
                "binds/x/../../root/state",
                "binds//x/./y",
                "root",
                "root/state",
                "root/volumes/a",
                "root/volumes/a/data/sub",
                "root/mounts",
                "root/mounts/a",
                "root/spool",
                "root/free",
                "",
            ];
            return match inp.byte() % 8 {
                0 => inp
                    .pick(&[FORBIDDEN, "/", "relative/x", "/nonexistent-allspark-fuzz/x"])
                    .to_string(),
                1 => format!("{d}/binds/{}", inp.text(24)),
                _ => format!("{d}/{}", inp.pick(&rel)),
            };
        }
        "o" => &[
            "ro",
            "rw",
            "bind",
            "rbind",
            "noatime,nodiratime",
            "ro,noexec,nosuid,nodev",
            "relatime,strictatime",
            "sync",
            ",,,",
            " ro , rw ",
        ],
        "uid" | "gid" => &[
            "0",
            "1000",
            "4294967294",
            "4294967295",
            "-1",
            "1e3",
            "",
            "+5",
        ],
        "mode" => &[
            "0755",
            "0700",
            "7777",
            "17777",
            "0o755",
            "0o",
            "8",
            "000000755",
            "+7",
        ],
        "snapshot" => &["none", "on-unmount", "on-mount", "on-both", "always"],
        "keep" => &[
            "10",
            "0",
            "last=1",
            "last=4294967295,daily=1",
            "last=4294967295,daily=4294967295,weekly=2",
            "daily=7,weekly=4",
            "last=",
            "=",
            "last=1,last=2",
            "monthly=-1",
        ],
        "backup" => &["highest", "high", "medium", "low", "none", "HIGH"],
        "class" => &["critical", "important", "temporary", "precious"],
        "size" => &[
            "500M",
            "1.5G",
            "0",
            "1e20",
            "-1",
            "NaN",
            "inf",
            "18446744073709551615",
            "9999999T",
            ".",
            "1..2G",
            "0.0000001",
        ],
        "template" => &[
            "a",
            "b",
            "snapshot:a@20261125T200000.000000Z",
            "snapshot:../x@1",
            "snapshot:a@",
            "../x",
            "",
        ],
        "parent" => &["a", "b", "p", "../x", "", "a/b"],
        "type" => &["none", "bind", "", "nfs"],
        _ => &["", "x"],
    };
    inp.pick(s).to_string()
}

fn check_reply(call: &str, body: &[u8], status: u16, reply: &[u8]) {
    let shown = String::from_utf8_lossy(body);
    let v: Value = serde_json::from_slice(reply)
        .unwrap_or_else(|e| panic!("{call} {shown}: the reply is not JSON ({e})"));
    assert!(v.is_object(), "{call} {shown}: reply {v}");
    let err = v.get("Err").and_then(Value::as_str).unwrap_or("");
    assert!(
        !erofs(err, body),
        "{call} {shown}: tried to write outside the scratch directory: {err}"
    );
    if (200..300).contains(&status) {
        assert_eq!(err, "", "{call} {shown}: success with an error");
    } else {
        assert!(
            !err.trim().is_empty(),
            "{call} {shown}: failure {status} without a message"
        );
        assert!(
            matches!(status, 400 | 404 | 409 | 413 | 500),
            "{call} {shown}: status {status}"
        );
    }
}

fn check_driver_state(driver: &Driver, sys: &GuardSys, layout: &Layout, dir: &Path) {
    let (records, bad) = driver.store().all().expect("list the records");
    assert!(
        bad.is_empty(),
        "the driver wrote a record it cannot read back: {bad:?}"
    );
    let own = layout.own_dirs();
    let mut expected = BTreeSet::new();
    let mut names_seen = BTreeSet::new();
    for r in &records {
        assert!(names::validate(&r.name).is_ok(), "record of {:?}", r.name);
        names_seen.insert(r.name.clone());
        let local = r.data.local_path(layout, &HostView::default());
        assert!(
            inside(&local, dir),
            "volume {} lives at {}, outside the scratch root",
            r.name,
            local.display()
        );
        if let DataLocation::Host { path } = &r.data {
            assert!(
                !own.iter().any(|o| path.starts_with(o)),
                "device volume {} inside our own directories: {}",
                r.name,
                path.display()
            );
        }
        if r.mount_count() > 0 {
            expected.insert(driver.mountpoint(&r.name));
        }
    }
    let raw = sys.inner.mount_points().expect("mount points");
    let mounted: BTreeSet<PathBuf> = raw.iter().cloned().collect();
    assert_eq!(raw.len(), mounted.len(), "stacked bind mounts: {raw:?}");
    assert_eq!(
        mounted, expected,
        "live mounts and references disagree (left: mounts, right: volumes with references)"
    );
    for e in fs::read_dir(layout.state_dir())
        .expect("list state")
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        assert!(
            !n.starts_with('.'),
            "temp file left in the state directory: {n}"
        );
    }
    for e in fs::read_dir(layout.volumes_dir())
        .expect("list volumes")
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        assert!(
            names_seen.iter().any(|s| *s == n),
            "volumes/{n} exists without a record: half-created or half-removed"
        );
    }
    let trash = fs::read_dir(layout.trash_dir())
        .expect("list trash")
        .count();
    assert_eq!(trash, 0, "the trash is not empty after a call");
}

// ---------------------------------------------------------------------------------------------
// (b) state_files: the readers of files allspark finds on disk
// ---------------------------------------------------------------------------------------------

/// First byte picks the reader, the rest is the file: a snapshot manifest (then its deletion
/// list is applied to a scratch tree, which must never reach outside), a spool event, a volume
/// record (then the `Status` of it is built), a snapshot index (then written back and re-read),
/// a usage cache.
pub fn state_files(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let dir = fresh("state");
    match which % 5 {
        0 => manifest_file(&dir, rest),
        1 => {
            let p = dir.join("00000000000000000001-0000000001-00000001.json");
            fs::write(&p, rest).expect("write");
            match spool::read(&p) {
                Ok(ev) => {
                    let again = serde_json::to_vec(&ev).expect("event serializes");
                    assert_eq!(
                        serde_json::from_slice::<spool::Event>(&again).ok(),
                        Some(ev)
                    );
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains(&*p.to_string_lossy()), "{msg}")
                }
            }
        }
        2 => record_file(&dir, rest),
        3 => {
            let p = dir.join("index");
            match Index::read_any(rest, &p) {
                Ok(index) => {
                    let mut out = Vec::new();
                    index.write_to(&mut out).expect("write the index");
                    let back = Index::read_from(&out[..], &p).expect("re-read the index written");
                    assert_eq!(back.entries(), index.entries(), "index round trip");
                    for e in index.entries() {
                        let _ = index.get(&e.path);
                        let _ = index.descendants(&e.path);
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains(&*p.to_string_lossy()), "{msg}")
                }
            }
        }
        _ => {
            let layout = Layout::new(dir.join("root"));
            layout.ensure().expect("layout");
            fs::write(layout.usage(&VolumeName::fixed("v")), rest).expect("write");
            let _ = status::cached_usage(&layout, &VolumeName::fixed("v"));
        }
    }
}

fn manifest_file(dir: &Path, bytes: &[u8]) {
    let p = dir.join(manifest::MANIFEST_NAME);
    fs::write(&p, bytes).expect("write");
    let m = match manifest::read(&p) {
        Ok(m) => m,
        Err(e) => {
            assert!(e.contains(&*p.to_string_lossy()), "{e}");
            return;
        }
    };
    let again = serde_json::to_vec(&m).expect("manifest serializes");
    assert_eq!(
        serde_json::from_slice::<manifest::Manifest>(&again)
            .ok()
            .as_ref(),
        Some(&m),
        "manifest round trip"
    );
    let _ = allspark::snapshot::catalog::chain(std::slice::from_ref(&m), &m.id);
    // Restore applies `deleted` before each incremental: it must stay inside the staging tree.
    let (dest, outside) = scene(dir, true);
    match archive::apply_deletions(&dest, &m.deleted) {
        Ok(_) => assert!(
            dest.is_dir(),
            "apply_deletions removed the destination itself"
        ),
        Err(e) => {
            let msg = e.to_string();
            assert!(!erofs(&msg, bytes), "deletion outside the tree: {msg}");
        }
    }
    check_outside(dir, &outside);
}

fn record_file(dir: &Path, bytes: &[u8]) {
    let layout = Layout::new(dir.join("root"));
    layout.ensure().expect("layout");
    let path = layout.record(&VolumeName::fixed("v"));
    fs::write(&path, bytes).expect("write");
    let store = Store::new(layout.clone());
    match store.load(&VolumeName::fixed("v")) {
        Ok(Some(rec)) => {
            assert_eq!(rec.name, "v");
            let _ = allspark::plugin::status::status(&layout, &rec);
            let again = serde_json::to_vec(&*rec).expect("record serializes");
            let back: allspark::core::store::VolumeRecord =
                serde_json::from_slice(&again).expect("record deserializes");
            assert_eq!(back, *rec, "record round trip");
            let (ok, bad) = store.all().expect("list");
            assert_eq!((ok.len(), bad.len()), (1, 0));
        }
        Ok(None) => panic!("a record file that exists reads as no volume"),
        Err(StoreError::Corrupt { path: p, .. }) => {
            assert_eq!(p, path);
            let msg = store
                .load(&VolumeName::fixed("v"))
                .expect_err("still corrupt")
                .to_string();
            assert!(
                msg.contains("move it aside") && msg.contains(&*path.to_string_lossy()),
                "{msg}"
            );
        }
        Err(e) => panic!("reading a record file: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// (c) extract: archive extraction of arbitrary bytes
// ---------------------------------------------------------------------------------------------

/// `dir/dest` (optionally pre-populated with a file, and symlinks pointing out of it, as when an
/// incremental is applied over an earlier one) and `dir/outside/precious`.
fn scene(dir: &Path, populated: bool) -> (PathBuf, PathBuf) {
    let dest = dir.join("dest");
    let outside = dir.join("outside");
    fs::create_dir_all(&outside).expect("mkdir outside");
    fs::write(outside.join("precious"), PRECIOUS).expect("write");
    fs::set_permissions(outside.join("precious"), fs::Permissions::from_mode(0o644))
        .expect("chmod");
    fs::create_dir_all(&dest).expect("mkdir dest");
    if populated {
        fs::create_dir_all(dest.join("sub")).expect("mkdir");
        fs::write(dest.join("sub/file"), b"old").expect("write");
        symlink("../outside", dest.join("link")).expect("symlink");
        symlink("../outside/precious", dest.join("plink")).expect("symlink");
        symlink(FORBIDDEN, dest.join("abs")).expect("symlink");
    }
    (dest, outside)
}

/// Nothing but `dest` and `outside` in `dir`; `outside` holds exactly the unchanged precious file.
fn check_outside(dir: &Path, outside: &Path) {
    let names: Vec<String> = fs::read_dir(dir)
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n == "dest") && names.iter().any(|n| n == "outside"),
        "the destination or the outside directory vanished: {names:?}"
    );
    assert!(
        names
            .iter()
            .all(|n| ["dest", "manifest.json", "outside"].contains(&n.as_str())),
        "something was created next to the destination: {names:?}"
    );
    let inside_outside: Vec<String> = fs::read_dir(outside)
        .expect("list outside")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        inside_outside,
        ["precious"],
        "something was written outside the destination"
    );
    let p = outside.join("precious");
    let md = fs::symlink_metadata(&p).expect("stat precious");
    assert!(md.is_file(), "precious was replaced");
    assert_eq!(
        md.nlink(),
        1,
        "precious was hard-linked from inside the destination"
    );
    assert_eq!(md.mode() & 0o7777, 0o644, "precious changed mode");
    assert_eq!(
        fs::read(&p).expect("read precious"),
        PRECIOUS,
        "precious was overwritten"
    );
    assert_nothing_forbidden();
}

/// Flags byte, then the archive: bit 0 gzip-wraps the rest (so the fuzzer works on the tar
/// layer), bit 1 verify-only, bit 2 skip refused entries, bit 3 pre-populates the destination.
/// Whatever the bytes: no panic, errors carry a message, nothing outside the destination
/// changes, and verify-only writes nothing at all.
pub fn extract(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let dir = fresh("extract");
    let (dest, outside) = scene(&dir, flags & 8 != 0);
    let archive: Cow<[u8]> = if flags & 1 != 0 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(rest).expect("gzip");
        Cow::Owned(gz.finish().expect("gzip"))
    } else {
        Cow::Borrowed(rest)
    };
    let verify_only = flags & 2 != 0;
    let before = if verify_only {
        Some(tree_names(&dest))
    } else {
        None
    };
    let opts = ExtractOptions {
        verify_only,
        skip_refused: flags & 4 != 0,
        ..ExtractOptions::default()
    };
    match archive::extract(&archive[..], &dest, &opts) {
        Ok(report) => {
            assert!(report.refused == 0 || opts.skip_refused);
            assert_eq!(report.sha256.len(), 64);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.trim().is_empty());
            // Entry names are quoted in errors: compare with the decompressed archive.
            let mut plain = Vec::new();
            let _ = io::Read::read_to_end(
                &mut io::Read::take(flate2::read::MultiGzDecoder::new(&archive[..]), 64 << 20),
                &mut plain,
            );
            plain.extend_from_slice(&archive);
            assert!(
                !erofs(&msg, &plain),
                "a write outside the scratch directory: {msg}"
            );
        }
    }
    if let Some(before) = before {
        assert_eq!(
            tree_names(&dest),
            before,
            "verify-only wrote into the destination"
        );
    }
    check_outside(&dir, &outside);
}

/// Every path below `dir` (not following symlinks), sorted.
fn tree_names(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// http: the plugin's HTTP/1.1 server (`plugin::server`) on a real Unix socket
// ---------------------------------------------------------------------------------------------

/// Answers every call with what it received: the call name, the body's length and a hash.
struct Echo;

impl Handler for Echo {
    fn handle(&self, call: &str, body: &[u8]) -> allspark::plugin::server::Reply {
        allspark::plugin::server::Reply::ok(echo_of(call, body).into_bytes())
    }
}

fn echo_of(call: &str, body: &[u8]) -> String {
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{call:?} {} {hash:016x}", body.len())
}

/// The socket of the one server this process runs (started on first use).
fn http_socket() -> &'static Path {
    static SOCKET: OnceLock<PathBuf> = OnceLock::new();
    SOCKET.get_or_init(|| {
        let path = scratch().join("http.sock");
        let _ = fs::remove_file(&path);
        let listener = allspark::plugin::server::bind(&path).expect("bind the fuzz server");
        let server = allspark::plugin::server::Server::new(listener);
        std::thread::spawn(move || server.serve(Arc::new(Echo)));
        path
    })
}

/// Write `bytes` on a new connection, close the sending side, and read until the server
/// closes. A server that neither answers nor closes within 20 s is a finding (its timeouts are
/// 10 s, and a closed sending side is an end of input it must see at once).
fn exchange(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let mut s = UnixStream::connect(http_socket()).expect("connect to the fuzz server");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may refuse and close before it has read everything: not a finding.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut reply = Vec::new();
    match s.read_to_end(&mut reply) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            panic!(
                "the server neither answered nor closed within 20 s (input {:?})",
                String::from_utf8_lossy(bytes)
            )
        }
        Err(e) => panic!("reading the reply: {e}"),
    }
    reply
}

/// The status of every reply in `raw` (pipelined replies follow each other); panics on
/// anything that is not a well-formed HTTP/1.1 reply with a Content-Length body.
fn replies(raw: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| {
                panic!(
                    "a reply without an end of head: {:?}",
                    String::from_utf8_lossy(raw)
                )
            });
        let head = std::str::from_utf8(&rest[..end]).expect("reply head is ASCII");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        // `100 Continue` (to `Expect: 100-continue`) has no body; every other reply says its length.
        let len: usize = if status < 200 {
            0
        } else {
            lines
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or_else(|| panic!("a reply without Content-Length: {head:?}"))
        };
        let body_start = end + 4;
        assert!(
            rest.len() >= body_start + len,
            "a reply cut short: {head:?}"
        );
        out.push((status, rest[body_start..body_start + len].to_vec()));
        rest = &rest[body_start + len..];
    }
    out
}

/// A well-formed call: `Content-Length`, or chunked with chunk sizes taken from `sizes`.
fn request(call: &str, body: &[u8], chunked: bool, sizes: &[u8]) -> Vec<u8> {
    let mut r = format!("POST /{call} HTTP/1.1\r\nHost: plugin\r\n").into_bytes();
    if !chunked {
        r.extend(format!("Content-Length: {}\r\n\r\n", body.len()).bytes());
        r.extend_from_slice(body);
        return r;
    }
    r.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let n = (usize::from(sizes.get(i % sizes.len().max(1)).copied().unwrap_or(7)) % 9 + 1)
            .min(rest.len());
        r.extend(format!("{n:x}\r\n").bytes());
        r.extend_from_slice(&rest[..n]);
        r.extend_from_slice(b"\r\n");
        rest = &rest[n..];
        i += 1;
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

/// First byte: even, the rest goes to the server as raw bytes (every reply must be well-formed
/// HTTP); odd, the rest is the body of a well-formed call (bit 1: chunked, with chunk sizes from
/// the body itself), whose reply must echo exactly that body. Then a plain call must still be
/// answered: no input leaves the server stuck or out of connections.
pub fn http(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        for (status, _) in replies(&exchange(rest)) {
            assert!((100..600).contains(&status), "status {status}");
        }
    } else {
        let call = "VolumeDriver.Echo";
        let got = replies(&exchange(&request(call, rest, mode & 2 != 0, rest)));
        assert_eq!(got.len(), 1, "one call, one reply");
        assert_eq!(got[0].0, 200);
        assert_eq!(String::from_utf8_lossy(&got[0].1), echo_of(call, rest));
    }
    let got = replies(&exchange(&request("Plugin.Activate", b"{}", false, b"")));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, 200, "the server stopped answering after {data:?}");
}
