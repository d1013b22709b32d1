//! The btrfs ioctls allspark uses, each on a descriptor: subvolume create, snapshot (read-only or writable), destroy, quota enable, qgroup limit and qgroup figures, and a metadata-only send between two read-only snapshots.
//!
//! No btrfs-progs at run time: every call takes the directory descriptor opened beneath the
//! pool's anchor (see [`crate::fs::beneath`]) and a plain name inside it, so no path is
//! resolved again. Layouts follow `linux/btrfs.h` (each argument block is 4096 bytes).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

/// `f_type` of a btrfs filesystem (`BTRFS_SUPER_MAGIC`).
pub const SUPER_MAGIC: i64 = 0x9123_683E;
/// Inode number of every subvolume's root directory (`BTRFS_FIRST_FREE_OBJECTID`).
const SUBVOL_ROOT_INO: u64 = 256;

const MAGIC: u64 = 0x94;
const fn iow(nr: u64, size: u64) -> u64 {
    (1 << 30) | (size << 16) | (MAGIC << 8) | nr
}
const fn ior(nr: u64, size: u64) -> u64 {
    (2 << 30) | (size << 16) | (MAGIC << 8) | nr
}
const fn iowr(nr: u64, size: u64) -> u64 {
    (3 << 30) | (size << 16) | (MAGIC << 8) | nr
}

const IOC_SUBVOL_CREATE: u64 = iow(14, 4096);
const IOC_TREE_SEARCH: u64 = iowr(17, 4096);
const IOC_INO_LOOKUP: u64 = iowr(18, 4096);
const IOC_SNAP_CREATE_V2: u64 = iow(23, 4096);
const IOC_SEND: u64 = iow(38, 72);
const IOC_QUOTA_CTL: u64 = iowr(40, 16);
const IOC_QGROUP_LIMIT: u64 = ior(43, 48);
const IOC_SNAP_DESTROY_V2: u64 = iow(63, 4096);

const SUBVOL_RDONLY: u64 = 1 << 1;
const SEND_FLAG_NO_FILE_DATA: u64 = 1;
const QUOTA_CTL_ENABLE: u64 = 1;
const QUOTA_CTL_ENABLE_SIMPLE_QUOTA: u64 = 4;
const QGROUP_LIMIT_MAX_RFER: u64 = 1 << 0;
const QUOTA_TREE_OBJECTID: u64 = 8;
const QGROUP_INFO_KEY: u32 = 242;
const QGROUP_LIMIT_KEY: u32 = 244;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_vol_args_v2`.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

/// `struct btrfs_ioctl_send_args`.
#[repr(C)]
struct SendArgs {
    send_fd: i64,
    clone_sources_count: u64,
    clone_sources: *mut u64,
    parent_root: u64,
    flags: u64,
    version: u32,
    reserved: [u8; 28],
}

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args`.
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

/// `struct btrfs_ioctl_search_args`: a key (104 bytes) and the result buffer.
#[repr(C)]
struct SearchArgs {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: [u64; 4],
    buf: [u8; 3992],
}

fn ioctl<T>(fd: BorrowedFd<'_>, req: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a properly sized, initialised `#[repr(C)]` block matching `req`'s layout
    // in linux/btrfs.h, valid for the duration of the call; `fd` is an open descriptor.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn copy_name(dst: &mut [u8], name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() >= dst.len() || b.contains(&b'/') || b == b"." || b == b".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid subvolume name {name:?}"),
        ));
    }
    dst[..b.len()].copy_from_slice(b);
    Ok(())
}

/// Is the open directory on btrfs?
pub fn is_btrfs(fd: impl AsFd) -> io::Result<bool> {
    let st = rustix::fs::fstatfs(fd)?;
    Ok(st.f_type as i64 == SUPER_MAGIC)
}

/// Is the open directory the root of a btrfs subvolume?
pub fn is_subvolume(fd: impl AsFd) -> io::Result<bool> {
    let fd = fd.as_fd();
    Ok(is_btrfs(fd)? && rustix::fs::fstat(fd)?.st_ino == SUBVOL_ROOT_INO)
}

/// Create the empty subvolume `name` in the directory `parent`.
pub fn create_subvolume(parent: impl AsFd, name: &OsStr) -> io::Result<()> {
    let mut a = VolArgs {
        fd: 0,
        name: [0; 4088],
    };
    copy_name(&mut a.name, name)?;
    ioctl(parent.as_fd(), IOC_SUBVOL_CREATE, &mut a)
}

/// Snapshot the subvolume open as `source` into `parent/name` (constant time), read-only or
/// writable. The kernel creates it whole or not at all.
pub fn snapshot(
    source: impl AsFd,
    parent: impl AsFd,
    name: &OsStr,
    readonly: bool,
) -> io::Result<()> {
    let mut a = VolArgsV2 {
        fd: source.as_fd().as_raw_fd() as i64,
        transid: 0,
        flags: if readonly { SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; 4040],
    };
    copy_name(&mut a.name, name)?;
    ioctl(parent.as_fd(), IOC_SNAP_CREATE_V2, &mut a)
}

/// Delete the subvolume `parent/name` (read-only or not) with everything in it; the space is
/// reclaimed in the background by the filesystem.
pub fn destroy_subvolume(parent: impl AsFd, name: &OsStr) -> io::Result<()> {
    let mut a = VolArgsV2 {
        fd: 0,
        transid: 0,
        flags: 0,
        unused: [0; 4],
        name: [0; 4040],
    };
    copy_name(&mut a.name, name)?;
    ioctl(parent.as_fd(), IOC_SNAP_DESTROY_V2, &mut a)
}

/// The id of the subvolume holding the open directory.
pub fn subvolume_id(fd: impl AsFd) -> io::Result<u64> {
    let mut a = InoLookupArgs {
        treeid: 0,
        objectid: SUBVOL_ROOT_INO,
        name: [0; 4080],
    };
    ioctl(fd.as_fd(), IOC_INO_LOOKUP, &mut a)?;
    Ok(a.treeid)
}

/// Write the send stream (version 1) of the read-only snapshot open as `snapshot`, relative to
/// the read-only snapshot whose subvolume id is `parent_root`, to `out` (a pipe's write end:
/// the kernel writes until done, so a reader must drain it meanwhile). Metadata only
/// (`BTRFS_SEND_FLAG_NO_FILE_DATA`): file data changes show as `update_extent` commands.
/// Needs `CAP_SYS_ADMIN`; returns when the whole stream is written.
pub fn send_no_data(snapshot: impl AsFd, parent_root: u64, out: impl AsFd) -> io::Result<()> {
    let mut a = SendArgs {
        send_fd: out.as_fd().as_raw_fd() as i64,
        clone_sources_count: 0,
        clone_sources: std::ptr::null_mut(),
        parent_root,
        flags: SEND_FLAG_NO_FILE_DATA,
        version: 0,
        reserved: [0; 28],
    };
    ioctl(snapshot.as_fd(), IOC_SEND, &mut a)
}

/// Enable quota groups on the filesystem of `fd` (a no-op when they are on, in either mode):
/// simple quotas where the kernel has them (6.7 and later), full qgroups otherwise.
///
/// Why simple quotas: full qgroups account every changed extent against every snapshot that
/// shares it when a transaction commits, so each commit (and so each snapshot on stop) gets
/// slower as read-only snapshots accumulate (measured here: the syncfs before a snapshot went
/// from 48 to 189 ms over 12 snapshots, flat at about 35 ms with simple quotas). Simple quotas
/// charge an extent to the subvolume that wrote it, at constant cost; a limit still stops
/// writes with `EDQUOT`. The difference users see: a clone's usage counts only what it wrote
/// itself, not the blocks it shares with its template.
pub fn enable_quota(fd: impl AsFd) -> io::Result<()> {
    let fd = fd.as_fd();
    match quota_ctl(fd, QUOTA_CTL_ENABLE_SIMPLE_QUOTA) {
        // Kernels before 6.7 know no such command.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
            quota_ctl(fd, QUOTA_CTL_ENABLE)
        }
        other => other,
    }
}

fn quota_ctl(fd: BorrowedFd<'_>, cmd: u64) -> io::Result<()> {
    let mut a = QuotaCtlArgs { cmd, status: 0 };
    ioctl(fd, IOC_QUOTA_CTL, &mut a)
}

/// Limit the referenced bytes of the subvolume open as `fd` (its own qgroup `0/<id>`); writes
/// past it fail with `EDQUOT`. `None` removes the limit.
pub fn set_limit(fd: impl AsFd, bytes: Option<u64>) -> io::Result<()> {
    let mut a = QgroupLimitArgs {
        qgroupid: 0,
        flags: QGROUP_LIMIT_MAX_RFER,
        max_rfer: bytes.unwrap_or(u64::MAX),
        max_excl: 0,
        rsv_rfer: 0,
        rsv_excl: 0,
    };
    ioctl(fd.as_fd(), IOC_QGROUP_LIMIT, &mut a)
}

/// What the quota tree says about one subvolume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Qgroup {
    /// Bytes referenced by the subvolume (shared extents included).
    pub referenced: u64,
    /// Bytes only this subvolume references.
    pub exclusive: u64,
    /// The referenced-bytes limit, when one is set.
    pub limit: Option<u64>,
}

/// The qgroup figures of the subvolume open as `fd`; `Ok(None)` when quotas are off (or its
/// qgroup has no item yet).
pub fn qgroup(fd: impl AsFd) -> io::Result<Option<Qgroup>> {
    let fd = fd.as_fd();
    let id = subvolume_id(fd)?;
    // btrfs_qgroup_info_item: generation, rfer, rfer_cmpr, excl, excl_cmpr.
    let Some(info) = quota_item(fd, QGROUP_INFO_KEY, id)? else {
        return Ok(None);
    };
    let mut q = Qgroup {
        referenced: u64_at(&info, 8),
        exclusive: u64_at(&info, 24),
        limit: None,
    };
    // btrfs_qgroup_limit_item: flags, max_rfer, max_excl, rsv_rfer, rsv_excl.
    if let Some(lim) = quota_item(fd, QGROUP_LIMIT_KEY, id)? {
        let max = u64_at(&lim, 8);
        if u64_at(&lim, 0) & QGROUP_LIMIT_MAX_RFER != 0 && max != u64::MAX && max != 0 {
            q.limit = Some(max);
        }
    }
    Ok(Some(q))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// The quota-tree item with key `(0, kind, qgroupid)`, if there is one.
fn quota_item(fd: BorrowedFd<'_>, kind: u32, qgroupid: u64) -> io::Result<Option<Vec<u8>>> {
    let mut a = SearchArgs {
        tree_id: QUOTA_TREE_OBJECTID,
        min_objectid: 0,
        max_objectid: 0,
        min_offset: qgroupid,
        max_offset: qgroupid,
        min_transid: 0,
        max_transid: u64::MAX,
        min_type: kind,
        max_type: kind,
        nr_items: 1,
        unused: 0,
        unused1: [0; 4],
        buf: [0; 3992],
    };
    match ioctl(fd, IOC_TREE_SEARCH, &mut a) {
        Ok(()) => {}
        // No quota tree: quotas are off.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    }
    if a.nr_items == 0 {
        return Ok(None);
    }
    // struct btrfs_ioctl_search_header: transid, objectid, offset (u64), type, len (u32).
    let h = &a.buf[..32];
    let offset = u64_at(h, 16);
    let found = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
    let len = u32::from_le_bytes([h[28], h[29], h[30], h[31]]) as usize;
    if offset != qgroupid || found != kind {
        return Ok(None);
    }
    Ok(a.buf.get(32..32 + len).map(<[u8]>::to_vec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_linux_btrfs_h() {
        assert_eq!(IOC_SUBVOL_CREATE, 0x5000_940E);
        assert_eq!(IOC_SNAP_CREATE_V2, 0x5000_9417);
        assert_eq!(IOC_SNAP_DESTROY_V2, 0x5000_943F);
        assert_eq!(IOC_QUOTA_CTL, 0xC010_9428);
        assert_eq!(IOC_QGROUP_LIMIT, 0x8030_942B);
        assert_eq!(IOC_INO_LOOKUP, 0xD000_9412);
        assert_eq!(IOC_TREE_SEARCH, 0xD000_9411);
        assert_eq!(IOC_SEND, 0x4048_9426);
        assert_eq!(std::mem::size_of::<SendArgs>(), 72);
        assert_eq!(std::mem::size_of::<VolArgs>(), 4096);
        assert_eq!(std::mem::size_of::<VolArgsV2>(), 4096);
        assert_eq!(std::mem::size_of::<InoLookupArgs>(), 4096);
        assert_eq!(std::mem::size_of::<SearchArgs>(), 4096);
        assert_eq!(std::mem::size_of::<QgroupLimitArgs>(), 48);
    }

    #[test]
    fn names_with_slashes_or_dots_are_refused() {
        let mut b = [0u8; 16];
        assert!(copy_name(&mut b, OsStr::new("a/b")).is_err());
        assert!(copy_name(&mut b, OsStr::new("..")).is_err());
        assert!(copy_name(&mut b, OsStr::new("")).is_err());
        assert!(copy_name(&mut b, OsStr::new("x".repeat(16).as_str())).is_err());
        assert!(copy_name(&mut b, OsStr::new("ok")).is_ok());
    }
}
