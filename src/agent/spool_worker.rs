//! Consumes the spool in order: takes the snapshot an event asks for, deletes the event only once the snapshot is durable; and, on a thread of its own, measures the volumes the plugin asked to (Create, last Unmount, restore, Remove), so a snapshot on stop never waits behind the walk of a big workspace.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::agent::metrics::MetricsState;
use crate::context::Ctx;
use crate::core::names::VolumeName;
use crate::core::spool::{self, EventKind};
use crate::ops::snapshot as snapshot_ops;
use crate::snapshot::{CreateOutcome, Trigger};

/// Retry bookkeeping of failed events (in memory: a restarted agent simply retries at once).
#[derive(Default)]
pub(crate) struct SpoolWorker {
    retry_at: HashMap<PathBuf, (Instant, Duration)>,
}

/// First retry delay after a failure; doubles up to `MAX_BACKOFF`.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_secs(5);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(600);

impl SpoolWorker {
    /// Handle every pending event that is due, oldest first. Returns how many were completed.
    pub(crate) fn run_once(&mut self, ctx: &Ctx) -> usize {
        let files = match spool::pending(&ctx.layout) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(%e, "cannot read the spool directory");
                return 0;
            }
        };
        self.retry_at.retain(|p, _| files.contains(p));
        let mut done = 0;
        for file in files {
            if let Some((at, _)) = self.retry_at.get(&file) {
                if Instant::now() < *at {
                    continue;
                }
            }
            match handle(ctx, &file) {
                Ok(()) => {
                    if let Err(e) = spool::done(&file) {
                        tracing::error!(file = %file.display(), %e, "cannot delete a handled spool event");
                    }
                    self.retry_at.remove(&file);
                    done += 1;
                }
                Err(e) => {
                    let backoff = self
                        .retry_at
                        .get(&file)
                        .map(|(_, b)| (*b * 2).min(MAX_BACKOFF))
                        .unwrap_or(FIRST_BACKOFF);
                    tracing::error!(file = %file.display(), error = %format!("{e:#}"), retry_in_s = backoff.as_secs(), "spool event failed; it stays in the spool and is retried");
                    self.retry_at
                        .insert(file, (Instant::now() + backoff, backoff));
                }
            }
        }
        done
    }
}

/// Do the work of one event. `Ok` means the event may be deleted.
fn handle(ctx: &Ctx, file: &Path) -> anyhow::Result<()> {
    let event = match spool::read(file) {
        Ok(e) => e,
        Err(e) => {
            let aside = file.with_file_name(format!(
                ".corrupt-{}",
                file.file_name().unwrap_or_default().to_string_lossy()
            ));
            std::fs::rename(file, &aside)?;
            tracing::error!(%e, moved_to = %aside.display(), "corrupt spool event moved aside");
            anyhow::bail!("corrupt spool event moved aside");
        }
    };
    let trigger = match event.kind {
        EventKind::Mount => Trigger::Mount,
        EventKind::Unmount => Trigger::Unmount,
        EventKind::Stop => Trigger::Stop,
    };
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
    let volume_known = crate::core::store::Store::new(ctx.layout.clone())
        .load(&event.volume)?
        .is_some();
    // How long the event waited in the spool (the plugin wrote it at its mtime).
    let queued_ms = std::fs::metadata(file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map_or(0, |d| d.as_millis() as u64);
    let started = Instant::now();
    match snapshot_ops::take(ctx, &event.volume, trigger, name, false, None) {
        Ok(CreateOutcome::Created(m)) => tracing::info!(
            volume = %event.volume,
            id = %m.id,
            trigger = ?trigger,
            incremental = m.parent.is_some(),
            files = m.files,
            bytes_in = m.bytes_in,
            bytes_stored = m.bytes_stored,
            ms = started.elapsed().as_millis() as u64,
            "snapshot taken"
        ),
        Ok(CreateOutcome::Cow(c)) => tracing::info!(
            volume = %event.volume,
            id = %c.id,
            trigger = ?trigger,
            pool = %c.pool,
            snapshot_ms = c.duration_ms,
            flush_ms = c.flush_ms,
            queued_ms,
            ms = started.elapsed().as_millis() as u64,
            "read-only snapshot taken (its archive follows in the background)"
        ),
        Ok(CreateOutcome::AlreadyDone(m)) => {
            tracing::info!(volume = %event.volume, id = %m.id, "event already handled before a restart")
        }
        Ok(CreateOutcome::Skipped(why)) => {
            tracing::info!(volume = %event.volume, why, "snapshot skipped")
        }
        Err(e) if !volume_known && format!("{e:#}").contains("no such volume") => {
            tracing::info!(volume = %event.volume, "the volume no longer exists; event dropped")
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Measure the volumes the plugin asked to (the measurer's poll; never the spool worker's, so
/// a snapshot never waits for a walk).
/// The figures also go to `metrics` (besides the usage cache `docker volume inspect` reads).
pub(crate) fn measure_requested(ctx: &Ctx, metrics: &MetricsState) {
    for volume in spool::take_measure_requests(&ctx.layout) {
        measure(ctx, &volume, metrics);
    }
}

/// Measure one volume now and show it (never fails: the periodic walk is the fallback).
fn measure(ctx: &Ctx, volume: &VolumeName, metrics: &MetricsState) {
    let started = Instant::now();
    match crate::usage::measure_named(
        &ctx.layout,
        &ctx.view,
        volume,
        &crate::usage::ReportOptions::default(),
    ) {
        Ok(u) => {
            match &u {
                Some(u) => tracing::info!(
                    %volume,
                    bytes = u.bytes,
                    files = u.files,
                    ms = started.elapsed().as_millis() as u64,
                    "volume measured"
                ),
                None => tracing::info!(%volume, "volume removed: its figures are dropped"),
            }
            metrics.update_volume(volume, u);
        }
        Err(e) => {
            tracing::warn!(%volume, error = %format!("{e:#}"), "cannot measure the volume now; the next usage walk will")
        }
    }
}
