//! `allspark agent`: flags of the companion process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::agent::{self, AgentConfig};
use crate::config::DEFAULT_BACKUP_ROOT;
use crate::snapshot::ops::Ctx;

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
}

pub fn run(ctx: Ctx, a: &AgentArgs) -> anyhow::Result<()> {
    agent::run(AgentConfig {
        ctx,
        backup_root: a.backup_root.clone(),
        metrics: a.metrics,
        docker_events: !a.no_docker_events,
        spool_poll: Duration::from_millis(a.spool_poll_ms),
        usage_every: Duration::from_secs(a.usage_interval.max(1)),
        alert_threshold: a.alert_threshold,
    })
}
