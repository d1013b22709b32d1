//! Downloading one complete remote backup into a local backup directory, every object checked twice: as stored (size and sha256 against the index) and decrypted (size and sha256 against the manifest).
//!
//! The manifest is downloaded and decrypted first (it says what the files
//! must be), and written into the directory last, so the directory is an
//! incomplete backup until every file checked out. The first bad object stops
//! the fetch with a sentence naming it; the caller removes the directory.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};

use super::catalog::RemoteBackup;
use super::client::Remote;
use super::crypt::Opener;
use super::transfer::{download_file, get_bytes};
use crate::backup::manifest::BackupManifest;
use crate::backup::run::ItemProgress;
use crate::fs::durable;

/// What a fetch downloaded.
#[derive(Clone, Debug)]
pub(crate) struct Fetched {
    pub manifest: BackupManifest,
    /// Bytes downloaded (encrypted).
    pub bytes: u64,
}

/// Fetch `b` into `dir` (created, mode 0700; must not exist).
pub(crate) async fn fetch(
    remote: &Remote,
    b: &RemoteBackup,
    opener: Arc<Opener>,
    dir: &Path,
    progress: Option<&ItemProgress>,
) -> anyhow::Result<Fetched> {
    let index = b
        .index
        .as_ref()
        .with_context(|| format!("remote backup {} has no readable index", b.id()))?;
    let mkey = remote.object_key(b.kind, &b.name, &index.manifest);
    let sealed = get_bytes(remote, &mkey).await?;
    let mut plain = Vec::new();
    opener
        .open(&sealed[..], &mut plain)
        .with_context(|| format!("{} cannot be decrypted", remote.url(&mkey)))?;
    let m: BackupManifest = serde_json::from_slice(&plain).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a valid manifest ({e}); this remote backup cannot be trusted",
            remote.url(&mkey)
        )
    })?;
    std::fs::DirBuilder::new()
        .recursive(false)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let _ = std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
    let mut bytes = sealed.len() as u64;
    for f in &m.files {
        let Some(o) = index.objects.iter().find(|o| o.file == f.name) else {
            bail!(
                "remote backup {}: its manifest lists {} but its index has no object for it; the backup is damaged",
                b.id(),
                f.name
            );
        };
        if o.file.contains('/') || o.object.contains('/') || o.file.starts_with('.') {
            bail!(
                "remote backup {}: the index names {:?}, which is not a plain file name; the index was tampered with",
                b.id(),
                o.file
            );
        }
        let key = remote.object_key(b.kind, &b.name, &o.object);
        let dest = dir.join(&f.name);
        let got = download_file(
            remote,
            &key,
            &dest,
            opener.clone(),
            progress.map(|p| (p.clone(), format!("fetch {}", f.name))),
        )
        .await?;
        bytes += got.size;
        super::objects::check_stored(remote, &key, &got, o)?;
        if got.plain_size != f.size || (!f.sha256.is_empty() && got.plain_sha256 != f.sha256) {
            bail!(
                "{}: decrypted to {} bytes with sha256 {}, the manifest says {} bytes with sha256 {}; the object is damaged",
                remote.url(&key),
                got.plain_size,
                got.plain_sha256,
                f.size,
                f.sha256
            );
        }
    }
    // Last: the manifest as uploaded, byte for byte.
    durable::atomic_write(&crate::backup::manifest_path(dir), &plain, 0o644)
        .with_context(|| format!("cannot write the manifest into {}", dir.display()))?;
    Ok(Fetched { manifest: m, bytes })
}
