//! The `Status` a volume shows in `docker volume inspect` and `allspark volume inspect`.

use serde_json::{json, Map, Value};

use crate::core::layout::{HostView, Layout};
use crate::core::status::{cached_usage, percent, snapshot_ids};
use crate::core::store::{DataLocation, VolumeRecord};
use crate::pool::location::Locate;

/// The status map of one volume (host paths as the host sees them).
pub fn status(layout: &Layout, rec: &VolumeRecord) -> Map<String, Value> {
    status_in(layout, &Default::default(), rec)
}

/// [`status`] from a process that sees the host through `view` (the managed plugin).
pub fn status_in(layout: &Layout, view: &HostView, rec: &VolumeRecord) -> Map<String, Value> {
    let spec = &rec.spec;
    let mut m = Map::new();
    m.insert("options".into(), json!(rec.options));
    m.insert("class".into(), json!(spec.class));
    m.insert("backup".into(), json!(spec.backup));
    m.insert("snapshot".into(), json!(spec.snapshot));
    m.insert("offsite".into(), json!(spec.offsite()));
    m.insert("mounted".into(), json!(rec.mount_count()));
    if let Some(size) = spec.size {
        m.insert("size".into(), json!(size));
        let (enforced, how, _) = crate::pool::capacity::capacity(layout, view, rec);
        m.insert("size_enforced".into(), json!(enforced));
        m.insert("size_enforcement".into(), json!(how));
    }
    m.insert(
        "pool".into(),
        json!(rec.data.pool().unwrap_or(crate::pool::DEFAULT_POOL)),
    );
    match &rec.data {
        DataLocation::Host { path } => m.insert("device".into(), json!(path)),
        DataLocation::Managed { .. } | DataLocation::Pool { .. } => m.insert(
            "data".into(),
            json!(rec.data.local_path(layout, &Default::default())),
        ),
    };
    if let Some(parent) = &spec.parent {
        m.insert("parent".into(), json!(parent));
    }
    if let Some(u) = cached_usage(layout, &rec.name) {
        m.insert("used_bytes".into(), json!(u.bytes));
        m.insert("files".into(), json!(u.files));
        m.insert("measured_at".into(), json!(u.measured_at.to_rfc3339()));
        if let Some(p) = percent(u.bytes, spec.size) {
            m.insert("used_percent".into(), json!(p));
        }
    }
    let ids = crate::pool::cow::all_ids(layout, view, rec, snapshot_ids(layout, &rec.name));
    m.insert("snapshots".into(), json!(ids.len()));
    if let Some(last) = ids.last() {
        m.insert("last_snapshot".into(), json!(last));
    }
    if let Some(t) = rec.last_unmounted_at {
        m.insert("last_used_at".into(), json!(t.to_rfc3339()));
    }
    m
}
