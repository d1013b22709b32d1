//! Helpers of the backup tests against the real dockerd: the CLI on a legacy plugin's root, its output, container state, backup directories and manifests.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::support::common::docker_ok;
use crate::support::legacy::LegacyPlugin;

/// A long sleep that stops at once on SIGTERM (a bare `sleep` as PID 1 ignores it: 10 s per stop).
pub const SLEEP: &str = "trap 'exit 0' TERM; sleep 3600 & wait";

/// `allspark --root <plugin root> ARGS…` (log level info), whatever its exit status.
pub fn allspark(p: &LegacyPlugin, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_allspark"))
        .arg("--root")
        .arg(p.root())
        .args(args)
        .env("ALLSPARK_LOG", "info")
        .output()
        .unwrap()
}

/// Status, stdout and stderr of a command, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `docker inspect --format {{.State.<field>}} <container>`.
pub fn state(container: &str, field: &str) -> String {
    docker_ok(&[
        "inspect",
        "--format",
        &format!("{{{{.State.{field}}}}}"),
        container,
    ])
    .trim()
    .to_string()
}

/// An RFC 3339 time (as Docker and the manifest write them).
pub fn time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s:?}: {e}"))
        .with_timezone(&Utc)
}

/// The backup directories of one type under a backup root, oldest first.
pub fn backup_dirs(broot: &Path, kind: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(broot.join(kind))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'));
    v.sort();
    v
}

/// A backup directory's `manifest.json`.
pub fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// The text of a gzipped file.
pub fn gunzip(path: &Path) -> String {
    let out = Command::new("gzip").arg("-dc").arg(path).output().unwrap();
    assert!(out.status.success(), "gzip -dc {}", path.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}
