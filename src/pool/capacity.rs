//! Whether a volume's `size=` is enforced, and how: the volume's own filesystem (`fs=`), a btrfs qgroup limit on a pool subvolume, or the reason it cannot be (shown by `docker volume inspect`, `usage` and `pool usage`).

use crate::core::layout::{HostView, Layout};
use crate::core::store::{DataLocation, VolumeRecord};
use crate::fs::beneath::Missing;
use crate::pool::location::open;
use crate::pool::{btrfs, find};

/// How `size=` is enforced for a volume: `(enforced, how, qgroup figures)`.
pub(crate) fn capacity(
    layout: &Layout,
    view: &HostView,
    rec: &VolumeRecord,
) -> (bool, String, Option<btrfs::Qgroup>) {
    let why_not = match &rec.data {
        DataLocation::Pool {
            pool,
            volume,
            subdir: None,
        } => match find(layout, pool) {
            Ok(p) if p.cow() => {
                let q = open(layout, view, pool, volume, None, Missing::Refuse)
                    .ok()
                    .and_then(|o| btrfs::qgroup(&o.dir).ok().flatten());
                if let (Some(fs), Some(size)) = (rec.spec.fs, rec.spec.size) {
                    return (
                        true,
                        format!("its own {fs} filesystem of {size} bytes (fs=; writes past it fail with ENOSPC)"),
                        q,
                    );
                }
                return match q.and_then(|q| q.limit) {
                    Some(l) => (
                        true,
                        format!(
                            "btrfs qgroup limit of {l} bytes (writes past it fail with EDQUOT)"
                        ),
                        q,
                    ),
                    None => (
                        false,
                        "no btrfs qgroup limit is set on the subvolume".into(),
                        q,
                    ),
                };
            }
            Ok(_) => "a dir pool cannot enforce it (use fs=btrfs)",
            Err(_) => "its pool is not configured",
        },
        DataLocation::Pool { .. } => "a parent= child shares its parent's space",
        DataLocation::Managed { .. } => {
            "the default pool cannot enforce it (use fs=btrfs, or pool= on a btrfs pool)"
        }
        DataLocation::Host { .. } => "a device= directory cannot be limited",
    };
    (false, format!("not enforced: {why_not}"), None)
}
