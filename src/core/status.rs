//! The measured figures a volume's status shows, as cached on disk: usage (written by the agent or `allspark usage`) and the ids of its archive snapshots.

use std::fs;

use serde::{Deserialize, Serialize};

use crate::core::layout::Layout;
use crate::core::names::VolumeName;
use crate::core::snapshot_id::SnapshotId;

/// Usage figures measured by the agent (or `allspark usage`) and cached for the plugin.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageCache {
    pub bytes: u64,
    pub files: u64,
    pub measured_at: chrono::DateTime<chrono::Utc>,
}

/// Read a volume's cached usage, if any was measured.
pub fn cached_usage(layout: &Layout, name: &VolumeName) -> Option<UsageCache> {
    serde_json::from_slice(&fs::read(layout.usage(name)).ok()?).ok()
}

/// Snapshot ids of a volume, oldest first (complete snapshots only).
pub fn snapshot_ids(layout: &Layout, name: &VolumeName) -> Vec<SnapshotId> {
    let mut ids: Vec<SnapshotId> = fs::read_dir(layout.volume_snapshots(name))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| SnapshotId::parse(n).ok())
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Percentage of `size` used, when both are known.
pub fn percent(bytes: u64, capacity: Option<u64>) -> Option<f64> {
    capacity
        .filter(|c| *c > 0)
        .map(|c| (bytes as f64 * 1000.0 / c as f64).round() / 10.0)
}
