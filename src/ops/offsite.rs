//! One volume between a host and a remote: `volume push` (snapshot now, upload the chain and the volume's record), `volume pull` (fetch the record and the newest chain, recreate the volume through Docker, restore), and the newer-snapshot step of disaster recovery.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backup::run::ItemProgress;
use crate::context::Ctx;
use crate::core::names::VolumeName;
use crate::ops::docker_volumes::{self, Created};
use crate::ops::snapshot as ops;
use crate::plugin::driver::Driver;
use crate::remote::chains;
use crate::remote::client::{runtime, Remote};
use crate::remote::crypt::Opener;
use crate::remote::snapshots::{self, RemoteSnapshot};
use crate::remote::RemoteConfig;
use crate::snapshot::{CreateOutcome, RestoreReport, Trigger};

/// What `volume push` did.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct PushReport {
    pub volume: String,
    pub remote: String,
    /// The snapshot taken for the push (the newest of the chain now on the remote).
    pub snapshot: String,
    pub pushed: Vec<String>,
    pub already: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// Snapshot `volume` now and upload its chain and record to the remote, whatever its `offsite=`.
pub(crate) fn push(
    ctx: &Ctx,
    cfg: &RemoteConfig,
    volume: &VolumeName,
    progress: Option<ItemProgress>,
) -> anyhow::Result<PushReport> {
    let t0 = Instant::now();
    if crate::core::store::Store::new(ctx.layout.clone())
        .load(volume)?
        .is_none()
    {
        bail!("no allspark volume named {volume} on this host (`allspark volume ls`)");
    }
    let id = match ops::take(ctx, volume, Trigger::Manual, None, false, None)
        .with_context(|| format!("cannot snapshot {volume}; nothing was pushed"))?
    {
        CreateOutcome::Created(m) | CreateOutcome::AlreadyDone(m) => m.id,
        CreateOutcome::Cow(c) => {
            crate::pool::archive::catch_up(ctx, volume, true)
                .with_context(|| format!("cannot archive the snapshot of {volume}"))?;
            c.id
        }
        CreateOutcome::Skipped(why) => bail!("volume {volume} was not snapshotted: {why}"),
    };
    let r = chains::push(&ctx.layout, cfg, std::slice::from_ref(volume), progress)?;
    if let Some(e) = r.errors.first() {
        bail!(
            "{e}; run `allspark volume push {volume} {}` again: it resumes",
            cfg.name
        );
    }
    let v = r
        .volumes
        .into_iter()
        .next()
        .context("the push reported no volume")?;
    Ok(PushReport {
        volume: volume.to_string(),
        remote: cfg.name.clone(),
        snapshot: id,
        pushed: v.pushed,
        already: v.already,
        bytes: v.bytes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// What to pull.
#[derive(Clone, Debug)]
pub(crate) struct PullRequest {
    pub remote: RemoteConfig,
    pub volume: VolumeName,
    /// Replace the data of an existing volume of that name (refused while it is mounted).
    pub overwrite: bool,
    pub identity: Option<PathBuf>,
    /// The allspark plugin's driver name in this dockerd (`allspark`, `allspark:latest`).
    pub docker_driver: String,
}

/// What `volume pull` did.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct PullReport {
    pub volume: String,
    pub remote: String,
    pub snapshot: String,
    /// Snapshots downloaded (those of the chain already here were kept).
    pub fetched: Vec<String>,
    /// `docker`, `driver` (dockerd did not answer) or `existing` (--overwrite).
    pub created: String,
    pub restore: RestoreReport,
    pub seconds: f64,
}

/// Fetch the volume's record and newest chain from the remote, recreate it, restore the chain into it.
pub(crate) fn pull(ctx: &Ctx, driver: &Driver, req: &PullRequest) -> anyhow::Result<PullReport> {
    let t0 = Instant::now();
    let (name, cfg) = (&req.volume, &req.remote);
    let exists = driver.store().load(name)?.is_some();
    if exists && !req.overwrite {
        bail!(
            "volume {name} already exists on this host; nothing was changed. Pull under another name is not possible (its snapshots carry the name): remove it first, or give --overwrite to replace its data with the remote's newest snapshot (refused while it is mounted)"
        );
    }
    let _lock = crate::remote::take_lock(&ctx.layout, &cfg.name)?;
    let remote = Remote::open(cfg)?;
    let opener = Arc::new(Opener::of(cfg, req.identity.as_deref())?);
    let rt = runtime()?;
    let there = rt.block_on(snapshots::list(&remote, Some(name)))?;
    let newest = snapshots::newest_restorable(&there).with_context(|| {
        format!(
            "remote {} has no complete snapshot chain of volume {name}; push it first with `allspark volume push {name} {}`",
            cfg.name, cfg.name
        )
    })?;
    let opts = rt
        .block_on(snapshots::get_record(&remote, &opener, name))?
        .with_context(|| {
            format!(
                "remote {} has snapshots of {name} but not its record; push it with `allspark volume push {name} {}`",
                cfg.name, cfg.name
            )
        })?;
    let fetched = rt.block_on(snapshots::fetch_chain(
        &remote,
        opener,
        &ctx.layout,
        &there,
        &newest.id,
        None,
    ))?;
    let created = if exists {
        "existing".to_string()
    } else {
        let opts: BTreeMap<String, String> =
            opts.into_iter().filter(|(k, _)| k != "template").collect();
        match docker_volumes::create(ctx, driver, &req.docker_driver, name, &opts)? {
            Created::Docker => "docker".into(),
            Created::Driver => "driver".into(),
        }
    };
    let restore = match ops::restore_over(ctx, name, &newest.id, None) {
        Ok(r) => r,
        Err(e) => {
            if !exists {
                if let Err(e2) = docker_volumes::remove(ctx, driver, name) {
                    tracing::error!(volume = %name, error = %format!("{e2:#}"), "cannot remove the volume created for the pull");
                }
            }
            return Err(e.context(format!(
                "the snapshot {} of {name} was fetched but could not be restored{}",
                newest.id,
                if exists {
                    "; the volume's data is unchanged"
                } else {
                    "; the new volume was removed again"
                }
            )));
        }
    };
    Ok(PullReport {
        volume: name.to_string(),
        remote: cfg.name.clone(),
        snapshot: newest.id.clone(),
        fetched,
        created,
        restore,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// What [`restore_newer_chains`] did.
#[derive(Clone, Debug, Default)]
pub(crate) struct NewerChains {
    /// `volume@id` of each chain restored over the backup's data.
    pub done: Vec<String>,
    /// Remote snapshots newer than the backup that were refused, `volume@id: why`.
    pub refused: Vec<String>,
    /// One sentence per volume that had a refusal: what its data is now.
    pub fallbacks: Vec<String>,
    /// Problems (the listing failed): the volumes hold the backup's data.
    pub problems: Vec<String>,
}

/// The DR step after a backup restore: each volume whose newest complete remote chain was
/// taken after the backup gets that chain restored over the backup's data. A chain that cannot
/// be used (an unreadable index, a missing link, a damaged or undecryptable object, a failed
/// restore) is refused and named, and the next older chain still newer than the backup is
/// tried; when none is left the volume keeps the backup's data, and says so.
pub(crate) fn restore_newer_chains(
    ctx: &Ctx,
    remote: &Remote,
    opener: Arc<Opener>,
    volumes: &[VolumeName],
    since: DateTime<Utc>,
    progress: Option<&ItemProgress>,
) -> NewerChains {
    let mut out = NewerChains::default();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            out.problems.push(format!("{e:#}"));
            return out;
        }
    };
    let all: Vec<RemoteSnapshot> = match rt.block_on(snapshots::list(remote, None)) {
        Ok(l) => l,
        Err(e) => {
            out.problems.push(format!(
                "cannot list the remote's snapshots ({e:#}); the volumes hold the backup's data"
            ));
            return out;
        }
    };
    for v in volumes {
        let there: Vec<RemoteSnapshot> = all.iter().filter(|s| &s.volume == v).cloned().collect();
        // Complete ones newer than the backup, newest first (an unreadable index is refused
        // below; an incomplete upload is never used and never a refusal).
        let newer = there
            .iter()
            .rev()
            .filter(|s| s.complete && s.index.as_ref().is_none_or(|i| i.created_at > since));
        let mut refused = false;
        let mut restored = None;
        for s in newer {
            let r = match &s.error {
                Some(e) => Err(anyhow::anyhow!("{e}")),
                None => rt
                    .block_on(snapshots::fetch_chain(
                        remote,
                        opener.clone(),
                        &ctx.layout,
                        &there,
                        &s.id,
                        progress,
                    ))
                    .and_then(|_| ops::restore_over(ctx, v, &s.id, None)),
            };
            match r {
                Ok(_) => {
                    restored = Some(s.id.clone());
                    break;
                }
                Err(e) => {
                    tracing::error!(volume = %v, snapshot = %s.id, error = %format!("{e:#}"), "remote snapshot refused; falling back to an older chain or the backup");
                    out.refused.push(format!("{v}@{}: {e:#}", s.id));
                    refused = true;
                }
            }
        }
        match (&restored, refused) {
            (Some(id), true) => out.fallbacks.push(format!(
                "volume {v} fell back to the older snapshot {v}@{id} (newer ones were refused)"
            )),
            (None, true) => out.fallbacks.push(format!(
                "volume {v} holds the backup's data: every newer snapshot chain on the remote was refused"
            )),
            _ => {}
        }
        if let Some(id) = restored {
            out.done.push(format!("{v}@{id}"));
        }
    }
    out
}
