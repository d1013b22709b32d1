//! Containers stopped for a backup or restore: recorded before they are stopped, always started again, restarted by the agent after a crash.
//!
//! The record `<root>/state/agent/stopped-for-backup.json` lists every
//! container about to be stopped, written atomically *before* the first stop.
//! [`StopGuard`] starts them all again when the work ends, fails, or panics
//! (on drop), and removes the record once every one of them runs. If the
//! process dies in between (kill -9, power loss), [`restart_leftovers`] —
//! called when the agent starts — starts what the record lists.

use std::path::PathBuf;

use anyhow::Context;
use bollard::container::{StartContainerOptions, StopContainerOptions};
use bollard::Docker;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

use crate::context::Ctx;
use crate::core::layout::Layout;
use crate::docker::ContainerInfo;
use crate::fs::durable;

/// `<root>/state/agent/stopped-for-backup.json`.
pub(crate) fn record_path(layout: &Layout) -> PathBuf {
    layout.agent_dir().join("stopped-for-backup.json")
}

/// A container we stop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stopped {
    pub id: String,
    pub name: String,
}

/// The record on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StoppedRecord {
    /// `backup daily`, `restore …`.
    pub operation: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    pub containers: Vec<Stopped>,
}

fn write_record(layout: &Layout, rec: &StoppedRecord) -> anyhow::Result<()> {
    let path = record_path(layout);
    durable::ensure_dir(&layout.agent_dir(), 0o700)
        .with_context(|| format!("cannot create {}", layout.agent_dir().display()))?;
    let bytes = serde_json::to_vec_pretty(rec)?;
    durable::atomic_write(&path, &bytes, 0o600)
        .with_context(|| format!("cannot write {}; no container was stopped", path.display()))
}

fn read_record(layout: &Layout) -> anyhow::Result<Option<StoppedRecord>> {
    let path = record_path(layout);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).with_context(|| {
            format!(
                "{} is corrupt; start the containers it names by hand, then delete it",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn is_status(e: &bollard::errors::Error, code: u16) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == code)
}

/// Stop one container (Docker API), with the container's own stop timeout
/// (`stop_grace_period` in compose, `--stop-timeout`; Docker's default 10 s).
pub(crate) async fn stop_container(docker: &Docker, c: &Stopped) -> Result<(), String> {
    match docker
        .stop_container(&c.id, None::<StopContainerOptions>)
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_status(&e, 304) => Ok(()),
        Err(e) => Err(format!(
            "cannot stop container {}: {e}; check it with `docker inspect {}`",
            c.name, c.name
        )),
    }
}

/// Start one container again. `Ok(false)` when it no longer exists.
pub(crate) async fn start_container(docker: &Docker, c: &Stopped) -> Result<bool, String> {
    match docker
        .start_container(&c.id, None::<StartContainerOptions<String>>)
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if is_status(&e, 304) => Ok(true),
        Err(e) if is_status(&e, 404) => Ok(false),
        Err(e) => Err(format!(
            "container {} was stopped for the backup and cannot be started again: {e}; start it by hand with `docker start {}`",
            c.name, c.name
        )),
    }
}

/// Stops containers and guarantees they are started again (explicitly with
/// [`StopGuard::restart_all`], or when dropped).
pub(crate) struct StopGuard<'a> {
    layout: Layout,
    rt: &'a Runtime,
    docker: Docker,
    operation: String,
    recorded: Vec<Stopped>,
    started_at: DateTime<Utc>,
}

impl<'a> StopGuard<'a> {
    pub(crate) fn new(layout: &Layout, rt: &'a Runtime, docker: &Docker, operation: &str) -> Self {
        StopGuard {
            layout: layout.clone(),
            rt,
            docker: docker.clone(),
            operation: operation.to_string(),
            recorded: Vec::new(),
            started_at: Utc::now(),
        }
    }

    /// Record `containers` (with those recorded before) atomically; nothing is stopped yet.
    pub(crate) fn record(&mut self, containers: &[ContainerInfo]) -> anyhow::Result<()> {
        let mut all = self.recorded.clone();
        for c in containers {
            if !all.iter().any(|s| s.id == c.id) {
                all.push(Stopped {
                    id: c.id.clone(),
                    name: c.name.clone(),
                });
            }
        }
        if all.is_empty() {
            return Ok(());
        }
        write_record(
            &self.layout,
            &StoppedRecord {
                operation: self.operation.clone(),
                pid: std::process::id(),
                started_at: self.started_at,
                containers: all.clone(),
            },
        )?;
        self.recorded = all;
        Ok(())
    }

    /// Stop a recorded container.
    pub(crate) fn stop(&self, c: &ContainerInfo) -> Result<(), String> {
        let s = self.recorded.iter().find(|s| s.id == c.id).ok_or_else(|| {
            format!(
                "internal error: container {} stopped without a record",
                c.name
            )
        })?;
        tracing::info!(container = %s.name, operation = %self.operation, "stopping container");
        self.rt.block_on(stop_container(&self.docker, s))
    }

    /// Start every recorded container; errors are sentences. The record is
    /// removed once all run (or are gone), else it keeps those that failed.
    pub(crate) fn restart_all(&mut self) -> Vec<String> {
        if self.recorded.is_empty() {
            return Vec::new();
        }
        let (failed, errors) = self.rt.block_on(start_all(&self.docker, &self.recorded));
        let result = if failed.is_empty() {
            durable::remove_durable(&record_path(&self.layout))
                .with_context(|| format!("cannot delete {}", record_path(&self.layout).display()))
        } else {
            write_record(
                &self.layout,
                &StoppedRecord {
                    operation: self.operation.clone(),
                    pid: std::process::id(),
                    started_at: self.started_at,
                    containers: failed,
                },
            )
        };
        let mut errors = errors;
        if let Err(e) = result {
            errors.push(format!("{e:#}"));
        }
        self.recorded.clear();
        errors
    }
}

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        for e in self.restart_all() {
            tracing::error!(error = %e, "restarting a container after the backup failed");
        }
    }
}

async fn start_all(docker: &Docker, list: &[Stopped]) -> (Vec<Stopped>, Vec<String>) {
    let mut failed = Vec::new();
    let mut errors = Vec::new();
    for c in list {
        match start_container(docker, c).await {
            Ok(true) => tracing::info!(container = %c.name, "container started again"),
            Ok(false) => {
                tracing::warn!(container = %c.name, "a container stopped for the backup no longer exists; nothing to start")
            }
            Err(e) => {
                errors.push(e);
                failed.push(c.clone());
            }
        }
    }
    (failed, errors)
}

/// Start what an interrupted backup or restore stopped (the record left
/// behind by a crash). Does nothing while another backup holds the lock
/// (its containers are stopped on purpose). Returns the containers started.
pub(crate) fn restart_leftovers(ctx: &Ctx) -> anyhow::Result<Vec<String>> {
    let layout = &ctx.layout;
    if !record_path(layout).exists() {
        return Ok(Vec::new());
    }
    let lock_path = super::lock_path(layout);
    let Some(_lock) = durable::FileLock::try_acquire(&lock_path, durable::LockKind::Exclusive)
        .with_context(|| format!("cannot open {}", lock_path.display()))?
    else {
        tracing::info!("a backup or restore is running; its stopped containers are its own");
        return Ok(Vec::new());
    };
    let Some(rec) = read_record(layout)? else {
        return Ok(Vec::new());
    };
    tracing::warn!(operation = %rec.operation, pid = rec.pid, containers = ?rec.containers.iter().map(|c| &c.name).collect::<Vec<_>>(), "a backup or restore was interrupted; starting the containers it stopped");
    let (failed, errors) = crate::docker::block_on(async {
        let docker = crate::docker::connect(&ctx.docker_url).await?;
        anyhow::Ok(start_all(&docker, &rec.containers).await)
    })??;
    if failed.is_empty() {
        durable::remove_durable(&record_path(layout))
            .with_context(|| format!("cannot delete {}", record_path(layout).display()))?;
        Ok(rec.containers.iter().map(|c| c.name.clone()).collect())
    } else {
        write_record(
            layout,
            &StoppedRecord {
                containers: failed,
                ..rec
            },
        )?;
        anyhow::bail!("{}", errors.join("; "))
    }
}
