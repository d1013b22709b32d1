//! One set of files of a local directory (a backup, a snapshot) uploaded as objects below one key, each encrypted and recorded in a pending file as soon as it is up, so an interrupted upload resumes with the objects already there.
//!
//! The caller uploads its own index and manifest after [`upload_files`]
//! succeeded (manifest last: a set without its manifest is incomplete and
//! never used) and then calls [`done`], which removes the pending file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use object_store::path::Path as Key;
use object_store::{ObjectMeta, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use super::catalog::IndexObject;
use super::client::Remote;
use super::crypt::Sealer;
use super::transfer::{bare_etag, upload_file};
use crate::backup::run::ItemProgress;
use crate::fs::durable;

/// A file of the local directory to upload.
#[derive(Clone, Debug)]
pub(crate) struct LocalFile {
    /// Its name in the directory (a plain name).
    pub name: String,
    /// The sha256 its manifest records: the upload is refused if the file no longer matches.
    pub sha256: Option<String>,
}

/// What [`upload_files`] did.
#[derive(Clone, Debug, Default)]
pub(crate) struct SetUpload {
    /// Every object of the set, as stored.
    pub objects: Vec<IndexObject>,
    pub uploaded: usize,
    /// Objects of an interrupted upload found intact and not sent again.
    pub reused: usize,
    /// Bytes uploaded (encrypted).
    pub bytes: u64,
}

/// The objects uploaded so far by an interrupted upload.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Pending {
    objects: Vec<IndexObject>,
}

/// `<root>/state/remotes/<remote>.pending/<what>.json`.
pub(crate) fn pending_path(remotes_dir: &Path, remote: &str, what: &str) -> PathBuf {
    remotes_dir
        .join(format!("{remote}.pending"))
        .join(format!("{what}.json"))
}

fn load_pending(p: &Path) -> Pending {
    std::fs::read(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_pending(p: &Path, s: &Pending) -> anyhow::Result<()> {
    if let Some(dir) = p.parent() {
        durable::ensure_dir(dir, 0o700)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    durable::atomic_write(p, &serde_json::to_vec_pretty(s)?, 0o600)
        .with_context(|| format!("cannot write {}", p.display()))
}

/// A file name from a manifest must be a plain name inside the directory.
pub(crate) fn plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".." && !name.contains('\0')
}

/// Upload `files` of `dir` below `base` (object name: the file name plus the sealer's suffix).
///
/// `listing`: what the remote holds below `base` now (object name -> metadata); an object an
/// interrupted upload recorded in `pending_file` that is still there with the same size and
/// ETag is not sent again.
#[allow(clippy::too_many_arguments)] // the remote, the files, what is up already, where progress is recorded
pub(crate) async fn upload_files(
    remote: &Remote,
    sealer: &Sealer,
    base: &Key,
    dir: &Path,
    files: &[LocalFile],
    listing: Option<&BTreeMap<String, ObjectMeta>>,
    pending_file: &Path,
    progress: Option<&ItemProgress>,
) -> anyhow::Result<SetUpload> {
    let mut pending = load_pending(pending_file);
    let mut out = SetUpload::default();
    for f in files {
        if !plain_name(&f.name) {
            anyhow::bail!(
                "its manifest names the file {:?}, which is not a plain file name; the manifest was tampered with",
                f.name
            );
        }
        let object = format!("{}{}", f.name, sealer.suffix());
        let prev = pending.objects.iter().find(|o| o.file == f.name).cloned();
        if let (Some(prev), Some(listing)) = (&prev, listing) {
            let intact = listing.get(&object).is_some_and(|meta| {
                meta.size == prev.size
                    && match (&meta.e_tag, &prev.etag) {
                        (Some(have), Some(want)) => &bare_etag(have) == want,
                        _ => true,
                    }
            });
            if intact {
                out.reused += 1;
                out.objects.push(prev.clone());
                continue;
            }
        }
        pending.objects.retain(|o| o.file != f.name);
        let up = upload_file(
            remote,
            &base.clone().join(object.as_str()),
            &dir.join(&f.name),
            sealer,
            f.sha256.as_deref().filter(|s| !s.is_empty()),
            progress.map(|p| (p.clone(), format!("push {}", f.name))),
        )
        .await
        .with_context(|| format!("file {}", f.name))?;
        let o = IndexObject {
            file: f.name.clone(),
            object,
            size: up.size,
            sha256: up.sha256,
            etag: up.e_tag,
            plain_size: up.plain_size,
        };
        out.uploaded += 1;
        out.bytes += o.size;
        pending.objects.push(o.clone());
        out.objects.push(o);
        save_pending(pending_file, &pending)?;
    }
    Ok(out)
}

/// The set is complete on the remote: forget its pending record.
pub(crate) fn done(pending_file: &Path) {
    let _ = std::fs::remove_file(pending_file);
}

/// Delete a set of objects below `base` (a backup, a snapshot): its manifest first (the set is
/// incomplete, and never used, from the first request on), its `index.json` next, then the rest.
pub(crate) async fn delete_set(
    remote: &Remote,
    base: &Key,
    listing: &BTreeMap<String, ObjectMeta>,
) -> anyhow::Result<()> {
    let rank = |k: &str| {
        if k.starts_with("manifest.json") {
            0
        } else if k == super::catalog::INDEX {
            1
        } else {
            2
        }
    };
    let mut order: Vec<&String> = listing.keys().collect();
    order.sort_by_key(|k| rank(k));
    for object in order {
        let key = base.clone().join(object.as_str());
        match remote.store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(remote.explain(&format!("deleting {}", remote.url(&key)), e)),
        }
    }
    Ok(())
}

/// A downloaded object must be as stored at upload (size and sha256 of its index entry).
pub(crate) fn check_stored(
    remote: &Remote,
    key: &Key,
    got: &super::transfer::Downloaded,
    o: &IndexObject,
) -> anyhow::Result<()> {
    if got.size != o.size || got.sha256 != o.sha256 {
        anyhow::bail!(
            "{}: {} bytes with sha256 {}, the index recorded {} bytes with sha256 {} at upload; the object is damaged",
            remote.url(key),
            got.size,
            got.sha256,
            o.size,
            o.sha256
        );
    }
    Ok(())
}
