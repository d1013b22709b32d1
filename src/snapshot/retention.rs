//! Which automatic snapshots to keep (`keep=`), never breaking a chain a kept snapshot needs.

use std::collections::BTreeSet;

use chrono::Datelike;

use crate::core::layout::Layout;
use crate::core::names::VolumeName;
use crate::core::options::Keep;
use crate::fs::durable::{FileLock, LockKind};
use crate::snapshot::catalog;
use crate::snapshot::manifest::Manifest;
use crate::snapshot::SnapshotError;

/// What retention needs to know of a snapshot (an archive, or a read-only btrfs snapshot).
#[derive(Clone, Debug)]
pub(crate) struct Item {
    pub id: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The snapshot it is incremental to (kept with it).
    pub parent: Option<String>,
}

/// Maps a snapshot to its calendar bucket (day, ISO week, month).
type BucketFn = fn(&Item) -> String;

/// The ids to keep: the newest `last`, the newest of each of the last `daily` days,
/// `weekly` ISO weeks and `monthly` months that have snapshots, and every ancestor of those.
pub(crate) fn plan(all: &[Manifest], keep: &Keep) -> BTreeSet<String> {
    let items: Vec<Item> = all
        .iter()
        .map(|m| Item {
            id: m.id.clone(),
            created_at: m.created_at,
            parent: m.parent.clone(),
        })
        .collect();
    plan_items(&items, keep)
}

/// [`plan`] over any snapshots.
pub(crate) fn plan_items(all: &[Item], keep: &Keep) -> BTreeSet<String> {
    let mut newest_first: Vec<&Item> = all.iter().collect();
    newest_first.sort_by(|a, b| b.id.cmp(&a.id));
    let mut kept: BTreeSet<String> = newest_first
        .iter()
        .take(keep.last as usize)
        .map(|m| m.id.clone())
        .collect();
    let buckets: [(u32, BucketFn); 3] = [
        (keep.daily, |m| m.created_at.format("%Y-%m-%d").to_string()),
        (keep.weekly, |m| {
            let w = m.created_at.iso_week();
            format!("{}-W{}", w.year(), w.week())
        }),
        (keep.monthly, |m| m.created_at.format("%Y-%m").to_string()),
    ];
    for (count, bucket) in buckets {
        let mut seen = BTreeSet::new();
        for m in &newest_first {
            if seen.len() >= count as usize {
                break;
            }
            if seen.insert(bucket(m)) {
                kept.insert(m.id.clone());
            }
        }
    }
    // Every ancestor of a kept snapshot (a broken or looping chain keeps what it reaches).
    let mut closure = kept.clone();
    for id in &kept {
        let mut cur = all
            .iter()
            .find(|m| &m.id == id)
            .and_then(|m| m.parent.clone());
        let mut steps = 0;
        while let Some(p) = cur {
            if steps > all.len() || !closure.insert(p.clone()) {
                break;
            }
            steps += 1;
            cur = all
                .iter()
                .find(|m| m.id == p)
                .and_then(|m| m.parent.clone());
        }
    }
    closure
}

/// Delete the snapshots `plan` does not keep, newest first (children before parents). Returns the removed ids.
pub(crate) fn prune(
    layout: &Layout,
    volume: &VolumeName,
    keep: &Keep,
) -> Result<Vec<String>, SnapshotError> {
    let lock_path = layout.snapshot_lock(volume);
    let _lock = FileLock::acquire(&lock_path, LockKind::Exclusive)
        .map_err(|e| SnapshotError::io(format!("cannot take {}", lock_path.display()), e))?;
    let all = catalog::list(layout, volume)?;
    let kept = plan(&all, keep);
    let mut removed = Vec::new();
    for m in all.iter().rev() {
        if !kept.contains(&m.id) {
            catalog::remove_dir(layout, volume, &m.id)?;
            removed.push(m.id.clone());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::manifest::{Trigger, MANIFEST_FORMAT};
    use chrono::{TimeZone, Utc};

    fn m(id: &str, parent: Option<&str>, day: u32, hour: u32) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            id: id.into(),
            volume: crate::core::names::VolumeName::fixed("v"),
            parent: parent.map(str::to_string),
            trigger: Trigger::Unmount,
            created_at: Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0).unwrap(),
            archive: "a".into(),
            compression: crate::core::options::Compression::Zstd,
            files: 0,
            bytes_in: 0,
            bytes_stored: 0,
            sha256: String::new(),
            duration_ms: 0,
            deleted: vec![],
            skipped: 0,
            changed_during_walk: 0,
            event: None,
            driver: None,
        }
    }

    #[test]
    fn keeps_last_n_and_their_whole_chain() {
        let all = vec![
            m("a", None, 1, 1),
            m("b", Some("a"), 1, 2),
            m("c", Some("b"), 2, 1),
            m("d", None, 3, 1),
            m("e", Some("d"), 3, 2),
        ];
        let kept = plan(
            &all,
            &Keep {
                last: 1,
                daily: 0,
                weekly: 0,
                monthly: 0,
            },
        );
        assert_eq!(kept.into_iter().collect::<Vec<_>>(), ["d", "e"]);
        let kept = plan(
            &all,
            &Keep {
                last: 3,
                daily: 0,
                weekly: 0,
                monthly: 0,
            },
        );
        assert_eq!(
            kept.into_iter().collect::<Vec<_>>(),
            ["a", "b", "c", "d", "e"],
            "c needs b and a"
        );
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        let all = vec![
            m("a", None, 1, 1),
            m("b", None, 1, 2),
            m("c", None, 2, 1),
            m("d", None, 4, 1),
        ];
        let kept = plan(
            &all,
            &Keep {
                last: 0,
                daily: 2,
                weekly: 0,
                monthly: 0,
            },
        );
        assert_eq!(kept.into_iter().collect::<Vec<_>>(), ["c", "d"]);
        let kept = plan(
            &all,
            &Keep {
                last: 0,
                daily: 3,
                weekly: 0,
                monthly: 0,
            },
        );
        assert_eq!(
            kept.into_iter().collect::<Vec<_>>(),
            ["b", "c", "d"],
            "a missed day does not cost a kept day"
        );
    }
}
