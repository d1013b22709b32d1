//! The `allspark agent` process: spool consumer, Docker events, schedules (backups, verify, maintenance), usage and metrics, until SIGTERM.

pub mod alerts;
pub(crate) mod cron;
pub(crate) mod events;
pub(crate) mod maintenance;
pub mod metrics;
pub(crate) mod schedule;
pub(crate) mod spool_worker;
pub(crate) mod usage_task;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};

use crate::context::Ctx;
use crate::fs::durable::{FileLock, LockKind};

/// Everything `allspark agent` needs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub ctx: Ctx,
    pub backup_root: PathBuf,
    pub metrics: Option<SocketAddr>,
    /// Follow Docker events (label-triggered snapshots).
    pub docker_events: bool,
    pub spool_poll: Duration,
    /// How often usage is measured (alerts, inspect figures, metrics).
    pub usage_every: Duration,
    /// Alert when a volume or filesystem is at or above this percent.
    pub alert_threshold: f64,
    /// Scheduled backups and verify (`None`: no schedule).
    pub schedule: Option<schedule::ScheduleConfig>,
    /// The off-site remote: completed snapshots of `offsite=snapshots` volumes go there.
    pub remote: Option<String>,
}

/// Run `work` on a blocking thread, then sleep `every`, until `stop` turns true (checked before each round).
fn every_until_stopped(
    mut stop: tokio::sync::watch::Receiver<bool>,
    every: Duration,
    mut work: impl FnMut() + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        while !*stop.borrow_and_update() {
            work();
            std::thread::sleep(every);
        }
    })
}

/// The polling loops, each on a blocking thread until `stop`: the spool worker, the measurer,
/// the archiver of read-only snapshots, and (with a remote) the off-site watcher.
fn spawn_pollers(
    cfg: &AgentConfig,
    metrics_state: &std::sync::Arc<crate::agent::metrics::MetricsState>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let spool_ctx = cfg.ctx.clone();
    let mut worker = spool_worker::SpoolWorker::default();
    tracing::info!(root = %spool_ctx.layout.root.display(), "agent consuming the spool");
    let spool_task = every_until_stopped(stop.clone(), cfg.spool_poll, move || {
        worker.run_once(&spool_ctx);
    });
    // Measurements the plugin asked for, beside the spool: a walk of a big workspace takes
    // seconds, and the next container's snapshot on stop must not wait for it.
    let (measure_ctx, measure_metrics) = (cfg.ctx.clone(), metrics_state.clone());
    let measure_task = every_until_stopped(stop.clone(), cfg.spool_poll, move || {
        spool_worker::measure_requested(&measure_ctx, &measure_metrics);
    });
    // Archives of read-only snapshots, in the background: never under a snapshot lock.
    let archive_ctx = cfg.ctx.clone();
    let archive_poll = cfg.spool_poll.max(Duration::from_millis(200));
    let archive_task = every_until_stopped(stop.clone(), archive_poll, move || {
        crate::pool::archive::run_once(&archive_ctx);
    });
    // Completed snapshots of offsite=snapshots volumes go off-site; the first poll catches up.
    let offsite_task = cfg.remote.clone().map(|remote| {
        let ctx = cfg.ctx.clone();
        let poll = cfg.spool_poll.max(Duration::from_secs(1));
        let mut watcher = crate::remote::chains::Watcher::new(&remote);
        every_until_stopped(stop.clone(), poll, move || {
            watcher.run_once(&ctx.layout);
        })
    });
    [
        Some(spool_task),
        Some(measure_task),
        Some(archive_task),
        offsite_task,
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Run the agent until SIGTERM/SIGINT.
pub fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let layout = cfg.ctx.layout.clone();
    layout
        .ensure()
        .with_context(|| format!("cannot create the state root {}", layout.root.display()))?;
    let lock_path = layout.root.join("agent.lock");
    let Some(_lock) = FileLock::try_acquire(&lock_path, LockKind::Exclusive)? else {
        bail!(
            "another allspark agent already serves {}; stop it first",
            layout.root.display()
        );
    };
    if let Err(e) = crate::backup::quiesce::restart_leftovers(&cfg.ctx) {
        tracing::error!(error = %format!("{e:#}"), "cannot start the containers an interrupted backup stopped; the schedule retries");
    }
    let sched_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sched = match cfg.schedule.clone() {
        Some(s) => Some(schedule::spawn(cfg.ctx.clone(), s, sched_stop.clone())?),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let metrics_state = crate::agent::metrics::MetricsState::new(layout.clone());
        let pollers = spawn_pollers(&cfg, &metrics_state, &stop_rx);
        if let Some(addr) = cfg.metrics {
            crate::agent::metrics::serve(addr, metrics_state.clone())
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
        }
        let alert_cfg = crate::agent::alerts::AlertConfig {
            threshold: cfg.alert_threshold,
            ..Default::default()
        };
        tokio::spawn(usage_task::run(
            layout.clone(),
            cfg.ctx.view.clone(),
            alert_cfg,
            cfg.usage_every,
            metrics_state,
            stop_rx.clone(),
        ));
        if cfg.docker_events {
            tokio::spawn(events::watch(layout.clone(), cfg.ctx.docker_url.clone()));
        }
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("signal received: finishing the current work");
        let _ = stop_tx.send(true);
        for t in pollers {
            let _ = t.await;
        }
        sched_stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(h) = sched {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        tracing::info!("allspark agent stopped");
        anyhow::Ok(())
    })
}
