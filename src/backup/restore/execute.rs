//! Carrying out a restore plan: the dump checksums first, the containers using the volumes stopped (and always started again), each volume through a staging directory and an atomic swap, then each dump fed once.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use bollard::Docker;
use tokio::runtime::Runtime;

use super::database::restore_dump;
use super::{PlannedVolume, RestorePlan, RestoreReport};
use crate::archive::{self, ExtractOptions, ExtractReport};
use crate::backup::feed::fed_once;
use crate::backup::manifest::{FileEntry, FileKind};
use crate::backup::quiesce::StopGuard;
use crate::backup::run::ItemProgress;
use crate::backup::{verify, LABEL_RESTORE};
use crate::context::Ctx;
use crate::core::crashpoint::crash_point;
use crate::core::names::VolumeName;
use crate::core::store::Store;
use crate::fs::beneath::Missing;
use crate::fs::durable::{FileLock, LockKind};
use crate::pool::location::Locate;
use crate::pool::topology;
use crate::snapshot::restore::{
    remove_staged, remove_stale_staging, staging_dir, swap_in, SwapTarget,
};
use crate::snapshot::Counting;

/// How long a volume may stay mounted after its containers were stopped (Docker unmounts asynchronously).
const UNMOUNT_WAIT: Duration = Duration::from_secs(15);

/// Carry out a plan. `Err` when nothing was touched (bad checksums, lock);
/// otherwise every item has its own result in the report.
pub(crate) fn execute(
    ctx: &Ctx,
    plan: &RestorePlan,
    progress: Option<ItemProgress>,
) -> anyhow::Result<RestoreReport> {
    let _lock = crate::backup::take_lock(&ctx.layout)?;
    check_dumps(plan)?;
    let mut report = RestoreReport::default();
    let rt = crate::core::runtime::shared()?;
    let docker: Option<Docker> = rt
        .block_on(crate::docker::connect(&ctx.docker_url))
        .map_err(|e| tracing::warn!(error = %format!("{e:#}"), "Docker is unreachable"))
        .ok();

    {
        let mut guard = docker.as_ref().map(|d| {
            StopGuard::new(
                &ctx.layout,
                rt,
                d,
                &format!("restore {}", plan.dir.display()),
            )
        });
        if let Some(g) = guard.as_mut() {
            stop_users(g, plan, &mut report);
        }
        restore_volumes(ctx, plan, progress.as_ref(), &mut report);
        crash_point("restore.volumes-done");
        if let Some(mut g) = guard {
            for e in g.restart_all() {
                report.push("container", "", Err(e));
            }
        }
    }

    feed_dumps(
        ctx,
        plan,
        rt,
        docker.as_ref(),
        progress.as_ref(),
        &mut report,
    );
    Ok(report)
}

/// Dumps are fed to a command, which cannot be undone: read and check them now.
/// Volume archives are hashed while they are extracted, and checked before the swap.
fn check_dumps(plan: &RestorePlan) -> anyhow::Result<()> {
    let selected: Vec<&str> = plan
        .volumes
        .iter()
        .map(|v| v.file.as_str())
        .chain(plan.dumps.iter().map(|d| d.file.as_str()))
        .collect();
    if let Err(errors) = verify::check_checksums(
        &plan.dir,
        &plan.manifest,
        |f| selected.contains(&f.name.as_str()),
        |f| f.kind != FileKind::Volume,
    ) {
        bail!(
            "refusing to restore, nothing was changed: {}",
            errors.join("; ")
        );
    }
    Ok(())
}

/// Record, then stop, the running containers using the volumes.
fn stop_users(g: &mut StopGuard, plan: &RestorePlan, report: &mut RestoreReport) {
    if plan.to_stop_info.is_empty() {
        return;
    }
    match g.record(&plan.to_stop_info) {
        Ok(()) => {
            for c in &plan.to_stop_info {
                if let Err(e) = g.stop(c) {
                    report.push("container", &c.name, Err(e));
                }
            }
        }
        Err(e) => report.push(
            "container",
            &plan.to_stop.join(","),
            Err(format!("{e:#}; no container was stopped")),
        ),
    }
}

/// Restore each planned volume, one result each.
fn restore_volumes(
    ctx: &Ctx,
    plan: &RestorePlan,
    progress: Option<&ItemProgress>,
    report: &mut RestoreReport,
) {
    for v in &plan.volumes {
        let r = match &v.target {
            Some(target) => match plan.manifest.file(&v.file) {
                Some(entry) => restore_volume(ctx, &plan.dir, v, entry, target, progress),
                None => Err(format!("{} is not in the manifest", v.file)),
            },
            None => Err(format!(
                "volume {} does not exist here; create it and restore again",
                v.name
            )),
        };
        report.push("volume", &v.name, r);
    }
}

/// Feed each planned dump to its restore container, once, one result each.
fn feed_dumps(
    ctx: &Ctx,
    plan: &RestorePlan,
    rt: &Runtime,
    docker: Option<&Docker>,
    progress: Option<&ItemProgress>,
    report: &mut RestoreReport,
) {
    for d in &plan.dumps {
        let r = match (docker, &d.container_id, &d.command) {
            (Some(docker), Some(id), Some(cmd)) => {
                let item = format!("restore {}", d.name);
                if let Some(p) = progress {
                    p(&item, Some(0));
                }
                let r = fed_once(&ctx.layout, d, || {
                    rt.block_on(restore_dump(docker, &plan.dir, d, id, cmd))
                });
                if let Some(p) = progress {
                    p(&item, None);
                }
                r.map_err(|e| {
                    format!(
                        "{e}; once fixed, run `allspark backup restore {} --database {} --yes`",
                        plan.dir.display(),
                        d.name
                    )
                })
            }
            (None, _, _) => Err("Docker is unreachable; start dockerd and restore the dump again with --database".into()),
            _ => Err(format!(
                "no running container labelled {LABEL_RESTORE} takes dump {}; start it and restore again with --database {}",
                d.name, d.name
            )),
        };
        report.push("database", &d.name, r);
    }
}

/// Wait (bounded) until no container mounts the volume; the error says what to do.
fn wait_unmounted(store: &Store, name: &VolumeName) -> Result<(), String> {
    let deadline = Instant::now() + UNMOUNT_WAIT;
    loop {
        let count = {
            let _l = store.lock(name).map_err(|e| e.to_string())?;
            store
                .load(name)
                .map_err(|e| e.to_string())?
                .map(|r| r.mount_count())
                .unwrap_or(0)
        };
        if count == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "volume {name} is still mounted by {count} container(s); stop every container using it (`docker ps --filter volume={name}`) and restore again — nothing was changed"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Restore one volume: extract into a staging directory next to its data, swap it in, delete the old content.
fn restore_volume(
    ctx: &Ctx,
    dir: &Path,
    v: &PlannedVolume,
    entry: &FileEntry,
    target: &Path,
    progress: Option<&ItemProgress>,
) -> Result<String, String> {
    let store = Store::new(ctx.layout.clone());
    let lock_path = ctx.layout.snapshot_lock(&v.name);
    let _snap = FileLock::acquire(&lock_path, LockKind::Exclusive)
        .map_err(|e| format!("cannot take {}: {e}", lock_path.display()))?;
    let mut nested_locks = Vec::new();
    for n in &v.nested {
        let p = ctx.layout.snapshot_lock(n);
        nested_locks.push(
            FileLock::acquire(&p, LockKind::Exclusive)
                .map_err(|e| format!("cannot take {}: {e}", p.display()))?,
        );
    }
    for n in std::iter::once(&v.name).chain(v.nested.iter()) {
        wait_unmounted(&store, n)?;
    }
    let _family_locks = lock_family(ctx, &store, v)?;
    let r = extract_and_swap(ctx, &store, dir, v, entry, target, progress)?;
    crate::core::spool::request_measure(&ctx.layout, &v.name);
    Ok(format!(
        "{} entries, {} bytes restored into {}",
        r.entries,
        r.bytes,
        target.display()
    ))
}

/// Every other volume sharing the tree (a parent around it, another volume on the same
/// device=): kept from mounting while the tree is swapped, refused if in use.
fn lock_family(ctx: &Ctx, store: &Store, v: &PlannedVolume) -> Result<Vec<FileLock>, String> {
    match store.load(&v.name) {
        Ok(Some(rec)) => {
            let data = rec
                .data
                .open(&ctx.layout, &ctx.view, Missing::Refuse)
                .map_err(|e| format!("volume {}: {e}", v.name))?
                .dir;
            let shown = rec.data.local_path(&ctx.layout, &ctx.view);
            let fam = topology::family(&ctx.layout, &ctx.view, &data, &shown);
            let mut others = fam.clone();
            others.members.retain(|m| !v.nested.contains(&m.name));
            let locks = topology::lock_members(&ctx.layout, &others, &v.name, UNMOUNT_WAIT)?;
            let mut fam = topology::family(&ctx.layout, &ctx.view, &data, &shown);
            fam.name_users(&ctx.docker_url, &v.name);
            if let Some(refusal) = fam.refusal(&v.name, &format!("restore volume {}", v.name)) {
                return Err(refusal);
            }
            Ok(locks)
        }
        _ => Ok(Vec::new()),
    }
}

/// Extract the volume's archive into a staging directory beside its data, check its sha256,
/// swap it in; the staging directory (the old content after a swap) is removed either way.
fn extract_and_swap(
    ctx: &Ctx,
    store: &Store,
    dir: &Path,
    v: &PlannedVolume,
    entry: &FileEntry,
    target: &Path,
    progress: Option<&ItemProgress>,
) -> Result<ExtractReport, String> {
    let path = dir.join(&v.file);
    let f = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // Staging, swap and cleanup through the parent's descriptor (see SwapTarget).
    let swap = match store.load(&v.name) {
        Ok(Some(rec)) => SwapTarget::of(&rec.data, &ctx.layout, &ctx.view),
        _ => SwapTarget::by_path(target),
    }
    .map_err(|e| e.to_string())?;
    // A restore killed midway left its staging directory (marked by its name) beside the data.
    remove_stale_staging(&swap);
    let (stage, stage_dir) = staging_dir(&swap).map_err(|e| e.to_string())?;
    let item = format!("restore {}", v.name);
    let tick = |n: u64| {
        if let Some(p) = progress {
            p(&item, Some(n))
        }
    };
    let result = archive::extract(
        Counting::new(f, Some(&tick)),
        &stage_dir.proc_path(),
        &ExtractOptions::default(),
    )
    .map_err(|e| format!("{}: {e}; nothing was changed", path.display()))
    .and_then(|r| {
        crash_point("restore.staged");
        verify::check_sum(dir, entry, &r.sha256)
            .map_err(|e| format!("{e}; nothing was changed"))?;
        swap_in(&swap, &stage).map_err(|e| e.to_string())?;
        crash_point("restore.swapped");
        Ok(r)
    });
    if let Some(p) = progress {
        p(&item, None);
    }
    drop(stage_dir);
    remove_staged(&swap, &stage);
    result
}
