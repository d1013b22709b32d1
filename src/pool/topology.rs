//! Which volumes share a data directory (equal to it, inside it, or around it, by device and inode) and which of them are in use: asked before anything deletes, swaps or rewrites data.
//!
//! Volumes share trees: `parent=` children live inside their parent's data, two `device=`
//! volumes may name one directory, a `device=` may lie inside another. Names and recorded paths
//! are not trusted for this: every volume's data directory is opened without following
//! symlinks and compared by device and inode (walking `..` from the descriptor).

use std::path::{Path, PathBuf};

use crate::core::layout::{HostView, Layout};
use crate::core::names::VolumeName;
use crate::core::store::{Store, VolumeRecord};
use crate::fs::beneath::{Dir, DirId, Missing};
use crate::fs::durable::{FileLock, LockKind};
use crate::pool::location::Locate;

/// How another volume's data relates to the directory asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Relation {
    /// The same directory.
    Equal,
    /// Inside it (a child, or a `device=` below it).
    Inside,
    /// Around it (its parent, or a `device=` above it).
    Around,
}

impl Relation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Relation::Equal => "shares its directory",
            Relation::Inside => "lives inside it",
            Relation::Around => "contains it",
        }
    }
}

/// One volume of the family.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub name: VolumeName,
    pub relation: Relation,
    /// Mount references the plugin holds for it.
    pub mounts: u32,
}

/// Every volume sharing a directory's tree, and the live mounts found below the directory.
#[derive(Clone, Debug, Default)]
pub(crate) struct Family {
    pub members: Vec<Member>,
    /// Mount points (this process's view) inside the directory that no member explains.
    pub mounts_below: Vec<PathBuf>,
    /// Running containers using a member, by member name, when Docker was asked (see
    /// [`Family::name_users`]): refusals name them.
    pub users: std::collections::BTreeMap<String, Vec<String>>,
}

impl Family {
    /// Members (other than `except`) that are mounted.
    pub(crate) fn in_use<'a>(&'a self, except: &'a str) -> impl Iterator<Item = &'a Member> + 'a {
        self.members
            .iter()
            .filter(move |m| m.name != except && m.mounts > 0)
    }

    /// A refusal naming the first member in use (and what to do), if any is; `what` says
    /// what was refused, e.g. "restore volume ws".
    pub(crate) fn refusal(&self, except: &str, what: &str) -> Option<String> {
        if let Some(m) = self.in_use(except).next() {
            let who = match self.users.get(m.name.as_str()).filter(|u| !u.is_empty()) {
                Some(names) => format!("container {}", names.join(", ")),
                None => format!("{} container(s)", m.mounts),
            };
            return Some(format!(
                "cannot {what}: volume {} {} and is mounted by {who} (`docker ps --filter volume={}`); stop them first — nothing was changed",
                m.name,
                m.relation.as_str(),
                m.name
            ));
        }
        self.mounts_below.first().map(|p| {
            format!(
                "cannot {what}: {} is a live mount inside its data (another container or the host uses it); unmount it first — nothing was changed",
                p.display()
            )
        })
    }
}

/// Exclusive snapshot locks of every member but `except`: a Mount takes its volume's snapshot
/// lock shared, so while these are held no member can be mounted. Taken with a bounded wait
/// (two operations on overlapping families give up instead of waiting for each other).
pub(crate) fn lock_members(
    layout: &Layout,
    fam: &Family,
    except: &VolumeName,
    wait: std::time::Duration,
) -> Result<Vec<FileLock>, String> {
    let mut names: Vec<&VolumeName> = fam
        .members
        .iter()
        .map(|m| &m.name)
        .filter(|n| *n != except)
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut locks = Vec::with_capacity(names.len());
    for n in names {
        let p = layout.snapshot_lock(n);
        match FileLock::acquire_within(&p, LockKind::Exclusive, wait) {
            Ok(Some(l)) => locks.push(l),
            Ok(None) => {
                return Err(format!(
                    "volume {n} shares this data and is busy (a snapshot, restore or mount is in progress); try again shortly — nothing was changed"
                ))
            }
            Err(e) => return Err(format!("cannot take {}: {e}", p.display())),
        }
    }
    Ok(locks)
}

/// The family of the directory `dir` (opened by the caller through [`crate::fs::beneath`]).
/// `dir_path` is where this process sees it, for finding live mounts below it.
pub(crate) fn family(layout: &Layout, view: &HostView, dir: &Dir, dir_path: &Path) -> Family {
    let records = Store::new(layout.clone())
        .all()
        .map(|(ok, _)| ok)
        .unwrap_or_default();
    family_of(
        layout,
        view,
        dir,
        dir_path,
        records.iter().map(|r| r.as_ref()),
    )
}

fn family_of<'a>(
    layout: &Layout,
    view: &HostView,
    dir: &Dir,
    dir_path: &Path,
    records: impl Iterator<Item = &'a VolumeRecord>,
) -> Family {
    let mut fam = Family::default();
    let Ok(target) = dir.id() else {
        return fam;
    };
    for rec in records {
        let Ok(opened) = rec.data.open(layout, view, Missing::Refuse) else {
            continue;
        };
        let Some(relation) = relate(&opened.dir, target, dir) else {
            continue;
        };
        fam.members.push(Member {
            name: rec.name.clone(),
            relation,
            mounts: rec.mount_count(),
        });
    }
    fam.mounts_below = live_mounts_below(dir_path);
    fam
}

/// How the directory `other` relates to `target` (`dir`), if at all.
fn relate(other: &Dir, target: DirId, dir: &Dir) -> Option<Relation> {
    let id = other.id().ok()?;
    if id == target {
        return Some(Relation::Equal);
    }
    if other.is_within(target).unwrap_or(false) {
        return Some(Relation::Inside);
    }
    if dir.is_within(id).unwrap_or(false) {
        return Some(Relation::Around);
    }
    None
}

/// Mount points strictly below `dir` in this process's mount table.
fn live_mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    crate::fs::mountinfo::parse_mountinfo(&text)
        .into_iter()
        .filter(|p| p != dir && p.starts_with(dir))
        .collect()
}

impl Family {
    /// Fill in which running containers use the mounted members (other than `except`), so a
    /// refusal names them; without Docker the refusal keeps its `docker ps` hint.
    pub(crate) fn name_users(&mut self, docker_url: &str, except: &str) {
        let mounted: Vec<VolumeName> = self.in_use(except).map(|m| m.name.clone()).collect();
        for name in mounted {
            match crate::docker::running_users(docker_url, &name) {
                Ok(users) => {
                    self.users.insert(name.to_string(), users);
                }
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "cannot ask Docker which containers use {name}");
                    return;
                }
            }
        }
    }
}
