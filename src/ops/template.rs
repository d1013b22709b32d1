//! Filling a new volume from a template: another volume's data or a snapshot, owners and modes preserved.

use crate::core::layout::{HostView, Layout};
use crate::core::options::Template;
use crate::core::store::Store;
use crate::fs::beneath::{Dir, Missing};
use crate::pool::location::Locate;
use crate::snapshot::{catalog, restore};

/// Copy the template's content into `dest` (an empty, new directory, as a descriptor). The
/// source volume is opened without following symlinks, like every volume root.
pub fn fill(
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
