//! Workspace cleanup: temporary volumes and unused project workspaces older than an age are snapshotted, then removed.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::context::Ctx;
use crate::core::crashpoint::crash_point;
use crate::core::names::VolumeName;
use crate::core::options::Class;
use crate::core::store::{Store, VolumeRecord};
use crate::ops::snapshot as snapshot_ops;
use crate::plugin::driver::Driver;
use crate::pool::location::Locate;
use crate::snapshot::{CreateOutcome, Trigger};

/// Parse an age like `30d`, `12h`, `2w`, `90m`.
pub(crate) fn parse_age(s: &str) -> Result<Duration, String> {
    const ACCEPTED: &str = "an age like 30d, 12h, 2w or 90m";
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid age {s:?}: {ACCEPTED}"))?;
    let secs = match unit {
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("invalid age {s:?}: {ACCEPTED}")),
    };
    Ok(Duration::from_secs(n * secs))
}

/// Is this volume a cleanup candidate: temporary, or a project workspace (a `parent=` child)?
pub(crate) fn is_candidate_kind(r: &VolumeRecord) -> bool {
    r.spec.class == Class::Temporary || r.spec.parent.is_some()
}

/// When the volume itself was last in use (its last unmount, else its creation).
pub(crate) fn last_used(r: &VolumeRecord) -> DateTime<Utc> {
    r.last_unmounted_at
        .or(r.last_mounted_at)
        .unwrap_or(r.created_at)
}

/// The volume and its ancestors (`parent=` chain), nearest first. A project workspace is used
/// through its parent's mount too (the builder works in it), so they count as its uses.
fn lineage<'a>(
    records: &'a [std::sync::Arc<VolumeRecord>],
    r: &'a VolumeRecord,
) -> Vec<&'a VolumeRecord> {
    let mut out = vec![r];
    let mut cur = r;
    while let Some(p) = cur.spec.parent.as_deref() {
        match records.iter().find(|x| x.name == p) {
            Some(parent) if !out.iter().any(|o| o.name == parent.name) => {
                out.push(parent);
                cur = parent;
            }
            _ => break,
        }
    }
    out
}

/// Is the volume in use now: mounted itself, or through a mounted ancestor?
pub(crate) fn in_use(records: &[std::sync::Arc<VolumeRecord>], r: &VolumeRecord) -> bool {
    lineage(records, r).iter().any(|x| x.mount_count() > 0)
}

/// When the volume was last in use, through itself or an ancestor.
pub(crate) fn last_used_in_family(
    records: &[std::sync::Arc<VolumeRecord>],
    r: &VolumeRecord,
) -> DateTime<Utc> {
    lineage(records, r)
        .iter()
        .map(|x| last_used(x))
        .max()
        .unwrap_or(r.created_at)
}

/// The volumes `prune` would remove now: candidates not in use (neither mounted nor under a
/// mounted ancestor), unused for longer than `age`.
pub(crate) fn plan(
    records: &[std::sync::Arc<VolumeRecord>],
    age: Duration,
    now: DateTime<Utc>,
) -> Vec<VolumeName> {
    let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
    let mut names: Vec<VolumeName> = records
        .iter()
        .filter(|r| {
            is_candidate_kind(r)
                && !in_use(records, r)
                && now - last_used_in_family(records, r) > age
        })
        .map(|r| r.name.clone())
        .collect();
    // Children before parents, so a parent whose children all go can go too.
    names.sort_by_key(|n| {
        std::cmp::Reverse(
            records
                .iter()
                .find(|r| &r.name == n)
                .and_then(|r| r.spec.parent.clone())
                .is_some(),
        )
    });
    names
}

/// Snapshot then remove every planned volume (re-checking under its lock that it is still unused).
/// Removal goes through Docker when it knows the volume, so `docker volume ls` shows no ghost.
pub(crate) fn prune(
    ctx: &Ctx,
    driver: &Driver,
    age: Duration,
    dry_run: bool,
) -> anyhow::Result<Vec<(VolumeName, String)>> {
    let store = Store::new(ctx.layout.clone());
    // A prune killed between moving a volume's data to the trash and deleting its record:
    // the data goes back first, so this run judges (and snapshots) the real content.
    driver.put_back_interrupted_removals();
    let (records, _) = store.all()?;
    let planned = plan(&records, age, Utc::now());
    let mut done = Vec::new();
    // Candidates old enough but in use are kept, saying which volume and container use them.
    let max_age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
    for r in records.iter().filter(|r| {
        is_candidate_kind(r)
            && in_use(&records, r)
            && Utc::now() - last_used_in_family(&records, r) > max_age
    }) {
        done.push((r.name.clone(), format!("kept: {}", busy_reason(ctx, r))));
    }
    for name in planned {
        if let Some(why) = records
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| shared_in_use(ctx, r))
        {
            done.push((name, format!("kept: {why}")));
            continue;
        }
        if dry_run {
            done.push((name, "would be snapshotted and removed".to_string()));
            continue;
        }
        let id = match snapshot_ops::take(ctx, &name, Trigger::Manual, None, false, None)
            .with_context(|| format!("cannot snapshot {name}; it was not removed"))?
        {
            CreateOutcome::Created(m) | CreateOutcome::AlreadyDone(m) => m.id,
            // Read-only snapshots go with the volume: write its archive first.
            CreateOutcome::Cow(c) => {
                crate::pool::archive::catch_up(ctx, &name, true).with_context(|| {
                    format!("cannot archive the snapshot of {name}; it was not removed")
                })?;
                c.id
            }
            CreateOutcome::Skipped(why) => {
                done.push((name, format!("kept: {why}")));
                continue;
            }
        };
        crash_point("prune.snapshotted");
        let (now_records, _) = store.all()?;
        let still_unused = now_records
            .iter()
            .find(|r| r.name == name)
            .is_some_and(|r| !in_use(&now_records, r));
        if !still_unused {
            done.push((name, format!("kept: in use again (snapshot {id} taken)")));
            continue;
        }
        if let Some(rec) = now_records.iter().find(|r| r.name == name) {
            snapshot_ops::save_removed_options(&ctx.layout, rec).with_context(|| {
                format!("cannot keep the options of {name}; it was not removed")
            })?;
        }
        crash_point("prune.options-kept");
        crate::ops::docker_volumes::remove(ctx, driver, &name)?;
        crash_point("prune.removed");
        done.push((name.clone(), format!("removed (snapshot {id} kept; restore with `allspark snapshot restore {name} {id} --into {name}`)")));
    }
    Ok(done)
}

/// Why a candidate in use (itself, or through a mounted ancestor) is kept, naming the volume
/// and its containers.
fn busy_reason(ctx: &Ctx, r: &VolumeRecord) -> String {
    if r.mount_count() > 0 {
        let users = crate::docker::running_users(&ctx.docker_url, &r.name)
            .ok()
            .filter(|u| !u.is_empty());
        return match users {
            Some(u) => format!("volume {} is mounted by container {}", r.name, u.join(", ")),
            None => format!(
                "volume {} is mounted by {} container(s)",
                r.name,
                r.mount_count()
            ),
        };
    }
    shared_in_use(ctx, r).unwrap_or_else(|| "a volume around it is in use".to_string())
}

/// The refusal when another volume sharing this one's tree (a parent around it, a volume on
/// the same `device=`, one inside it) is mounted.
fn shared_in_use(ctx: &Ctx, r: &VolumeRecord) -> Option<String> {
    let opened = r
        .data
        .open(&ctx.layout, &ctx.view, crate::fs::beneath::Missing::Refuse)
        .ok()?;
    let shown = r.data.local_path(&ctx.layout, &ctx.view);
    let mut fam = crate::pool::topology::family(&ctx.layout, &ctx.view, &opened.dir, &shown);
    fam.name_users(&ctx.docker_url, &r.name);
    fam.refusal(&r.name, &format!("prune volume {}", r.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(parse_age("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse_age("2w").unwrap(), Duration::from_secs(14 * 86_400));
        assert!(parse_age("30").is_err());
        assert!(parse_age("d").is_err());
    }
}
