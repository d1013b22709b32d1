//! Off-site copies of backups on S3-compatible object storage, encrypted on the host with age before anything leaves it.
//!
//! A remote is a root-only file `<root>/state/remotes/<name>.json` written by
//! `allspark remote add` ([`config`]). It names the endpoint, bucket, prefix,
//! region and addressing style, where the credentials come from (the
//! environment or a root-only file; they are never stored in the remote's
//! file, logged or shown), and how objects are encrypted ([`crypt`]).
//!
//! Layout in the bucket, below the remote's prefix:
//!
//! ```text
//! <prefix>/backups/<type>/<YYYYmmdd_HHMMSS>/<file>.age        every file of the local backup, age-encrypted
//! <prefix>/backups/<type>/<YYYYmmdd_HHMMSS>/index.json        plaintext: outcome, and per object its size, sha256 and ETag
//! <prefix>/backups/<type>/<YYYYmmdd_HHMMSS>/manifest.json.age the backup's manifest, uploaded last
//! ```
//!
//! (no `.age` suffix on a remote added with `--unencrypted`). A remote backup
//! without its manifest is incomplete (an upload was interrupted) and is never
//! used; `allspark remote push` resumes it. Snapshot chains of volumes with
//! `offsite=snapshots` and volume records live beside them under
//! `<prefix>/snapshots/` and `<prefix>/volumes/` ([`snapshots`]).
//!
//! Modules: [`config`] (remote files, credentials), [`crypt`] (age),
//! [`client`] (the object store, retries, error sentences), [`transfer`]
//! (streaming encrypt-and-upload, download-and-decrypt, bounded memory),
//! [`fetch`] (a remote backup into a local directory, every object checked),
//! [`catalog`] (remote backups and their index), [`push`] (what goes
//! off-site), [`prune`] (remote retention), [`verify`] (checks at a distance),
//! [`objects`] (a resumable upload of a directory's files), [`snapshots`]
//! (snapshot chains and volume records on the remote), [`chains`] (which
//! volumes send their chains, and the agent's uploader).
//! Disaster recovery from a remote is [`crate::ops::dr`].

pub(crate) mod catalog;
pub(crate) mod chains;
pub(crate) mod client;
pub(crate) mod config;
pub(crate) mod crypt;
pub(crate) mod fetch;
pub(crate) mod objects;
pub(crate) mod prune;
pub(crate) mod push;
pub(crate) mod snapshots;
pub(crate) mod transfer;
pub(crate) mod verify;

pub(crate) use client::Remote;
pub(crate) use config::RemoteConfig;

/// The lock serialising pushes, prunes and recoveries of one remote on this host.
pub(crate) fn take_lock(
    layout: &crate::core::layout::Layout,
    name: &str,
) -> anyhow::Result<crate::fs::durable::FileLock> {
    use crate::fs::durable::{ensure_dir, FileLock, LockKind};
    use anyhow::Context;
    let dir = layout.remotes_dir();
    ensure_dir(&dir, 0o700).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{name}.lock"));
    if let Some(l) = FileLock::try_acquire(&path, LockKind::Exclusive)
        .with_context(|| format!("cannot open {}", path.display()))?
    {
        return Ok(l);
    }
    tracing::warn!(
        remote = name,
        "another push, prune or recovery of this remote is running; waiting for it"
    );
    FileLock::acquire(&path, LockKind::Exclusive)
        .with_context(|| format!("cannot take {}", path.display()))
}
