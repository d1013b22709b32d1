//! Deleting and listing what a pool holds, relative to a directory descriptor: a subvolume is deleted at once, a plain directory tree by walking it.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::Path;

use crate::fs::beneath::{BeneathError, Dir, Missing};
use crate::pool::btrfs;

/// Delete `parent/name` if it exists: a subvolume at once, a directory tree by walking it.
pub(crate) fn destroy(parent: &Dir, name: &OsStr) -> io::Result<bool> {
    let st = match rustix::fs::statat(parent, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let is_dir = (st.st_mode & libc::S_IFMT) == libc::S_IFDIR;
    if is_dir {
        let d = parent.open_beneath(Path::new(name), Missing::Refuse)?;
        if btrfs::is_subvolume(&d.dir)? {
            drop(d);
            btrfs::destroy_subvolume(parent, name)?;
            return Ok(true);
        }
        drop(d);
        std::fs::remove_dir_all(parent.proc_path().join(name))?;
    } else {
        rustix::fs::unlinkat(parent, name, rustix::fs::AtFlags::empty())?;
    }
    Ok(true)
}

/// Delete the directory `parent/name` whose entries are subvolumes (read-only snapshots)
/// and files.
pub(crate) fn destroy_tree_of_subvolumes(parent: &Dir, name: &OsStr) -> io::Result<()> {
    let dir = match parent.open_beneath(Path::new(name), Missing::Refuse) {
        Ok(o) => o.dir,
        Err(BeneathError::Missing { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for entry in names_in(&dir) {
        destroy(&dir, &entry)?;
    }
    drop(dir);
    rustix::fs::unlinkat(parent, name, rustix::fs::AtFlags::REMOVEDIR).map_err(Into::into)
}

pub(crate) fn names_in(dir: &Dir) -> Vec<OsString> {
    std::fs::read_dir(dir.proc_path())
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}
