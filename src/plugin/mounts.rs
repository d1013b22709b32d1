//! Bind mounts with flags, ownership of the volume root, and `/proc/self/mountinfo`, behind the `Sys` seam.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chown, Gid, Uid};

use crate::core::options::MountFlags;

/// The system calls the driver needs. `LinuxSys` is the real one; tests use a recorder.
pub trait Sys: Send + Sync {
    /// Bind `src` onto `dst` and apply `flags` with a remount.
    fn bind_mount(&self, src: &Path, dst: &Path, flags: &MountFlags) -> io::Result<()>;
    /// Remove the mount at `dst`.
    fn unmount(&self, dst: &Path) -> io::Result<()>;
    /// Set owner (either part optional) and mode of a directory.
    fn set_owner_mode(
        &self,
        path: &Path,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    ) -> io::Result<()>;
    /// Mount points currently visible to this process.
    fn mount_points(&self) -> io::Result<Vec<PathBuf>>;
}

/// The real system calls. Flagged binds are prepared under `staging` (a private mount).
pub struct LinuxSys {
    pub staging: PathBuf,
}

impl LinuxSys {
    pub fn new(staging: impl Into<PathBuf>) -> LinuxSys {
        LinuxSys {
            staging: staging.into(),
        }
    }
}

/// Mount flags for the remount that applies the `o` options.
pub fn remount_flags(f: &MountFlags) -> MsFlags {
    let mut m = MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
    for (on, flag) in [
        (f.readonly, MsFlags::MS_RDONLY),
        (f.noatime, MsFlags::MS_NOATIME),
        (f.nodiratime, MsFlags::MS_NODIRATIME),
        (f.relatime, MsFlags::MS_RELATIME),
        (f.strictatime, MsFlags::MS_STRICTATIME),
        (f.nosuid, MsFlags::MS_NOSUID),
        (f.nodev, MsFlags::MS_NODEV),
        (f.noexec, MsFlags::MS_NOEXEC),
    ] {
        if on {
            m |= flag;
        }
    }
    m
}

/// Does the volume need a remount after the bind (any flag beyond plain `bind`)?
pub fn needs_remount(f: &MountFlags) -> bool {
    remount_flags(f) != MsFlags::MS_REMOUNT | MsFlags::MS_BIND
}

impl LinuxSys {
    /// Make `dir` a private mount of its own (once), so binds staged inside it never propagate anywhere.
    fn private_staging(&self) -> io::Result<()> {
        fs::create_dir_all(&self.staging)?;
        let points = self.mount_points()?;
        if !points.iter().any(|p| p == &self.staging) {
            mount(
                Some(&self.staging),
                &self.staging,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
        }
        mount(
            None::<&str>,
            &self.staging,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )?;
        Ok(())
    }
}

impl Sys for LinuxSys {
    /// Bind `src` on a private staging point, apply the flags there, then bind that onto `dst`.
    /// A remount of `dst` itself would change only this namespace's copy: in a managed plugin,
    /// `dst` lies in the propagated mount and the copy the host (and so the container) gets is
    /// made at bind time. Binding an already-flagged mount makes every copy carry the flags.
    fn bind_mount(&self, src: &Path, dst: &Path, flags: &MountFlags) -> io::Result<()> {
        let mut bind = MsFlags::MS_BIND;
        if flags.recursive {
            bind |= MsFlags::MS_REC;
        }
        if !needs_remount(flags) {
            return Ok(mount(Some(src), dst, None::<&str>, bind, None::<&str>)?);
        }
        self.private_staging()?;
        let name = dst
            .file_name()
            .ok_or_else(|| io::Error::other(format!("{} has no name", dst.display())))?;
        let stage = self.staging.join(name);
        fs::create_dir_all(&stage)?;
        let staged = (|| -> io::Result<()> {
            mount(Some(src), &stage, None::<&str>, bind, None::<&str>)?;
            mount(
                None::<&str>,
                &stage,
                None::<&str>,
                remount_flags(flags),
                None::<&str>,
            )?;
            mount(Some(&stage), dst, None::<&str>, bind, None::<&str>)?;
            Ok(())
        })();
        let _ = umount2(&stage, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&stage);
        staged
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
        path: &Path,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    ) -> io::Result<()> {
        if uid.is_some() || gid.is_some() {
            chown(path, uid.map(Uid::from_raw), gid.map(Gid::from_raw))?;
        }
        if let Some(m) = mode {
            fs::set_permissions(path, fs::Permissions::from_mode(m))?;
        }
        Ok(())
    }

    fn mount_points(&self) -> io::Result<Vec<PathBuf>> {
        Ok(parse_mountinfo(&fs::read_to_string(
            "/proc/self/mountinfo",
        )?))
    }
}

/// Mount points listed in a mountinfo text (field 5, with `\040`-style escapes decoded).
pub fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect()
}

/// The mount options (field 6) of the mount at `point`, the last one listed winning.
pub fn mount_options(text: &str, point: &Path) -> Option<String> {
    text.lines()
        .rev()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let p = f.nth(4)?;
            let o = f.next()?;
            (Path::new(&unescape(p)) == point).then(|| o.to_string())
        })
        .next()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A fake `Sys` that records calls and keeps a set of "mounted" paths.
#[derive(Default)]
pub struct RecordingSys {
    pub calls: Mutex<Vec<String>>,
    pub mounted: Mutex<Vec<PathBuf>>,
}

impl Sys for RecordingSys {
    fn bind_mount(&self, src: &Path, dst: &Path, flags: &MountFlags) -> io::Result<()> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!(
                "bind {} {} {:?}",
                src.display(),
                dst.display(),
                remount_flags(flags)
            ));
        self.mounted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(dst.to_path_buf());
        Ok(())
    }
    fn unmount(&self, dst: &Path) -> io::Result<()> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("umount {}", dst.display()));
        self.mounted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| p != dst);
        Ok(())
    }
    fn set_owner_mode(
        &self,
        path: &Path,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    ) -> io::Result<()> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("own {} {uid:?} {gid:?} {mode:?}", path.display()));
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

    const SAMPLE: &str = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
        99 22 8:1 /var/lib/x /var/lib/allspark/mounts/my\\040vol rw,noatime,nodiratime shared:1 - ext4 /dev/vda rw\n";

    #[test]
    fn mountinfo_decodes_escapes() {
        let pts = parse_mountinfo(SAMPLE);
        assert_eq!(pts[1], PathBuf::from("/var/lib/allspark/mounts/my vol"));
        assert_eq!(
            mount_options(SAMPLE, Path::new("/var/lib/allspark/mounts/my vol")).as_deref(),
            Some("rw,noatime,nodiratime")
        );
    }

    #[test]
    fn flags_map_to_remount_bits() {
        let f = MountFlags {
            readonly: true,
            noatime: true,
            ..Default::default()
        };
        let m = remount_flags(&f);
        assert!(m.contains(
            MsFlags::MS_RDONLY | MsFlags::MS_NOATIME | MsFlags::MS_BIND | MsFlags::MS_REMOUNT
        ));
        assert!(!needs_remount(&MountFlags::default()));
        assert!(needs_remount(&f));
    }
}
