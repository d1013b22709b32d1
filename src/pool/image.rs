//! A `btrfs-image` pool's image file: created sparse and formatted under a temporary name (so a half-created image is never mistaken for a pool), attached to a loop device and mounted.
//!
//! Formatting uses `mkfs.btrfs` (btrfs-progs): writing a filesystem is the one step allspark
//! does not do itself. Attaching uses `LOOP_CTL_GET_FREE` and `LOOP_CONFIGURE` with
//! `LO_FLAGS_AUTOCLEAR`, so the loop device goes away when the pool is unmounted.

use crate::core::crashpoint::crash_point;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const LOOP_CTL_GET_FREE: u64 = 0x4C82;
const LOOP_CONFIGURE: u64 = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LOOP_MAJOR: u64 = 7;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// The name a new image is built under until it is complete.
pub fn partial_name(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_os_string();
    s.push(".allspark-partial");
    PathBuf::from(s)
}

/// Make sure `image` exists: a leftover of an interrupted creation is deleted, then a sparse
/// file of `size` bytes is formatted with `mkfs.btrfs` under a temporary name and renamed into
/// place. Returns whether it was created now.
pub fn ensure_image(image: &Path, size: u64, label: &str) -> io::Result<bool> {
    let partial = partial_name(image);
    match fs::remove_file(&partial) {
        Ok(()) => {
            tracing::warn!(path = %partial.display(), "removed a half-created pool image (an earlier creation was interrupted)")
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if image.exists() {
        return Ok(false);
    }
    let dir = image.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(d) = dir {
        fs::create_dir_all(d)?;
    }
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)?;
    f.set_len(size)?;
    drop(f);
    crash_point("pool-image-sized");
    let out = Command::new("mkfs.btrfs")
        .args(["-q", "-f", "-L", label])
        .arg(&partial)
        .output()
        .map_err(|e| {
            let _ = fs::remove_file(&partial);
            io::Error::new(
                e.kind(),
                format!("cannot run mkfs.btrfs ({e}); install btrfs-progs (apt-get install btrfs-progs) to create btrfs-image pools"),
            )
        })?;
    if !out.status.success() {
        let _ = fs::remove_file(&partial);
        return Err(io::Error::other(format!(
            "mkfs.btrfs {} failed: {}",
            partial.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    File::open(&partial)?.sync_all()?;
    fs::rename(&partial, image)?;
    if let Some(d) = dir {
        crate::fs::durable::fsync_dir(d)?;
    }
    Ok(true)
}

/// Attach `image` to a free loop device (detached again when unmounted) and mount its btrfs
/// filesystem on `target`.
pub fn mount(image: &Path, target: &Path) -> io::Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(image)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", image.display())))?;
    let (dev, _dev_file) = attach(&file)?;
    let r = nix::mount::mount(
        Some(dev.as_path()),
        target,
        Some("btrfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    );
    // The loop device stays attached through the mount; with autoclear it is released once
    // both the mount and our descriptor (dropped here) are gone.
    r.map_err(|e| {
        io::Error::other(format!(
            "cannot mount {} ({}) on {}: {e}",
            image.display(),
            dev.display(),
            target.display()
        ))
    })
}

fn attach(file: &File) -> io::Result<(PathBuf, File)> {
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("/dev/loop-control: {e} (btrfs-image pools need loop devices)"),
            )
        })?;
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        ensure_node(&dev, n as u64)?;
        let devf = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&dev)?;
        let mut cfg = LoopConfig {
            fd: file.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset: 0,
                sizelimit: 0,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags: LO_FLAGS_AUTOCLEAR,
                file_name: [0; 64],
                crypt_name: [0; 64],
                encrypt_key: [0; 32],
                init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: `cfg` is a `struct loop_config` valid for the call; both descriptors are open.
        let r = unsafe { libc::ioctl(devf.as_raw_fd(), LOOP_CONFIGURE as _, &mut cfg) };
        if r == 0 {
            return Ok((dev, devf));
        }
        let e = io::Error::last_os_error();
        // Another process took the device between GET_FREE and CONFIGURE: try the next one.
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(io::Error::new(
                e.kind(),
                format!("LOOP_CONFIGURE {}: {e}", dev.display()),
            ));
        }
    }
    Err(io::Error::other(
        "no free loop device after 16 tries (all busy)",
    ))
}

/// Without udev (containers) `/dev/loopN` may not exist yet: make the node.
fn ensure_node(dev: &Path, n: u64) -> io::Result<()> {
    match fs::metadata(dev) {
        Ok(m) if m.file_type().is_block_device() => Ok(()),
        Ok(_) => Err(io::Error::other(format!(
            "{} exists and is not a block device",
            dev.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => nix::sys::stat::mknod(
            dev,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o660),
            nix::sys::stat::makedev(LOOP_MAJOR, n),
        )
        .map_err(io::Error::from),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_config_matches_linux_loop_h() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }
}
