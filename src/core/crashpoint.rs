//! Crash points: a test hook that aborts the process at a named step of a multi-step operation, and the list of every step per operation.
//!
//! `ALLSPARK_CRASH_AT=<step>` makes the process call `abort()` (no destructor, no cleanup: as
//! close to a power cut as a test can get without one) when it reaches [`crash_point`] with
//! that step. Nothing else reads the variable; it is a test hook, not a feature. Every step
//! is listed in [`OPERATIONS`], so the crash tests (`tests/hardening/shared_crash.rs`) iterate
//! over all of them and a new step cannot be forgotten: in debug builds calling
//! [`crash_point`] with an unlisted step panics, and a unit test below checks that every
//! call of `crash_point` with a literal step in the sources is listed.

/// `volume migrate`: the copy, its check, the journal in the record, the rename, the switch.
pub const MIGRATE: &[&str] = &[
    "migrate.copied",
    "migrate.verified",
    "migrate.journaled",
    "migrate.renamed",
    "migrate.switched",
];
/// `volume migrate --pool`: the copy into the other pool, its check, the record switched.
pub const TIER: &[&str] = &["tier.copied", "tier.verified", "tier.switched"];
/// `volume cleanup`: the old data deleted, the record not yet updated.
pub const CLEANUP: &[&str] = &["cleanup.deleted"];
/// Create with `template=`: the journal written, the copy made, the record saved.
pub const TEMPLATE: &[&str] = &["template.journaled", "template.filled", "template.recorded"];
/// `workspace prune` (and Remove, which it calls): snapshot, options kept, data to the trash, removed.
pub const PRUNE: &[&str] = &[
    "prune.snapshotted",
    "prune.options-kept",
    "remove.trashed",
    "prune.removed",
];
/// `backup restore` of volumes and dumps.
pub const BACKUP_RESTORE: &[&str] = &[
    "restore.staged",
    "restore.swapped",
    "restore.volumes-done",
    "restore.dump-journaled",
    "restore.dump-fed",
];
/// Pools (images, clones, read-only snapshots).
pub const POOL: &[&str] = &[
    "pool-image-sized",
    "pool-clone-made",
    "pool-create-recorded",
    "pool-entry-recorded",
    "pool-restore-made",
    "cow-snapshot-made",
];
/// A volume's own filesystem (`fs=`): its pool recorded at Create, unrecorded at Remove.
pub const OWN_FS: &[&str] = &["own-pool-recorded", "own-pool-unrecorded"];

/// Every operation with crash points, and its steps in order.
pub const OPERATIONS: &[(&str, &[&str])] = &[
    ("migrate", MIGRATE),
    ("tier", TIER),
    ("cleanup", CLEANUP),
    ("template", TEMPLATE),
    ("prune", PRUNE),
    ("backup-restore", BACKUP_RESTORE),
    ("pool", POOL),
    ("own-fs", OWN_FS),
];

/// Is `step` a listed crash point?
pub fn is_known(step: &str) -> bool {
    OPERATIONS.iter().any(|(_, steps)| steps.contains(&step))
}

/// Test hook: abort the process here when `ALLSPARK_CRASH_AT` names this step.
pub fn crash_point(step: &'static str) {
    debug_assert!(
        is_known(step),
        "crash point {step} is not listed in core::crashpoint::OPERATIONS"
    );
    if std::env::var("ALLSPARK_CRASH_AT").ok().as_deref() == Some(step) {
        eprintln!("ALLSPARK_CRASH_AT={step}: aborting on purpose");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every literal step given to `crash_point` in the sources is listed.
    #[test]
    fn every_crash_point_in_the_sources_is_listed() {
        let mut stack = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        let mut found = 0;
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                for piece in text.split("crash_point(\"").skip(1) {
                    let step = piece.split('"').next().unwrap();
                    assert!(
                        is_known(step),
                        "{}: crash point {step} is not listed",
                        p.display()
                    );
                    found += 1;
                }
            }
        }
        let listed: usize = OPERATIONS.iter().map(|(_, s)| s.len()).sum();
        assert!(found >= listed, "{found} calls for {listed} listed steps");
    }
}
