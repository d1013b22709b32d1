//! The target of the escape attacks: a root-owned 0700 directory outside every volume, holding
//! a secret, and what must never change about it (owner, mode, names and contents).
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The secret file's content: an attack that reads through a link finds these bytes.
pub const SECRET: &[u8] = b"host secret 7f3a";

/// A root-owned 0700 directory under /var/tmp holding `secret`; removed on drop.
pub struct Outside {
    dir: tempfile::TempDir,
}

/// What must not change: owner, mode, and the names and contents inside.
#[derive(Debug, PartialEq)]
pub struct Seen {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub entries: Vec<(String, Vec<u8>)>,
}

impl Outside {
    pub fn new() -> Outside {
        let dir = tempfile::Builder::new()
            .prefix("allspark-outside-")
            .tempdir_in("/var/tmp")
            .unwrap();
        fs::write(dir.path().join("secret"), SECRET).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        Outside { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn seen(&self) -> Seen {
        let m = fs::metadata(self.path()).unwrap();
        let mut entries: Vec<(String, Vec<u8>)> = fs::read_dir(self.path())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let content = fs::read(e.path()).unwrap_or_default();
                (e.file_name().to_string_lossy().into_owned(), content)
            })
            .collect();
        entries.sort();
        Seen {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
            entries,
        }
    }
}

impl Default for Outside {
    fn default() -> Outside {
        Outside::new()
    }
}

/// Every plain file below `dir` whose content holds [`SECRET`] (links are not followed).
pub fn files_holding_secret(dir: &Path) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file()
                && fs::read(e.path())
                    .unwrap_or_default()
                    .windows(SECRET.len())
                    .any(|w| w == SECRET)
            {
                hits.push(e.path());
            }
        }
    }
    hits
}
