//! Filling a new volume from a template: another volume's data or a snapshot, owners and modes preserved, undone after a crash.
//!
//! A Create with `template=` first writes a journal (`<root>/state/filling/<name>.json`: where
//! the data goes, and which directory the Create made), then copies, then saves the record, then
//! deletes the journal. A journal without a record means the copy was interrupted: [`recover`]
//! (run by the next Create of that name and by the plugin at start) deletes what the copy
//! wrote — the directory the Create made, or the content of the empty directory it filled —
//! so a half copy never becomes a volume's data and the Create can simply be repeated.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::crashpoint::crash_point;
use crate::core::layout::{HostView, Layout};
use crate::core::names::VolumeName;
use crate::core::options::Template;
use crate::core::store::{DataLocation, Store};
use crate::fs::beneath::{Dir, Missing};
use crate::fs::durable;
use crate::pool::location::Locate;
use crate::snapshot::{catalog, restore};

/// Copy the template's content into `dest` (an empty, new directory, as a descriptor). The
/// source volume is opened without following symlinks, like every volume root.
pub(crate) fn fill(
    layout: &Layout,
    view: &HostView,
    template: &Template,
    dest_dir: &Dir,
) -> Result<(), String> {
    let dest = &dest_dir.proc_path();
    match template {
        Template::Volume { volume } => {
            let rec = Store::new(layout.clone())
                .load(volume)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no volume {volume} to copy from; accepted: an existing allspark volume or snapshot:<volume>@<id>"))?;
            let src = rec
                .data
                .open(layout, view, Missing::Refuse)
                .map_err(|e| format!("cannot open volume {volume}: {e}"))?
                .dir;
            crate::fs::copy::copy_tree(&src.proc_path(), dest)
                .map_err(|e| format!("cannot copy volume {volume}: {e}"))?;
        }
        Template::Snapshot { volume, id } => {
            // A read-only btrfs snapshot (of a volume in another pool, or not archived yet).
            let cow = crate::pool::cow::find_snapshot(layout, view, volume, id)
                .map_err(|e| e.to_string())?;
            if let (Some((_, ro)), Err(_)) = (cow, catalog::get(layout, volume, id)) {
                crate::fs::copy::copy_tree(&ro.proc_path(), dest)
                    .map_err(|e| format!("cannot copy {volume}@{id}: {e}"))?;
                return Ok(());
            }
            let all = catalog::list(layout, volume).map_err(|e| e.to_string())?;
            catalog::get(layout, volume, id).map_err(|e| e.to_string())?;
            let chain = catalog::chain(&all, id).map_err(|e| e.to_string())?;
            restore::extract_chain(layout, &chain, dest, None).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// A Create with `template=` under way.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    data: DataLocation,
    /// Relative to the data's anchor: the directory the Create made (`None`: it filled an
    /// existing empty directory).
    created: Option<PathBuf>,
}

fn journal_path(layout: &Layout, name: &VolumeName) -> PathBuf {
    layout.filling_dir().join(format!("{name}.json"))
}

/// Fill `dest_dir` from the template under a journal; `save` records the volume. The journal
/// goes once the record is saved; on an error what the fill wrote is removed again. The caller
/// holds the volume's record lock. `fail` turns a message into the caller's error.
pub(crate) fn fill_journaled<E>(
    layout: &Layout,
    view: &HostView,
    name: &VolumeName,
    template: &Template,
    target: (&DataLocation, Option<&Path>, &Dir),
    fail: impl Fn(String) -> E,
    save: impl FnOnce() -> Result<(), E>,
) -> Result<(), E> {
    let (data, created, dest_dir) = target;
    let journal = Journal {
        data: data.clone(),
        created: created.map(Path::to_path_buf),
    };
    let path = journal_path(layout, name);
    durable::ensure_dir(&layout.filling_dir(), 0o700)
        .and_then(|()| {
            let bytes = serde_json::to_vec(&journal).map_err(std::io::Error::other)?;
            durable::atomic_write(&path, &bytes, 0o600)
        })
        .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
    crash_point("template.journaled");
    let result = fill(layout, view, template, dest_dir)
        .map_err(&fail)
        .and_then(|()| {
            crash_point("template.filled");
            save()
        });
    if result.is_err() {
        if let Err(e) = undo(layout, view, name, &journal) {
            tracing::error!(volume = %name, error = %e, "cannot remove a failed template copy; the next Create of this name or the plugin's start tries again");
            return result;
        }
    }
    crash_point("template.recorded");
    durable::remove_durable(&path)
        .map_err(|e| fail(format!("cannot remove {}: {e}", path.display())))?;
    result
}

/// Undo an interrupted fill of volume `name`, if its journal is there and its record is not
/// (with a record, the fill completed: only the journal goes). The caller holds the volume's
/// record lock.
pub(crate) fn recover(layout: &Layout, view: &HostView, name: &VolumeName) -> Result<(), String> {
    let path = journal_path(layout, name);
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(());
    };
    let done = Store::new(layout.clone())
        .load(name)
        .map_err(|e| e.to_string())?
        .is_some();
    if !done {
        let journal: Journal = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is damaged: {e}; remove it by hand", path.display()))?;
        undo(layout, view, name, &journal)?;
    }
    durable::remove_durable(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))
}

fn undo(layout: &Layout, view: &HostView, name: &VolumeName, j: &Journal) -> Result<(), String> {
    if let Some(top) = &j.created {
        let dir = j.data.anchor_path(layout, view, top);
        tracing::warn!(volume = %name, path = %dir.display(), "a Create with template= was interrupted: the directory it made is removed");
        return match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("cannot remove {}: {e}", dir.display()))
            }
            _ => Ok(()),
        };
    }
    // An existing empty directory was being filled: empty it again, through its descriptor.
    let Ok(opened) = j.data.open(layout, view, Missing::Refuse) else {
        return Ok(());
    };
    tracing::warn!(volume = %name, path = %opened.dir.shown().display(), "a Create with template= was interrupted: the partial copy is removed from the directory");
    let base = opened.dir.proc_path();
    let entries = std::fs::read_dir(&base)
        .map_err(|e| format!("cannot read {}: {e}", opened.dir.shown().display()))?;
    for e in entries.flatten() {
        let p = base.join(e.file_name());
        let r = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
            _ => std::fs::remove_file(&p),
        };
        r.map_err(|err| format!("cannot remove {}: {err}", p.display()))?;
    }
    Ok(())
}

/// Names of the volumes with a fill journal (interrupted Creates, for the plugin's start).
pub(crate) fn interrupted(layout: &Layout) -> Vec<VolumeName> {
    let Ok(entries) = std::fs::read_dir(layout.filling_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| VolumeName::parse(n).ok())
        })
        .collect()
}
