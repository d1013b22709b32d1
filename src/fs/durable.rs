//! Durable file-system primitives: atomic writes, directory fsync, advisory locks.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary name next to `path`, unique within and across processes.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}.{n}", std::process::id()))
}

/// fsync a directory, so a rename or unlink inside it is durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Write `bytes` to `path` atomically: temp file, fsync, rename, fsync of the directory.
/// After a crash the file holds either the old or the new content, never a mix.
pub fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fsync_dir(parent_of(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Remove a file durably; a missing file is not an error.
pub fn remove_durable(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => fsync_dir(parent_of(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Create a directory (and parents) with `mode` for the new ones.
pub fn ensure_dir(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
}

/// An advisory `flock` held until dropped.
///
/// Lock files may be deleted (those of removed volumes are, see
/// [`crate::core::locks`]), and `flock` locks an inode, not a name: a process
/// that opened the file before it was unlinked would otherwise lock a file
/// nobody else can reach any more. So every acquisition checks, once it holds
/// the lock, that the path still names the locked inode, and starts again on
/// the new file if not; and a lock file is only unlinked by someone holding
/// its lock ([`FileLock::unlink`]). Together, two holders can never both
/// believe they hold one path's lock.
pub struct FileLock {
    _lock: Flock<File>,
}

/// How a lock is wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    Shared,
    Exclusive,
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// Does `path` still name the inode `file` is open on?
fn still_linked(file: &File, path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let held = file.metadata()?;
    match fs::symlink_metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Lock `path` with `arg`; `Ok(None)` when a non-blocking attempt finds it held.
fn lock_linked(path: &Path, arg: FlockArg) -> io::Result<Option<Flock<File>>> {
    loop {
        let file = open_lock_file(path)?;
        let lock = match Flock::lock(file, arg) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(io::Error::from(e)),
        };
        if still_linked(&lock, path)? {
            return Ok(Some(lock));
        }
        // Unlinked by its holder while we waited: lock the file now at `path`.
    }
}

impl FileLock {
    /// Take the lock, waiting as long as needed.
    pub fn acquire(path: &Path, kind: LockKind) -> io::Result<FileLock> {
        let arg = match kind {
            LockKind::Shared => FlockArg::LockShared,
            LockKind::Exclusive => FlockArg::LockExclusive,
        };
        let lock = lock_linked(path, arg)?.ok_or_else(|| {
            io::Error::other(format!("blocking lock of {} gave up", path.display()))
        })?;
        Ok(FileLock { _lock: lock })
    }

    /// Take the lock if it is free now; `Ok(None)` if someone else holds it.
    pub fn try_acquire(path: &Path, kind: LockKind) -> io::Result<Option<FileLock>> {
        let arg = match kind {
            LockKind::Shared => FlockArg::LockSharedNonblock,
            LockKind::Exclusive => FlockArg::LockExclusiveNonblock,
        };
        Ok(lock_linked(path, arg)?.map(|lock| FileLock { _lock: lock }))
    }

    /// Delete the lock file `path` (which this lock holds, exclusively) and release it.
    /// Whoever waits for it then finds it unlinked and locks a fresh file.
    pub fn unlink(self, path: &Path) -> io::Result<()> {
        if !still_linked(&self._lock, path)? {
            return Err(io::Error::other(format!(
                "{} is not the file this lock holds",
                path.display()
            )));
        }
        remove_durable(path)
    }

    /// Take the lock, polling until `wait` has passed; `Ok(None)` on timeout.
    pub fn acquire_within(
        path: &Path,
        kind: LockKind,
        wait: Duration,
    ) -> io::Result<Option<FileLock>> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(lock) = FileLock::try_acquire(path, kind)? {
                return Ok(Some(lock));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The underlying file (e.g. to write the holder's pid into it).
    pub fn file(&self) -> &File {
        &self._lock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rec.json");
        atomic_write(&p, b"one", 0o600).unwrap();
        atomic_write(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temp files left behind: {names:?}");
    }

    #[test]
    fn exclusive_lock_excludes_a_second_open() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let held = FileLock::acquire(&p, LockKind::Exclusive).unwrap();
        assert!(FileLock::try_acquire(&p, LockKind::Shared)
            .unwrap()
            .is_none());
        drop(held);
        assert!(FileLock::try_acquire(&p, LockKind::Shared)
            .unwrap()
            .is_some());
    }
}
