//! Directories and metadata during extraction: parents checked and created, directory entries, owners, modes, extended attributes, and the directory modes and mtimes applied last.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{is_not_found, join_comps, lossy, set_mtime, Extractor, Meta, MAX_LISTED};
use crate::archive::guard::parse_pax;
use crate::archive::ArchiveError;

/// Metadata applied after all entries.
pub(super) struct DirMeta {
    path: PathBuf,
    depth: usize,
    mode: u32,
    mtime: i64,
}

/// The root entry's metadata, applied to the destination at the end.
pub(super) struct RootMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    pax: Option<Vec<u8>>,
}

impl Extractor<'_> {
    /// Check that no existing ancestor of `comps` (inside the destination)
    /// is a symlink or a non-directory. `Err(reason)` to refuse.
    pub(super) fn check_parents(
        &self,
        comps: &[&[u8]],
    ) -> Result<Result<(), String>, ArchiveError> {
        let parents = &comps[..comps.len().saturating_sub(1)];
        if self.opts.verify_only {
            for i in 1..=parents.len() {
                let prefix = join_comps(&parents[..i]);
                if self.symlinks_seen.contains(&prefix) {
                    return Ok(Err(format!(
                        "its parent `{}` is a symlink in the archive; writing through it could escape the destination",
                        lossy(&prefix)
                    )));
                }
            }
            return Ok(Ok(()));
        }
        let mut p = self.base.clone();
        for (i, c) in parents.iter().enumerate() {
            p.push(OsStr::from_bytes(c));
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Ok(Err(format!(
                    "its parent `{}` is a symlink; writing through it could escape the destination",
                    lossy(&join_comps(&parents[..=i]))
                )))
                }
                Ok(m) if m.is_dir() => continue,
                Ok(_) => {
                    return Ok(Err(format!(
                        "its parent `{}` is not a directory",
                        lossy(&join_comps(&parents[..=i]))
                    )))
                }
                Err(e) if is_not_found(&e) => return Ok(Ok(())),
                Err(e) => return Err(ArchiveError::io("inspect", &p, e)),
            }
        }
        Ok(Ok(()))
    }

    /// Create missing parents of `path` (their ancestors were checked).
    pub(super) fn make_parents(&self, path: &Path) -> Result<(), ArchiveError> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| ArchiveError::io("create directory", parent, e))?;
        }
        Ok(())
    }
    /// A directory entry: the root's metadata kept for the end, any other created (or kept) now,
    /// its mode and mtime applied after every entry (see [`Self::finish`]).
    pub(super) fn directory(&mut self, m: &Meta<'_>) -> Result<(), ArchiveError> {
        if m.comps.is_empty() {
            self.report.dirs += 1;
            self.root = Some(RootMeta {
                mode: m.mode,
                uid: m.uid,
                gid: m.gid,
                mtime: m.mtime,
                pax: m.pax.map(<[u8]>::to_vec),
            });
            return Ok(());
        }
        if let Err(why) = self.check_parents(&m.comps)? {
            return self.refuse(&m.shown, why);
        }
        self.symlinks_seen.remove(&m.rel);
        self.report.dirs += 1;
        if self.opts.verify_only {
            return Ok(());
        }
        let path = self.abs(&m.comps);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                // A file or symlink where the archive has a directory: replace it.
                fs::remove_file(&path).map_err(|e| ArchiveError::io("replace", &path, e))?;
                self.mkdir(&path)?;
            }
            Err(e) if is_not_found(&e) => {
                self.make_parents(&path)?;
                self.mkdir(&path)?;
            }
            Err(e) => return Err(ArchiveError::io("inspect", &path, e)),
        }
        if self.opts.preserve_ownership {
            std::os::unix::fs::lchown(&path, Some(m.uid), Some(m.gid))
                .map_err(|e| ArchiveError::io("set the owner of", &path, e))?;
        }
        self.apply_xattrs(&path, m.pax);
        self.dirs.push(DirMeta {
            path,
            depth: m.comps.len(),
            mode: m.mode,
            mtime: m.mtime,
        });
        Ok(())
    }

    pub(super) fn mkdir(&self, path: &Path) -> Result<(), ArchiveError> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(|e| ArchiveError::io("create directory", path, e))
    }

    pub(super) fn set_owner_mode(
        &self,
        path: &Path,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> Result<(), ArchiveError> {
        if self.opts.preserve_ownership {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid))
                .map_err(|e| ArchiveError::io("set the owner of", path, e))?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| ArchiveError::io("set the mode of", path, e))
    }

    pub(super) fn apply_xattrs(&mut self, path: &Path, pax: Option<&[u8]>) {
        let Some(pax) = pax else {
            return;
        };
        // Already validated in `handle`.
        let Ok(records) = parse_pax(pax) else {
            return;
        };
        for (key, value) in records {
            let Some(name) = key.strip_prefix(b"SCHILY.xattr.") else {
                continue;
            };
            if let Err(e) = xattr::set(path, OsStr::from_bytes(name), value) {
                self.report.xattr_errors += 1;
                let msg = format!("{}: {}: {e}", path.display(), lossy(name));
                tracing::warn!("cannot restore extended attribute: {msg}");
                if self.report.xattr_error_list.len() < MAX_LISTED {
                    self.report.xattr_error_list.push(msg);
                }
            }
        }
    }

    /// Directory modes and mtimes (deepest first), then the root.
    pub(super) fn finish(&mut self) -> Result<(), ArchiveError> {
        if self.opts.verify_only {
            return Ok(());
        }
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.depth));
        for d in &dirs {
            match fs::symlink_metadata(&d.path) {
                Ok(m) if m.is_dir() => {}
                _ => continue, // replaced later in the archive
            }
            fs::set_permissions(&d.path, fs::Permissions::from_mode(d.mode))
                .map_err(|e| ArchiveError::io("set the mode of", &d.path, e))?;
            set_mtime(&d.path, d.mtime)?;
        }
        if let Some(root) = self.root.take() {
            let base = self.base.clone();
            if self.opts.preserve_ownership {
                std::os::unix::fs::lchown(&base, Some(root.uid), Some(root.gid))
                    .map_err(|e| ArchiveError::io("set the owner of", &base, e))?;
            }
            self.apply_xattrs(&base, root.pax.as_deref());
            fs::set_permissions(&base, fs::Permissions::from_mode(root.mode))
                .map_err(|e| ArchiveError::io("set the mode of", &base, e))?;
            set_mtime(&base, root.mtime)?;
        }
        Ok(())
    }
}
