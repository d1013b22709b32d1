//! The backups on a remote: one listing of `<prefix>/backups/`, grouped by type and name, with each backup's plaintext `index.json`.
//!
//! `index.json` (stable fields): `format` (1), `type`, `name`, `timestamp`,
//! `outcome` (of the local run), `encryption` (`age` or `none`), `manifest`
//! (the manifest's object name) and `objects`: `[{file, object, size,
//! sha256, etag, plain_size}]`, where `size`, `sha256` and `etag` describe the
//! object as stored (encrypted), so sizes and checksums can be checked
//! without downloading or decrypting anything. It holds no secret.

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use futures_util::StreamExt;
use object_store::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::client::Remote;
use super::transfer::{bare_etag, get_bytes};
use crate::backup::{parse_dir_name, BackupType};

/// Name of the plaintext index object of a remote backup.
pub(crate) const INDEX: &str = "index.json";

/// One object of a remote backup, as recorded at upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IndexObject {
    /// The file's name in the local backup directory (`app-data.tar.gz`).
    pub file: String,
    /// The object's name inside the backup's prefix (`app-data.tar.gz.age`).
    pub object: String,
    pub size: u64,
    pub sha256: String,
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub plain_size: u64,
}

/// `index.json` of a remote backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Index {
    pub format: u32,
    #[serde(rename = "type")]
    pub kind: BackupType,
    pub name: String,
    pub timestamp: String,
    pub outcome: String,
    pub encryption: String,
    /// The manifest's object name (`manifest.json.age`).
    pub manifest: String,
    pub objects: Vec<IndexObject>,
}

/// One backup on the remote.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RemoteBackup {
    #[serde(rename = "type")]
    pub kind: BackupType,
    pub name: String,
    #[serde(skip)]
    pub stamp: NaiveDateTime,
    /// Its manifest was uploaded (the last object of a push).
    pub complete: bool,
    /// `ok`, `failed`, `unknown` from the index; `incomplete`; `unreadable` (broken index).
    pub outcome: String,
    /// Bytes of all its objects.
    pub size: u64,
    pub objects: usize,
    #[serde(skip)]
    pub index: Option<Index>,
    #[serde(skip)]
    pub listing: BTreeMap<String, ObjectMeta>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RemoteBackup {
    pub(crate) fn is_ok(&self) -> bool {
        self.complete && self.index.is_some() && self.outcome == "ok"
    }
    /// `daily/20240131_020003`.
    pub(crate) fn id(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// The manifest's object name for an encryption suffix.
pub(crate) fn manifest_object(suffix: &str) -> String {
    format!("{}{suffix}", crate::backup::manifest::MANIFEST)
}

/// List every backup on the remote (incomplete ones too), oldest first within a type; indexes of complete backups are read.
pub(crate) async fn list(remote: &Remote) -> anyhow::Result<Vec<RemoteBackup>> {
    let base = remote.backups_key();
    let what = format!("listing {}", remote.url(&base));
    let mut groups: BTreeMap<(BackupType, String), BTreeMap<String, ObjectMeta>> = BTreeMap::new();
    let mut stream = remote.store.list(Some(&base));
    while let Some(item) = stream.next().await {
        let meta = item.map_err(|e| remote.explain(&what, e))?;
        let Some(rest) = meta.location.prefix_match(&base) else {
            continue;
        };
        let parts: Vec<String> = rest.map(|p| p.as_ref().to_string()).collect();
        let [kind, name, object] = parts.as_slice() else {
            continue;
        };
        let Ok(kind) = kind.parse::<BackupType>() else {
            continue;
        };
        if parse_dir_name(name).is_none() {
            continue;
        }
        groups
            .entry((kind, name.clone()))
            .or_default()
            .insert(object.clone(), meta);
    }
    let mut out = Vec::new();
    for ((kind, name), listing) in groups {
        let stamp = parse_dir_name(&name).expect("checked above");
        let mut b = RemoteBackup {
            kind,
            name: name.clone(),
            stamp,
            complete: false,
            outcome: "incomplete".into(),
            size: listing.values().map(|m| m.size).sum(),
            objects: listing.len(),
            index: None,
            listing,
            error: None,
        };
        let has_manifest = b
            .listing
            .keys()
            .any(|k| k == &manifest_object("") || k == &manifest_object(".age"));
        if has_manifest {
            b.complete = true;
            match read_index(remote, kind, &name).await {
                Ok(i) => {
                    b.outcome = i.outcome.clone();
                    b.index = Some(i);
                }
                Err(e) => {
                    b.outcome = "unreadable".into();
                    b.error = Some(format!("{e:#}"));
                }
            }
        }
        out.push(b);
    }
    Ok(out)
}

/// Read and parse a backup's `index.json`.
pub(crate) async fn read_index(
    remote: &Remote,
    kind: BackupType,
    name: &str,
) -> anyhow::Result<Index> {
    let key = remote.object_key(kind, name, INDEX);
    let bytes = get_bytes(remote, &key).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a valid index ({e}); this remote backup cannot be trusted, use another one",
            remote.url(&key)
        )
    })
}

/// Compare the listing of a backup with its index: every object present, same size and ETag.
/// Returns one sentence per problem, naming the object.
pub(crate) fn check_listing(remote: &Remote, b: &RemoteBackup) -> Vec<String> {
    let Some(index) = &b.index else {
        return vec![format!(
            "{}: {}",
            b.id(),
            b.error
                .clone()
                .unwrap_or_else(|| "incomplete (no manifest): an upload was interrupted; `allspark remote push` resumes it".into())
        )];
    };
    check_objects(
        remote,
        |o| remote.object_key(b.kind, &b.name, o),
        &b.listing,
        &index.objects,
        &index.manifest,
        &format!("the backup {}", b.id()),
    )
}

/// Compare a listing with the objects an index records and its manifest object: every one
/// present, with the size and ETag recorded at upload. `key` makes an object's key, `what`
/// names the set ("the backup daily/…"). One sentence per problem, naming the object.
pub(crate) fn check_objects(
    remote: &Remote,
    key: impl Fn(&str) -> object_store::path::Path,
    listing: &BTreeMap<String, ObjectMeta>,
    objects: &[IndexObject],
    manifest: &str,
    what: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    for o in objects {
        let url = remote.url(&key(&o.object));
        match listing.get(&o.object) {
            None => problems.push(format!("{url} is missing; {what} is damaged, use another one")),
            Some(m) if m.size != o.size => problems.push(format!(
                "{url}: {} bytes, the index says {}; the object is damaged (truncated or replaced), {what} cannot be used",
                m.size, o.size
            )),
            Some(m) => {
                if let (Some(have), Some(want)) = (m.e_tag.as_deref().map(bare_etag), &o.etag) {
                    if &have != want {
                        problems.push(format!(
                            "{url}: ETag {have} differs from the one recorded at upload ({want}); the object was changed or damaged, {what} cannot be used"
                        ));
                    }
                }
            }
        }
    }
    if !listing.contains_key(manifest) {
        problems.push(format!("{} is missing", remote.url(&key(manifest))));
    }
    problems
}
