//! What a run takes: the volumes (by priority, `parent=` children inside a backed-up parent left out), the running containers, the volumes a dump stands for, and each dump's name (one namespace: duplicates refused).

use std::sync::Arc;

use anyhow::Context;
use bollard::Docker;

use crate::backup::{LabelFilter, LABEL_NAME};
use crate::core::names::VolumeName;
use crate::core::options::{BackupPriority, Class};
use crate::core::store::VolumeRecord;
use crate::docker::ContainerInfo;

/// The volumes a run of these settings backs up, in order (highest priority first, then by name).
///
/// A `parent=` child whose parent (or grand-parent …) is backed up is left
/// out: its data is inside the parent's archive already.
pub(crate) fn select_volumes(
    records: &[Arc<VolumeRecord>],
    include_temporary: bool,
) -> Vec<Arc<VolumeRecord>> {
    let wanted = |r: &VolumeRecord| {
        r.spec.backup != BackupPriority::None
            && (include_temporary || r.spec.class != Class::Temporary)
    };
    let by_name = |n: &str| records.iter().find(|r| r.name == n);
    let inside_a_backed_up_parent = |r: &VolumeRecord| {
        let mut cur = r.spec.parent.clone();
        let mut hops = 0;
        while let (Some(p), true) = (cur, hops < 64) {
            match by_name(&p) {
                Some(pr) if wanted(pr) => return true,
                Some(pr) => cur = pr.spec.parent.clone(),
                None => return false,
            }
            hops += 1;
        }
        false
    };
    let mut v: Vec<Arc<VolumeRecord>> = records
        .iter()
        .filter(|r| wanted(r))
        .filter(|r| {
            let skip = inside_a_backed_up_parent(r);
            if skip {
                tracing::debug!(volume = %r.name, "inside its parent's archive; not archived on its own");
            }
            !skip
        })
        .cloned()
        .collect();
    v.sort_by(|a, b| (a.spec.backup, &a.name).cmp(&(b.spec.backup, &b.name)));
    v
}

/// `name` and the `parent=` volumes inside it (children, grand-children …).
pub(crate) fn with_descendants(
    records: &[Arc<VolumeRecord>],
    name: &VolumeName,
) -> Vec<VolumeName> {
    let mut out = vec![name.clone()];
    let mut i = 0;
    while i < out.len() && out.len() < 10_000 {
        let cur = out[i].clone();
        for r in records {
            if r.spec.parent.as_ref() == Some(&cur) && !out.contains(&r.name) {
                out.push(r.name.clone());
            }
        }
        i += 1;
    }
    out
}

/// Running containers (only those with the filter label, if any).
pub(crate) async fn running_containers(
    docker: &Docker,
    filter: Option<&LabelFilter>,
) -> anyhow::Result<Vec<ContainerInfo>> {
    let mut filters = std::collections::HashMap::new();
    filters.insert("status".to_string(), vec!["running".to_string()]);
    if let Some(f) = filter {
        filters.insert("label".to_string(), vec![f.to_string()]);
    }
    let mut out = crate::docker::list(docker, false, filters)
        .await
        .context("cannot list the running containers")?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The selected volumes a dump stands for: volume -> (dump name, container id).
///
/// Every selected volume mounted by a container with a dump label (a volume
/// mounted by two such containers goes with the first, by name).
pub(crate) fn dump_coverage(
    selected: &[Arc<VolumeRecord>],
    dumped: &[&ContainerInfo],
) -> std::collections::BTreeMap<String, (String, String)> {
    let mut out = std::collections::BTreeMap::new();
    let mut by_name: Vec<&&ContainerInfo> = dumped.iter().collect();
    by_name.sort_by(|a, b| a.name.cmp(&b.name));
    for c in by_name {
        for v in &c.volumes {
            if selected.iter().any(|r| &r.name == v) && !out.contains_key(v) {
                out.insert(v.clone(), (dump_name(c), c.id.clone()));
            }
        }
    }
    out
}

/// The name a dump of container `c` gets: its `allspark.backup.name` label, else the container name.
pub(crate) fn dump_name(c: &ContainerInfo) -> String {
    c.labels
        .get(LABEL_NAME)
        .filter(|n| !n.is_empty())
        .cloned()
        .unwrap_or_else(|| c.name.clone())
}

/// Dump names taken by more than one container of a run: `(name, containers by name)`.
///
/// Dump names are one namespace: two containers with the same name (e.g. one
/// labelled `allspark.backup.name=<the other's name>`) would write one file,
/// and the first would take the other's slot. Such containers are all
/// refused, before any dump runs.
pub(crate) fn duplicate_dump_names(dumped: &[&ContainerInfo]) -> Vec<(String, Vec<String>)> {
    let mut by_name: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for c in dumped {
        by_name
            .entry(dump_name(c))
            .or_default()
            .push(c.name.clone());
    }
    by_name
        .into_iter()
        .filter(|(_, cs)| cs.len() > 1)
        .map(|(n, mut cs)| {
            cs.sort();
            (n, cs)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, labels: &[(&str, &str)]) -> ContainerInfo {
        ContainerInfo::fixture(name, labels)
    }

    #[test]
    fn duplicate_dump_names_are_found_naming_every_container() {
        let a = container("aaa-attacker", &[(LABEL_NAME, "victim")]);
        let v = container("victim", &[]);
        let other = container("other", &[(LABEL_NAME, "shop")]);
        let empty_label = container("plain", &[(LABEL_NAME, "")]);
        let all = [&v, &a, &other, &empty_label];
        assert_eq!(
            duplicate_dump_names(&all),
            vec![(
                "victim".to_string(),
                vec!["aaa-attacker".to_string(), "victim".to_string()]
            )]
        );
        assert!(duplicate_dump_names(&[&v, &other, &empty_label]).is_empty());
        let twin = container("twin", &[(LABEL_NAME, "shop")]);
        assert_eq!(
            duplicate_dump_names(&[&other, &twin])[0].1,
            vec!["other", "twin"]
        );
    }

    fn rec(name: &VolumeName, opts: &[(&str, &str)]) -> Arc<VolumeRecord> {
        Arc::new(VolumeRecord::managed(name, opts).unwrap())
    }

    #[test]
    fn selection_orders_by_priority_and_leaves_out_none_temporary_and_children() {
        let all = vec![
            rec(&VolumeName::fixed("redis-data"), &[("backup", "medium")]),
            rec(
                &VolumeName::fixed("postgres-data"),
                &[("backup", "highest")],
            ),
            rec(
                &VolumeName::fixed("log-data"),
                &[("backup", "low"), ("class", "temporary")],
            ),
            rec(&VolumeName::fixed("cache"), &[("backup", "none")]),
            rec(&VolumeName::fixed("builder-data"), &[("backup", "high")]),
            rec(
                &VolumeName::fixed("target-workspaces"),
                &[("backup", "medium")],
            ),
            rec(
                &VolumeName::fixed("project-1"),
                &[("parent", "target-workspaces"), ("backup", "high")],
            ),
            rec(&VolumeName::fixed("orphan-child"), &[("parent", "cache")]),
        ];
        let names =
            |v: Vec<Arc<VolumeRecord>>| v.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(select_volumes(&all, false)),
            vec![
                "postgres-data",
                "builder-data",
                "orphan-child",
                "redis-data",
                "target-workspaces"
            ]
        );
        assert!(names(select_volumes(&all, true)).contains(&VolumeName::fixed("log-data")));
        assert_eq!(
            with_descendants(&all, &VolumeName::fixed("target-workspaces")),
            vec!["target-workspaces", "project-1"]
        );
    }
}
