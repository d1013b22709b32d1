//! The agent's schedule: standard 5-field cron expressions for hourly dumps, daily, weekly and monthly backups, the verify drill and the containers' maintenance commands; missed runs caught up once, last runs persisted.
//!
//! Defaults (as the old `/etc/cron.d/allspark-backup`, plus the hourly
//! dumps): hourly `0 * * * *` (database dumps only, for an RPO under an
//! hour), daily `0 2 * * *`, weekly `0 3 * * 0`, monthly `0 4 1 * *`; verify
//! `0 5 2 * *` (the newest complete backup of each type, test-extracted,
//! result logged and written to `<root>/state/agent/last-verify.json`).
//! Containers labelled `allspark.maintenance.exec` are maintained on their
//! own `allspark.maintenance.schedule` (see [`crate::agent::maintenance`]).
//!
//! Expressions are `minute hour day-of-month month day-of-week` in local
//! time, day of week 0-7 (0 and 7 are Sunday) or `sun`..`sat`. When both the
//! day of month and the day of week are restricted, both must match.
//!
//! The last run of each job is kept in `<root>/state/agent/schedule.json`. At
//! start, a job whose latest due time is after its last run (the agent was
//! down at that time) runs once; then the agent sleeps until the next due
//! time. A job that never ran has its first due time counted from when the
//! agent first saw it, so a fresh install does not start with three backups.
//! Jobs run one after the other on the scheduler's own thread, never on the
//! spool worker's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Local, TimeZone, Utc};
use serde::Serialize;

use crate::agent::cron::{due, load_state, save_state, Cron, State};
use crate::backup::{self, BackupType, Settings};
use crate::context::Ctx;
use crate::fs::durable;

/// Default cron expressions.
pub(crate) const DEFAULT_HOURLY: &str = "0 * * * *";
pub(crate) const DEFAULT_DAILY: &str = "0 2 * * *";
pub(crate) const DEFAULT_WEEKLY: &str = "0 3 * * 0";
pub(crate) const DEFAULT_MONTHLY: &str = "0 4 1 * *";
pub(crate) const DEFAULT_VERIFY: &str = "0 5 2 * *";

/// The scheduler looks at the clock (and at leftover stopped containers) at least this often.
const RECHECK: Duration = Duration::from_secs(60);

/// A scheduled job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Job {
    Backup(BackupType),
    Verify,
}

impl Job {
    pub fn key(self) -> &'static str {
        match self {
            Job::Backup(t) => t.as_str(),
            Job::Verify => "verify",
        }
    }
}

/// The schedule's configuration (agent flags).
#[derive(Clone, Debug)]
pub struct ScheduleConfig {
    pub hourly: Cron,
    pub daily: Cron,
    pub weekly: Cron,
    pub monthly: Cron,
    pub verify: Cron,
    pub settings: Settings,
    /// Push to this remote after each backup, and once at start to catch up (`--remote`).
    pub remote: Option<String>,
}

impl ScheduleConfig {
    pub fn jobs(&self) -> [(Job, &Cron); 5] {
        [
            (Job::Backup(BackupType::Hourly), &self.hourly),
            (Job::Backup(BackupType::Daily), &self.daily),
            (Job::Backup(BackupType::Weekly), &self.weekly),
            (Job::Backup(BackupType::Monthly), &self.monthly),
            (Job::Verify, &self.verify),
        ]
    }
}

/// The jobs due now, and the state with baselines for jobs never seen (pure).
pub(crate) fn due_jobs<Z: TimeZone>(
    cfg: &ScheduleConfig,
    state: &mut State,
    now: &DateTime<Z>,
) -> Vec<Job> {
    let mut out = Vec::new();
    for (job, cron) in cfg.jobs() {
        match state.last_run.get(job.key()) {
            None => {
                state
                    .last_run
                    .insert(job.key().to_string(), now.with_timezone(&Utc));
            }
            Some(last) => {
                if due(cron, Some(*last), now) {
                    out.push(job);
                }
            }
        }
    }
    out
}

/// Run one job now.
pub(crate) fn run_job(ctx: &Ctx, cfg: &ScheduleConfig, job: Job, cancel: &Arc<AtomicBool>) {
    match job {
        Job::Backup(kind) => {
            let r = backup::run::run(
                ctx,
                &cfg.settings,
                kind,
                &backup::run::RunOptions {
                    progress: None,
                    cancel: Some(cancel.clone()),
                    prune: true,
                },
            );
            if r.ok() {
                tracing::info!(summary = %r.summary(), "scheduled backup done");
            } else {
                tracing::error!(summary = %r.summary(), errors = ?r.errors, "scheduled backup FAILED");
            }
            if let Some(remote) = &cfg.remote {
                push_offsite(ctx, cfg, remote);
            }
        }
        Job::Verify => verify_newest(ctx, &cfg.settings),
    }
}

/// Push what the remote lacks and apply its retention; log the outcome.
pub(crate) fn push_offsite(ctx: &Ctx, cfg: &ScheduleConfig, remote: &str) {
    let (report, errors) =
        crate::remote::push::push_and_prune(&ctx.layout, remote, &cfg.settings, None);
    if let Some(r) = report {
        tracing::info!(summary = %r.summary(), "off-site push done");
    }
    if !errors.is_empty() {
        tracing::error!(remote, errors = ?errors, "off-site push FAILED; the next backup (or `allspark remote push`) tries again");
    }
}

/// The result of the scheduled verify drill.
#[derive(Debug, Serialize)]
struct LastVerify {
    finished_at: DateTime<Utc>,
    ok: bool,
    dirs: Vec<String>,
    failures: Vec<String>,
}

/// Verify the newest complete backup of each type; log and record the result.
pub(crate) fn verify_newest(ctx: &Ctx, settings: &Settings) {
    let mut rec = LastVerify {
        finished_at: Utc::now(),
        ok: true,
        dirs: Vec::new(),
        failures: Vec::new(),
    };
    for kind in BackupType::ALL {
        let newest = match backup::catalog::list_type(settings, kind) {
            Ok(list) => list.into_iter().rev().find(|e| e.complete),
            Err(e) => {
                rec.failures.push(format!("{e:#}"));
                None
            }
        };
        let Some(entry) = newest else { continue };
        rec.dirs.push(entry.dir.display().to_string());
        match backup::verify::verify_dir(&entry.dir, None) {
            Ok(r) if r.ok() => {
                tracing::info!(dir = %entry.dir.display(), files = r.files.len(), "scheduled verify: backup is sound")
            }
            Ok(r) => rec.failures.extend(r.failures()),
            Err(e) => rec.failures.push(format!("{e:#}")),
        }
    }
    rec.ok = rec.failures.is_empty();
    rec.finished_at = Utc::now();
    if !rec.ok {
        tracing::error!(failures = ?rec.failures, "scheduled verify FAILED: a backup is damaged");
    }
    let p = ctx.layout.agent_dir().join("last-verify.json");
    if let Ok(bytes) = serde_json::to_vec_pretty(&rec) {
        if let Err(e) = durable::atomic_write(&p, &bytes, 0o644) {
            tracing::error!(path = %p.display(), %e, "cannot record the verify result");
        }
    }
}

/// Run the schedule until `stop` is set: catch up missed jobs once, then sleep until the next due time.
pub(crate) fn run_loop(ctx: Ctx, cfg: ScheduleConfig, stop: Arc<AtomicBool>) {
    tracing::info!(
        hourly = %cfg.hourly.source,
        daily = %cfg.daily.source,
        weekly = %cfg.weekly.source,
        monthly = %cfg.monthly.source,
        verify = %cfg.verify.source,
        backup_root = %cfg.settings.backup_root.display(),
        remote = cfg.remote.as_deref().unwrap_or("none"),
        "backup schedule active"
    );
    let mut maintainer = crate::agent::maintenance::Maintainer::default();
    // Catch up after downtime: backups made while the agent (or the network) was down go off-site now.
    if let Some(remote) = &cfg.remote {
        push_offsite(&ctx, &cfg, remote);
    }
    while !stop.load(Ordering::SeqCst) {
        if backup::quiesce::record_path(&ctx.layout).exists() {
            if let Err(e) = backup::quiesce::restart_leftovers(&ctx) {
                tracing::error!(error = %format!("{e:#}"), "cannot start the containers an interrupted backup stopped");
            }
        }
        let mut state = load_state(&ctx.layout);
        let known = state.last_run.len();
        let now = Local::now();
        let jobs = due_jobs(&cfg, &mut state, &now);
        if state.last_run.len() != known {
            if let Err(e) = save_state(&ctx.layout, &state) {
                tracing::error!(error = %format!("{e:#}"), "cannot save the schedule state");
            }
        }
        for job in jobs {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let started = Utc::now();
            tracing::info!(job = job.key(), "scheduled job starting");
            run_job(&ctx, &cfg, job, &stop);
            let mut state = load_state(&ctx.layout);
            state.last_run.insert(job.key().to_string(), started);
            if let Err(e) = save_state(&ctx.layout, &state) {
                tracing::error!(error = %format!("{e:#}"), "cannot save the schedule state");
            }
        }
        if !stop.load(Ordering::SeqCst) {
            maintainer.run_due(&ctx, &cfg.settings);
        }
        // Sleep until the next due time (at most a minute, so a clock change, a
        // leftover record or a new maintenance label is noticed), waking every few
        // seconds to notice a stop.
        let now = Local::now();
        let next = cfg
            .jobs()
            .iter()
            .filter_map(|(_, c)| c.next_due(&now))
            .chain(maintainer.next_due(&now))
            .min();
        let wait = next
            .map(|n| (n - now).to_std().unwrap_or_default())
            .unwrap_or(RECHECK)
            .min(RECHECK);
        let mut slept = Duration::ZERO;
        while slept < wait && !stop.load(Ordering::SeqCst) {
            let step = (wait - slept).min(Duration::from_secs(5));
            std::thread::sleep(step);
            slept += step;
        }
    }
}

/// Start the scheduler on its own thread.
pub(crate) fn spawn(
    ctx: Ctx,
    cfg: ScheduleConfig,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("backup-schedule".into())
        .spawn(move || run_loop(ctx, cfg, stop))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::cron::parse_cron;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn due_means_a_due_time_passed_since_the_last_run() {
        let daily = parse_cron(DEFAULT_DAILY).unwrap();
        // Ran at 02:00:01 today: not due again until tomorrow 02:00.
        let last = Some(t("2024-05-30T02:00:01Z"));
        assert!(!due(&daily, last, &t("2024-05-30T02:00:01Z")));
        assert!(!due(&daily, last, &t("2024-05-31T01:59:59Z")));
        assert!(due(&daily, last, &t("2024-05-31T02:00:00Z")));
        assert!(due(&daily, last, &t("2024-05-31T09:30:00Z")));
        // Never ran: not due (baseline).
        assert!(!due(&daily, None, &t("2024-05-31T09:30:00Z")));
        let monthly = parse_cron(DEFAULT_MONTHLY).unwrap();
        assert_eq!(
            monthly.latest_due(&t("2024-05-31T09:30:00Z")),
            Some(t("2024-05-01T04:00:00Z"))
        );
        assert_eq!(
            monthly.latest_due(&t("2024-05-01T04:00:00Z")),
            Some(t("2024-05-01T04:00:00Z"))
        );
    }

    #[test]
    fn a_run_missed_while_down_runs_once() {
        let cfg = ScheduleConfig {
            hourly: parse_cron(DEFAULT_HOURLY).unwrap(),
            daily: parse_cron(DEFAULT_DAILY).unwrap(),
            weekly: parse_cron(DEFAULT_WEEKLY).unwrap(),
            monthly: parse_cron(DEFAULT_MONTHLY).unwrap(),
            verify: parse_cron(DEFAULT_VERIFY).unwrap(),
            settings: Settings::new("/nonexistent"),
            remote: None,
        };
        let mut state = State::default();
        // First start ever: baselines, nothing runs.
        let start = t("2024-05-29T12:00:00Z");
        assert!(due_jobs(&cfg, &mut state, &start).is_empty());
        assert_eq!(state.last_run.len(), 5);
        // Down from the 29th noon to the 3rd noon: missed 4 dailies, the weekly of
        // Sunday the 2nd, the monthly of the 1st and the verify of the 2nd: each once.
        let back = t("2024-06-03T12:00:00Z");
        let jobs = due_jobs(&cfg, &mut state, &back);
        assert_eq!(
            jobs,
            vec![
                Job::Backup(BackupType::Hourly),
                Job::Backup(BackupType::Daily),
                Job::Backup(BackupType::Weekly),
                Job::Backup(BackupType::Monthly),
                Job::Verify
            ]
        );
        for j in &jobs {
            state.last_run.insert(j.key().into(), back);
        }
        assert!(due_jobs(&cfg, &mut state, &t("2024-06-03T12:05:00Z")).is_empty());
        // The next hour: the hourly dumps only.
        assert_eq!(
            due_jobs(&cfg, &mut state, &t("2024-06-03T13:00:00Z")),
            vec![Job::Backup(BackupType::Hourly)]
        );
        state
            .last_run
            .insert("hourly".into(), t("2024-06-04T01:00:00Z"));
        assert_eq!(
            due_jobs(&cfg, &mut state, &t("2024-06-04T02:00:00Z")),
            vec![
                Job::Backup(BackupType::Hourly),
                Job::Backup(BackupType::Daily)
            ]
        );
    }

    #[test]
    fn hourly_runs_every_hour_and_once_after_a_gap() {
        let hourly = parse_cron(DEFAULT_HOURLY).unwrap();
        let last = Some(t("2024-05-30T10:00:02Z"));
        assert!(!due(&hourly, last, &t("2024-05-30T10:59:59Z")));
        assert!(due(&hourly, last, &t("2024-05-30T11:00:00Z")));
        // Down for five hours: one catch-up run, not five.
        assert!(due(&hourly, last, &t("2024-05-30T15:20:00Z")));
        assert_eq!(
            hourly.latest_due(&t("2024-05-30T15:20:00Z")),
            Some(t("2024-05-30T15:00:00Z"))
        );
        assert_eq!(
            hourly.next_due(&t("2024-05-30T15:20:00Z")),
            Some(t("2024-05-30T16:00:00Z"))
        );
    }
}
