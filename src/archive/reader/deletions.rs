//! Deletion lists of incremental snapshots: every listed path checked (no `..`, no symlink on the way) before any is removed.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{destination, is_not_found, lossy};
use crate::archive::{clean_components, decode_rel_path, ArchiveError};

/// What [`apply_deletions`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeletionReport {
    /// Paths removed (a directory with its contents counts once).
    pub removed: u64,
    /// Paths that did not exist.
    pub missing: u64,
}

/// Remove the listed relative paths (as found in a manifest's `deleted`)
/// below `dest`. Directories are removed with their contents; paths that do
/// not exist are counted, not errors. A path that is absolute, contains
/// `..`, or leads through a symlink is refused before anything is removed.
pub fn apply_deletions(dest: &Path, deleted: &[String]) -> Result<DeletionReport, ArchiveError> {
    let base = destination(dest, false)?;
    // First check every path, then remove: a bad list removes nothing.
    let mut targets: Vec<Option<(PathBuf, bool)>> = Vec::with_capacity(deleted.len());
    for s in deleted {
        let bad = |reason: String| ArchiveError::BadDeletion {
            path: s.escape_debug().to_string(),
            reason,
        };
        let bytes = decode_rel_path(s).ok_or_else(|| bad("malformed hex encoding".into()))?;
        let comps = clean_components(&bytes).map_err(|r| bad(r.into()))?;
        if comps.is_empty() {
            return Err(bad("it names the destination directory itself".into()));
        }
        targets.push(locate(&base, &comps).map_err(|e| match e {
            Located::Symlink(parent) => bad(format!("its parent `{parent}` is a symlink")),
            Located::Io(p, e) => ArchiveError::io("inspect", &p, e),
        })?);
    }
    let mut report = DeletionReport::default();
    for t in targets {
        let Some((p, is_dir)) = t else {
            report.missing += 1;
            continue;
        };
        let r = if is_dir {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        match r {
            Ok(()) => report.removed += 1,
            // Listed twice, or inside a directory removed before.
            Err(e) if is_not_found(&e) => report.missing += 1,
            Err(e) => return Err(ArchiveError::io("delete", &p, e)),
        }
    }
    Ok(report)
}

enum Located {
    Symlink(String),
    Io(PathBuf, io::Error),
}

/// Find `comps` below `base` without following symlinks: `None` if it does
/// not exist, else the path and whether it is a directory.
fn locate(base: &Path, comps: &[&[u8]]) -> Result<Option<(PathBuf, bool)>, Located> {
    let mut p = base.to_path_buf();
    for (i, c) in comps.iter().enumerate() {
        p.push(OsStr::from_bytes(c));
        let last = i + 1 == comps.len();
        match fs::symlink_metadata(&p) {
            Ok(m) if last => return Ok(Some((p, m.is_dir()))),
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Located::Symlink(lossy(&comps[..=i].join(&b'/'))))
            }
            Ok(m) if m.is_dir() => continue,
            Ok(_) => return Ok(None),
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(Located::Io(p, e)),
        }
    }
    Ok(None)
}
