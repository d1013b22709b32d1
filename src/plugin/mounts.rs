//! Bind mounts with flags (new mount API, from descriptors), ownership of the volume root, and `/proc/self/mountinfo`, behind the `Sys` seam.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::mount::{umount2, MntFlags};

use crate::core::options::MountFlags;
use crate::fs::beneath::DirId;
pub use crate::fs::mountinfo::{mount_options, parse_mountinfo};

/// The system calls the driver needs. `LinuxSys` is the real one; tests use [`RecordingSys`].
///
/// Directories are passed as descriptors opened beneath a trusted anchor (see
/// [`crate::fs::beneath`]): nothing here resolves a volume's path by name again.
pub trait Sys: Send + Sync {
    /// Attach a copy of the directory `src` at `dst` with `flags` (recursively with `rbind`).
    fn bind_mount(&self, src: BorrowedFd<'_>, dst: &Path, flags: &MountFlags) -> io::Result<()>;
    /// Remove the mount at `dst`.
    fn unmount(&self, dst: &Path) -> io::Result<()>;
    /// Set owner (either part optional) and mode of an open directory.
    fn set_owner_mode(
        &self,
        dir: BorrowedFd<'_>,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    ) -> io::Result<()>;
    /// Mount points currently visible to this process.
    fn mount_points(&self) -> io::Result<Vec<PathBuf>>;
    /// Is `path` the root of a mount? (One `statx`, not a read of the whole mount table.)
    fn is_mount_point(&self, path: &Path) -> io::Result<bool> {
        Ok(self.mount_points()?.iter().any(|p| p == path))
    }
}

/// The real system calls: the new mount API (`open_tree`, `mount_setattr`, `move_mount`).
pub struct LinuxSys;

impl LinuxSys {
    pub fn new() -> LinuxSys {
        LinuxSys
    }
}

impl Default for LinuxSys {
    fn default() -> Self {
        LinuxSys::new()
    }
}

/// The `mount_setattr` change for a volume's flags: what to set and what to clear.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountAttrs {
    pub set: u64,
    pub clear: u64,
}

/// The `MOUNT_ATTR_*` bits of the `o=` flags.
pub fn mount_attrs(f: &MountFlags) -> MountAttrs {
    let mut a = MountAttrs::default();
    for (on, bit) in [
        (f.readonly, libc::MOUNT_ATTR_RDONLY),
        (f.nosuid, libc::MOUNT_ATTR_NOSUID),
        (f.nodev, libc::MOUNT_ATTR_NODEV),
        (f.noexec, libc::MOUNT_ATTR_NOEXEC),
        (f.nodiratime, libc::MOUNT_ATTR_NODIRATIME),
    ] {
        if on {
            a.set |= bit;
        }
    }
    // The access-time mode is one field: setting one clears the others.
    let atime = if f.noatime {
        Some(libc::MOUNT_ATTR_NOATIME)
    } else if f.strictatime {
        Some(libc::MOUNT_ATTR_STRICTATIME)
    } else if f.relatime {
        Some(libc::MOUNT_ATTR_RELATIME)
    } else {
        None
    };
    if let Some(bit) = atime {
        a.set |= bit;
        a.clear |= libc::MOUNT_ATTR__ATIME;
    }
    a
}

impl Sys for LinuxSys {
    /// `open_tree(OPEN_TREE_CLONE [| AT_RECURSIVE])` of the descriptor gives a detached copy;
    /// `mount_setattr` applies the flags to all of it (so `rbind,ro` is read-only all the way
    /// down) and makes it a slave (it still receives the source's new submounts, and nothing
    /// done to it propagates back to the source: unmounting it never unmounts the host's
    /// submounts); `move_mount` attaches it at `dst`, where it propagates to the host like
    /// any bind (a managed plugin's propagated mount). Backstop: the mount's root must be the
    /// descriptor's directory, or it is detached again.
    fn bind_mount(&self, src: BorrowedFd<'_>, dst: &Path, flags: &MountFlags) -> io::Result<()> {
        use rustix::mount::{MoveMountFlags, OpenTreeFlags};
        let mut tree_flags = OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH;
        if flags.recursive {
            tree_flags |= OpenTreeFlags::AT_RECURSIVE;
        }
        let tree = rustix::mount::open_tree(src, c"", tree_flags)
            .map_err(|e| io::Error::other(format!("open_tree: {e}")))?;
        let attrs = mount_attrs(flags);
        set_attrs(tree.as_fd(), flags.recursive, attrs)
            .map_err(|e| io::Error::other(format!("mount_setattr: {e}")))?;
        rustix::mount::move_mount(
            tree.as_fd(),
            c"",
            rustix::fs::CWD,
            dst,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| io::Error::other(format!("move_mount to {}: {e}", dst.display())))?;
        let want = rustix::fs::fstat(src)?;
        let got = rustix::fs::stat(dst)?;
        if (want.st_dev, want.st_ino) != (got.st_dev, got.st_ino) {
            let _ = umount2(dst, MntFlags::MNT_DETACH);
            return Err(io::Error::other(format!(
                "the mount at {} does not show the volume's directory; detached it again",
                dst.display()
            )));
        }
        Ok(())
    }

    fn unmount(&self, dst: &Path) -> io::Result<()> {
        match umount2(dst, MntFlags::empty()) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EBUSY) => Ok(umount2(dst, MntFlags::MNT_DETACH)?),
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn set_owner_mode(
        &self,
        dir: BorrowedFd<'_>,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    ) -> io::Result<()> {
        if uid.is_some() || gid.is_some() {
            rustix::fs::fchown(
                dir,
                uid.map(rustix::fs::Uid::from_raw),
                gid.map(rustix::fs::Gid::from_raw),
            )?;
        }
        if let Some(m) = mode {
            rustix::fs::fchmod(dir, rustix::fs::Mode::from_raw_mode(m))?;
        }
        Ok(())
    }

    fn mount_points(&self) -> io::Result<Vec<PathBuf>> {
        Ok(parse_mountinfo(&fs::read_to_string(
            "/proc/self/mountinfo",
        )?))
    }

    /// `STATX_ATTR_MOUNT_ROOT` (Linux 5.8): a missing path is no mount point.
    fn is_mount_point(&self, path: &Path) -> io::Result<bool> {
        use rustix::fs::{statx, AtFlags, StatxFlags};
        match statx(
            rustix::fs::CWD,
            path,
            AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT,
            StatxFlags::empty(),
        ) {
            Ok(st) => {
                let root = rustix::fs::StatxAttributes::MOUNT_ROOT;
                let known = st.stx_attributes_mask.contains(root);
                if !known {
                    return Ok(self.mount_points()?.iter().any(|p| p == path));
                }
                Ok(st.stx_attributes.contains(root))
            }
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// `mount_setattr(tree, "", AT_EMPTY_PATH [| AT_RECURSIVE])`: the flags, and slave propagation.
/// (rustix has no wrapper for this system call.)
fn set_attrs(tree: BorrowedFd<'_>, recursive: bool, attrs: MountAttrs) -> io::Result<()> {
    let mut at = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        at |= libc::AT_RECURSIVE as libc::c_uint;
    }
    let attr = libc::mount_attr {
        attr_set: attrs.set,
        attr_clr: attrs.clear,
        propagation: libc::MS_SLAVE,
        userns_fd: 0,
    };
    // SAFETY: a valid descriptor, a NUL-terminated empty path, and a mount_attr of the size
    // passed; the kernel only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            at,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One call the driver made, with typed arguments (directories by device and inode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Bind {
        src: DirId,
        dst: PathBuf,
        recursive: bool,
        attrs: MountAttrs,
    },
    Unmount {
        dst: PathBuf,
    },
    Own {
        dir: DirId,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    },
}

/// A fake `Sys` that records calls and keeps a set of "mounted" paths.
#[derive(Default)]
pub struct RecordingSys {
    pub calls: Mutex<Vec<Call>>,
    pub mounted: Mutex<Vec<PathBuf>>,
}

fn dir_id(fd: BorrowedFd<'_>) -> io::Result<DirId> {
    let st = rustix::fs::fstat(fd)?;
    Ok(DirId {
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

impl RecordingSys {
    fn record(&self, call: Call) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
    }
}

impl Sys for RecordingSys {
    fn bind_mount(&self, src: BorrowedFd<'_>, dst: &Path, flags: &MountFlags) -> io::Result<()> {
        self.record(Call::Bind {
            src: dir_id(src)?,
            dst: dst.to_path_buf(),
            recursive: flags.recursive,
            attrs: mount_attrs(flags),
        });
        self.mounted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(dst.to_path_buf());
        Ok(())
    }
    fn unmount(&self, dst: &Path) -> io::Result<()> {
        self.record(Call::Unmount {
            dst: dst.to_path_buf(),
        });
        self.mounted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| p != dst);
        Ok(())
    }
    fn set_owner_mode(
        &self,
        dir: BorrowedFd<'_>,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    ) -> io::Result<()> {
        self.record(Call::Own {
            dir: dir_id(dir)?,
            uid,
            gid,
            mode,
        });
        Ok(())
    }
    fn mount_points(&self) -> io::Result<Vec<PathBuf>> {
        Ok(self
            .mounted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_mount_attributes() {
        let f = MountFlags {
            readonly: true,
            noatime: true,
            ..Default::default()
        };
        let a = mount_attrs(&f);
        assert_eq!(a.set, libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOATIME);
        assert_eq!(a.clear, libc::MOUNT_ATTR__ATIME);
        assert_eq!(mount_attrs(&MountFlags::default()), MountAttrs::default());
        let strict = mount_attrs(&MountFlags {
            strictatime: true,
            nodiratime: true,
            ..Default::default()
        });
        assert_eq!(
            strict.set,
            libc::MOUNT_ATTR_STRICTATIME | libc::MOUNT_ATTR_NODIRATIME
        );
    }
}
