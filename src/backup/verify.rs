//! Verifying a backup directory (the monthly restore drill, automated): a real test extraction of every archive, a full read of every dump, each hashed on the way and checked against the manifest's size and sha256.
//!
//! Every file is read once: its sha256 is computed while it is extracted or
//! gunzipped. Archives are extracted into a scratch directory next to the
//! backup's type directory (`<backup-root>/<type>/.verify-XXXX`, same
//! filesystem as the backups, hidden from listing and retention), one at a
//! time, deleted after each. A manifest of the old script has no checksums:
//! its `*.tar.gz` and `*.sql.gz` files are only test-read.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::manifest::{self, BackupManifest, FileEntry, FileKind};
use super::run::ItemProgress;
use crate::archive::{self, ExtractOptions};
use crate::snapshot::Counting;

/// The result of one file.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FileCheck {
    pub name: String,
    pub ok: bool,
    /// What was found (entries and bytes), or what is wrong.
    pub detail: String,
}

/// What [`verify_dir`] found.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct VerifyReport {
    pub dir: PathBuf,
    pub files: Vec<FileCheck>,
    /// Not failures: the run that made the backup failed, files not in the manifest, …
    pub warnings: Vec<String>,
}

impl VerifyReport {
    pub(crate) fn ok(&self) -> bool {
        self.files.iter().all(|f| f.ok)
    }
    /// The failures, one sentence each, naming the file.
    pub(crate) fn failures(&self) -> Vec<String> {
        self.files
            .iter()
            .filter(|f| !f.ok)
            .map(|f| {
                let path = self.dir.join(&f.name).display().to_string();
                if f.detail.starts_with(&path) {
                    f.detail.clone()
                } else {
                    format!("{path}: {}", f.detail)
                }
            })
            .collect()
    }
}

/// A manifest file name must be a plain name inside the directory.
fn safe_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".." && !name.contains('\0')
}

/// Check the name and size of one file of the manifest (cheap: no read); the error names the file.
pub(crate) fn check_size(dir: &Path, f: &FileEntry) -> Result<(), String> {
    if !safe_name(&f.name) {
        return Err(format!(
            "the manifest names the file {:?}, which is not a plain file name; the manifest was tampered with",
            f.name
        ));
    }
    let path = dir.join(&f.name);
    let size = std::fs::metadata(&path)
        .map_err(|e| {
            format!(
                "{}: cannot be read ({e}); the backup is damaged, use another one",
                path.display()
            )
        })?
        .len();
    if size != f.size {
        return Err(format!(
            "{}: {size} bytes, the manifest says {}; the file is damaged (truncated?), use another backup",
            path.display(),
            f.size
        ));
    }
    Ok(())
}

/// Compare the sha256 computed while reading a file with the manifest's.
pub(crate) fn check_sum(dir: &Path, f: &FileEntry, sum: &str) -> Result<(), String> {
    if sum != f.sha256 {
        return Err(format!(
            "{}: sha256 {sum} does not match the manifest ({}); the file is damaged, use another backup",
            dir.join(&f.name).display(),
            f.sha256
        ));
    }
    Ok(())
}

/// Check size and sha256 of one file of the manifest by reading it; the error names the file.
pub(crate) fn check_file(dir: &Path, f: &FileEntry) -> Result<(), String> {
    check_size(dir, f)?;
    let path = dir.join(&f.name);
    let (_, sum) = super::dump::file_sum(&path).map_err(|e| {
        format!(
            "{}: cannot be read ({e}); the backup is damaged, use another one",
            path.display()
        )
    })?;
    check_sum(dir, f, &sum)
}

/// Check every file of `m` that `wanted` selects, reading it only if `read`
/// says so (else its size only); all failures, each naming its file.
pub(crate) fn check_checksums(
    dir: &Path,
    m: &BackupManifest,
    wanted: impl Fn(&FileEntry) -> bool,
    read: impl Fn(&FileEntry) -> bool,
) -> Result<(), Vec<String>> {
    let errors: Vec<String> = m
        .files
        .iter()
        .filter(|f| wanted(f))
        .filter_map(|f| {
            if read(f) {
                check_file(dir, f).err()
            } else {
                check_size(dir, f).err()
            }
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// A scratch directory for test extractions, on the backups' filesystem when possible.
fn scratch(dir: &Path) -> io::Result<tempfile::TempDir> {
    let near = dir.parent().unwrap_or(dir);
    tempfile::Builder::new()
        .prefix(".verify-")
        .tempdir_in(near)
        .or_else(|_| {
            tempfile::Builder::new()
                .prefix("allspark-verify-")
                .tempdir()
        })
}

/// Test-extract one archive into a fresh scratch directory (deleted afterwards);
/// what was extracted, and the archive's sha256.
fn test_extract(
    dir: &Path,
    name: &str,
    progress: Option<&(dyn Fn(u64) + Send + Sync)>,
) -> Result<(String, String), String> {
    let path = dir.join(name);
    let f = File::open(&path).map_err(|e| format!("cannot open it: {e}"))?;
    let tmp = scratch(dir).map_err(|e| {
        format!("cannot create a scratch directory to test-extract it ({e}); free some space")
    })?;
    let opts = ExtractOptions {
        preserve_ownership: nix::unistd::geteuid().is_root(),
        ..Default::default()
    };
    let r = archive::extract(Counting::new(f, progress), &tmp.path().join("data"), &opts)
        .map_err(|e| format!("test extraction failed: {e}"))?;
    Ok((
        format!(
            "{} entries, {} bytes extracted ({})",
            r.entries,
            r.bytes,
            r.codec.map(|c| c.as_str()).unwrap_or("?")
        ),
        r.sha256,
    ))
}

/// Hashes what is read through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Read a gzip file to the end (checks every member's CRC); what was read, and the file's sha256.
fn test_gunzip(path: &Path) -> Result<(String, String), String> {
    let f = File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let hashing = Hashing {
        inner: f,
        hasher: Sha256::new(),
    };
    let mut d = MultiGzDecoder::new(BufReader::with_capacity(1 << 20, hashing));
    let n = io::copy(&mut d, &mut io::sink())
        .map_err(|e| format!("the gzip data is damaged ({e}); use another backup"))?;
    if n == 0 {
        return Err("the dump is empty".into());
    }
    // Hash whatever the decoder left unread (nothing for a valid file).
    let mut rest = d.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| format!("cannot read it: {e}"))?;
    let sum = hex::encode(rest.into_inner().hasher.finalize());
    Ok((format!("{n} bytes of SQL read"), sum))
}

/// Verify backup directory `dir`. `Err` only when it is not a complete backup.
pub(crate) fn verify_dir(
    dir: &Path,
    progress: Option<ItemProgress>,
) -> anyhow::Result<VerifyReport> {
    let m = manifest::read_required(dir)?;
    let mut report = VerifyReport {
        dir: dir.to_path_buf(),
        files: Vec::new(),
        warnings: Vec::new(),
    };
    if m.outcome == Some(manifest::Outcome::Failed) {
        report.warnings.push(format!(
            "the run that made this backup failed ({}); only the files it lists are checked",
            m.errors.join("; ")
        ));
    }
    let legacy = m.files.is_empty() && m.outcome.is_none();
    let entries: Vec<(String, Option<&FileEntry>)> = if legacy {
        report.warnings.push(
            "the manifest has no checksums (made by the old backup script): files are only test-read"
                .into(),
        );
        legacy_files(dir)?.into_iter().map(|n| (n, None)).collect()
    } else {
        m.files.iter().map(|f| (f.name.clone(), Some(f))).collect()
    };
    for (name, entry) in entries {
        let item = format!("verify {name}");
        let result = verify_file(dir, &name, entry, &item, progress.as_ref());
        if let Some(p) = &progress {
            p(&item, None);
        }
        let check = match result {
            Ok(detail) => FileCheck {
                name,
                ok: true,
                detail,
            },
            Err(detail) => FileCheck {
                name,
                ok: false,
                detail,
            },
        };
        if check.ok {
            tracing::info!(file = %check.name, detail = %check.detail, "verified");
        } else {
            tracing::error!(file = %check.name, detail = %check.detail, "verification failed");
        }
        report.files.push(check);
    }
    Ok(report)
}

/// The backup files of a directory made by the old script (no checksums in its manifest), by name.
fn legacy_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| {
            !n.starts_with('.')
                && (n.ends_with(".tar.gz") || n.ends_with(".tar.zst") || n.ends_with(".sql.gz"))
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Check one file: its size, a test read (extraction or gunzip) and its sha256 (when the manifest has them).
fn verify_file(
    dir: &Path,
    name: &str,
    entry: Option<&FileEntry>,
    item: &str,
    progress: Option<&ItemProgress>,
) -> Result<String, String> {
    if let Some(f) = entry {
        check_size(dir, f)?;
    }
    if !safe_name(name) {
        return Err(format!("{name:?} is not a plain file name"));
    }
    let is_volume = match entry {
        Some(f) => f.kind == FileKind::Volume,
        None => !name.ends_with(".sql.gz"),
    };
    let (detail, sum) = if is_volume {
        let p = progress.cloned();
        let it = item.to_string();
        let tick = move |n: u64| {
            if let Some(p) = &p {
                p(&it, Some(n))
            }
        };
        test_extract(dir, name, Some(&tick))?
    } else {
        test_gunzip(&dir.join(name))?
    };
    if let Some(f) = entry {
        check_sum(dir, f, &sum)?;
    }
    Ok(detail)
}
