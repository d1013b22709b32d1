//! `allspark agent`: flags of the companion process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::agent::{self, schedule, AgentConfig};
use crate::context::Ctx;
use crate::core::layout::DEFAULT_BACKUP_ROOT;

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Where scheduled backups go.
    #[arg(long, env = "ALLSPARK_BACKUP_ROOT", default_value = DEFAULT_BACKUP_ROOT)]
    pub backup_root: PathBuf,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9477).
    #[arg(long, env = "ALLSPARK_METRICS")]
    pub metrics: Option<SocketAddr>,
    /// Do not follow Docker events (no label-triggered snapshots).
    #[arg(long)]
    pub no_docker_events: bool,
    /// How often the spool is checked, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub spool_poll_ms: u64,
    /// How often usage is measured, in seconds (alerts, `docker volume inspect` figures, metrics).
    #[arg(long, env = "ALLSPARK_USAGE_INTERVAL", default_value_t = 300)]
    pub usage_interval: u64,
    /// Alert when a volume (against its size=) or a filesystem holding volumes is at or above this percent.
    #[arg(long, env = "ALLSPARK_ALERT_THRESHOLD", default_value_t = 80.0)]
    pub alert_threshold: f64,
    /// When the hourly database dumps run (5-field cron, local time).
    #[arg(long, env = "ALLSPARK_CRON_HOURLY", default_value = schedule::DEFAULT_HOURLY, value_parser = valid_cron)]
    pub hourly_cron: String,
    /// When the daily backup runs (5-field cron, local time).
    #[arg(long, env = "ALLSPARK_CRON_DAILY", default_value = schedule::DEFAULT_DAILY, value_parser = valid_cron)]
    pub daily_cron: String,
    /// When the weekly backup runs (5-field cron, local time; day of week 0 = Sunday).
    #[arg(long, env = "ALLSPARK_CRON_WEEKLY", default_value = schedule::DEFAULT_WEEKLY, value_parser = valid_cron)]
    pub weekly_cron: String,
    /// When the monthly backup runs (5-field cron, local time).
    #[arg(long, env = "ALLSPARK_CRON_MONTHLY", default_value = schedule::DEFAULT_MONTHLY, value_parser = valid_cron)]
    pub monthly_cron: String,
    /// When the newest backup of each type is verified (5-field cron, local time).
    #[arg(long, env = "ALLSPARK_CRON_VERIFY", default_value = schedule::DEFAULT_VERIFY, value_parser = valid_cron)]
    pub verify_schedule: String,
    /// Run no scheduled backups, verifies or maintenance commands.
    #[arg(long, env = "ALLSPARK_NO_SCHEDULE")]
    pub no_schedule: bool,
    /// Scheduled backups include volumes of class `temporary`.
    #[arg(long)]
    pub include_temporary: bool,
    /// After each scheduled backup (and once at start, to catch up), push to this remote and apply its retention; also push every completed snapshot of volumes with offsite=snapshots.
    #[arg(long, env = "ALLSPARK_REMOTE")]
    pub remote: Option<String>,
    #[command(flatten)]
    pub retention: super::backup_cmd::RetentionArgs,
    #[command(flatten)]
    pub containers: super::backup_cmd::ContainerArgs,
}

/// Check a 5-field cron expression at parse time (a bad one is a usage error).
fn valid_cron(s: &str) -> Result<String, String> {
    crate::agent::cron::parse_cron(s).map(|_| s.to_string())
}

pub(super) fn run(ctx: Ctx, a: &AgentArgs) -> anyhow::Result<()> {
    let cron = |s: &str| crate::agent::cron::parse_cron(s).map_err(anyhow::Error::msg);
    let schedule = if a.no_schedule {
        None
    } else {
        Some(schedule::ScheduleConfig {
            hourly: cron(&a.hourly_cron)?,
            daily: cron(&a.daily_cron)?,
            weekly: cron(&a.weekly_cron)?,
            monthly: cron(&a.monthly_cron)?,
            verify: cron(&a.verify_schedule)?,
            settings: super::backup_cmd::settings(
                &a.backup_root,
                Some(&a.retention),
                &a.containers,
                a.include_temporary,
            ),
            remote: a.remote.clone(),
        })
    };
    agent::run(AgentConfig {
        ctx,
        backup_root: a.backup_root.clone(),
        metrics: a.metrics,
        docker_events: !a.no_docker_events,
        spool_poll: Duration::from_millis(a.spool_poll_ms),
        usage_every: Duration::from_secs(a.usage_interval.max(1)),
        alert_threshold: a.alert_threshold,
        schedule,
        remote: a.remote.clone(),
    })
}
