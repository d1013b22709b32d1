//! Filling a new volume from a template: another volume's data or a snapshot, owners and modes preserved.

use std::path::Path;

use crate::core::layout::{HostView, Layout};
use crate::core::options::Template;
use crate::core::store::Store;
use crate::snapshot::{catalog, restore};

/// Copy the template's content into `dest` (an empty, new directory).
pub fn fill(
    layout: &Layout,
    view: &HostView,
    template: &Template,
    dest: &Path,
) -> Result<(), String> {
    match template {
        Template::Volume { volume } => {
            let rec = Store::new(layout.clone())
                .load(volume)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no volume {volume} to copy from; accepted: an existing allspark volume or snapshot:<volume>@<id>"))?;
            let src = rec.data.local_path(layout, view);
            crate::fs::copy::copy_tree(&src, dest)
                .map_err(|e| format!("cannot copy volume {volume}: {e}"))?;
        }
        Template::Snapshot { volume, id } => {
            let all = catalog::list(layout, volume).map_err(|e| e.to_string())?;
            catalog::get(layout, volume, id).map_err(|e| e.to_string())?;
            let chain = catalog::chain(&all, id).map_err(|e| e.to_string())?;
            restore::check_checksums(layout, &chain).map_err(|e| e.to_string())?;
            restore::extract_chain(layout, &chain, dest, None).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
