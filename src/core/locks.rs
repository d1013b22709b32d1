//! Lock files under `<root>/locks`: deleting those of removed volumes (at Remove, and in a sweep) without ever breaking a live lock.
//!
//! Each volume has a record lock `<name>.lock` and a snapshot lock
//! `<name>.snap`. They used to stay forever after the volume was removed.
//! `flock` locks an inode, so deleting a lock file someone may be about to
//! lock is only safe with the protocol of [`FileLock`]: a lock file is
//! unlinked only by a holder of its exclusive lock, and every acquisition
//! checks after locking that the path still names the locked inode (else it
//! starts again on the new file). On top of that, the files of a volume are
//! only deleted while its record lock is held and its record is absent, so
//! no Create of the same name runs in between:
//!
//! * Remove deletes them right after the record, still holding the record
//!   lock ([`release_removed`]); a snapshot lock someone holds is left;
//! * [`sweep`] (the agent, every usage interval) deletes what is left: for
//!   each name without a record, it takes the record lock without waiting,
//!   checks again that there is no record, takes the snapshot lock without
//!   waiting, and unlinks; anything busy waits for the next sweep.

use std::fs;
use std::path::PathBuf;

use crate::core::layout::Layout;
use crate::core::names::VolumeName;
use crate::fs::durable::{FileLock, LockKind};

/// What a sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SweepReport {
    /// Lock files deleted.
    pub removed: Vec<PathBuf>,
    /// Lock files of removed volumes left because someone holds them.
    pub busy: Vec<PathBuf>,
}

/// The volume a lock file belongs to: `<name>.lock` or `<name>.snap`.
fn owner(file: &str) -> Option<VolumeName> {
    let name = file
        .strip_suffix(".lock")
        .or_else(|| file.strip_suffix(".snap"))?;
    VolumeName::parse(name).ok()
}

/// After Remove deleted `name`'s record, holding `record_lock`: delete its snapshot lock
/// (unless held) and its record lock, and release the latter.
pub(crate) fn release_removed(
    layout: &Layout,
    name: &VolumeName,
    record_lock: FileLock,
) -> SweepReport {
    let mut report = SweepReport::default();
    let snap = layout.snapshot_lock(name);
    if snap.exists() {
        match FileLock::try_acquire(&snap, LockKind::Exclusive) {
            Ok(Some(l)) => match l.unlink(&snap) {
                Ok(()) => report.removed.push(snap),
                Err(e) => {
                    tracing::warn!(path = %snap.display(), %e, "cannot delete a removed volume's lock file")
                }
            },
            Ok(None) => report.busy.push(snap),
            Err(e) => {
                tracing::warn!(path = %snap.display(), %e, "cannot lock a removed volume's lock file")
            }
        }
    }
    let rec = layout.record_lock(name);
    match record_lock.unlink(&rec) {
        Ok(()) => report.removed.push(rec),
        Err(e) => {
            tracing::warn!(path = %rec.display(), %e, "cannot delete a removed volume's lock file")
        }
    }
    report
}

/// Delete the lock files of volumes that have no record, skipping any that someone holds.
pub(crate) fn sweep(layout: &Layout) -> std::io::Result<SweepReport> {
    let mut report = SweepReport::default();
    let mut owners: Vec<VolumeName> = Vec::new();
    for e in fs::read_dir(layout.locks_dir())?.flatten() {
        let file = e.file_name();
        let Some(name) = file.to_str().and_then(owner) else {
            continue;
        };
        if !owners.contains(&name) {
            owners.push(name);
        }
    }
    owners.sort();
    for name in owners {
        if layout.record(&name).exists() {
            continue;
        }
        let rec_path = layout.record_lock(&name);
        let Some(rec_lock) = FileLock::try_acquire(&rec_path, LockKind::Exclusive)? else {
            report.busy.push(rec_path);
            continue;
        };
        // Under the record lock: a Create of this name cannot be half-way.
        if layout.record(&name).exists() {
            continue;
        }
        let r = release_removed(layout, &name, rec_lock);
        report.removed.extend(r.removed);
        report.busy.extend(r.busy);
    }
    if !report.removed.is_empty() {
        tracing::info!(
            files = report.removed.len(),
            "lock files of removed volumes deleted"
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    fn root() -> (tempfile::TempDir, Layout) {
        let d = tempfile::tempdir().unwrap();
        let layout = Layout::new(d.path());
        layout.ensure().unwrap();
        (d, layout)
    }

    fn touch(p: &std::path::Path) {
        fs::write(p, b"").unwrap();
    }

    fn names_in(layout: &Layout) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(layout.locks_dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn sweep_deletes_only_the_locks_of_volumes_without_a_record() {
        let (_d, layout) = root();
        touch(&layout.record(&VolumeName::fixed("alive")));
        for n in ["alive", "gone", "gone2"] {
            touch(&layout.record_lock(&VolumeName::fixed(n)));
            touch(&layout.snapshot_lock(&VolumeName::fixed(n)));
        }
        touch(&layout.locks_dir().join("not-a-lock.txt"));
        let r = sweep(&layout).unwrap();
        assert_eq!(r.removed.len(), 4, "{r:?}");
        assert!(r.busy.is_empty());
        assert_eq!(
            names_in(&layout),
            ["alive.lock", "alive.snap", "not-a-lock.txt"]
        );
        // Idempotent.
        assert_eq!(sweep(&layout).unwrap(), SweepReport::default());
    }

    #[test]
    fn a_held_lock_is_never_deleted_and_goes_at_a_later_sweep() {
        let (_d, layout) = root();
        let held = FileLock::acquire(
            &layout.snapshot_lock(&VolumeName::fixed("gone")),
            LockKind::Shared,
        )
        .unwrap();
        let rec_held = FileLock::acquire(
            &layout.record_lock(&VolumeName::fixed("other")),
            LockKind::Exclusive,
        )
        .unwrap();
        let r = sweep(&layout).unwrap();
        assert_eq!(
            r.busy,
            vec![
                layout.snapshot_lock(&VolumeName::fixed("gone")),
                layout.record_lock(&VolumeName::fixed("other"))
            ]
        );
        assert_eq!(names_in(&layout), ["gone.snap", "other.lock"]);
        drop(held);
        drop(rec_held);
        let r = sweep(&layout).unwrap();
        assert!(r.busy.is_empty(), "{r:?}");
        assert!(names_in(&layout).is_empty());
    }

    #[test]
    fn a_record_created_meanwhile_keeps_its_locks() {
        let (_d, layout) = root();
        touch(&layout.record_lock(&VolumeName::fixed("late")));
        // A Create holds the record lock and writes the record before the sweep gets the lock.
        let create = FileLock::acquire(
            &layout.record_lock(&VolumeName::fixed("late")),
            LockKind::Exclusive,
        )
        .unwrap();
        touch(&layout.record(&VolumeName::fixed("late")));
        drop(create);
        let r = sweep(&layout).unwrap();
        assert!(r.removed.is_empty());
        assert_eq!(names_in(&layout), ["late.lock"]);
    }

    /// A locker that waited on a file while it was unlinked ends up holding the file
    /// now at the path, so it excludes everyone who locks that path afterwards.
    #[test]
    fn a_waiter_on_an_unlinked_lock_file_relocks_the_new_one() {
        let (_d, layout) = root();
        let path = layout.record_lock(&VolumeName::fixed("v"));
        let remover = FileLock::acquire(&path, LockKind::Exclusive).unwrap();
        let got = Arc::new(AtomicBool::new(false));
        let (p2, g2) = (path.clone(), got.clone());
        let waiter = std::thread::spawn(move || {
            let l = FileLock::acquire(&p2, LockKind::Exclusive).unwrap();
            g2.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            drop(l);
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!got.load(Ordering::SeqCst));
        remover.unlink(&path).unwrap();
        while !got.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        // The waiter holds the lock of the file at `path` (re-created), not of the unlinked one.
        assert!(path.exists());
        assert!(FileLock::try_acquire(&path, LockKind::Exclusive)
            .unwrap()
            .is_none());
        waiter.join().unwrap();
        assert!(FileLock::try_acquire(&path, LockKind::Exclusive)
            .unwrap()
            .is_some());
    }
}
