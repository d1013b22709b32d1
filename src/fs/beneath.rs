//! Data directories opened once, beneath a trusted anchor, without following symlinks; every later step (stat, chown, chmod, mount, read, write) uses the descriptor.
//!
//! A volume's data directory is reached from an anchor allspark trusts (the state root's
//! `volumes/`, an allowed bind root, the parent volume's own descriptor). The relative rest is
//! resolved with `openat2(RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH)`, or, where that is missing or
//! fails, one component at a time with `O_NOFOLLOW | O_DIRECTORY`, creating missing components
//! with `mkdirat`. A component that is a symlink or not a directory is refused by name, so a
//! container that swaps a directory for a link (even in a loop, racing the check) never makes
//! allspark act on the link's target.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

/// Why a directory could not be opened beneath its anchor.
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    #[error("{path}: {component} is a symbolic link; allspark never follows links inside volume data (replace it with a directory)")]
    Symlink { path: PathBuf, component: PathBuf },
    #[error("{path}: {component} exists and is not a directory")]
    NotDir { path: PathBuf, component: PathBuf },
    #[error("{path}: {component} does not exist")]
    Missing { path: PathBuf, component: PathBuf },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl From<BeneathError> for io::Error {
    fn from(e: BeneathError) -> io::Error {
        let kind = match &e {
            BeneathError::Missing { .. } => io::ErrorKind::NotFound,
            BeneathError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e.to_string())
    }
}

/// Whether missing components are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// A missing component is an error.
    Refuse,
    /// Missing components are created (mode 0755, subject to the umask).
    Create,
}

/// Device and inode: the identity of a directory, whatever its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DirId {
    pub dev: u64,
    pub ino: u64,
}

/// An open directory and the path it was reached by (for messages only; never resolved again).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    shown: PathBuf,
}

/// The result of [`Dir::open_beneath`]: the directory, and the topmost component created, if any.
#[derive(Debug)]
pub struct Opened {
    pub dir: Dir,
    /// Relative to the anchor: the first component this call created (remove it to undo).
    pub created: Option<PathBuf>,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Dir {
    /// Open a trusted anchor by path (an administrator's path: symlinks in it are followed).
    pub fn open_anchor(path: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("{}: {e}", path.display()),
            )
        })?;
        Ok(Dir {
            fd,
            shown: path.to_path_buf(),
        })
    }

    /// The path this directory was reached by, for messages.
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// A path that names exactly this open directory (`/proc/self/fd/N`) for APIs that take a
    /// path; valid while `self` lives, and never re-resolved by name.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Device and inode of the directory.
    pub fn id(&self) -> io::Result<DirId> {
        let st = rustix::fs::fstat(&self.fd)?;
        Ok(DirId {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    /// A second descriptor of the same directory.
    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
            shown: self.shown.clone(),
        })
    }

    /// The directory as a `File` (for `read_dir`-style use through `/proc/self/fd`, or fsync).
    pub fn file(&self) -> io::Result<File> {
        Ok(File::from(self.fd.try_clone()?))
    }

    /// Open `rel` (relative, no `..`) beneath this directory without following any symlink.
    pub fn open_beneath(&self, rel: &Path, missing: Missing) -> Result<Opened, BeneathError> {
        let shown = self.shown.join(rel);
        let parts = relative_parts(rel).map_err(|reason| BeneathError::Invalid {
            path: shown.clone(),
            reason,
        })?;
        if parts.is_empty() {
            let dir = self.try_clone().map_err(|source| BeneathError::Io {
                path: shown.clone(),
                source,
            })?;
            return Ok(Opened { dir, created: None });
        }
        // Fast path: one system call resolves everything, refusing any symlink on the way.
        // Missing components, a refusal to name, or no openat2: the walk below handles and
        // explains each case.
        if let Ok(fd) = rustix::fs::openat2(
            &self.fd,
            rel,
            DIR_FLAGS,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            return Ok(Opened {
                dir: Dir { fd, shown },
                created: None,
            });
        }
        self.walk(&parts, missing, shown)
    }

    /// Per-component walk: `openat(O_NOFOLLOW|O_DIRECTORY)`, `mkdirat` where missing.
    fn walk(
        &self,
        parts: &[&OsStr],
        missing: Missing,
        shown: PathBuf,
    ) -> Result<Opened, BeneathError> {
        let mut cur: Option<OwnedFd> = None;
        let mut done = PathBuf::new();
        let mut created = None;
        for part in parts {
            done.push(part);
            let at = cur.as_ref().map(|f| f.as_fd()).unwrap_or(self.fd.as_fd());
            let fd = loop {
                match rustix::fs::openat(at, *part, DIR_FLAGS, Mode::empty()) {
                    Ok(fd) => break fd,
                    Err(rustix::io::Errno::NOENT) if missing == Missing::Create => {
                        match rustix::fs::mkdirat(at, *part, Mode::from_raw_mode(0o755)) {
                            Ok(()) => {
                                if created.is_none() {
                                    created = Some(done.clone());
                                }
                            }
                            Err(rustix::io::Errno::EXIST) => {}
                            Err(e) => {
                                return Err(BeneathError::Io {
                                    path: self.shown.join(&done),
                                    source: e.into(),
                                })
                            }
                        }
                    }
                    Err(rustix::io::Errno::NOENT) => {
                        return Err(BeneathError::Missing {
                            path: shown,
                            component: self.shown.join(&done),
                        })
                    }
                    Err(rustix::io::Errno::LOOP) | Err(rustix::io::Errno::NOTDIR) => {
                        let component = self.shown.join(&done);
                        let link = rustix::fs::statat(at, *part, AtFlags::SYMLINK_NOFOLLOW)
                            .map(|st| (st.st_mode & libc::S_IFMT) == libc::S_IFLNK)
                            .unwrap_or(false);
                        return Err(if link {
                            BeneathError::Symlink {
                                path: shown,
                                component,
                            }
                        } else {
                            BeneathError::NotDir {
                                path: shown,
                                component,
                            }
                        });
                    }
                    Err(e) => {
                        return Err(BeneathError::Io {
                            path: self.shown.join(&done),
                            source: e.into(),
                        })
                    }
                }
            };
            cur = Some(fd);
        }
        let fd = cur.expect("at least one component");
        Ok(Opened {
            dir: Dir { fd, shown },
            created,
        })
    }

    /// Is this directory `other`, or inside it? Walks `..` from the descriptor up to the root,
    /// comparing device and inode, so no name is trusted.
    pub fn is_within(&self, other: DirId) -> io::Result<bool> {
        let mut cur = self.fd.try_clone()?;
        loop {
            let st = rustix::fs::fstat(&cur)?;
            if st.st_dev == other.dev && st.st_ino == other.ino {
                return Ok(true);
            }
            let up = rustix::fs::openat(&cur, "..", DIR_FLAGS, Mode::empty())?;
            let ust = rustix::fs::fstat(&up)?;
            if ust.st_dev == st.st_dev && ust.st_ino == st.st_ino {
                return Ok(false); // the root (of this mount namespace's view)
            }
            cur = up;
        }
    }

    /// Is the directory empty?
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(std::fs::read_dir(self.proc_path())?.next().is_none())
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The normal components of a relative path; `..`, absolute paths and empty names are refused.
fn relative_parts(rel: &Path) -> Result<Vec<&OsStr>, String> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) if !s.as_bytes().is_empty() => out.push(s),
            Component::CurDir => {}
            Component::ParentDir => return Err("`..` is not allowed here".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("an absolute path is not allowed here".into())
            }
            Component::Normal(_) => return Err("an empty name is not allowed here".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_symlinked_component_is_refused_by_name_and_its_target_untouched() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("vol/data")).unwrap();
        symlink(outside.path(), d.path().join("vol/data/child")).unwrap();
        let anchor = Dir::open_anchor(d.path()).unwrap();
        for missing in [Missing::Refuse, Missing::Create] {
            let err = anchor
                .open_beneath(Path::new("vol/data/child/deeper"), missing)
                .unwrap_err();
            assert!(matches!(err, BeneathError::Symlink { .. }), "{err}");
            assert!(
                err.to_string()
                    .contains("vol/data/child is a symbolic link"),
                "{err}"
            );
        }
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    }

    #[test]
    fn missing_components_are_created_and_the_top_one_reported() {
        let d = tempfile::tempdir().unwrap();
        let anchor = Dir::open_anchor(d.path()).unwrap();
        let o = anchor
            .open_beneath(Path::new("a/b/c"), Missing::Create)
            .unwrap();
        assert_eq!(o.created.as_deref(), Some(Path::new("a")));
        assert!(d.path().join("a/b/c").is_dir());
        let again = anchor
            .open_beneath(Path::new("a/b/c"), Missing::Refuse)
            .unwrap();
        assert_eq!(again.created, None);
        assert_eq!(again.dir.id().unwrap(), o.dir.id().unwrap());
        assert!(o.dir.is_within(anchor.id().unwrap()).unwrap());
        assert!(!anchor.is_within(o.dir.id().unwrap()).unwrap());
    }

    #[test]
    fn dotdot_absolute_and_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"x").unwrap();
        let anchor = Dir::open_anchor(d.path()).unwrap();
        assert!(matches!(
            anchor.open_beneath(Path::new("../x"), Missing::Create),
            Err(BeneathError::Invalid { .. })
        ));
        assert!(matches!(
            anchor.open_beneath(Path::new("/etc"), Missing::Refuse),
            Err(BeneathError::Invalid { .. })
        ));
        assert!(matches!(
            anchor.open_beneath(Path::new("f/x"), Missing::Create),
            Err(BeneathError::NotDir { .. })
        ));
        assert!(matches!(
            anchor.open_beneath(Path::new("nope"), Missing::Refuse),
            Err(BeneathError::Missing { .. })
        ));
    }
}
