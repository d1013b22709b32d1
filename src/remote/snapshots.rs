//! Snapshot chains off-site: every completed snapshot of a volume uploaded (encrypted, oldest first, manifest last, resumable), the volume's record beside them, remote retention by the volume's `keep=` rules that never breaks a chain, and chains fetched back into local snapshots.
//!
//! Layout below the remote's prefix:
//!
//! ```text
//! <prefix>/snapshots/<volume>/<id>/snapshot.tar.zst.age   the archive (or .tar.gz)
//! <prefix>/snapshots/<volume>/<id>/index.age              the file list the next incremental compares against
//! <prefix>/snapshots/<volume>/<id>/index.json             plaintext: id, parent, created_at, and per object its size, sha256, ETag
//! <prefix>/snapshots/<volume>/<id>/manifest.json.age      the snapshot's manifest, uploaded last
//! <prefix>/volumes/<volume>/record.json.age                the volume's Create options
//! ```
//!
//! A snapshot without its manifest is incomplete and never used. A chain is
//! pushed oldest first and a push stops at its first failure, so a snapshot is
//! complete on the remote only once its parent is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use object_store::{ObjectMeta, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use super::catalog::IndexObject;
use super::client::Remote;
use super::crypt::{Opener, Sealer};
use super::objects::{self, LocalFile};
use super::transfer::{download_file, get_bytes, put_bytes};
use crate::backup::run::ItemProgress;
use crate::core::layout::Layout;
use crate::core::names::VolumeName;
use crate::core::options::Keep;
use crate::core::snapshot_id;
use crate::fs::durable;
use crate::snapshot::manifest::{Manifest, INDEX_NAME, MANIFEST_NAME};
use crate::snapshot::{catalog as local, retention};

/// Name of the plaintext index object of a remote snapshot.
pub(crate) const INDEX: &str = "index.json";
/// Name (before the sealer's suffix) of a volume's record object.
pub(crate) const RECORD: &str = "record.json";

/// `index.json` of a remote snapshot (no secret: ids, times, sizes, checksums).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapIndex {
    pub format: u32,
    pub volume: VolumeName,
    pub id: String,
    pub parent: Option<String>,
    pub created_at: DateTime<Utc>,
    pub encryption: String,
    /// The manifest's object name (`manifest.json.age`).
    pub manifest: String,
    pub objects: Vec<IndexObject>,
}

/// One snapshot on the remote.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RemoteSnapshot {
    pub volume: VolumeName,
    pub id: String,
    /// Its manifest was uploaded (the last object of a push).
    pub complete: bool,
    pub parent: Option<String>,
    /// Bytes of all its objects.
    pub size: u64,
    #[serde(skip)]
    pub index: Option<SnapIndex>,
    #[serde(skip)]
    pub listing: BTreeMap<String, ObjectMeta>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RemoteSnapshot {
    /// Complete, with a readable index.
    pub(crate) fn usable(&self) -> bool {
        self.complete && self.index.is_some()
    }
}

/// Every snapshot on the remote (of `volume` only, when given), ordered by volume then id; indexes of complete ones are read.
pub(crate) async fn list(
    remote: &Remote,
    volume: Option<&str>,
) -> anyhow::Result<Vec<RemoteSnapshot>> {
    let base = remote.snapshots_key(None);
    let under = remote.snapshots_key(volume);
    let what = format!("listing {}", remote.url(&under));
    let mut groups: BTreeMap<(VolumeName, String), BTreeMap<String, ObjectMeta>> = BTreeMap::new();
    let mut stream = remote.store.list(Some(&under));
    while let Some(item) = stream.next().await {
        let meta = item.map_err(|e| remote.explain(&what, e))?;
        let Some(rest) = meta.location.prefix_match(&base) else {
            continue;
        };
        let parts: Vec<String> = rest.map(|p| p.as_ref().to_string()).collect();
        let [vol, id, object] = parts.as_slice() else {
            continue;
        };
        let Ok(vol) = VolumeName::parse(vol) else {
            continue;
        };
        if snapshot_id::validate(id).is_err() {
            continue;
        }
        groups
            .entry((vol, id.clone()))
            .or_default()
            .insert(object.clone(), meta);
    }
    let mut out = Vec::new();
    for ((volume, id), listing) in groups {
        let complete = listing.keys().any(|k| k.starts_with(MANIFEST_NAME));
        let mut s = RemoteSnapshot {
            size: listing.values().map(|m| m.size).sum(),
            volume,
            id,
            complete,
            parent: None,
            index: None,
            listing,
            error: None,
        };
        if complete {
            let key = remote.snapshot_key(&s.volume, &s.id).join(INDEX);
            match get_bytes(remote, &key).await.and_then(|b| {
                serde_json::from_slice::<SnapIndex>(&b)
                    .map_err(|e| anyhow::anyhow!("{} is not a valid index ({e})", remote.url(&key)))
            }) {
                Ok(i) => {
                    s.parent = i.parent.clone();
                    s.index = Some(i);
                }
                Err(e) => s.error = Some(format!("{e:#}")),
            }
        }
        out.push(s);
    }
    Ok(out)
}

/// What pushing one volume's snapshots did.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct VolumePush {
    pub volume: String,
    /// Snapshot ids made complete on the remote.
    pub pushed: Vec<String>,
    /// Local snapshots already complete there.
    pub already: usize,
    pub reused_objects: usize,
    pub bytes: u64,
    /// Remote snapshots removed by retention.
    pub pruned: Vec<String>,
}

/// Upload a volume's record (its Create options), encrypted.
pub(crate) async fn put_record(
    remote: &Remote,
    sealer: &Sealer,
    volume: &str,
    options: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let plain = serde_json::to_vec_pretty(options)?;
    let sealed = sealer
        .seal_bytes(&plain)
        .context("cannot encrypt the volume record")?;
    let key = remote.volume_key(volume, &format!("{RECORD}{}", sealer.suffix()));
    put_bytes(remote, &key, sealed).await.map(|_| ())
}

/// Download and decrypt a volume's record; `None` when the remote has none.
pub(crate) async fn get_record(
    remote: &Remote,
    opener: &Opener,
    volume: &str,
) -> anyhow::Result<Option<BTreeMap<String, String>>> {
    for suffix in [".age", ""] {
        let key = remote.volume_key(volume, &format!("{RECORD}{suffix}"));
        match remote.store.head(&key).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(remote.explain(&format!("reading {}", remote.url(&key)), e)),
        }
        let sealed = get_bytes(remote, &key).await?;
        let mut plain = Vec::new();
        opener
            .open(&sealed[..], &mut plain)
            .with_context(|| format!("{} cannot be decrypted", remote.url(&key)))?;
        let opts = serde_json::from_slice(&plain)
            .with_context(|| format!("{} is not a volume record", remote.url(&key)))?;
        return Ok(Some(opts));
    }
    Ok(None)
}

/// Push every complete local snapshot of `volume` the remote lacks (oldest first, stopping at the first failure), then apply `keep` to the remote's snapshots of it.
///
/// `record`: the volume's options, uploaded beside the snapshots when one was pushed.
pub(crate) async fn push_volume(
    remote: &Remote,
    sealer: &Sealer,
    layout: &Layout,
    volume: &VolumeName,
    record: Option<&BTreeMap<String, String>>,
    keep: &Keep,
    progress: Option<&ItemProgress>,
) -> anyhow::Result<VolumePush> {
    let locals = local::list(layout, volume)?;
    let there = list(remote, Some(volume)).await?;
    let mut report = VolumePush {
        volume: volume.to_string(),
        ..Default::default()
    };
    for m in &locals {
        let existing = there.iter().find(|s| s.id == m.id);
        if existing.is_some_and(|s| s.usable()) {
            report.already += 1;
            continue;
        }
        let (reused, bytes) = push_one(
            remote,
            sealer,
            layout,
            m,
            existing.map(|s| &s.listing),
            progress,
        )
        .await
        .with_context(|| {
            format!(
                "snapshot {} of volume {volume} was not pushed to remote {} (the local snapshot is intact; its partial upload has no manifest there and is never used)",
                m.id, remote.cfg.name
            )
        })?;
        report.pushed.push(m.id.clone());
        report.reused_objects += reused;
        report.bytes += bytes;
    }
    if let (Some(opts), false) = (record, report.pushed.is_empty()) {
        put_record(remote, sealer, volume, opts).await?;
    }
    let local_ids: BTreeSet<&str> = locals.iter().map(|m| m.id.as_str()).collect();
    let there = list(remote, Some(volume)).await?;
    for id in prune_plan(&there, &local_ids, keep) {
        if let Some(s) = there.iter().find(|s| s.id == id) {
            delete(remote, s).await?;
            tracing::info!(remote = %remote.cfg.name, %volume, id = %id, "old remote snapshot removed");
            report.pruned.push(id);
        }
    }
    Ok(report)
}

/// The remote snapshots of one volume to delete: complete ones `keep` (with the chains its kept snapshots need) does not keep, and incomplete ones this host no longer has (their push can never finish).
pub(crate) fn prune_plan(
    there: &[RemoteSnapshot],
    local_ids: &BTreeSet<&str>,
    keep: &Keep,
) -> Vec<String> {
    let items: Vec<retention::Item> = there
        .iter()
        .filter(|s| s.usable())
        .filter_map(|s| {
            let i = s.index.as_ref()?;
            Some(retention::Item {
                id: s.id.clone(),
                created_at: i.created_at,
                parent: i.parent.clone(),
            })
        })
        .collect();
    let kept = retention::plan_items(&items, keep);
    there
        .iter()
        .filter(|s| {
            if s.usable() {
                !kept.contains(&s.id)
            } else {
                // An unreadable index on a complete snapshot is kept for an operator to look at.
                !s.complete && !local_ids.contains(s.id.as_str())
            }
        })
        .map(|s| s.id.clone())
        .collect()
}

/// Push one snapshot: archive and file index, then `index.json`, then the manifest. Returns (reused, bytes).
async fn push_one(
    remote: &Remote,
    sealer: &Sealer,
    layout: &Layout,
    m: &Manifest,
    listing: Option<&BTreeMap<String, ObjectMeta>>,
    progress: Option<&ItemProgress>,
) -> anyhow::Result<(usize, u64)> {
    let dir = local::snapshot_dir(layout, &m.volume, &m.id);
    let mut files = vec![LocalFile {
        name: m.archive.clone(),
        sha256: Some(m.sha256.clone()),
    }];
    if dir.join(INDEX_NAME).is_file() {
        files.push(LocalFile {
            name: INDEX_NAME.into(),
            sha256: None,
        });
    }
    let pending = objects::pending_path(
        &layout.remotes_dir(),
        &remote.cfg.name,
        &format!("snapshot-{}-{}", m.volume, m.id),
    );
    let base = remote.snapshot_key(&m.volume, &m.id);
    let up = objects::upload_files(
        remote, sealer, &base, &dir, &files, listing, &pending, progress,
    )
    .await?;
    let manifest_object = format!("{MANIFEST_NAME}{}", sealer.suffix());
    let index = SnapIndex {
        format: 1,
        volume: m.volume.clone(),
        id: m.id.clone(),
        parent: m.parent.clone(),
        created_at: m.created_at,
        encryption: if sealer.suffix().is_empty() {
            "none".into()
        } else {
            "age".into()
        },
        manifest: manifest_object.clone(),
        objects: up.objects,
    };
    let mut index_bytes = serde_json::to_vec_pretty(&index)?;
    index_bytes.push(b'\n');
    put_bytes(remote, &base.clone().join(INDEX), index_bytes).await?;
    let manifest_path = dir.join(MANIFEST_NAME);
    let plain = std::fs::read(&manifest_path)
        .with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let sealed = sealer
        .seal_bytes(&plain)
        .context("cannot encrypt the manifest")?;
    let bytes = up.bytes + sealed.len() as u64;
    put_bytes(remote, &base.join(manifest_object.as_str()), sealed).await?;
    objects::done(&pending);
    Ok((up.reused, bytes))
}

/// Delete one remote snapshot: manifest first (incomplete from the first request on), index next, then the rest.
pub(crate) async fn delete(remote: &Remote, s: &RemoteSnapshot) -> anyhow::Result<()> {
    objects::delete_set(remote, &remote.snapshot_key(&s.volume, &s.id), &s.listing).await
}

/// The chain ending at `id` among the remote's usable snapshots of one volume, full snapshot first.
pub(crate) fn chain<'a>(
    there: &'a [RemoteSnapshot],
    id: &str,
) -> anyhow::Result<Vec<&'a RemoteSnapshot>> {
    let mut out = Vec::new();
    let mut cur = Some(id.to_string());
    while let Some(c) = cur {
        let Some(s) = there.iter().find(|s| s.id == c && s.usable()) else {
            bail!("remote snapshot {c} is missing or incomplete; the chain of {id} is broken");
        };
        if out.len() > there.len() {
            bail!("the remote chain of {id} loops");
        }
        out.push(s);
        cur = s.parent.clone();
    }
    out.reverse();
    Ok(out)
}

/// The newest usable remote snapshot whose whole chain is usable.
pub(crate) fn newest_restorable(there: &[RemoteSnapshot]) -> Option<&RemoteSnapshot> {
    there
        .iter()
        .rev()
        .filter(|s| s.usable())
        .find(|s| chain(there, &s.id).is_ok())
}

/// Fetch the chain ending at `id` into the volume's local snapshots (those already local are kept), every object checked against the index and the archive against its manifest. Returns the ids fetched.
pub(crate) async fn fetch_chain(
    remote: &Remote,
    opener: Arc<Opener>,
    layout: &Layout,
    there: &[RemoteSnapshot],
    id: &str,
    progress: Option<&ItemProgress>,
) -> anyhow::Result<Vec<String>> {
    let chain = chain(there, id)?;
    let mut fetched = Vec::new();
    for s in chain {
        if local::snapshot_dir(layout, &s.volume, &s.id).is_dir() {
            continue;
        }
        fetch_one(remote, opener.clone(), layout, s, progress).await?;
        fetched.push(s.id.clone());
    }
    Ok(fetched)
}

/// Download one snapshot into `<snapshots>/<volume>/.pull-<id>`, check it, rename it to `<id>`.
async fn fetch_one(
    remote: &Remote,
    opener: Arc<Opener>,
    layout: &Layout,
    s: &RemoteSnapshot,
    progress: Option<&ItemProgress>,
) -> anyhow::Result<()> {
    let index = s.index.as_ref().context("no index")?;
    let base = remote.snapshot_key(&s.volume, &s.id);
    let mkey = base.clone().join(index.manifest.as_str());
    let sealed = get_bytes(remote, &mkey).await?;
    let mut plain = Vec::new();
    opener
        .open(&sealed[..], &mut plain)
        .with_context(|| format!("{} cannot be decrypted", remote.url(&mkey)))?;
    let m: Manifest = serde_json::from_slice(&plain)
        .map_err(|e| anyhow::anyhow!("{} is not a valid manifest ({e})", remote.url(&mkey)))?;
    if m.id != s.id || m.volume != s.volume || !objects::plain_name(&m.archive) {
        bail!(
            "{} describes snapshot {}/{} ({}), not {}/{}; the remote snapshot cannot be trusted",
            remote.url(&mkey),
            m.volume,
            m.id,
            m.archive,
            s.volume,
            s.id
        );
    }
    let vol_dir = layout.volume_snapshots(&s.volume);
    durable::ensure_dir(&vol_dir, 0o700)
        .with_context(|| format!("cannot create {}", vol_dir.display()))?;
    let tmp = vol_dir.join(format!(".pull-{}", s.id));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove the leftover {}", tmp.display()))?;
    }
    std::fs::DirBuilder::new()
        .create(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = download_objects(remote, opener, &base, index, &m, &tmp, &plain, progress).await;
    let result = result.and_then(|()| {
        let dest = local::snapshot_dir(layout, &s.volume, &s.id);
        std::fs::rename(&tmp, &dest)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), dest.display()))?;
        durable::fsync_dir(&vol_dir).ok();
        Ok(())
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

#[allow(clippy::too_many_arguments)] // one snapshot's objects, its checks and where they go
async fn download_objects(
    remote: &Remote,
    opener: Arc<Opener>,
    base: &object_store::path::Path,
    index: &SnapIndex,
    m: &Manifest,
    tmp: &Path,
    manifest_bytes: &[u8],
    progress: Option<&ItemProgress>,
) -> anyhow::Result<()> {
    for o in &index.objects {
        if !objects::plain_name(&o.file)
            || !objects::plain_name(&o.object)
            || !(o.file == m.archive || o.file == INDEX_NAME)
        {
            bail!(
                "the index of remote snapshot {}/{} names {:?}, which is not part of a snapshot; it was tampered with",
                index.volume,
                index.id,
                o.file
            );
        }
        let key = base.clone().join(o.object.as_str());
        let got = download_file(
            remote,
            &key,
            &tmp.join(&o.file),
            opener.clone(),
            progress.map(|p| (p.clone(), format!("fetch {}", o.file))),
        )
        .await?;
        objects::check_stored(remote, &key, &got, o)?;
        if o.file == m.archive && got.plain_sha256 != m.sha256 {
            bail!(
                "{}: decrypted to sha256 {}, the manifest says {}; the object is damaged",
                remote.url(&key),
                got.plain_sha256,
                m.sha256
            );
        }
    }
    if !tmp.join(&m.archive).is_file() {
        bail!(
            "remote snapshot {}/{} has no archive object; it is damaged",
            index.volume,
            index.id
        );
    }
    durable::atomic_write(&tmp.join(MANIFEST_NAME), manifest_bytes, 0o600)
        .with_context(|| format!("cannot write the manifest into {}", tmp.display()))
}
