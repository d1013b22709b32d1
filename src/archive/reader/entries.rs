//! Non-directory entries during extraction: regular files, symlinks, hard links (and their targets), FIFOs and device nodes.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::stat::{mknod, Mode, SFlag};
use tar::EntryType;

use super::{is_not_found, join_comps, lossy, set_mtime, Extractor, Meta};
use crate::archive::{clean_components, ArchiveError};

impl Extractor<'_> {
    /// A regular file (sparse ones included), unpacked by tar-rs; its xattrs applied after.
    pub(super) fn regular<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        m: &Meta<'_>,
    ) -> Result<(), ArchiveError> {
        if let Err(why) = self.check_parents(&m.comps)? {
            return self.refuse(&m.shown, why);
        }
        self.symlinks_seen.remove(&m.rel);
        self.report.files += 1;
        self.report.bytes += m.size;
        if self.opts.verify_only {
            return Ok(());
        }
        let path = self.abs(&m.comps);
        self.clear_for_nondir(&path, &m.shown)?;
        self.unpack(entry, &path)?;
        if m.mtime == 0 {
            // tar-rs turns mtime 0 into 1; put the real value back.
            set_mtime(&path, 0)?;
        }
        self.apply_xattrs(&path, m.pax);
        Ok(())
    }

    /// A symlink (any target: it is never followed while extracting).
    pub(super) fn symlink<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        m: &Meta<'_>,
    ) -> Result<(), ArchiveError> {
        if m.comps.is_empty() {
            return self.refuse(&m.shown, "a symlink in place of the destination directory");
        }
        match entry.link_name_bytes() {
            Some(t) if !t.is_empty() => {}
            _ => return self.refuse(&m.shown, "a symlink without a target"),
        }
        if let Err(why) = self.check_parents(&m.comps)? {
            return self.refuse(&m.shown, why);
        }
        self.report.symlinks += 1;
        if self.opts.verify_only {
            self.symlinks_seen.insert(m.rel.clone());
            return Ok(());
        }
        let path = self.abs(&m.comps);
        self.clear_for_nondir(&path, &m.shown)?;
        self.unpack(entry, &path)?;
        self.apply_xattrs(&path, m.pax);
        Ok(())
    }

    /// A hard link to a regular file extracted earlier (see [`Self::check_link_target`]).
    pub(super) fn hardlink<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        m: &Meta<'_>,
    ) -> Result<(), ArchiveError> {
        let shown = &m.shown;
        if m.comps.is_empty() {
            return self.refuse(shown, "a hard link in place of the destination directory");
        }
        let target = entry.link_name_bytes().map(|t| t.into_owned());
        let Some(target) = target.filter(|t| !t.is_empty()) else {
            return self.refuse(shown, "a hard link without a target");
        };
        let tcomps = match clean_components(&target) {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => return self.refuse(shown, "a hard link to the destination directory"),
            Err(why) => {
                return self.refuse(
                    shown,
                    format!("its hard link target `{}`: {why}", lossy(&target)),
                )
            }
        };
        if let Err(why) = self.check_link_target(&tcomps)? {
            return self.refuse(shown, why);
        }
        if let Err(why) = self.check_parents(&m.comps)? {
            return self.refuse(shown, why);
        }
        self.symlinks_seen.remove(&m.rel);
        self.report.hardlinks += 1;
        if self.opts.verify_only {
            return Ok(());
        }
        let path = self.abs(&m.comps);
        self.clear_for_nondir(&path, shown)?;
        self.unpack(entry, &path)
    }

    /// A FIFO, or a device node (only when allowed; skipped with a warning under `skip_devices`).
    pub(super) fn special<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        ty: EntryType,
        m: &Meta<'_>,
    ) -> Result<(), ArchiveError> {
        let shown = &m.shown;
        if ty != EntryType::Fifo && !self.opts.allow_devices {
            if self.opts.skip_devices {
                self.report.devices_skipped += 1;
                tracing::warn!(entry = %shown, "device node not restored: allspark never creates device nodes (GNU tar can restore it from the archive)");
                return Ok(());
            }
            return self.refuse(
                shown,
                "device nodes are not restored unless explicitly allowed",
            );
        }
        if m.comps.is_empty() {
            return self.refuse(
                shown,
                "a special file in place of the destination directory",
            );
        }
        if let Err(why) = self.check_parents(&m.comps)? {
            return self.refuse(shown, why);
        }
        self.symlinks_seen.remove(&m.rel);
        self.report.specials += 1;
        if self.opts.verify_only {
            return Ok(());
        }
        let dev = match ty {
            EntryType::Fifo => 0,
            _ => {
                let major = entry.header().device_major().ok().flatten();
                let minor = entry.header().device_minor().ok().flatten();
                match (major, minor) {
                    (Some(a), Some(b)) => nix::sys::stat::makedev(a.into(), b.into()),
                    _ => return self.refuse(shown, "malformed device numbers"),
                }
            }
        };
        let kind = match ty {
            EntryType::Fifo => SFlag::S_IFIFO,
            EntryType::Char => SFlag::S_IFCHR,
            _ => SFlag::S_IFBLK,
        };
        let path = self.abs(&m.comps);
        self.make_parents(&path)?;
        self.clear_for_nondir(&path, shown)?;
        mknod(&path, kind, Mode::from_bits_truncate(0o600), dev)
            .map_err(|e| ArchiveError::io("create special file", &path, e.into()))?;
        self.set_owner_mode(&path, m.uid, m.gid, m.mode)?;
        self.apply_xattrs(&path, m.pax);
        set_mtime(&path, m.mtime)
    }

    /// Make room for a non-directory at `path`: remove an existing
    /// non-directory; refuse to replace a directory.
    fn clear_for_nondir(&self, path: &Path, shown: &str) -> Result<(), ArchiveError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Err(ArchiveError::io(
                format!("replace the directory with archive entry `{shown}` at"),
                path,
                io::Error::new(
                    io::ErrorKind::IsADirectory,
                    "a directory is in the way; when applying an incremental, apply its deletions first",
                ),
            )),
            Ok(_) => fs::remove_file(path).map_err(|e| ArchiveError::io("replace", path, e)),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(ArchiveError::io("inspect", path, e)),
        }
    }

    /// A hard-link target must be an existing regular file reached without
    /// symlinks (in verify mode: not through a symlink seen in the archive).
    fn check_link_target(&self, tcomps: &[&[u8]]) -> Result<Result<(), String>, ArchiveError> {
        let shown = lossy(&join_comps(tcomps));
        if self.opts.verify_only {
            for i in 1..=tcomps.len() {
                if self.symlinks_seen.contains(&join_comps(&tcomps[..i])) {
                    return Ok(Err(format!(
                        "its hard link target `{shown}` goes through a symlink"
                    )));
                }
            }
            return Ok(Ok(()));
        }
        let mut p = self.base.clone();
        for (i, c) in tcomps.iter().enumerate() {
            p.push(OsStr::from_bytes(c));
            let last = i + 1 == tcomps.len();
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Ok(Err(format!(
                        "its hard link target `{shown}` goes through or is a symlink"
                    )))
                }
                Ok(m) if !last && m.is_dir() => continue,
                Ok(m) if last && m.is_file() => return Ok(Ok(())),
                Ok(_) => {
                    return Ok(Err(format!(
                        "its hard link target `{shown}` is not a regular file inside the destination"
                    )))
                }
                Err(e) if is_not_found(&e) => {
                    return Ok(Err(format!(
                        "its hard link target `{shown}` does not exist (it must come earlier in the archive)"
                    )))
                }
                Err(e) => return Err(ArchiveError::io("inspect", &p, e)),
            }
        }
        Ok(Ok(()))
    }

    fn unpack<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
    ) -> Result<(), ArchiveError> {
        match entry.unpack_in(&self.base) {
            Ok(true) => Ok(()),
            Ok(false) => Err(ArchiveError::Refused {
                entry: self.last_entry.clone(),
                reason: "tar-rs refused to unpack it outside the destination".into(),
            }),
            Err(e) => Err(self.unpack_error(path, e)),
        }
    }
}
