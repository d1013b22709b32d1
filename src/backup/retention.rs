//! Backup retention by age: a pure plan ([`plan`]) and the thin wrapper that deletes ([`prune`]).
//!
//! Rules, per type:
//!
//! * a daily, weekly or monthly backup whose date (from its directory name,
//!   local time) is `keep` days or more before today is removed (daily 7,
//!   weekly 30, monthly 365 by default): calendar days, never a count of runs,
//!   so missed days never make older backups go sooner;
//! * an hourly backup (dumps only) is removed once it is `keep` hours old or
//!   more (48 by default), by elapsed time;
//! * the newest complete backup with outcome `ok` of each type is never
//!   removed (when a type has none, its newest backup with a manifest is kept);
//! * a directory without a manifest (interrupted, or a run still going) is
//!   removed only when it is more than a day old;
//! * names that are not `YYYYmmdd_HHMMSS` are never touched.
//!
//! A directory is first renamed to a hidden `.deleting-<name>` and then
//! deleted, so a half-deleted backup never looks like a backup.

use std::fs;
use std::path::PathBuf;

use chrono::{Duration, NaiveDateTime};
use serde::Serialize;

use super::catalog;
use super::{BackupType, Keep, Settings, Window};

/// What retention needs to know of a backup directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub kind: BackupType,
    pub name: String,
    pub stamp: NaiveDateTime,
    pub state: State,
}

/// Completeness of a backup directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Manifest with outcome `ok`.
    Ok,
    /// Manifest, but the run failed (or the outcome is unknown or unreadable).
    Failed,
    /// No manifest.
    Incomplete,
}

/// The verdict on one backup directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Decision {
    #[serde(rename = "type")]
    pub kind: BackupType,
    pub name: String,
    pub delete: bool,
    pub reason: String,
}

/// Decide, for every candidate, whether it goes. Pure: `now` is local time.
pub(crate) fn plan(cands: &[Candidate], now: NaiveDateTime, keep: &Keep) -> Vec<Decision> {
    let mut out = Vec::with_capacity(cands.len());
    for kind in BackupType::ALL {
        let of_kind: Vec<&Candidate> = cands.iter().filter(|c| c.kind == kind).collect();
        let newest = |want: State| {
            of_kind
                .iter()
                .filter(|c| c.state == want)
                .max_by_key(|c| (c.stamp, c.name.clone()))
                .map(|c| c.name.clone())
        };
        let protected = newest(State::Ok).or_else(|| newest(State::Failed));
        let window = keep.of(kind);
        for c in of_kind {
            let (delete, reason) = if protected.as_deref() == Some(c.name.as_str()) {
                (false, format!("newest complete {kind} backup"))
            } else if c.state == State::Incomplete {
                if now - c.stamp > Duration::days(1) {
                    (
                        true,
                        "incomplete (no manifest) and more than a day old".into(),
                    )
                } else {
                    (false, "incomplete, may still be running".into())
                }
            } else {
                match window {
                    Window::Days(days) => {
                        let age = (now.date() - c.stamp.date()).num_days();
                        if age >= i64::from(days) {
                            (
                                true,
                                format!("{age} day(s) old; {kind} backups are kept {days} day(s)"),
                            )
                        } else {
                            (false, format!("{age} day(s) old, kept {days} day(s)"))
                        }
                    }
                    Window::Hours(hours) => {
                        let age = now - c.stamp;
                        if age >= Duration::hours(i64::from(hours)) {
                            (
                                true,
                                format!(
                                    "{} hour(s) old; {kind} backups are kept {hours} hour(s)",
                                    age.num_hours()
                                ),
                            )
                        } else {
                            (
                                false,
                                format!("{} hour(s) old, kept {hours} hour(s)", age.num_hours()),
                            )
                        }
                    }
                }
            };
            out.push(Decision {
                kind,
                name: c.name.clone(),
                delete,
                reason,
            });
        }
    }
    out
}

/// What [`prune`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct PruneReport {
    pub removed: Vec<PathBuf>,
    pub kept: usize,
    pub errors: Vec<String>,
    pub decisions: Vec<Decision>,
}

/// Apply retention to every type under the backup root (`dry_run`: decide only).
pub(crate) fn prune(
    settings: &Settings,
    now: NaiveDateTime,
    dry_run: bool,
) -> anyhow::Result<PruneReport> {
    let entries = catalog::list(settings)?;
    let cands: Vec<Candidate> = entries
        .iter()
        .map(|e| Candidate {
            kind: e.kind,
            name: e.name.clone(),
            stamp: e.stamp,
            state: if e.is_ok() {
                State::Ok
            } else if e.complete || e.unreadable {
                State::Failed
            } else {
                State::Incomplete
            },
        })
        .collect();
    let decisions = plan(&cands, now, &settings.keep);
    let mut report = PruneReport::default();
    for d in &decisions {
        if !d.delete {
            report.kept += 1;
            continue;
        }
        let dir = settings.type_dir(d.kind).join(&d.name);
        if dry_run {
            report.removed.push(dir);
            continue;
        }
        match remove_backup_dir(&dir) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), reason = %d.reason, "old backup removed");
                report.removed.push(dir);
            }
            Err(e) => report.errors.push(e),
        }
    }
    if !dry_run {
        for kind in BackupType::ALL {
            clean_leftovers(&settings.type_dir(kind), &mut report.errors);
        }
    }
    report.decisions = decisions;
    Ok(report)
}

fn remove_backup_dir(dir: &std::path::Path) -> Result<(), String> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let hidden = dir.with_file_name(format!(".deleting-{name}"));
    fs::rename(dir, &hidden).map_err(|e| {
        format!(
            "cannot remove the old backup {}: {e}; check permissions on the backup root",
            dir.display()
        )
    })?;
    fs::remove_dir_all(&hidden).map_err(|e| {
        format!(
            "cannot delete {} (an old backup being removed): {e}; delete it by hand",
            hidden.display()
        )
    })
}

/// Finish deletions a crash interrupted (`.deleting-*`).
fn clean_leftovers(type_dir: &std::path::Path, errors: &mut Vec<String>) {
    let Ok(rd) = fs::read_dir(type_dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(".deleting-") {
            if let Err(err) = fs::remove_dir_all(e.path()) {
                errors.push(format!(
                    "cannot delete {}: {err}; delete it by hand",
                    e.path().display()
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn at(y: i32, m: u32, d: u32, h: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(h, 0, 3)
            .unwrap()
    }

    fn cand(kind: BackupType, t: NaiveDateTime, state: State) -> Candidate {
        Candidate {
            kind,
            name: super::super::dir_name(t),
            stamp: t,
            state,
        }
    }

    /// A year of backups as the default schedule makes them, with 2024-05-26..=28 missed
    /// (the agent was down), and an interrupted daily from yesterday and one from last month.
    pub(crate) fn year_of_backups() -> (Vec<Candidate>, NaiveDateTime) {
        let start = at(2023, 6, 1, 2);
        let mut c = Vec::new();
        for day in 0..366 {
            if (360..=362).contains(&day) {
                continue;
            }
            let t = start + Duration::days(day);
            c.push(cand(BackupType::Daily, t, State::Ok));
            if t.format("%u").to_string() == "7" {
                c.push(cand(BackupType::Weekly, t + Duration::hours(1), State::Ok));
            }
            if t.format("%d").to_string() == "01" {
                c.push(cand(BackupType::Monthly, t + Duration::hours(2), State::Ok));
            }
        }
        let now = start + Duration::days(365) + Duration::hours(10); // 2024-05-31 12:00:03
        c.push(cand(
            BackupType::Daily,
            at(2024, 5, 30, 23),
            State::Incomplete,
        ));
        c.push(cand(
            BackupType::Daily,
            at(2024, 4, 20, 2) + Duration::minutes(7),
            State::Incomplete,
        ));
        (c, now)
    }

    fn kept(d: &[Decision], kind: BackupType) -> Vec<String> {
        d.iter()
            .filter(|x| x.kind == kind && !x.delete)
            .map(|x| x.name.clone())
            .collect()
    }

    #[test]
    fn a_year_with_a_gap_keeps_exactly_the_calendar_window() {
        let (c, now) = year_of_backups();
        let d = plan(&c, now, &Keep::default());
        let mut daily = kept(&d, BackupType::Daily);
        daily.sort();
        assert_eq!(
            daily,
            vec![
                "20240525_020003",
                "20240529_020003",
                "20240530_020003",
                "20240530_230003", // incomplete but less than a day old
                "20240531_020003",
            ]
        );
        let mut weekly = kept(&d, BackupType::Weekly);
        weekly.sort();
        // Sundays less than 30 days before 2024-05-31 (the 26th was missed).
        assert_eq!(
            weekly,
            vec!["20240505_030003", "20240512_030003", "20240519_030003"]
        );
        let monthly = kept(&d, BackupType::Monthly);
        // 2023-06-01 is exactly 365 days old (2024 is a leap year): gone.
        assert_eq!(monthly.len(), 11, "{monthly:?}");
        assert_eq!(monthly[0], "20230701_040003");
        assert!(d
            .iter()
            .any(|x| x.name == "20240420_020703" && x.delete && x.reason.contains("incomplete")));
    }

    #[test]
    fn the_newest_ok_backup_survives_a_long_outage() {
        let old_ok = cand(BackupType::Daily, at(2024, 1, 1, 2), State::Ok);
        let older = cand(BackupType::Daily, at(2023, 12, 31, 2), State::Ok);
        let failed = cand(BackupType::Daily, at(2024, 1, 2, 2), State::Failed);
        let now = at(2024, 3, 1, 12);
        let d = plan(&[older, old_ok, failed], now, &Keep::default());
        assert_eq!(kept(&d, BackupType::Daily), vec!["20240101_020003"]);
    }

    #[test]
    fn without_an_ok_backup_the_newest_complete_one_is_kept() {
        let a = cand(BackupType::Weekly, at(2024, 1, 1, 3), State::Failed);
        let b = cand(BackupType::Weekly, at(2024, 1, 8, 3), State::Failed);
        let inc = cand(BackupType::Weekly, at(2024, 1, 9, 3), State::Incomplete);
        let d = plan(&[a, b, inc], at(2024, 6, 1, 0), &Keep::default());
        assert_eq!(kept(&d, BackupType::Weekly), vec!["20240108_030003"]);
    }

    #[test]
    fn a_future_stamp_and_a_fresh_incomplete_dir_stay() {
        let now = at(2024, 1, 10, 12);
        let fut = cand(BackupType::Daily, at(2024, 1, 11, 2), State::Ok);
        let fresh = cand(BackupType::Daily, at(2024, 1, 10, 2), State::Incomplete);
        let d = plan(&[fut, fresh], now, &Keep::default());
        assert!(d.iter().all(|x| !x.delete), "{d:?}");
    }

    #[test]
    fn hourly_dumps_are_kept_48_hours_by_elapsed_time() {
        let now = at(2024, 3, 3, 12);
        let mut c = Vec::new();
        for h in 0..72 {
            c.push(cand(
                BackupType::Hourly,
                now - Duration::hours(h) - Duration::seconds(3),
                State::Ok,
            ));
        }
        let d = plan(&c, now, &Keep::default());
        let kept = kept(&d, BackupType::Hourly);
        // Ages 0 h 3 s .. 47 h 3 s stay; 48 h 3 s and older go.
        assert_eq!(kept.len(), 48, "{kept:?}");
        assert!(d
            .iter()
            .any(|x| x.delete && x.reason.contains("kept 48 hour(s)")));
        let short = Keep {
            hourly_hours: 2,
            ..Keep::default()
        };
        assert_eq!(
            plan(&c, now, &short).iter().filter(|x| !x.delete).count(),
            2
        );
        // The other types are untouched by the hourly window.
        let daily = cand(BackupType::Daily, now - Duration::hours(60), State::Ok);
        let d = plan(&[daily], now, &short);
        assert!(!d[0].delete);
    }
}
