//! Host paths given in `device=`: symlink resolution inside the host view, and the allowed-root rules.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::core::layout::HostView;

const MAX_SYMLINKS: usize = 40;

/// Resolve every symlink of a host path as the host sees it (absolute links are taken
/// relative to the host's `/`, even when this process sees the host under a prefix).
/// Components that do not exist yet are kept as written (the directory may be created).
pub(crate) fn resolve(view: &HostView, host_path: &Path) -> io::Result<PathBuf> {
    let mut pending: Vec<OsString> = components(host_path)?;
    pending.reverse();
    let mut resolved = PathBuf::from("/");
    let mut links = 0;
    let mut missing = false;
    while let Some(comp) = pending.pop() {
        if comp == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&comp);
        if missing {
            resolved = candidate;
            continue;
        }
        match fs::symlink_metadata(view.local(&candidate)) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::other(format!(
                        "too many symlinks resolving {}",
                        host_path.display()
                    )));
                }
                let target = fs::read_link(view.local(&candidate))?;
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                let mut more = components(&target)?;
                more.reverse();
                pending.extend(more);
            }
            Ok(_) => resolved = candidate,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing = true;
                resolved = candidate;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(resolved)
}

fn components(p: &Path) -> io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => out.push(OsString::from("..")),
            Component::Normal(s) => out.push(s.to_os_string()),
            Component::Prefix(_) => return Err(io::Error::other("unsupported path prefix")),
        }
    }
    Ok(out)
}

/// Is `path` equal to or below `root` (both resolved)?
pub(crate) fn is_within(path: &Path, root: &Path) -> bool {
    path.starts_with(root)
}

/// Is the local path `p` (existing) the same directory as, or inside, the local directory `dir`?
/// Compares device and inode of every ancestor, so it holds across mount namespaces and prefixes.
pub(crate) fn is_inside_dir(p: &Path, dir: &Path) -> bool {
    let Ok(target) = fs::metadata(dir) else {
        return false;
    };
    let mut cur = Some(p);
    while let Some(c) = cur {
        if let Ok(m) = fs::metadata(c) {
            if m.dev() == target.dev() && m.ino() == target.ino() {
                return true;
            }
        }
        cur = c.parent();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_symlinks_resolve_inside_the_host_view() {
        let host = tempfile::tempdir().unwrap();
        let view = HostView::new(Some(host.path()));
        fs::create_dir_all(host.path().join("srv/data")).unwrap();
        fs::create_dir_all(host.path().join("etc")).unwrap();
        symlink("/etc", host.path().join("srv/data/escape")).unwrap();
        symlink("data", host.path().join("srv/rel")).unwrap();
        symlink("../srv/data", host.path().join("srv/up")).unwrap();
        assert_eq!(
            resolve(&view, Path::new("/srv/data/escape/x")).unwrap(),
            PathBuf::from("/etc/x")
        );
        assert_eq!(
            resolve(&view, Path::new("/srv/rel/new/dir")).unwrap(),
            PathBuf::from("/srv/data/new/dir")
        );
        assert_eq!(
            resolve(&view, Path::new("/srv/up/x")).unwrap(),
            PathBuf::from("/srv/data/x")
        );
    }

    #[test]
    fn symlink_loops_are_an_error() {
        let host = tempfile::tempdir().unwrap();
        let view = HostView::new(Some(host.path()));
        symlink("/a", host.path().join("b")).unwrap();
        symlink("/b", host.path().join("a")).unwrap();
        assert!(resolve(&view, Path::new("/a/x")).is_err());
    }

    #[test]
    fn inside_dir_follows_inodes() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("state/x")).unwrap();
        assert!(is_inside_dir(
            &d.path().join("state/x"),
            &d.path().join("state")
        ));
        assert!(!is_inside_dir(d.path(), &d.path().join("state")));
    }
}
